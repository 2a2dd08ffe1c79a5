"""Sending jobs and reading their state: what `alive submit/status/batch` and the HTTP API use."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from pipeline.engines import GenerationOptions
from pipeline.errors import InputRejected, StorageFull, TransientError, is_disk_full
from pipeline.jobs import JobRecord, Keys, new_job_id
from service.stores import open_job_store
from pipeline.finish import StoryOptions, check_output_name, story_settings
from pipeline.settings import Settings
from workers.app import app, broker_url, configure, ensure_broker

log = logging.getLogger(__name__)


def connect(settings: Settings) -> None:
    """Configure the Celery app from ``settings`` and make sure the broker is there."""
    ensure_broker(settings)
    configure(app, settings)


def read_source(source: bytes | str | Path, settings: Settings) -> bytes:
    """The upload's bytes, refusing an oversized file before reading it all."""
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise InputRejected(f"{path} does not exist or is not a file", code="not_found")
        if path.stat().st_size > settings.intake.max_bytes:
            raise InputRejected(f"{path} is {path.stat().st_size} bytes, more than the {settings.intake.max_bytes} "
                                "byte limit", code="too_large")
        data = path.read_bytes()
    if len(data) > settings.intake.max_bytes:
        raise InputRejected(f"the upload is {len(data)} bytes, more than the {settings.intake.max_bytes} byte limit",
                            code="too_large")
    return data


def read_audio(source: bytes | str | Path, settings: Settings) -> bytes:
    """The job's sound file, size-checked (whether it decodes is checked by ``check_request``)."""
    limit = settings.intake.max_audio_bytes
    if isinstance(source, bytes):
        if len(source) > limit:
            raise InputRejected(f"the sound file is {len(source)} bytes, more than the {limit} byte limit",
                                code="bad_audio")
        return source
    path = Path(source)
    if not path.is_file():
        raise InputRejected(f"sound file {path} does not exist or is not a file", code="bad_audio")
    if path.stat().st_size > limit:
        raise InputRejected(f"sound file {path} is {path.stat().st_size} bytes, more than the {limit} "
                            "byte limit", code="bad_audio")
    return path.read_bytes()


def allowed_engines(settings: Settings) -> list[str]:
    """Engines a job sent to this server may ask for (``api.engines_allowed``; by default the
    configured engine and ``motion``, which needs no weights)."""
    if settings.api.engines_allowed is not None:
        return list(settings.api.engines_allowed)
    return sorted({settings.engine.name, "motion"})


def check_request(settings: Settings, story: StoryOptions | None, engine: str | None,
                  audio: bytes | None, engines: list[str] | None = None) -> Settings:
    """Everything a job can fail on before generation, checked before anything is stored: the
    engine, the preset and its limits, the story options, the encoder, the label's language and
    the sound file. ``engines``: the engines this caller may choose (the HTTP API passes
    ``allowed_engines``; the CLI's operator may choose any). Returns the job's own settings.
    Messages name no paths or model ids."""
    from pipeline.audio import check_audio_bytes
    from pipeline.overlay import label_text

    if engine is not None and engines is not None and engine not in engines:
        raise InputRejected(f"engine {engine!r} is not offered by this server; choose one of: "
                            f"{', '.join(engines)}", code="engine_not_allowed")
    job_settings = story_settings(settings, story)
    check_output_name(Path("story.mp4"), job_settings)
    label_text(job_settings.overlay)
    if audio is not None:
        check_audio_bytes(audio, job_settings.audio)
    return job_settings


def submit(source: bytes | str | Path, settings: Settings, options: GenerationOptions | None = None, *,
           prompt: str | None = None, engine: str | None = None, label: str | None = None,
           job_id: str | None = None, callback_url: str | None = None, story: StoryOptions | None = None,
           audio: bytes | str | Path | None = None,
           reserve: Callable[[JobRecord], None] | None = None, engines: list[str] | None = None) -> str:
    """Check the request, sanitise the photo, create the job record and send the chain. Returns
    the job id.

    The photo is decoded and rebuilt from its pixels here, in the caller's process (intake): only
    the sanitised pixels are stored for the workers, so the upload as sent (with its EXIF, GPS and
    comments) never touches the disk, and a file that is not a usable photo is refused before a job
    exists. ``reserve(record)`` creates the record (default: ``JobStore.create``); the HTTP API
    passes one that checks the key's quota and inserts the row in one transaction. Submission is
    all or nothing: if creating the record, storing the photo or the sound, or queueing fails,
    everything it wrote for the job (files and record) is removed again. No space left in the store
    raises ``StorageFull`` (code ``disk_full``); a broker that cannot take the job,
    ``TransientError`` (code ``broker_unavailable``): a job is either queued or not there at all.
    """
    from pipeline import stages
    from workers.tasks import job_chain

    sound = read_audio(audio, settings) if audio is not None else None
    check_request(settings, story, engine, sound, engines)  # a bad preset, option, encoder or sound fails here
    taken, changes = stages.intake(read_source(source, settings), settings)
    clean = stages.png_bytes(taken.image)
    fresh_id = job_id is None  # an id the caller chose may name a job that is not this call's to remove
    job_id = job_id or new_job_id()
    jobs = open_job_store(settings)
    storage = jobs.storage
    keys = Keys(job_id)
    record = JobRecord(job_id=job_id, options=(options or GenerationOptions()).model_dump(), prompt=prompt,
                       engine_name=engine, label=label, callback_url=callback_url,
                       story=story.model_dump(exclude_none=True) if story else {},
                       input=taken.facts, changes=changes, source_retained=False)
    reserved = False
    try:
        (reserve or jobs.create)(record)
        reserved = True
        storage.put_bytes(keys.clean, clean)
        if sound is not None:
            storage.put_bytes(keys.audio, sound)
    except BaseException as exc:
        if reserved or fresh_id:  # a failed first write may have left part of the record or a folder
            _discard(jobs, job_id)
        if _no_space(exc):
            raise StorageFull(
                "no space left in the job store to take this job: nothing was queued and nothing of it "
                "was kept. Free space in the store (or raise its quota), then submit again",
                details=getattr(exc, "details", None) or {"errno": getattr(exc, "errno", None)},
            ) from exc
        raise
    try:
        job_chain(job_id).apply_async(retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2,
                                                                 "interval_step": 0.5, "interval_max": 2})
    except Exception as exc:  # noqa: BLE001 - kombu raises many connection error types
        _discard(jobs, job_id)
        raise TransientError(f"the broker at {_redact(broker_url(settings))} did not accept the job: {exc}. "
                             "Nothing was queued; check that the broker is running and try again.",
                             code="broker_unavailable") from exc
    log.info("job %s queued", job_id)
    return job_id


