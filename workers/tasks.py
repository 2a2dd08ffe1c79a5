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
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from celery import Task, chain
from celery.exceptions import Ignore
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from pipeline import stages, watermark
from pipeline.engines import GenerationOptions
from pipeline.errors import (AliveError, ConfigError, GenerationFailed, InputRejected, ModerationBlocked, StorageFull,
                             TransientError, is_disk_full)
from pipeline.finish import StoryOptions, story_settings
from pipeline.jobs import JobRecord, Keys, cleanup, status_for
from pipeline.settings import Settings
from pipeline.softbinding import SoftBinding
from pipeline.storage import Storage
from service.stores import open_job_store
from workers import attempts
from workers.app import app, current_settings

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5


class Context:
    """What a task needs, built from the current settings (cheap; no model is loaded here)."""

    def __init__(self) -> None:
        self.settings = current_settings()
        self.jobs = open_job_store(self.settings)
        self.storage: Storage = self.jobs.storage

    @property
    def manifests(self):
        """The manifest repository (the job database): opened on first use, by the label task only."""
        from service.manifests import open_manifest_repository

        return open_manifest_repository(self.settings)

    @contextmanager
    def scratch(self, job_id: str) -> Iterator[Path]:
        """A private temp folder of this task on this host (``storage.scratch_dir``), removed when the
        block ends: a worker keeps nothing of a job on its disk; finished files go to the store.

        The folder's name carries the task process's pid: a folder whose process is gone belongs to a
        killed task and is removed by the next task on this host that makes one."""
        root = self.settings.scratch_root
        root.mkdir(parents=True, exist_ok=True)
        sweep_scratch(root)
        with tempfile.TemporaryDirectory(prefix=f"{job_id}-{os.getpid()}-", dir=root) as folder:
            yield Path(folder)


def sweep_scratch(root: Path) -> list[str]:
    """Remove the scratch folders of tasks whose process has died; returns their names."""
    removed = []
    for folder in root.iterdir():
        parts = folder.name.split("-")
        if len(parts) < 3 or not parts[-2].isdigit() or _process_alive(int(parts[-2])):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    if removed:
        log.info("removed the scratch folders of %d killed task(s): %s", len(removed), ", ".join(removed))
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class Attempt:
    """This task's claim on a stage: its token, the heartbeat thread, and the fence."""

    def __init__(self, ctx: Context, job_id: str, token: str):
        self.ctx, self.job_id, self.token = ctx, job_id, token
        self.superseded = threading.Event()
        self._stop = threading.Event()

    def fence(self) -> None:
        """Raise ``Superseded`` unless the record still holds this attempt's token (read under the
        job's lock): called before every write that publishes a stage's output."""
        if self.superseded.is_set():
            raise attempts.Superseded(f"job {self.job_id}: attempt superseded")
        with self.ctx.jobs._locked(self.job_id):
            attempts.check(self.ctx.jobs.load(self.job_id), self.token)

    @contextmanager
    def heartbeat(self) -> Iterator["Attempt"]:
        thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.job_id}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=5)

    def _beat(self) -> None:
        interval = self.ctx.settings.worker.heartbeat_interval_s
        while not self._stop.wait(interval):
            try:
                self.ctx.jobs.mutate(self.job_id, lambda r: attempts.beat(r, self.token))
            except attempts.Superseded:
                log.warning("job %s: another attempt owns this stage now; this one stops", self.job_id)
                self.superseded.set()
                return
            except Exception:  # noqa: BLE001 - a database blip must not kill the task; the next beat retries
                log.warning("job %s: heartbeat not written", self.job_id, exc_info=True)


