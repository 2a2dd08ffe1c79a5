"""The whole chain, in-process: photo -> checks -> frames -> MP4 -> C2PA label -> report.

``animate`` is what the CLI calls directly and what the Celery tasks call stage by stage (each stage
is a plain function in its own module). It keeps no copy of the source photo: the only file it writes
are the outputs, each atomically, and the MP4 appears at its path only once it is signed and verified.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image

import pipeline
from pipeline.encode import encode_mp4, write_poster
from pipeline.engines import GenerationOptions, get_engine
from pipeline.frame import fit_to_size
from pipeline.intake import load_image
from pipeline.provenance import LabelInfo, load_credentials, sign_video, verify
from pipeline.settings import Settings
from pipeline.storage import write_json_atomic

log = logging.getLogger(__name__)

STAGES = ("intake", "moderate_prompt", "moderate_image", "frame", "generate", "moderate_video", "encode", "label",
          "verify")

StageProgress = Callable[[str, int, int], None]
"""Called with (stage, done, total); total is 1 for stages without inner steps."""


@dataclass(frozen=True)
class Result:
    job_id: str
    video: Path
    poster: Path
    report_path: Path
    report: dict[str, Any]


class _Timer:
    def __init__(self, progress: StageProgress | None):
        self.seconds: dict[str, float] = {}
        self._progress = progress
        self._totals: dict[str, int] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        log.info("stage %s: start", name)
        self.notify(name, 0, 1)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - t0, 4)
        total = self._totals.get(name, 1)
        self.notify(name, total, total)
        log.info("stage %s: done in %.3f s", name, self.seconds[name])

    def notify(self, name: str, done: int, total: int) -> None:
        self._totals[name] = total
        if self._progress is not None:
            self._progress(name, done, total)


def default_paths(output: Path) -> tuple[Path, Path]:
    """Poster and report paths next to the video: story.mp4 -> story.jpg, story.json."""
    return output.with_suffix(".jpg"), output.with_suffix(".json")


def animate(
    source: bytes | str | Path,
    output: str | Path,
    settings: Settings,
    options: GenerationOptions | None = None,
    *,
    prompt: str | None = None,
    poster: str | Path | None = None,
    report: str | Path | None = None,
    job_id: str | None = None,
    progress: StageProgress | None = None,
) -> Result:
    """Run the chain for one photo and write the labelled MP4, its poster JPEG and a JSON report."""
    from moderation import check_frames, check_image, check_prompt, enforce

    options = options or GenerationOptions()
    output = Path(output)
    default_poster, default_report = default_paths(output)
    poster_path = Path(poster) if poster else default_poster
    report_path = Path(report) if report else default_report
    job_id = job_id or uuid.uuid4().hex
    timer = _Timer(progress)
    changes: list[str] = []
    verdicts: dict[str, Any] = {}
    started = dt.datetime.now(dt.timezone.utc)

    with timer.stage("intake"):
        taken = load_image(source, settings.intake)
    if taken.facts.get("exif_transposed"):
        changes.append("rotated upright from its EXIF orientation")
    if taken.facts.get("metadata_removed"):
        changes.append("removed metadata: " + ", ".join(taken.facts["metadata_removed"]))

    with timer.stage("moderate_prompt"):
        verdict = check_prompt(prompt, settings.moderation)
        verdicts["prompt"] = verdict.to_dict()
        enforce(verdict, settings.moderation)

    with timer.stage("moderate_image"):
        verdict = check_image(taken.image, settings.moderation)
        verdicts["image"] = verdict.to_dict()
        enforce(verdict, settings.moderation)

    with timer.stage("frame"):
        framed, frame_record = fit_to_size(taken.image, options.width, options.height, settings.frame.strategy)
    changes.append(_describe_framing(frame_record))

    engine = get_engine(settings)
    with timer.stage("generate"):
        engine.load()
        clip = engine.generate(framed, options, lambda done, total: timer.notify("generate", done, total))

    with timer.stage("moderate_video"):
        verdict = check_frames(clip.frames, settings.moderation)
        verdicts["video"] = verdict.to_dict()
        enforce(verdict, settings.moderation)

    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".alive-", dir=output.parent) as work:
        unsigned = Path(work) / "unsigned.mp4"
        with timer.stage("encode"):
            encoded = encode_mp4(clip.frames, unsigned, clip.fps, settings.encode,
                                 progress=lambda done, total: timer.notify("encode", done, total))
        with timer.stage("label"):
            credentials = load_credentials(settings.label, settings.dev_credentials_dir)
            info = LabelInfo(
                title=settings.label.title,
                generator_name=settings.label.claim_generator,
                generator_version=pipeline.__version__,
                software_agent=engine.software_agent,
                source_mime="image/jpeg",
                source_bytes=_jpeg_bytes(taken.image),
            )
            label_summary = sign_video(unsigned, output, info, credentials, settings.label)

    with timer.stage("verify"):
        checked = verify(output, credentials.trust_anchors_pem)
    poster_file = write_poster(clip.frames[0], poster_path, settings.encode.poster_quality)

    engine_info = engine.describe()
    doc: dict[str, Any] = {
        "job_id": job_id,
        "status": "succeeded",
        "alive_version": pipeline.__version__,
        "created_at": started.isoformat(),
        "engine": engine_info,
        "seed": clip.seed,
        "parameters": {**options.model_dump(), "fps": clip.fps, "num_frames": int(clip.frames.shape[0])},
        "prompt": prompt,
        "input": taken.facts,
        "framing": frame_record,
        "changes": changes,
        "moderation": verdicts,
        "notes": list(clip.notes),
        "outputs": {
            "video": str(output),
            "poster": str(poster_file),
            "width": encoded.width,
            "height": encoded.height,
            "fps": encoded.fps,
            "frames": encoded.frames,
            "duration_s": round(encoded.frames / encoded.fps, 3),
            "codec": encoded.codec,
            "profile": encoded.profile,
            "pix_fmt": encoded.pix_fmt,
            "bytes": output.stat().st_size,
        },
        "c2pa": {**label_summary, "verification": checked.to_dict(),
                 "development_credentials": credentials.development},
        "timings_s": {**timer.seconds, "total": round(sum(timer.seconds.values()), 4)},
        "source_retained": False,
    }
    write_json_atomic(report_path, doc)
    log.info("job %s: wrote %s (%s, %d frames)", job_id, output, checked.state, encoded.frames)
    return Result(job_id=job_id, video=output, poster=poster_file, report_path=report_path, report=doc)


def _jpeg_bytes(image: Image.Image) -> bytes:
    """The sanitised photo as JPEG, for the C2PA ingredient hash (no thumbnail is embedded by default)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _describe_framing(record: dict[str, Any]) -> str:
    (w, h), (tw, th) = record["source_size"], record["size"]
    if record["strategy"] == "crop":
        x0, y0, x1, y1 = record["crop_box"]
        return (f"cropped the centre {x1 - x0}x{y1 - y0} of the {w}x{h} photo "
                f"({record['kept_fraction']:.0%} kept) and resized it to {tw}x{th}")
    return f"placed the whole {w}x{h} photo, scaled {record['scale']}x, over a blurred copy of itself at {tw}x{th}"
