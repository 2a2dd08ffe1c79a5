"""The stages of one job as plain functions: the in-process run (CLI) and the Celery tasks both
call exactly these, so there is one implementation behind every front door.

Each function takes what its stage needs and returns what it made plus facts for the job record;
none of them knows about Celery, storage keys or the terminal.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

import pipeline
from pipeline.audio import render_track
from pipeline.encode import EncodedVideo, encode_mp4, split_cycle, write_poster
from pipeline.engines import Clip, GenerationOptions, engine_class, get_engine
from pipeline.finish import Finished
from pipeline.finish import finish as finish_clip
from pipeline.frame import fit_to_size, generation_size_for
from pipeline.intake import IntakeResult, load_image
from pipeline.previews import preview_indices, shrink_for_preview, write_webp_preview
from pipeline.manifests import StoredManifest
from pipeline.provenance import ALGORITHMIC_MEDIA, LabelInfo, is_ai_generated, load_credentials, sign_video_keeping_store, verify
from pipeline.settings import Settings
from pipeline.softbinding import SoftBinding, bind, embedder

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
GENERATION_SIZES = {"fast": (320, 576), "standard": (576, 1024)}
"""Named generation sizes (width, height), portrait: ``frame.generation_size`` picks one."""


@dataclass
class Generated:
    options: GenerationOptions  # with the engine's defaults filled in
    clip: Clip
    framing: dict[str, Any]
    changes: list[str]
    engine: dict[str, Any]  # Engine.describe() and the engine's digital_source_type
    software_agent: str
    digital_source_type: str  # IPTC term for what made the frames (Engine.digital_source_type)


def generation_options(image: Image.Image, options: GenerationOptions, settings: Settings) -> GenerationOptions:
    """Fill in the generation size: the caller's, else the configured preset, else the engine's;
    ``fit-generate`` then turns it to the shape nearest the photo's (landscape, square, portrait)."""
    engine = get_engine(settings)
    if options.width is None and options.height is None and settings.frame.generation_size != "engine":
        width, height = GENERATION_SIZES[settings.frame.generation_size]
        options = options.model_copy(update={"width": width, "height": height})
    options = engine.resolve_for_story(options, settings.story)  # the motion engine renders the story's size
    if settings.frame.strategy == "fit-generate":
        width, height = generation_size_for(image.size, (options.width, options.height))
        options = options.model_copy(update={"width": width, "height": height})
    return options


def generate(image: Image.Image, options: GenerationOptions, settings: Settings,
             progress: StepProgress | None = None) -> Generated:
    """Frame the photo to the generation size and animate it with the configured engine."""
    return generate_batch([image], options, settings, progress)[0]


def generate_batch(images: list[Image.Image], options: GenerationOptions, settings: Settings,
                   progress: StepProgress | None = None) -> list[Generated]:
    """``generate`` for several photos with the same options: photos framed to the same size go
    through the engine as one batch (``Engine.generate_batch``), each with the options' seed."""
    engine = get_engine(settings)
    frame = settings.frame
    groups: dict[tuple[int, int], list[int]] = {}
    framed, framings, sized = [], [], []
    for k, image in enumerate(images):
        opts = generation_options(image, options, settings)
        picture, framing = fit_to_size(image, opts.width, opts.height, frame.strategy, focus=frame.crop_focus,
                                       face_backend=frame.face_backend, darken=frame.pad_darken)
        framed.append(picture)
        framings.append(framing)
        sized.append(opts)
        groups.setdefault((opts.width, opts.height), []).append(k)
    engine.load()
    clips: dict[int, Clip] = {}
    for members in groups.values():
        made = engine.generate_batch([framed[k] for k in members], sized[members[0]], [options.seed] * len(members),
                                     progress)
        clips.update(zip(members, made))
    results = []
    for k in range(len(images)):
        clip = clips[k]
        opts = sized[k].model_copy(update={"seed": clip.seed, "fps": int(clip.fps), "num_frames": len(clip.frames)})
        results.append(Generated(options=opts, clip=clip, framing=framings[k], changes=[describe_framing(framings[k])],
                                 engine={**engine.describe(), **clip.details,  # e.g. what the motion engine moved
                                         "digital_source_type": engine.digital_source_type},
                                 software_agent=engine.software_agent,
                                 digital_source_type=engine.digital_source_type))
    return results