class StageTask(Task):
    """Base of the stage tasks: claims the stage on the job record, beats, retries transient errors,
    reports progress, times the stage, hands the job on to the next stage."""

    acks_late = True
    reject_on_worker_lost = True

    def run_stage(self, job_id: str, stage: str, work: Callable[..., Callable[[JobRecord], None] | None]) -> str:
        ctx = Context()
        token = self._claim(ctx, job_id, stage)
        self.update_state(state="PROGRESS", meta={"job_id": job_id, "stage": stage, "done": 0, "total": 0})
        started = time.perf_counter()
        attempt = Attempt(ctx, job_id, token)
        try:
            with attempt.heartbeat():
                try:
                    done = work(ctx, self._reporter(ctx, attempt, stage), attempt)
                except (OSError, AliveError) as exc:
                    if isinstance(exc, TransientError) or not _disk_full_at_root(exc):
                        raise
                    raise StorageFull(f"no space left on this worker's disk for the {stage} stage of job "
                                      f"{job_id}; free space, the job is retried") from exc
        except attempts.Superseded as exc:
            log.warning("%s; stage %s stops without writing", exc, stage)
            raise Ignore() from exc
        except TransientError as exc:
            self._retry_or_raise(ctx, job_id, stage, token, exc)
        except SoftTimeLimitExceeded as exc:
            raise GenerationFailed(f"stage {stage} ran past its time limit and was stopped",
                                   code="time_limit") from exc

        def hand_on(record: JobRecord) -> None:
            attempts.hand_on(record, token, ctx.settings)
            total = record.progress.get("total", 0)
            record.progress = {"done": total, "total": total}
            record.timings_s[stage] = round(time.perf_counter() - started, 4)
            if done is not None:
                done(record)

        try:
            record = ctx.jobs.mutate(job_id, hand_on)
        except attempts.Superseded as exc:
            log.warning("%s; stage %s finished but another attempt owns it: not handed on", exc, stage)
            raise Ignore() from exc
        return job_id

    def _claim(self, ctx: Context, job_id: str, stage: str) -> str:
        taken: list[str] = []
        try:
            def take(record: JobRecord) -> None:
                taken.append(attempts.claim(record, stage, self.request.id, ctx.settings))
                record.progress = {"done": 0, "total": 0}

            ctx.jobs.mutate(job_id, take)
        except attempts.Duplicate as exc:
            log.info("%s: %s delivered again, ignored", exc, stage)
            raise Ignore() from exc
        except ConfigError as exc:
            if exc.code != "no_such_job":
                raise
            log.info("job %s no longer exists: %s ignored", job_id, stage)
            raise Ignore() from exc
        return taken[0]

    def _retry_or_raise(self, ctx: Context, job_id: str, stage: str, token: str, exc: TransientError):
        retries = self.request.retries
        w = ctx.settings.worker
        limit = w.disk_full_retries if exc.code == "disk_full" else w.max_retries
        if retries >= limit:
            raise exc
        delay = min(w.retry_backoff_s * (2 ** retries), 300)
        log.warning("job %s: %s failed transiently (%s); retry %d/%d in %ss", job_id, stage, exc.code,
                    retries + 1, limit, delay)
        reason = {"code": exc.code, "message": exc.message.splitlines()[0], "retry": retries + 1, "of": limit}
        try:
            ctx.jobs.mutate(job_id, lambda r: attempts.retry_later(r, token, ctx.settings, delay, reason))
        except attempts.Superseded as gone:
            raise Ignore() from gone
        raise self.retry(exc=exc, countdown=delay, max_retries=limit)

    def _reporter(self, ctx: Context, attempt: Attempt, stage: str):
        last = [0.0]
        job_id = attempt.job_id

        def report(done: int, total: int) -> None:
            if attempt.superseded.is_set():  # fenced: stop the work here, write nothing more
                raise attempts.Superseded(f"job {job_id}: attempt superseded during {stage}")
            now = time.monotonic()
            if done < total and now - last[0] < PROGRESS_EVERY_S:
                return
            last[0] = now
            self.update_state(state="PROGRESS", meta={"job_id": job_id, "stage": stage, "done": done, "total": total})
            ctx.jobs.update(job_id, progress={"done": done, "total": total})

        return report


def _disk_full_at_root(exc: BaseException) -> bool:
    """A full disk behind an error: ENOSPC/EDQUOT itself, in its causes, or in ffmpeg's last words
    (an encoder that ran out of room in the scratch folder)."""
    seen = 0
    while exc is not None and seen < 10:
        if is_disk_full(exc) or "No space left on device" in str(getattr(exc, "details", {}).get("stderr_tail", "")):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _load_image(storage: Storage, key: str) -> Image.Image:
    with Image.open(io.BytesIO(storage.get_bytes(key))) as img:
        return img.convert("RGB")


def _source_gone(job_id: str) -> InputRejected:
    return InputRejected(f"job {job_id}: the uploaded photo is no longer in the store", code="source_missing")


@app.task(name="alive.intake", bind=True, base=StageTask)
def intake(self, job_id: str) -> str:
    def work(ctx: Context, progress, attempt: Attempt) -> None:
        keys = Keys(job_id)
        if ctx.storage.exists(keys.clean):
            return
        if not ctx.storage.exists(keys.source):
            raise _source_gone(job_id)
        taken, changes = stages.intake(ctx.storage.get_bytes(keys.source), ctx.settings)
        attempt.fence()
        ctx.storage.put_bytes(keys.clean, stages.png_bytes(taken.image))
        ctx.jobs.update(job_id, input=taken.facts, changes=changes)

    return self.run_stage(job_id, "intake", work)