def _no_space(exc: BaseException) -> bool:
    """Whether a failure means the store or the database has no room: ``StorageFull``, an ENOSPC or
    EDQUOT ``OSError``, or SQLite's SQLITE_FULL ("database or disk is full") under SQLAlchemy."""
    import sqlite3

    if isinstance(exc, StorageFull) or is_disk_full(exc):
        return True
    return getattr(getattr(exc, "orig", None), "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def _discard(jobs, job_id: str) -> None:
    """Remove what a failed submission wrote for ``job_id``; a failure to do so is logged, never
    raised over the error that made the submission fail."""
    try:
        jobs.delete_job(job_id)
    except Exception:  # noqa: BLE001 - the submission's own error is the one to report
        log.warning("job %s: could not remove what its failed submission wrote", job_id, exc_info=True)


def _redact(url: str) -> str:
    """A broker URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def status(job_id: str, settings: Settings) -> JobRecord:
    return open_job_store(settings).load(job_id)


def wait(job_ids: Iterable[str], settings: Settings, *, timeout: float | None = None, poll: float = 0.5,
         on_change: Callable[[dict[str, JobRecord]], None] | None = None) -> dict[str, JobRecord]:
    """Poll job records until every job is finished (or ``timeout``); returns the last records."""
    jobs = open_job_store(settings)
    pending = list(job_ids)
    records: dict[str, JobRecord] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        for job_id in pending:
            records[job_id] = jobs.load(job_id)
        if on_change is not None:
            on_change(records)
        if all(r.finished for r in records.values()):
            return records
        if deadline is not None and time.monotonic() > deadline:
            return records
        time.sleep(poll)


def workers_answering(settings: Settings, timeout: float = 1.0) -> list[str]:
    """Names of the workers that answer a ping on this broker."""
    connect(settings)
    replies = app.control.inspect(timeout=timeout).ping() or {}
    return sorted(replies)


class WorkerProcesses:
    """Worker subprocesses started for one command (the embedded, one-command setup), then stopped."""

    def __init__(self, settings: Settings, config: Path | None = None, *, concurrency_cpu: int = 1,
                 pool: str = "prefork", env: dict[str, str] | None = None):
        self.settings = settings
        self.extra_env = env or {}
        self.config = config
        self.concurrency_cpu = concurrency_cpu
        self.pool = pool
        self.procs: list[subprocess.Popen] = []

    def start(self) -> "WorkerProcesses":
        w = self.settings.worker
        self.procs.append(self._spawn(w.gpu_queue, 1))
        self.procs.append(self._spawn(w.cpu_queue, self.concurrency_cpu))
        self.procs.append(self._spawn(w.webhook_queue, 2))  # outbound calls: never on the cpu worker
        return self

    def _spawn(self, queue: str, concurrency: int) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "pipeline.cli", "worker", "--queues", queue, "--concurrency", str(concurrency),
               "--pool", self.pool, "--name", f"alive-{queue}-{os.getpid()}@%h"]
        if self.config:
            cmd += ["--config", str(self.config)]
        env = {**os.environ, "ALIVE_DATA_DIR": str(self.settings.data_dir), **self.extra_env}
        log_path = self.settings.data_dir / "logs" / f"worker-{queue}-{os.getpid()}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as logfile:
            return subprocess.Popen(cmd, env=env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, timeout: float = 20.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # warm shutdown: finish the running task
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    def __enter__(self) -> "WorkerProcesses":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def local_workers_if_needed(settings: Settings, config: Path | None = None, *, spawn: bool = True,
                            notify: Callable[[str], None] | None = None,
                            env: dict[str, str] | None = None) -> Iterator[WorkerProcesses | None]:
    """Connect; when ``spawn`` and no worker answers, run a gpu + cpu worker for the block's duration."""
    connect(settings)
    spawned = None
    if spawn and not workers_answering(settings):
        if notify:
            notify("no worker answers on this broker: starting a gpu-queue and a cpu-queue worker for this command")
        spawned = WorkerProcesses(settings, config, env=env).start()
    try:
        yield spawned
    finally:
        if spawned is not None:
            spawned.stop()


def broker_reachable(settings: Settings, timeout: float = 2.0) -> bool:
    """True when the broker accepts a connection (for readiness checks); never raises."""
    from kombu import Connection

    try:
        with Connection(broker_url(settings), connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False
