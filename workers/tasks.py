"""Thin, named Celery tasks: one per stage, each calling the same function the CLI calls.

Every task takes the job id (and returns it for the next task), re-reads state from the store,
returns at once when its output already exists (a redelivered task is a no-op), writes its output
atomically, and records what it did on the job record. Pixels never travel through the broker.

Retry policy by error class: ``TransientError`` is retried with exponential backoff (out-of-memory
in generation also halves ``decode_chunk_size`` first); ``InputRejected``, ``ModerationBlocked`` and
every other ``AliveError`` fail the job at once with their reason. ``alive.fail`` is the chain's
error callback: it records the reason and deletes the photo and intermediates.
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from celery import Task, chain
from celery.exceptions import Ignore
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from pipeline import stages
from pipeline.engines import GenerationOptions
from pipeline.errors import AliveError, GenerationFailed, InputRejected, ModerationBlocked, TransientError
from pipeline.finish import StoryOptions, story_settings
from pipeline.jobs import Keys, cleanup, status_for
from service.stores import open_job_store
from pipeline.settings import Settings
from pipeline.storage import LocalStorage, Storage, write_json_atomic
from workers.app import app, current_settings

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5


class Context:
    """What a task needs, built from the current settings (cheap; no model is loaded here)."""

    def __init__(self) -> None:
        self.settings = current_settings()
        self.jobs = open_job_store(self.settings)
        self.storage: Storage = self.jobs.storage

    @contextmanager
    def scratch(self, job_id: str) -> Iterator[Path]:
        """A private temp folder inside the job's own folder: finished files move by rename, and
        whatever a killed task leaves there goes with the job's transient files."""
        base = self.storage.local_path(Keys(job_id).scratch) if isinstance(self.storage, LocalStorage) else None
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="task-", dir=base) as folder:
            yield Path(folder)


class StageTask(Task):
    """Base of the stage tasks: retries transient errors, reports progress, times the stage."""

    acks_late = True
    reject_on_worker_lost = True

    def run_stage(self, job_id: str, stage: str, work) -> str:
        ctx = Context()
        if ctx.jobs.load(job_id).finished:  # a late duplicate of a job that already ended: touch nothing
            log.info("job %s already finished: %s delivered again, ignored", job_id, stage)
            raise Ignore()
        ctx.jobs.update(job_id, status="running", stage=stage, progress={"done": 0, "total": 0})
        self.update_state(state="PROGRESS", meta={"job_id": job_id, "stage": stage, "done": 0, "total": 0})
        started = time.perf_counter()
        try:
            work(ctx, self._reporter(ctx, job_id, stage))
        except TransientError as exc:
            retries = self.request.retries
            limit = ctx.settings.worker.max_retries
            if retries >= limit:
                raise
            delay = ctx.settings.worker.retry_backoff_s * (2 ** retries)
            log.warning("job %s: %s failed transiently (%s); retry %d/%d in %ss", job_id, stage, exc.code,
                        retries + 1, limit, delay)
            raise self.retry(exc=exc, countdown=delay, max_retries=limit)
        except SoftTimeLimitExceeded as exc:
            raise GenerationFailed(f"stage {stage} ran past its time limit and was stopped",
                                   code="time_limit") from exc
        record = ctx.jobs.load(job_id)
        ctx.jobs.update(job_id, timings_s={stage: round(time.perf_counter() - started, 4)},
                        progress={"done": record.progress.get("total", 0), "total": record.progress.get("total", 0)})
        return job_id

    def _reporter(self, ctx: Context, job_id: str, stage: str):
        last = [0.0]

        def report(done: int, total: int) -> None:
            now = time.monotonic()
            if done < total and now - last[0] < PROGRESS_EVERY_S:
                return
            last[0] = now
            self.update_state(state="PROGRESS", meta={"job_id": job_id, "stage": stage, "done": done, "total": total})
            ctx.jobs.update(job_id, progress={"done": done, "total": total})

        return report


def _load_image(storage: Storage, key: str) -> Image.Image:
    with Image.open(io.BytesIO(storage.get_bytes(key))) as img:
        return img.convert("RGB")


def _source_gone(job_id: str) -> InputRejected:
    return InputRejected(f"job {job_id}: the uploaded photo is no longer in the store", code="source_missing")


@app.task(name="alive.intake", bind=True, base=StageTask)
def intake(self, job_id: str) -> str:
    def work(ctx: Context, progress) -> None:
        keys = Keys(job_id)
        if ctx.storage.exists(keys.clean):
            return
        if not ctx.storage.exists(keys.source):
            raise _source_gone(job_id)
        taken, changes = stages.intake(ctx.storage.get_bytes(keys.source), ctx.settings)
        ctx.storage.put_bytes(keys.clean, stages.png_bytes(taken.image))
        ctx.jobs.update(job_id, input=taken.facts, changes=changes)

    return self.run_stage(job_id, "intake", work)


