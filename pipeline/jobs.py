"""The job record: one JSON document per job that every front door reads and every stage updates.

At the end of a job it *is* the report (``report.json`` next to the video). Layout in the store:
``jobs/<id>/job.json`` plus the job's files under the same prefix (see ``Keys``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import pipeline
from pipeline.storage import LocalStorage, Storage

STATES = ("queued", "running", "succeeded", "blocked", "rejected", "failed")
FINAL_STATES = ("succeeded", "blocked", "rejected", "failed")


def status_for(exc: BaseException) -> str:
    """The final job status an exception stands for: rejected, blocked or failed."""
    from pipeline.errors import InputRejected, ModerationBlocked

    if isinstance(exc, InputRejected):
        return "rejected"
    if isinstance(exc, ModerationBlocked):
        return "blocked"
    return "failed"


def new_job_id() -> str:
    return uuid.uuid4().hex


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


class Keys:
    """Storage keys of one job's files."""

    def __init__(self, job_id: str):
        if not job_id or not all(c.isalnum() or c in "-_" for c in job_id):
            raise ValueError(f"bad job id {job_id!r}")
        self.job_id = job_id
        self.prefix = f"jobs/{job_id}"

    def __getattr__(self, name: str) -> str:
        files = {
            "record": "job.json",
            "source": "source",  # the upload, deleted when the chain ends
            "clean": "clean.png",  # sanitised photo, deleted when the chain ends
            "frames": "frames.npy",  # generated frames, deleted when the chain ends
            "unsigned": "unsigned.mp4",  # encoded, not yet labelled; deleted when the chain ends
            "video": "story.mp4",
            "poster": "poster.jpg",
            "preview": "preview.webp",
            "audio": "audio",  # the user's sound file, if any; deleted when the chain ends
            "report": "report.json",
            "scratch": ".scratch",  # temp folders of running tasks
        }
        if name not in files:
            raise AttributeError(name)
        return f"{self.prefix}/{files[name]}"

    @property
    def transient(self) -> tuple[str, ...]:
        """Files that hold the user's photo or intermediate data: never kept after the chain."""
        return (self.source, self.clean, self.frames, self.unsigned, self.audio)


@dataclass
class JobRecord:
    job_id: str
    status: str = "queued"
    stage: str | None = None
    progress: dict[str, int] = field(default_factory=lambda: {"done": 0, "total": 0})
    created_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)
    alive_version: str = pipeline.__version__
    options: dict[str, Any] = field(default_factory=dict)
    story: dict[str, Any] = field(default_factory=dict)  # the job's story options (preset, fps, loop ...)
    prompt: str | None = None
    engine_name: str | None = None  # engine asked for at submission; None = the worker's configured one
    engine: dict[str, Any] | None = None
    software_agent: str | None = None
    seed: int | None = None
    input: dict[str, Any] | None = None
    framing: dict[str, Any] | None = None
    changes: list[str] = field(default_factory=list)
    finish: dict[str, Any] | None = None  # what finishing did: fps, loop, size, label, flicker, poster
    audio: dict[str, Any] | None = None  # the sound track: silent, ambience or the user's file
    moderation: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    c2pa: dict[str, Any] = field(default_factory=dict)
    # the soft bindings (pipeline/softbinding.py): credential id, watermark, fingerprint
    credential: dict[str, Any] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    source_retained: bool = True
    label: str | None = None  # the caller's name for the item (batch: the input's file name)
    callback_url: str | None = None  # webhook called when the job ends (HTTP API)
    # The stage that should run now and who runs it (workers/attempts.py): stage, state
    # (pending | running), token, message_id, queue, since, heartbeat_at. None = intake, pending.
    attempt: dict[str, Any] | None = None
    lost_attempts: dict[str, int] = field(default_factory=dict)  # per stage: attempts that died running

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobRecord":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATES


