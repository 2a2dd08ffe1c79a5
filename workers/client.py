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
from pipeline.errors import InputRejected, TransientError
from pipeline.jobs import JobRecord, Keys, new_job_id, open_job_store
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
    """The job's sound file; whether it is decodable audio is checked when the story is encoded."""
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


def submit(source: bytes | str | Path, settings: Settings, options: GenerationOptions | None = None, *,
           prompt: str | None = None, engine: str | None = None, label: str | None = None,
           job_id: str | None = None, callback_url: str | None = None, story: StoryOptions | None = None,
           audio: bytes | str | Path | None = None, on_created: Callable[[str], None] | None = None) -> str:
    """Store the upload, create the job record and send the chain. Returns the job id.

    ``on_created(job_id)`` runs after the record exists and before the chain is sent (the API
    attaches its key and idempotency key there); if it raises, the job is removed again. If the
    broker cannot take the job, the record and the upload are removed and ``TransientError`` says
    so: a job is either queued or not there at all.
    """
    from workers.tasks import job_chain

    # a bad preset, option or encoder fails here, before anything is stored
    check_output_name(Path("story.mp4"), story_settings(settings, story))
    data = read_source(source, settings)
    job_id = job_id or new_job_id()
    jobs = open_job_store(settings)
    storage = jobs.storage
    keys = Keys(job_id)
    storage.put_bytes(keys.source, data)
    if audio is not None:
        storage.put_bytes(keys.audio, read_audio(audio, settings))
    jobs.create(JobRecord(job_id=job_id, options=(options or GenerationOptions()).model_dump(), prompt=prompt,
                          engine_name=engine, label=label, callback_url=callback_url,
                          story=story.model_dump(exclude_none=True) if story else {}))
    if on_created is not None:
        try:
            on_created(job_id)
        except BaseException:
            jobs.delete_job(job_id)
            raise
    try:
        job_chain(job_id).apply_async(retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2,
                                                                 "interval_step": 0.5, "interval_max": 2})
    except Exception as exc:  # noqa: BLE001 - kombu raises many connection error types
        jobs.delete_job(job_id)
        raise TransientError(f"the broker at {_redact(broker_url(settings))} did not accept the job: {exc}. "
                             "Nothing was queued; check that the broker is running and try again.",
                             code="broker_unavailable") from exc
    log.info("job %s queued", job_id)
    return job_id


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