@app.task(name="alive.moderate_image", bind=True, base=StageTask)
def moderate_image(self, job_id: str) -> str:
    """Prompt and photo checks. Cheap and deterministic, so a redelivery simply checks again."""

    def work(ctx: Context, progress) -> None:
        record = ctx.jobs.load(job_id)
        verdicts: dict[str, Any] = {}
        try:
            stages.moderate_input(_load_image(ctx.storage, Keys(job_id).clean), record.prompt, ctx.settings, verdicts)
        finally:
            ctx.jobs.update(job_id, moderation=verdicts)

    return self.run_stage(job_id, "moderate_image", work)


@app.task(name="alive.generate", bind=True, base=StageTask)
def generate(self, job_id: str) -> str:
    """Runs on the GPU queue. The engine is loaded on the first task of this worker child and kept."""

    def work(ctx: Context, progress) -> None:
        keys = Keys(job_id)
        if ctx.storage.exists(keys.frames):
            return
        record = ctx.jobs.load(job_id)
        options = GenerationOptions.build(**record.options)
        settings = ctx.settings
        if record.engine_name:
            settings = settings.model_copy(update={"engine": settings.engine.model_copy(
                update={"name": record.engine_name})})
        try:
            made = stages.generate(_load_image(ctx.storage, keys.clean), options, settings, progress)
        except TransientError as exc:
            if exc.code == "out_of_memory" and options.decode_chunk_size > 1:  # retry lighter
                ctx.jobs.update(job_id, options={"decode_chunk_size": max(1, options.decode_chunk_size // 2)})
            raise
        with ctx.scratch(job_id) as tmp:
            path = tmp / "frames.npy"
            np.save(path, made.clip.frames)
            ctx.jobs.update(job_id, options=made.options.model_dump(), framing=made.framing, engine=made.engine,
                            software_agent=made.software_agent, seed=made.clip.seed, notes=list(made.clip.notes),
                            changes=record.changes + [c for c in made.changes if c not in record.changes])
            ctx.storage.put_file(keys.frames, path)  # last: its existence means "generate is done"

    return self.run_stage(job_id, "generate", work)


def _frames(ctx: Context, job_id: str) -> np.ndarray:
    return np.load(ctx.storage.local_path(Keys(job_id).frames), mmap_mode="r")


@app.task(name="alive.moderate_video", bind=True, base=StageTask)
def moderate_video(self, job_id: str) -> str:
    def work(ctx: Context, progress) -> None:
        verdicts: dict[str, Any] = {}
        try:
            stages.moderate_video(np.asarray(_frames(ctx, job_id)), ctx.settings, verdicts)
        finally:
            ctx.jobs.update(job_id, moderation=verdicts)

    return self.run_stage(job_id, "moderate_video", work)


def _job_settings(ctx: Context, record) -> Settings:
    """The settings of this job: the worker's, with the job's preset and story options applied."""
    return story_settings(ctx.settings, StoryOptions(**record.story) if record.story else None)


@app.task(name="alive.encode", bind=True, base=StageTask)
def encode(self, job_id: str) -> str:
    """Finish (fps, loop, story size, visible label) and encode in one task: the story-size frames are
    ~6x the generated ones and never need to leave this worker."""

    def work(ctx: Context, progress) -> None:
        keys = Keys(job_id)
        if all(ctx.storage.exists(k) for k in (keys.unsigned, keys.poster, keys.preview)):
            return
        record = ctx.jobs.load(job_id)
        settings = _job_settings(ctx, record)
        started = time.perf_counter()
        finished = stages.finish(np.asarray(_frames(ctx, job_id)), float(record.options["fps"]), settings,
                                 source_type=stages.digital_source_type(settings, record.engine))  # visible label
        finish_s = round(time.perf_counter() - started, 4)
        audio = ctx.storage.local_path(keys.audio) if ctx.storage.exists(keys.audio) else None
        with ctx.scratch(job_id) as tmp:
            encoded = stages.encode(finished, tmp / "unsigned.mp4", tmp / "poster.jpg", tmp / "preview.webp",
                                    settings, audio_file=audio, progress=progress)
            ctx.jobs.update(job_id, outputs=stages.outputs_summary(encoded.video), audio=encoded.audio,
                            finish={**finished.record, "c2pa_actions": finished.actions + encoded.actions},
                            timings_s={"finish": finish_s})
            ctx.storage.put_file(keys.poster, tmp / "poster.jpg")
            ctx.storage.put_file(keys.preview, tmp / "preview.webp")
            ctx.storage.put_file(keys.unsigned, tmp / "unsigned.mp4")  # last: marks the stage done

    return self.run_stage(job_id, "encode", work)


@app.task(name="alive.label", bind=True, base=StageTask)
def label(self, job_id: str) -> str:
    def work(ctx: Context, progress) -> None:
        keys = Keys(job_id)
        if ctx.storage.exists(keys.video):
            return
        record = ctx.jobs.load(job_id)
        with ctx.scratch(job_id) as tmp:
            settings = _job_settings(ctx, record)
            summary = stages.label(ctx.storage.local_path(keys.unsigned), tmp / "story.mp4",
                                   ctx.storage.get_bytes(keys.clean), record.software_agent,
                                   settings, (record.finish or {}).get("c2pa_actions", ()),
                                   source_type=stages.digital_source_type(settings, record.engine))
            ctx.jobs.update(job_id, c2pa=summary)
            ctx.storage.put_file(keys.video, tmp / "story.mp4")

    return self.run_stage(job_id, "label", work)


@app.task(name="alive.finalize", bind=True, base=StageTask)
def finalize(self, job_id: str) -> str:
    """Publish the report, delete the photo and intermediates, mark the job succeeded."""
    ctx = Context()
    keys = Keys(job_id)
    record = ctx.jobs.load(job_id)
    if record.finished and ctx.storage.exists(keys.report):
        raise Ignore()
    ctx.jobs.delete_transient(job_id)
    record.status, record.stage, record.source_retained = "succeeded", None, False
    record.outputs.update(video=ctx.storage.url(keys.video), poster=ctx.storage.url(keys.poster),
                          preview=ctx.storage.url(keys.preview),
                          report=ctx.storage.url(keys.report), bytes=ctx.storage.local_path(keys.video).stat().st_size)
    record.timings_s["total"] = round(sum(v for k, v in record.timings_s.items() if k != "total"), 4)
    # the report first: a record that says "succeeded" always has its report beside it
    write_json_atomic(ctx.storage.local_path(keys.report), record.to_dict())
    ctx.jobs.save(record)
    _notify(record)
    log.info("job %s succeeded", job_id)
    return job_id


def _notify(record) -> None:
    """Queue the webhook of a finished job (sent by name: service/webhooks.py, on the webhook queue).

    A job has one when it carries a callback URL, or when its API key has a ``webhook_url``: that is
    known only to the database, so every job kept there is sent (``alive.webhook`` looks the target
    up and returns at once when there is none; the cpu worker never reads webhook secrets)."""
    if record.callback_url or current_settings().jobs.store == "database":
        app.send_task("alive.webhook", args=[record.job_id])


@app.task(name="alive.fail")
def fail(request, exc, traceback, job_id: str) -> None:
    """Chain error callback: record why the job ended, and keep nothing of the user's photo."""
    ctx = Context()
    status, error = classify_failure(exc)
    try:
        record = ctx.jobs.load(job_id)
    except AliveError:  # the job was deleted while it ran: remove whatever its tasks wrote since
        ctx.storage.delete_prefix(Keys(job_id).prefix)
        return
    if record.finished:
        return
    error["task"] = getattr(request, "task", None)
    record.status, record.error, record.source_retained = status, error, False
    if isinstance(exc, ModerationBlocked) and exc.verdict is not None:
        record.moderation[exc.verdict.subject] = exc.verdict.to_dict()
    ctx.jobs.delete_transient(job_id)
    write_json_atomic(ctx.storage.local_path(Keys(job_id).report), record.to_dict())  # the report first
    ctx.jobs.save(record)
    _notify(record)
    log.warning("job %s %s: %s", job_id, status, error["message"])


def classify_failure(exc: BaseException) -> tuple[str, dict[str, Any]]:
    """Job status and error document for an exception that ended a chain."""
    status = status_for(exc)
    if isinstance(exc, AliveError):
        # first line only: ffmpeg commands and server paths stay in the worker log, not in the
        # report a client sees
        message = exc.message.splitlines()[0]
        tail = [line for line in str(exc.details.get("stderr_tail", "")).splitlines() if line.strip()]
        if tail:  # ffmpeg's own last word says why (e.g. "Unknown encoder 'x'")
            message += f": {tail[-1].strip()[:200]}"
        return status, {"code": exc.code, "message": message, "type": type(exc).__name__}
    return status, {"code": "internal", "message": f"{type(exc).__name__}: {exc}", "type": type(exc).__name__}


def job_chain(job_id: str):
    """The whole job as one Celery chain, with the error callback on every link."""
    flow = chain(intake.s(job_id), moderate_image.s(), generate.s(), moderate_video.s(), encode.s(), label.s(),
                 finalize.s())
    return flow.on_error(fail.s(job_id))


@app.task(name="alive.cleanup")
def cleanup_expired() -> list[str]:
    """Periodic: delete finished jobs older than storage.retention_hours (run with `alive worker --beat`)."""
    ctx = Context()
    return cleanup(ctx.jobs, ctx.settings.storage.retention_hours)
