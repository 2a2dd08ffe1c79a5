"""The whole chain, in-process: photo -> checks -> frames -> MP4 -> C2PA label -> report.

``animate`` is what the CLI calls; the Celery tasks in ``workers/`` call the same stage functions
(``pipeline/stages.py``) one task per stage. It keeps no copy of the source photo: the only files
it writes are the outputs, each atomically, and the MP4 appears at its path only once it is signed
and verified.
"""

from __future__ import annotations

import logging
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from pipeline import stages
from pipeline.engines import GenerationOptions
from pipeline.finish import StoryOptions, check_output_name, story_settings
from pipeline.jobs import JobRecord, new_job_id
from pipeline.settings import Settings
from pipeline.storage import publish, write_json_atomic

log = logging.getLogger(__name__)

STAGES = ("intake", "moderate_image", "generate", "moderate_video", "finish", "encode", "label")

StageProgress = Callable[[str, int, int], None]
"""Called with (stage, done, total); total is 1 for stages without inner steps."""


@dataclass(frozen=True)
class Result:
    job_id: str
    video: Path
    poster: Path
    preview: Path
    report_path: Path
    report: dict[str, Any]


class StageTimer:
    """Times stages into ``seconds`` and forwards progress (stage, done, total) to a callback."""

    def __init__(self, progress: StageProgress | None = None):
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

    def steps(self, name: str) -> Callable[[int, int], None]:
        return lambda done, total: self.notify(name, done, total)


def default_paths(output: Path) -> tuple[Path, Path, Path]:
    """Poster, preview and report paths next to the video: story.mp4 -> story.jpg, story.webp, story.json."""
    return output.with_suffix(".jpg"), output.with_suffix(".webp"), output.with_suffix(".json")


def animate(
    source: bytes | str | Path,
    output: str | Path,
    settings: Settings,
    options: GenerationOptions | None = None,
    *,
    story: StoryOptions | None = None,
    audio_file: str | Path | None = None,
    prompt: str | None = None,
    poster: str | Path | None = None,
    preview: str | Path | None = None,
    report: str | Path | None = None,
    job_id: str | None = None,
    progress: StageProgress | None = None,
) -> Result:
    """Run the chain for one photo and write the labelled video, its poster JPEG, an animated WebP
    preview and a JSON report."""
    options = options or GenerationOptions()
    settings = story_settings(settings, story)
    output = Path(output)
    check_output_name(output, settings)
    default_poster, default_preview, default_report = default_paths(output)
    poster_path = Path(poster) if poster else default_poster
    preview_path = Path(preview) if preview else default_preview
    report_path = Path(report) if report else default_report
    record = JobRecord(job_id=job_id or new_job_id(), status="running", options=options.model_dump(), prompt=prompt,
                       story=story.model_dump(exclude_none=True) if story else {}, source_retained=False)
    timer = StageTimer(progress)

    with timer.stage("intake"):
        taken, changes = stages.intake(source, settings)
    record.input, record.changes = taken.facts, changes

    with timer.stage("moderate_image"):  # the prompt and the photo, as in alive.moderate_image
        stages.moderate_input(taken.image, prompt, settings, record.moderation)

    with timer.stage("generate"):
        made = stages.generate(taken.image, options, settings, timer.steps("generate"))
    clip = made.clip
    record.framing, record.engine, record.software_agent = made.framing, made.engine, made.software_agent
    record.changes += made.changes
    record.seed, record.notes = clip.seed, list(clip.notes)
    record.options = made.options.model_dump()

    with timer.stage("moderate_video"):
        stages.moderate_video(clip.frames, settings, record.moderation)

    with timer.stage("finish"):
        finished = stages.finish(clip.frames, clip.fps, settings, timer.steps("finish"))
    record.finish = finished.record

    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".alive-", dir=output.parent) as work:
        unsigned = Path(work) / f"unsigned{output.suffix}"
        poster_draft, preview_draft = Path(work) / "poster.jpg", Path(work) / "preview.webp"
        with timer.stage("encode"):
            encoded = stages.encode(finished, unsigned, poster_draft, preview_draft, settings,
                                    audio_file=Path(audio_file) if audio_file else None, progress=timer.steps("encode"))
        with timer.stage("label"):
            record.c2pa = stages.label(unsigned, output, stages.png_bytes(taken.image), made.software_agent, settings,
                                       finished.actions + encoded.actions)
        publish(poster_draft, poster_path)  # only a labelled video gets a poster and preview beside it
        publish(preview_draft, preview_path)

    record.audio = encoded.audio
    record.finish = {**finished.record, "c2pa_actions": finished.actions + encoded.actions}
    record.outputs = {"video": str(output), "poster": str(poster_path), "preview": str(preview_path),
                      "bytes": output.stat().st_size, **stages.outputs_summary(encoded.video)}
    record.timings_s = {**timer.seconds, "total": round(sum(timer.seconds.values()), 4)}
    record.status, record.stage = "succeeded", None
    doc = record.to_dict()
    write_json_atomic(report_path, doc)
    log.info("job %s: wrote %s (%s, %d frames)", record.job_id, output, record.c2pa["state"], encoded.video.frames)
    return Result(job_id=record.job_id, video=output, poster=poster_path, preview=preview_path,
                  report_path=report_path, report=doc)