def digital_source_type(settings: Settings, engine: dict[str, Any] | None = None) -> str:
    """The IPTC digital source type of a job's frames, as the engine that made them declares it
    (``Engine.digital_source_type``, the one place it is decided).

    ``engine`` is the job record's engine entry (``Generated.engine``): its recorded type, or for a
    record written before it was recorded, its engine's class. Without one, the engine ``settings``
    name: right for the in-process run, which generates and labels with the same settings.
    """
    if engine:
        if engine.get("digital_source_type"):
            return str(engine["digital_source_type"])
        if engine.get("engine"):
            return engine_class(str(engine["engine"])).digital_source_type
    return engine_class(settings.engine.name).digital_source_type


def describe_framing(record: dict[str, Any]) -> str:
    (w, h), (tw, th) = record["source_size"], record["size"]
    if record["strategy"] in ("crop", "fit-generate") and "crop_box" in record:
        x0, y0, x1, y1 = record["crop_box"]
        where = "centre" if record.get("focus", "centre") == "centre" else f"region chosen by {record['focus']}"
        return (f"cropped the {where} {x1 - x0}x{y1 - y0} of the {w}x{h} photo "
                f"({record['kept_fraction']:.0%} kept) and resized it to {tw}x{th}")
    if record["strategy"] == "fit-generate":
        return f"resized the {w}x{h} photo to {tw}x{th}, the generation size nearest its shape"
    return f"placed the whole {w}x{h} photo, scaled {record['scale']}x, over a blurred copy of itself at {tw}x{th}"


# -- finish ----------------------------------------------------------------------------------------
def finish(frames: np.ndarray | Clip, fps: float, settings: Settings, progress: StepProgress | None = None, *,
           source_type: str | None = None, looped: bool | None = None) -> Finished:
    """Clip -> story frames (fps, loop, length, size, visible label); see pipeline/finish.py.

    ``source_type`` (the clip's IPTC digital source type) picks the label's words; None takes the
    configured engine's (``digital_source_type``). ``looped`` says the frames are one seamless cycle
    (``Clip.looped``); None takes a Clip's own flag, else whether the configured engine renders
    stories directly (``Engine.renders_story``). A seamless cycle at the story's size and frame rate
    is only repeated, labelled and measured."""
    if isinstance(frames, Clip):
        looped = frames.looped if looped is None else looped
        frames = frames.frames
    if looped is None:
        looped = engine_class(settings.engine.name).renders_story
    return finish_clip(np.asarray(frames), fps, settings, progress,
                       digital_source_type=source_type or digital_source_type(settings), looped=looped)


# -- encode ----------------------------------------------------------------------------------------
@dataclass
class Encoded:
    video: EncodedVideo
    audio: dict[str, Any] | None  # what the sound track is, None when the video has none
    preview: dict[str, Any]
    actions: list[dict[str, Any]]  # C2PA actions of this stage (sound, transcode)
    soft_binding: SoftBinding | None = None  # the watermark and fingerprint, when a credential id was given


def encode(story: Finished, video: Path, poster: Path, preview: Path, settings: Settings, *,
           audio_file: Path | None = None, progress: StepProgress | None = None,
           credential_id: str | None = None) -> Encoded:
    """Story frames -> unsigned video with its sound track (not yet where users look), the poster JPEG
    (the best frame) and a small looping WebP preview.

    With a ``credential_id`` (``watermark.credential_id_for(job_id)``) the frames are first
    watermarked with it (``label.watermark``) and fingerprinted: every published frame (video,
    poster, preview) carries the id, after the visible label and before any encoding."""

    actions: list[dict[str, Any]] = []
    soft = None
    if credential_id is not None:
        soft = bind(story.frames, credential_id, watermark_on=settings.label.watermark,
                    strength=settings.label.watermark_strength, backend=embedder(settings))
    with tempfile.TemporaryDirectory(prefix=".audio-", dir=video.parent) as work:
        wav = Path(work) / "track.wav"
        track = render_track(story.duration_s, settings.audio, wav, file=audio_file)
        cycle, repeat = split_cycle(story.frames)  # a seamless cycle is encoded once and repeated
        encoded = encode_mp4(cycle, video, story.fps, settings.encode, progress=progress,
                             audio=wav if track else None, audio_codec=settings.audio.codec,
                             audio_bitrate=settings.audio.bitrate, repeat=repeat)
    if track:
        actions.append(_audio_action(track))
    actions.append({"action": "c2pa.transcoded", "parameters": {
        "description": f"encoded with {encoded.codec} ({encoded.encoder}, crf {settings.encode.crf})",
        "codec": encoded.codec, "encoder": encoded.encoder, "crf": settings.encode.crf}})
    write_poster(story.frames[story.poster_index], poster, settings.encode.poster_quality)
    # the first 3 s at the preview's rate: only the frames it shows, each shrunk before they are stacked
    rate = min(story.fps, settings.story.preview_fps)
    picked = preview_indices(min(len(story.frames), story.fps * 3), story.fps, rate)
    shown = write_webp_preview(shrink_for_preview(story.frames, picked, settings.story.preview_width), rate, preview,
                               width=settings.story.preview_width, preview_fps=rate,
                               quality=settings.story.preview_quality)
    return Encoded(video=encoded, audio=track, preview=shown, actions=actions, soft_binding=soft)