@app.task(name="alive.moderate_image", bind=True, base=StageTask)
def moderate_image(self, job_id: str) -> str:
    """Prompt and photo checks. Cheap and deterministic, so a redelivery simply checks again."""

    def work(ctx: Context, progress, attempt: Attempt) -> None:
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

    def work(ctx: Context, progress, attempt: Attempt) -> None:
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
            attempt.fence()
            ctx.jobs.update(job_id, options=made.options.model_dump(), framing=made.framing, engine=made.engine,
                            software_agent=made.software_agent, seed=made.clip.seed, notes=list(made.clip.notes),
                            changes=record.changes + [c for c in made.changes if c not in record.changes])
            ctx.storage.put_file(keys.frames, path)  # last: its existence means "generate is done"

    return self.run_stage(job_id, "generate", work)


def _frames(ctx: Context, job_id: str, scratch: Path) -> np.ndarray:
    """The generated frames, memory-mapped from the store's file (or its copy in ``scratch``)."""
    return np.load(ctx.storage.readable_path(Keys(job_id).frames, scratch), mmap_mode="r")


@app.task(name="alive.moderate_video", bind=True, base=StageTask)
def moderate_video(self, job_id: str) -> str:
    def work(ctx: Context, progress, attempt: Attempt) -> None:
        verdicts: dict[str, Any] = {}
        with ctx.scratch(job_id) as tmp:
            try:
                stages.moderate_video(np.asarray(_frames(ctx, job_id, tmp)), ctx.settings, verdicts)
            finally:
                ctx.jobs.update(job_id, moderation=verdicts)

    return self.run_stage(job_id, "moderate_video", work)


def _job_settings(ctx: Context, record) -> Settings:
    """The settings of this job: the worker's, with the job's preset and story options applied."""
    return story_settings(ctx.settings, StoryOptions(**record.story) if record.story else None)


def _renders_story(engine: dict | None) -> bool | None:
    """Whether the engine that made this job's clip renders the story itself (the motion engine: a
    seamless cycle at story size and rate), from the job record; None: the configured engine's."""
    from pipeline.engines import engine_class

    name = (engine or {}).get("engine")
    return engine_class(name).renders_story if name else None


@app.task(name="alive.encode", bind=True, base=StageTask)
def encode(self, job_id: str) -> str:
    """Finish (fps, loop, story size, visible label) and encode in one task: the story-size frames are
    ~6x the generated ones and never need to leave this worker."""

    def work(ctx: Context, progress, attempt: Attempt) -> None:
        keys = Keys(job_id)
        if all(ctx.storage.exists(k) for k in (keys.unsigned, keys.poster, keys.preview)):
            return
        record = ctx.jobs.load(job_id)
        settings = _job_settings(ctx, record)
        with ctx.scratch(job_id) as tmp:
            started = time.perf_counter()
            finished = stages.finish(np.asarray(_frames(ctx, job_id, tmp)), float(record.options["fps"]), settings,
                                     source_type=stages.digital_source_type(settings, record.engine),  # visible label
                                     looped=_renders_story(record.engine))
            finish_s = round(time.perf_counter() - started, 4)
            audio = ctx.storage.readable_path(keys.audio, tmp) if ctx.storage.exists(keys.audio) else None
            encoded = stages.encode(finished, tmp / "unsigned.mp4", tmp / "poster.jpg", tmp / "preview.webp",
                                    settings, audio_file=audio, progress=progress,
                                    credential_id=watermark.credential_id_for(job_id))
            attempt.fence()
            ctx.jobs.update(job_id, outputs=stages.outputs_summary(encoded.video), audio=encoded.audio,
                            credential=encoded.soft_binding.to_dict() if encoded.soft_binding else None,
                            finish={**finished.record, "c2pa_actions": finished.actions + encoded.actions},
                            timings_s={"finish": finish_s})
            ctx.storage.put_file(keys.poster, tmp / "poster.jpg")
            ctx.storage.put_file(keys.preview, tmp / "preview.webp")
            ctx.storage.put_file(keys.unsigned, tmp / "unsigned.mp4")  # last: marks the stage done

    return self.run_stage(job_id, "encode", work)


