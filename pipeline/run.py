"""The whole chain, in-process: photo -> checks -> frames -> MP4 -> C2PA label -> report.

``animate`` is what the CLI calls; the Celery tasks in ``workers/`` call the same stage functions
(``pipeline/stages.py``) one task per stage. It keeps no copy of the source photo: the only files
it writes are the outputs, each atomically, and the MP4 appears at its path only once it is signed
and verified. It never writes over an input: ``start`` plans the output paths first
(``pipeline/outputs.py``), refusing a chosen name that is the photo or the sound file and moving a
derived name off it (``cat.jpg`` -> poster ``cat.poster.jpg``), with a note in the report.
"""

from __future__ import annotations

import logging
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from pipeline import stages, watermark
from pipeline.engines import GenerationOptions
from pipeline.errors import ConfigError
from pipeline.finish import StoryOptions, check_output_name, story_settings
from pipeline.jobs import JobRecord, new_job_id
from pipeline.outputs import default_video, plan_outputs
from pipeline.settings import Settings
from pipeline.softbinding import embedder
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


@dataclass
class Job:
    """One photo on its way through the chain in this process, between ``start`` and ``complete``."""

    settings: Settings
    options: GenerationOptions
    output: Path
    poster: Path
    preview: Path
    report: Path
    record: JobRecord
    timer: StageTimer
    taken: Any  # IntakeResult: the sanitised photo
    audio_file: Path | None
    made: stages.Generated | None = None
    keep_manifest: Callable[[Any], None] | None = None  # the manifest repository's add (front door wires it)


def animate(source: bytes | str | Path, output: str | Path | None, settings: Settings,
            options: GenerationOptions | None = None, **request: Any) -> Result:
    """Run the chain for one photo and write the labelled video, its poster JPEG, an animated WebP
    preview and a JSON report. ``request`` is ``start``'s keyword arguments (story, audio_file,
    prompt, poster, preview, report, job_id, progress)."""
    job = start(source, output, settings, options, **request)
    generate_together([job])
    return complete(job)


def start(
    source: bytes | str | Path,
    output: str | Path | None,
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
    notes: tuple[str, ...] | list[str] = (),
    keep_manifest: Callable[[Any], None] | None = None,
) -> Job:
    """Check the request, take the photo in and moderate it: everything before generation.

    ``output`` None means the photo's name with ``.mp4`` in the current folder. The output paths are
    planned before anything is read or written (``pipeline.outputs.plan_outputs``): a ``poster``,
    ``preview``, ``report`` or ``output`` that is the photo or ``audio_file`` (also through a symlink
    or a hard link), or two outputs that are one file, raise ``ConfigError`` (exit 2); a derived name
    that would land on an input or on a file alive did not write becomes a free one (``cat.poster.jpg``,
    ``cat-2.mp4``) and the report's notes say so. ``notes`` are added to the report's notes first.
    """
    options = options or GenerationOptions()
    settings = story_settings(settings, story)
    embedder(settings)  # a watermark backend that cannot run (TrustMark not pulled) stops here, before any work
    photo = Path(source) if isinstance(source, (str, Path)) else None
    if output is None and photo is None:
        raise ConfigError("no output path: name the MP4 to write when the photo is given as bytes",
                          code="bad_output_name")
    plan = plan_outputs(default_video(photo) if output is None else Path(output), named_video=output is not None,
                        poster=poster, preview=preview, report=report,
                        inputs=[(photo, "the input photo"), (audio_file, "the sound file")])
    output = plan.video
    check_output_name(output, settings)
    record = JobRecord(job_id=job_id or new_job_id(), status="running", options=options.model_dump(), prompt=prompt,
                       story=story.model_dump(exclude_none=True) if story else {}, source_retained=False,
                       notes=[*notes, *plan.notes])
    timer = StageTimer(progress)

    with timer.stage("intake"):
        taken, changes = stages.intake(source, settings)
    record.input, record.changes = taken.facts, changes

    with timer.stage("moderate_image"):  # the prompt and the photo, as in alive.moderate_image
        stages.moderate_input(taken.image, prompt, settings, record.moderation)
    return Job(settings=settings, options=options, output=output, poster=plan.poster, preview=plan.preview,
               report=plan.report, record=record, timer=timer, taken=taken,
               audio_file=Path(audio_file) if audio_file else None, keep_manifest=keep_manifest)


def generate_together(jobs: list[Job]) -> None:
    """Animate the jobs' photos, as one model batch where the engine can (``alive batch`` with
    ``performance.batch_clips`` > 1); the jobs share settings and options. Each job's generate time
    is the whole batch's."""
    first = jobs[0]
    timer = first.timer if len(jobs) == 1 else StageTimer()
    with timer.stage("generate"):
        made = stages.generate_batch([job.taken.image for job in jobs], first.options, first.settings,
                                     timer.steps("generate"))
    for job, generated in zip(jobs, made):
        job.made = generated
        job.timer.seconds["generate"] = timer.seconds["generate"]
        record, clip = job.record, generated.clip
        record.framing, record.engine, record.software_agent = generated.framing, generated.engine, generated.software_agent
        if len(jobs) > 1:
            record.engine = {**generated.engine, "batch_clips": len(jobs)}
        record.changes += generated.changes
        record.seed, record.notes = clip.seed, [*record.notes, *clip.notes]
        record.options = generated.options.model_dump()


def complete(job: Job) -> Result:
    """Everything after generation: check the clip, make the story, encode, label, report."""
    settings, record, timer, made, output = job.settings, job.record, job.timer, job.made, job.output
    clip = made.clip
    with timer.stage("moderate_video"):
        stages.moderate_video(clip.frames, settings, record.moderation)

    with timer.stage("finish"):
        finished = stages.finish(clip, clip.fps, settings, timer.steps("finish"))  # the Clip says if it is a seamless story
    record.finish = finished.record

    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".alive-", dir=output.parent) as work:
        unsigned = Path(work) / f"unsigned{output.suffix}"
        poster_draft, preview_draft = Path(work) / "poster.jpg", Path(work) / "preview.webp"
        with timer.stage("encode"):
            encoded = stages.encode(finished, unsigned, poster_draft, preview_draft, settings,
                                    audio_file=job.audio_file, progress=timer.steps("encode"),
                                    credential_id=watermark.credential_id_for(record.job_id))
        record.credential = encoded.soft_binding.to_dict() if encoded.soft_binding else None
        with timer.stage("label"):
            record.c2pa = stages.label(unsigned, output, stages.png_bytes(job.taken.image), made.software_agent,
                                       settings, finished.actions + encoded.actions,
                                       soft_binding=encoded.soft_binding, job_id=record.job_id,
                                       keep=job.keep_manifest)
        publish(poster_draft, job.poster)  # only a labelled video gets a poster and preview beside it
        publish(preview_draft, job.preview)

    record.audio = encoded.audio
    record.finish = {**finished.record, "c2pa_actions": finished.actions + encoded.actions}
    record.outputs = {"video": str(output), "poster": str(job.poster), "preview": str(job.preview),
                      "report": str(job.report), "bytes": output.stat().st_size,
                      **stages.outputs_summary(encoded.video)}
    record.timings_s = {**timer.seconds, "total": round(sum(timer.seconds.values()), 4)}
    record.status, record.stage = "succeeded", None
    doc = record.to_dict()
    write_json_atomic(job.report, doc)
    log.info("job %s: wrote %s (%s, %d frames)", record.job_id, output, record.c2pa["state"], encoded.video.frames)
    return Result(job_id=record.job_id, video=output, poster=job.poster, preview=job.preview,
                  report_path=job.report, report=doc)