def _audio_action(track: dict[str, Any]) -> dict[str, Any]:
    if track.get("kind") == "ambience":
        return {"action": "c2pa.edited", "digitalSourceType": ALGORITHMIC_MEDIA, "parameters": {
            "description": f"procedural ambient sound \"{track.get('name')}\" generated in code and added",
            "audio": "procedural"}}
    if track.get("kind") == "file":
        return {"action": "c2pa.edited", "parameters": {
            "description": "sound track supplied by the user mixed in, trimmed and faded to the video length"}}
    return {"action": "c2pa.edited", "parameters": {"description": "silent sound track added"}}


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
          settings: Settings, actions: list[dict[str, Any]] | tuple[dict[str, Any], ...] = (), *,
          source_type: str | None = None, soft_binding: SoftBinding | None = None, job_id: str | None = None,
          keep: Callable[[StoredManifest], None] | None = None) -> dict[str, Any]:
    """Sign the MP4 (the last step that touches its bytes), verify it, and summarise both.

    ``source_type`` is the clip's IPTC digital source type (``c2pa.created``); None takes the
    configured engine's (``digital_source_type``). A ``soft_binding`` (from ``encode``) is written
    as ``c2pa.soft-binding`` assertions, and the signed manifest store with it is handed to
    ``keep`` (the manifest repository's ``add``, wired by the front door) when
    ``label.keep_manifests``."""
    credentials = load_credentials(settings.label, settings.dev_credentials_dir)
    source_type = source_type or digital_source_type(settings)
    info = LabelInfo(
        title=label_title(settings, source_type),
        generator_name=settings.label.claim_generator,
        generator_version=pipeline.__version__,
        software_agent=software_agent,
        digital_source_type=source_type,
        source_mime="image/png",
        source_bytes=clean_photo_png,
        extra_actions=tuple(actions),
        soft_bindings=tuple(soft_binding.assertions()) if soft_binding else (),
    )
    summary, store = sign_video_keeping_store(unsigned, signed, info, credentials, settings.label)
    checked = verify(signed, credentials.trust_anchors_pem)
    summary = {**summary, "verification": checked.to_dict(), "development_credentials": credentials.development}
    if soft_binding is not None:
        summary["credential_id"] = soft_binding.credential_id
        summary["kept_in_repository"] = False
        if keep is not None and settings.label.keep_manifests:
            keep(stored_manifest(soft_binding, store, checked, job_id or "", info))
            summary["kept_in_repository"] = True
    return summary


def stored_manifest(soft: SoftBinding, store: bytes, checked: Any, job_id: str, info: LabelInfo) -> StoredManifest:
    """What the manifest repository keeps of one signed label."""
    import datetime as dt

    return StoredManifest(
        manifest_id=soft.credential_id, job_id=job_id, manifest_store=store, manifest_label=checked.manifest_label,
        watermark_alg=soft.watermark_alg, watermark_value=soft.watermark_value if soft.watermarked else "",
        fingerprint_alg=soft.fingerprint_alg, fingerprint=list(soft.fingerprint),
        digital_source_type=info.digital_source_type, title=info.title, signer=checked.signer,
        generator=f"{info.generator_name} {info.generator_version}".strip(),
        created_at=dt.datetime.now(dt.timezone.utc))


ANIMATED_TITLE = "Animated photo story video"


def label_title(settings: Settings, source_type: str) -> str:
    """The manifest title: ``label.title``, except that its default ("AI-generated story video")
    is not written on a clip no trained model made (the motion engine's): that gets ANIMATED_TITLE."""
    title = settings.label.title
    default = type(settings.label).model_fields["title"].default
    if title == default and "AI-generated" in title and not is_ai_generated(source_type):
        return ANIMATED_TITLE
    return title