@app.task(name="alive.label", bind=True, base=StageTask)
def label(self, job_id: str) -> str:
    def work(ctx: Context, progress, attempt: Attempt) -> None:
        keys = Keys(job_id)
        if ctx.storage.exists(keys.video):
            return
        record = ctx.jobs.load(job_id)
        with ctx.scratch(job_id) as tmp:
            settings = _job_settings(ctx, record)
            summary = stages.label(ctx.storage.readable_path(keys.unsigned, tmp), tmp / "story.mp4",
                                   ctx.storage.get_bytes(keys.clean), record.software_agent,
                                   settings, (record.finish or {}).get("c2pa_actions", ()),
                                   source_type=stages.digital_source_type(settings, record.engine),
                                   soft_binding=SoftBinding.from_dict(record.credential) if record.credential else None,
                                   job_id=job_id, keep=ctx.manifests.add)
            attempt.fence()
            ctx.jobs.update(job_id, c2pa=summary)
            ctx.storage.put_file(keys.video, tmp / "story.mp4")

    return self.run_stage(job_id, "label", work)


@app.task(name="alive.finalize", bind=True, base=StageTask)
def finalize(self, job_id: str) -> str:
    """Publish the report, delete the photo and intermediates, mark the job succeeded."""

    def work(ctx: Context, progress, attempt: Attempt):
        keys = Keys(job_id)
        record = ctx.jobs.load(job_id)
        ctx.jobs.delete_transient(job_id)
        outputs = dict(video=ctx.storage.url(keys.video), poster=ctx.storage.url(keys.poster),
                       preview=ctx.storage.url(keys.preview), report=ctx.storage.url(keys.report),
                       bytes=ctx.storage.size(keys.video))

        def succeeded(r: JobRecord) -> None:
            r.status, r.stage, r.source_retained, r.attempt = "succeeded", None, False, None
            r.outputs.update(outputs)
            r.timings_s["total"] = round(sum(v for k, v in r.timings_s.items() if k != "total"), 4)

        succeeded(record)
        attempt.fence()
        # the report first: a record that says "succeeded" always has its report beside it
        ctx.storage.put_bytes(keys.report, _report_bytes(record), "application/json")
        return succeeded

    self.run_stage(job_id, "finalize", work)
    _notify(Context().jobs.load(job_id))
    log.info("job %s succeeded", job_id)
    return job_id


def _report_bytes(record: JobRecord) -> bytes:
    return (json.dumps(record.to_dict(), indent=2, default=str) + "\n").encode()


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
    record_failure(Context(), job_id, exc, getattr(request, "task", None))


def record_failure(ctx: Context, job_id: str, exc: BaseException, task: str | None) -> None:
    """End a job with the reason ``exc`` gives (also the reconciler's way to end a lost job)."""
    status, error = classify_failure(exc)
    error["task"] = task
    try:
        record = ctx.jobs.load(job_id)
    except AliveError:  # the job was deleted while it ran: remove whatever its tasks wrote since
        ctx.storage.delete_prefix(Keys(job_id).prefix)
        return
    if record.finished:
        return
    ctx.jobs.delete_transient(job_id)

    def failed(r: JobRecord) -> None:
        if r.finished:
            raise attempts.Duplicate(f"job {job_id} already ended")
        r.status, r.error, r.source_retained, r.attempt = status, error, False, None
        if isinstance(exc, ModerationBlocked) and exc.verdict is not None:
            r.moderation[exc.verdict.subject] = exc.verdict.to_dict()
        ctx.storage.put_bytes(Keys(job_id).report, _report_bytes(r), "application/json")  # the report first

    try:
        record = ctx.jobs.mutate(job_id, failed)
    except attempts.Duplicate:
        return
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


STAGE_TASKS = {"intake": intake, "moderate_image": moderate_image, "generate": generate,
               "moderate_video": moderate_video, "encode": encode, "label": label, "finalize": finalize}
assert tuple(STAGE_TASKS) == attempts.STAGES


def job_chain(job_id: str, from_stage: str = "intake", task_id: str | None = None):
    """The job as one Celery chain from ``from_stage`` on, with the error callback on every link.
    ``task_id``: the first message's id (the reconciler records it before it sends)."""
    names = attempts.STAGES[attempts.STAGES.index(from_stage):]
    first = STAGE_TASKS[names[0]].s(job_id)
    if task_id is not None:
        first = first.set(task_id=task_id)
    flow = chain(first, *(STAGE_TASKS[name].s() for name in names[1:]))
    return flow.on_error(fail.s(job_id))


@app.task(name="alive.cleanup")
def cleanup_expired() -> list[str]:
    """Periodic: delete finished jobs older than storage.retention_hours (run with `alive worker --beat`)."""
    ctx = Context()
    return cleanup(ctx.jobs, ctx.settings.storage.retention_hours)


@app.task(name="alive.reconcile")
def reconcile() -> dict[str, int]:
    """Periodic: re-dispatch stalled or lost stages, fail dead-lettered jobs (workers/reconcile.py)."""
    from workers.reconcile import Reconciler

    return dict(Reconciler(current_settings()).run_once())
