"""The stages of one job as plain functions: the in-process run (CLI) and the Celery tasks both
call exactly these, so there is one implementation behind every front door.

Each function takes what its stage needs and returns what it made plus facts for the job record;
none of them knows about Celery, storage keys or the terminal.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

import pipeline
from pipeline.encode import EncodedVideo, encode_mp4, write_poster
from pipeline.engines import Clip, GenerationOptions, get_engine
from pipeline.frame import fit_to_size
from pipeline.intake import IntakeResult, load_image
from pipeline.provenance import LabelInfo, load_credentials, sign_video, verify
from pipeline.settings import Settings

StepProgress = Callable[[int, int], None]


# -- intake ----------------------------------------------------------------------------------------
def intake(source: bytes | str | Path, settings: Settings) -> tuple[IntakeResult, list[str]]:
    """Decode and sanitise the upload; also say, in words, what was changed about it."""
    taken = load_image(source, settings.intake)
    changes = []
    if taken.facts.get("exif_transposed"):
        changes.append("rotated upright from its EXIF orientation")
    if taken.facts.get("metadata_removed"):
        changes.append("removed metadata: " + ", ".join(taken.facts["metadata_removed"]))
    return taken, changes


def png_bytes(image: Image.Image) -> bytes:
    """Lossless bytes of the sanitised photo, for handing it from one task to the next."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# -- moderation ------------------------------------------------------------------------------------
def moderate_input(image: Image.Image, prompt: str | None, settings: Settings, record: dict[str, Any]) -> None:
    """Check prompt then photo; each verdict lands in ``record`` before a block is raised."""
    from moderation import check_image, check_prompt, enforce

    for subject, verdict in (("prompt", lambda: check_prompt(prompt, settings.moderation)),
                             ("image", lambda: check_image(image, settings.moderation))):
        result = verdict()
        record[subject] = result.to_dict()
        enforce(result, settings.moderation)


def moderate_video(frames: np.ndarray, settings: Settings, record: dict[str, Any]) -> None:
    from moderation import check_frames, enforce

    result = check_frames(frames, settings.moderation)
    record["video"] = result.to_dict()
    enforce(result, settings.moderation)


# -- generation ------------------------------------------------------------------------------------
@dataclass
class Generated:
    options: GenerationOptions  # with the engine's defaults filled in
    clip: Clip
    framing: dict[str, Any]
    changes: list[str]
    engine: dict[str, Any]
    software_agent: str


def generate(image: Image.Image, options: GenerationOptions, settings: Settings,
             progress: StepProgress | None = None) -> Generated:
    """Frame the photo to the generation size and animate it with the configured engine."""
    engine = get_engine(settings)
    options = engine.resolve(options)
    framed, framing = fit_to_size(image, options.width, options.height, settings.frame.strategy)
    engine.load()
    clip = engine.generate(framed, options, progress)
    options = options.model_copy(update={"seed": clip.seed, "fps": int(clip.fps), "num_frames": len(clip.frames)})
    return Generated(options=options, clip=clip, framing=framing, changes=[describe_framing(framing)], engine=engine.describe(),
                     software_agent=engine.software_agent)


def describe_framing(record: dict[str, Any]) -> str:
    (w, h), (tw, th) = record["source_size"], record["size"]
    if record["strategy"] == "crop":
        x0, y0, x1, y1 = record["crop_box"]
        return (f"cropped the centre {x1 - x0}x{y1 - y0} of the {w}x{h} photo "
                f"({record['kept_fraction']:.0%} kept) and resized it to {tw}x{th}")
    return f"placed the whole {w}x{h} photo, scaled {record['scale']}x, over a blurred copy of itself at {tw}x{th}"


# -- encode ----------------------------------------------------------------------------------------
def encode(frames: np.ndarray, fps: float, video: Path, poster: Path, settings: Settings,
           progress: StepProgress | None = None) -> EncodedVideo:
    """Frames -> unsigned MP4 (not yet where users look) and the poster JPEG."""
    encoded = encode_mp4(frames, video, fps, settings.encode, progress=progress)
    write_poster(frames[0], poster, settings.encode.poster_quality)
    return encoded


def outputs_summary(encoded: EncodedVideo) -> dict[str, Any]:
    return {
        "width": encoded.width,
        "height": encoded.height,
        "fps": encoded.fps,
        "frames": encoded.frames,
        "duration_s": round(encoded.frames / encoded.fps, 3),
        "codec": encoded.codec,
        "profile": encoded.profile,
        "pix_fmt": encoded.pix_fmt,
    }


# -- label -----------------------------------------------------------------------------------------
def label(unsigned: Path, signed: Path, clean_photo_png: bytes, software_agent: str,
          settings: Settings) -> dict[str, Any]:
    """Sign the MP4 (the last step that touches its bytes), verify it, and summarise both."""
    credentials = load_credentials(settings.label, settings.dev_credentials_dir)
    info = LabelInfo(
        title=settings.label.title,
        generator_name=settings.label.claim_generator,
        generator_version=pipeline.__version__,
        software_agent=software_agent,
        source_mime="image/png",
        source_bytes=clean_photo_png,
    )
    summary = sign_video(unsigned, signed, info, credentials, settings.label)
    checked = verify(signed, credentials.trust_anchors_pem)
    return {**summary, "verification": checked.to_dict(), "development_credentials": credentials.development}