class JobStore:
    """Reads and updates job records; updates of one job are serialised, so none is lost.

    Subclasses say where records live (``_read``, ``_write``, ``_locked``, ``list_ids``,
    ``delete_record``); the job's files always live in ``storage``.
    """

    def __init__(self, storage: Storage):
        self.storage = storage

    # -- what a backend provides ------------------------------------------------------------------
    def _read(self, job_id: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def _write(self, record: JobRecord) -> None:
        raise NotImplementedError

    def _locked(self, job_id: str) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def list_ids(self) -> list[str]:
        raise NotImplementedError

    def active_ids(self) -> list[str]:
        """Ids of jobs not yet finished (queued or running): what the reconciler watches."""
        active = []
        for job_id in self.list_ids():
            try:
                if not self.load(job_id).finished:
                    active.append(job_id)
            except (ValueError, OSError):  # a half-created or damaged record: cleanup's business
                continue
        return active

    def delete_record(self, job_id: str) -> None:
        raise NotImplementedError

    # -- shared behaviour -------------------------------------------------------------------------
    def create(self, record: JobRecord) -> JobRecord:
        self.save(record)
        return record

    def exists(self, job_id: str) -> bool:
        return self._read(job_id) is not None

    def load(self, job_id: str) -> JobRecord:
        from pipeline.errors import ConfigError

        data = self._read(job_id)
        if data is None:
            raise ConfigError(f"no job {job_id}", code="no_such_job")
        return JobRecord.from_dict(data)

    def save(self, record: JobRecord) -> None:
        record.updated_at = now()
        self._write(record)

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        """Re-read, change and save one record under the job's lock (no lost updates between tasks)."""
        with self._locked(job_id):
            record = self.load(job_id)
            for name, value in changes.items():
                if not hasattr(record, name):
                    raise AttributeError(f"JobRecord has no field {name!r}")
                current = getattr(record, name)
                if isinstance(current, dict) and isinstance(value, dict) and name not in ("progress", "error"):
                    current.update(value)  # merge sections (moderation, timings, outputs ...)
                else:
                    setattr(record, name, value)
            self.save(record)
            return record

    def mutate(self, job_id: str, change) -> JobRecord:
        """Run ``change(record)`` on the current record under the job's lock and save it; whatever
        ``change`` raises aborts the update (the record stays as it was)."""
        with self._locked(job_id):
            record = self.load(job_id)
            change(record)
            self.save(record)
            return record

    def delete_transient(self, job_id: str) -> None:
        """Delete the source photo and every intermediate file of a job (killed tasks' leftovers too)."""
        keys = Keys(job_id)
        for key in keys.transient:
            self.storage.delete(key)
        self.storage.delete_prefix(keys.scratch)

    def delete_job(self, job_id: str) -> int:
        """Delete every file and the record of a job; returns the number of files removed."""
        removed = self.storage.delete_prefix(Keys(job_id).prefix)
        self.delete_record(job_id)
        return removed


class FileJobStore(JobStore):
    """Records as ``jobs/<id>/job.json`` in a local store, locked with flock: no database needed."""

    storage: LocalStorage

    def __init__(self, storage: Storage):
        if not isinstance(storage, LocalStorage):
            raise TypeError("FileJobStore needs a LocalStorage; use the database job store with object storage")
        super().__init__(storage)

    def _read(self, job_id: str) -> dict[str, Any] | None:
        key = Keys(job_id).record
        return json.loads(self.storage.get_bytes(key)) if self.storage.exists(key) else None

    def _write(self, record: JobRecord) -> None:
        self.storage.put_bytes(Keys(record.job_id).record, json.dumps(record.to_dict(), indent=2, default=str).encode())

    @contextlib.contextmanager
    def _locked(self, job_id: str) -> Iterator[None]:
        lock = self.storage.path(Keys(job_id).prefix) / ".lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def list_ids(self) -> list[str]:
        folder = self.storage.root / "jobs"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def delete_record(self, job_id: str) -> None:
        self.storage.delete(Keys(job_id).record)


def cleanup(store: JobStore, retention_hours: float, now_: dt.datetime | None = None) -> list[str]:
    """Delete every file of finished jobs last updated more than ``retention_hours`` ago."""
    limit = (now_ or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(hours=retention_hours)
    removed = []
    for job_id in store.list_ids():
        try:
            record = store.load(job_id)
        except (ValueError, OSError):  # half-created or damaged record: judge by the folder's age
            if not isinstance(store.storage, LocalStorage):
                continue
            folder = store.storage.local_path(Keys(job_id).prefix)
            if dt.datetime.fromtimestamp(folder.stat().st_mtime, dt.timezone.utc) > limit:
                continue
        else:
            if not record.finished or dt.datetime.fromisoformat(record.updated_at) > limit:
                continue
        store.delete_job(job_id)
        removed.append(job_id)
    return removed
