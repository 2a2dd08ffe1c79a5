"""The database: API keys, job rows, share links, abuse reports, webhook deliveries and signed manifests.

SQLite (one file, the default: ``<data_dir>/alive.db``) or PostgreSQL, through SQLAlchemy 2 and
Alembic migrations that live in this package (``service/migrations``; no ``alembic.ini`` needed).

Two things shape this module:

* **Several processes share the database** (API server, Celery workers, the CLI). Engines are made
  once per URL per process and are disowned in a forked child (Celery prefork), so a child never
  reuses its parent's sockets. ``migrate`` may be called by all of them at once.
* **SQLite locks the whole file for writing.** A transaction that reads first and writes later
  fails at once with "database is locked" when another connection wrote in between (the busy
  timeout is not applied to that case). So every transaction that may write starts with
  ``BEGIN IMMEDIATE`` (takes the write lock up front and waits up to 30 s for it); pure reads ask
  for ``session(url, readonly=True)``, which starts a plain deferred transaction (WAL lets them run
  beside a writer).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    false,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError  # re-exported: a duplicate idempotency key surfaces as this
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator

from pipeline.errors import ConfigError
from pipeline.jobs import JobRecord, JobStore
from pipeline.storage import Storage

__all__ = [
    "AbuseReport", "ApiKey", "Base", "IntegrityError", "Job", "Manifest", "QuotaExceeded", "ShareLink", "SqlJobStore",
    "WebhookDelivery", "add_report", "attach_job", "count_active_jobs", "count_reports", "create_api_key",
    "create_share", "database_url", "dispose_engines", "find_api_key", "find_by_idempotency", "get_job",
    "get_share", "has_live_keys", "insert_job_within_quota", "list_api_keys", "list_reports", "make_engine",
    "migrate", "ping", "review", "revoke_api_key", "revoke_share", "rotate_webhook_secret", "seal_secret",
    "session", "unseal_secret",
]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
KEY_PREFIX = "alv_"
PREFIX_LEN = 12  # "alv_" + 8 random characters: finds the row; the hash decides
ACTIVE_STATES = ("queued", "running")
SUPPORTED = ("sqlite", "postgresql")
_MIGRATE_LOCK_ID = 0x616C697665  # "alive": the pg_advisory_xact_lock key taken while migrating


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# ------------------------------------------------------------------------------------------------
# Models


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in and out, on both backends (SQLite itself would drop the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware one (e.g. datetime.now(timezone.utc))")
        return value.astimezone(dt.timezone.utc)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


# Deterministic constraint names: later migrations can drop or alter them by name (SQLite batch mode too).
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
JsonDocument = JSON().with_variant(postgresql.JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ApiKey(Base):
    """A client's key. Only a SHA-256 of the key is kept: the key is 32 random bytes, so a fast hash
    is enough (nothing to brute-force), and a stolen database does not yield usable keys."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(PREFIX_LEN), index=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer)  # None = settings.api default
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer)  # None = settings.api default
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    # HMAC key for webhooks, which must be usable to sign: kept encrypted (Fernet, "enc:" prefix)
    # under the key file ``api.secret_key_file``; the plain secret is shown once, at creation/rotation.
    webhook_secret: Mapped[str] = mapped_column(String(512))


class Job(Base):
    """One job: the full record as JSON, plus the columns the API filters on."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("api_key_id", "idempotency_key"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), index=True)
    stage: Mapped[str | None] = mapped_column(String(32))
    record: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    callback_url: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    # visible | hidden (enough viewers reported it: pending the owner's review) | removed (by review)
    visibility: Mapped[str] = mapped_column(String(16), default="visible", server_default="visible")


class ShareLink(Base):
    __tablename__ = "share_links"

    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)


class AbuseReport(Base):
    """A viewer's (or the owner's) report. ``reporter`` is a keyed hash of who sent it (client
    address + viewer cookie, or the owner's key): one report per reporter per video, and no
    address is stored. ``reviewed`` reports were settled by a review and count no more."""

    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("job_id", "reporter"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    reason: Mapped[str] = mapped_column(String(32))
    text: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    reporter: Mapped[str | None] = mapped_column(String(64))  # keyed hash of the client address (or key)
    reporter_cookie: Mapped[str | None] = mapped_column(String(64), index=True)  # keyed hash of the viewer cookie
    reviewed: Mapped[bool] = mapped_column(default=False, server_default=false())


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    event: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    delivered: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)


class Manifest(Base):
    """A signed manifest store kept for Durable Content Credentials (service/manifests.py).

    No foreign key to ``jobs``: the manifest is the record of provenance and outlives the job row
    (DELETE of a job keeps it unless asked), and CLI jobs kept as JSON files have no row at all.
    """

    __tablename__ = "manifests"
    __table_args__ = (Index("ix_manifests_watermark_alg_watermark_value", "watermark_alg", "watermark_value"),)

    manifest_id: Mapped[str] = mapped_column(String(12), primary_key=True)  # the credential id, 12 hex digits
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    manifest_store: Mapped[bytes] = mapped_column(LargeBinary)  # the .c2pa bytes (application/c2pa), a few KB
    manifest_label: Mapped[str | None] = mapped_column(String(255))
    watermark_alg: Mapped[str] = mapped_column(String(100))
    watermark_value: Mapped[str] = mapped_column(String(255))
    fingerprint_alg: Mapped[str] = mapped_column(String(100))
    fingerprint: Mapped[str] = mapped_column(Text)  # JSON list of hex hashes, written by service/manifests.py
    digital_source_type: Mapped[str | None] = mapped_column(String(255))
    title: Mapped[str | None] = mapped_column(String(500))
    signer: Mapped[str | None] = mapped_column(String(500))
    generator: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


# ------------------------------------------------------------------------------------------------
# Engines, sessions, migrations


def database_url(settings) -> str:
    """The configured SQLAlchemy URL, or the SQLite file ``<data_dir>/alive.db``.

    Also remembers, for this URL, which key file encrypts the webhook secrets stored in it (every
    process reaches the database through this function with its settings first)."""
    url = settings.jobs.database_url or f"sqlite:///{settings.data_dir}/alive.db"
    _SECRET_KEY_FILES.setdefault(url, Path(settings.api.secret_key_file or Path(settings.data_dir) / "secret.key"))
    return url


# ------------------------------------------------------------------------------------------------
# Webhook secrets at rest

_SECRET_KEY_FILES: dict[str, Path] = {}
_SEALED = "enc:"


def _fernet(url: str):
    from cryptography.fernet import Fernet

    key, path = _secret_key(url)
    try:
        return Fernet(key)
    except ValueError as exc:
        raise ConfigError(f"the webhook secret key file {path} is not a Fernet key", code="secret_key_bad") from exc


_SECRET_KEYS: dict[Path, bytes] = {}  # read once per process: every seal, unseal and salt needs it


def _secret_key(url: str) -> tuple[bytes, Path]:
    """The deployment's secret key (made once, mode 0600, by the first process that needs it)."""
    from cryptography.fernet import Fernet

    path = _SECRET_KEY_FILES.get(url)
    if path is None:
        raise ConfigError("the webhook secret key file is unknown for this database: call "
                          "database_url(settings) first", code="secret_key_missing")
    if path in _SECRET_KEYS:
        return _SECRET_KEYS[path], path
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # first process wins; the others read its key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
                fh.flush()
                os.fsync(fh.fileno())
    key = path.read_bytes().strip()
    if not key:  # another process is between creating and writing it
        import time

        time.sleep(0.2)
        key = path.read_bytes().strip()
    if key:
        _SECRET_KEYS[path] = key
    return key, path


def server_salt(url: str) -> str:
    """A stable per-deployment secret for keyed hashes (reporters, rate-limit buckets), derived from
    the secret key file, so no address is stored or sent to Redis in the clear."""
    return hashlib.sha256(b"alive-salt|" + _secret_key(url)[0]).hexdigest()


def seal_secret(url: str, secret: str) -> str:
    return _SEALED + _fernet(url).encrypt(secret.encode()).decode()


def unseal_secret(url: str, stored: str) -> str:
    """The plain secret (rows written before encryption existed hold it plain)."""
    if not stored.startswith(_SEALED):
        return stored
    from cryptography.fernet import InvalidToken

    try:
        return _fernet(url).decrypt(stored[len(_SEALED):].encode()).decode()
    except InvalidToken as exc:
        raise ConfigError("a webhook secret does not decrypt with api.secret_key_file: every host must "
                          "share the same key file", code="secret_key_mismatch") from exc


@dataclass
class _Binds:
    engine: Engine
    writer: Engine  # SQLite: BEGIN IMMEDIATE
    reader: Engine  # SQLite: BEGIN (deferred); PostgreSQL: READ ONLY transactions


_BINDS: dict[str, _Binds] = {}
_BINDS_LOCK = threading.Lock()


def make_engine(url: str) -> Engine:
    """The process's engine for ``url`` (made on first use; a forked child makes its own pool)."""
    return _binds(url).engine


def _binds(url: str) -> _Binds:
    binds = _BINDS.get(url)
    if binds is not None:
        return binds
    with _BINDS_LOCK:
        if url not in _BINDS:
            _BINDS[url] = _build(url)
        return _BINDS[url]


def _build(url: str) -> _Binds:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED:
        raise ConfigError(f"jobs.database_url uses {backend!r}; alive supports sqlite:/// and postgresql:// URLs "
                          "(postgres:// must be written postgresql://)", code="database_unsupported")
    serializer = lambda obj: json.dumps(obj, default=str)  # noqa: E731 - same rule as the JSON job files
    if backend == "postgresql":
        engine = create_engine(url, pool_pre_ping=True, json_serializer=serializer)
        return _Binds(engine, engine, engine.execution_options(postgresql_readonly=True))
    if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
        path = Path(parsed.database)
        path.parent.mkdir(parents=True, exist_ok=True)
        # made 0600 before SQLite opens it: SQLite gives its -wal and -shm files the database's mode
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    engine = create_engine(url, json_serializer=serializer, connect_args={"check_same_thread": False})
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return _Binds(engine, engine.execution_options(alive_begin="IMMEDIATE"), engine)


def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    dbapi_connection.isolation_level = None  # the driver emits no BEGIN of its own: _sqlite_begin does
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout = 30000")  # first, so that the next line waits for a lock too
    cursor.execute("PRAGMA journal_mode = WAL")  # readers and one writer at the same time
    cursor.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; a power cut loses at most the last commits
    cursor.execute("PRAGMA foreign_keys = ON")  # off by default in SQLite: no cascades without it
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("alive_begin") == "IMMEDIATE"
                         else "BEGIN")


def dispose_engines() -> None:
    """Close every pooled connection of this process (tests; before dropping a database)."""
    with _BINDS_LOCK:
        for binds in _BINDS.values():
            binds.engine.dispose()
        _BINDS.clear()


def _disown_after_fork() -> None:
    """In a forked child: new pools, leaving the parent's connections open for the parent."""
    global _BINDS_LOCK, _MIGRATE_LOCK
    _BINDS_LOCK, _MIGRATE_LOCK = threading.Lock(), threading.Lock()
    for binds in _BINDS.values():
        binds.engine.dispose(close=False)


os.register_at_fork(after_in_child=_disown_after_fork)


@contextlib.contextmanager
def session(url: str, *, readonly: bool = False) -> Iterator[Session]:
    """A Session in one transaction: committed when the block ends, rolled back when it raises.

    ``readonly=True`` for blocks that only read: on SQLite they do not take the write lock, on
    PostgreSQL the transaction is READ ONLY (a write raises). Objects stay readable after the block.
    """
    binds = _binds(url)
    with Session(bind=binds.reader if readonly else binds.writer, expire_on_commit=False) as s:
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise


_MIGRATE_LOCK = threading.Lock()  # Alembic's `context` is process-global: one migration at a time here


def migrate(url: str) -> None:
    """Bring the schema to the newest revision; a no-op when it is there already.

    Safe when several processes call it at once: they take turns on a lock held for the whole
    upgrade transaction (PostgreSQL: an advisory lock; SQLite: the database's write lock, taken by
    BEGIN IMMEDIATE), and DDL is transactional on both, so a loser sees the finished schema.

    On SQLite, foreign keys are off while migrating (and checked before the commit): Alembic's
    batch mode rebuilds a table by copy, drop and rename, and a drop with foreign keys on runs the
    ON DELETE actions of the rows pointing at it. 0002 rebuilds ``api_keys``: every job's key
    became NULL (its owner got 404 from then on); a rebuild of ``jobs`` would delete every share
    link, report and delivery. The pragma only takes effect outside a transaction, so it is set
    on the raw connection before BEGIN.
    """
    from alembic import command
    from alembic.config import Config

    binds = _binds(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    with _MIGRATE_LOCK, binds.writer.connect() as connection:
        raw = connection.connection.driver_connection if connection.dialect.name == "sqlite" else None
        if raw is not None:
            raw.execute("PRAGMA foreign_keys = OFF")
        try:
            with connection.begin():
                if raw is None:
                    connection.execute(select(func.pg_advisory_xact_lock(_MIGRATE_LOCK_ID)))
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                if raw is not None:
                    _check_foreign_keys(connection)
        finally:
            if raw is not None:
                raw.execute("PRAGMA foreign_keys = ON")


def _check_foreign_keys(connection: Any) -> None:
    """Refuse (roll back) a SQLite migration that left a row pointing at nothing."""
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise ConfigError(f"migrating the database would break {len(broken)} foreign keys (first: {broken[0]}); "
                          "nothing was changed", code="migration_failed")


def ping(url: str) -> bool:
    """Whether the database answers (readiness checks)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with make_engine(url).connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return False
    return True


# ------------------------------------------------------------------------------------------------
# API keys


def _hash_key(plain_key: str) -> str:
    return hashlib.sha256(plain_key.encode()).hexdigest()


def create_api_key(url: str, name: str, *, rate_limit_per_minute: int | None = None,
                   max_concurrent_jobs: int | None = None, webhook_url: str | None = None) -> tuple[ApiKey, str]:
    """Make a key; returns the row and the plain key, which is shown now and never stored. The plain
    webhook secret is on the row as ``plain_webhook_secret`` (shown once too; stored encrypted)."""
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    secret = "whsec_" + secrets.token_urlsafe(32)
    row = ApiKey(name=name, prefix=plain[:PREFIX_LEN], key_hash=_hash_key(plain),
                 rate_limit_per_minute=rate_limit_per_minute, max_concurrent_jobs=max_concurrent_jobs,
                 webhook_url=webhook_url, webhook_secret=seal_secret(url, secret))
    with session(url) as s:
        s.add(row)
    row.plain_webhook_secret = secret
    return row, plain


def list_api_keys(url: str) -> list[ApiKey]:
    with session(url, readonly=True) as s:
        return list(s.scalars(select(ApiKey).order_by(ApiKey.id)))


def rotate_webhook_secret(url: str, key_id: int) -> str | None:
    """A new webhook secret for a live key (returned once); None when there is no such key."""
    secret = "whsec_" + secrets.token_urlsafe(32)
    with session(url) as s:
        result = s.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                           .values(webhook_secret=seal_secret(url, secret)))
    return secret if result.rowcount == 1 else None


def has_live_keys(url: str) -> bool:
    with session(url, readonly=True) as s:
        return s.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))) > 0


def find_api_key(url: str, plain_key: str) -> ApiKey | None:
    """The live key matching ``plain_key``, or None (unknown, malformed or revoked)."""
    if not plain_key.startswith(KEY_PREFIX) or len(plain_key) <= PREFIX_LEN:
        return None
    wanted = _hash_key(plain_key)
    with session(url, readonly=True) as s:
        candidates = s.scalars(select(ApiKey).where(ApiKey.prefix == plain_key[:PREFIX_LEN])).all()
    for row in candidates:  # usually one; all are compared so the timing says nothing about which
        if hmac.compare_digest(row.key_hash, wanted) and row.revoked_at is None:
            return row
    return None


def revoke_api_key(url: str, key_id: int) -> bool:
    """Revoke a key from now on; False when there is no such live key."""
    with session(url) as s:
        result = s.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                           .values(revoked_at=utcnow()))
    return result.rowcount == 1


# ------------------------------------------------------------------------------------------------
# Queries the HTTP API needs


def get_job(url: str, job_id: str) -> Job | None:
    with session(url, readonly=True) as s:
        return s.get(Job, job_id)


def attach_job(url: str, job_id: str, *, api_key_id: int | None = None, idempotency_key: str | None = None,
               callback_url: str | None = None) -> None:
    """Set the API-only columns of a job row. Raises ``IntegrityError`` when the key already used
    this idempotency key for another job (then ``find_by_idempotency`` names that job)."""
    with session(url) as s:
        result = s.execute(update(Job).where(Job.id == job_id).values(
            api_key_id=api_key_id, idempotency_key=idempotency_key, callback_url=callback_url))
        if result.rowcount != 1:
            raise ConfigError(f"no job {job_id}", code="no_such_job")


def find_by_idempotency(url: str, api_key_id: int, key: str) -> str | None:
    with session(url, readonly=True) as s:
        return s.scalar(select(Job.id).where(Job.api_key_id == api_key_id, Job.idempotency_key == key))


def count_active_jobs(url: str, api_key_id: int) -> int:
    """Queued and running jobs of one key (for its concurrency limit)."""
    with session(url, readonly=True) as s:
        return s.scalar(select(func.count()).select_from(Job)
                        .where(Job.api_key_id == api_key_id, Job.status.in_(ACTIVE_STATES))) or 0


class QuotaExceeded(Exception):
    def __init__(self, limit: int):
        super().__init__(f"{limit} jobs already queued or running")
        self.limit = limit


def insert_job_within_quota(url: str, record: JobRecord, *, api_key_id: int, limit: int,
                            idempotency_key: str | None = None, callback_url: str | None = None) -> None:
    """Count the key's queued + running jobs and insert the new one **in one transaction**, so
    parallel uploads cannot all pass the check: on PostgreSQL the key's row is locked FOR UPDATE
    first (concurrent reservations for one key take turns), on SQLite BEGIN IMMEDIATE holds the
    database's write lock from the count to the commit. Raises ``QuotaExceeded``, or
    ``IntegrityError`` when the key used this idempotency key already."""
    with session(url) as s:
        if s.bind.dialect.name == "postgresql":
            s.execute(select(ApiKey.id).where(ApiKey.id == api_key_id).with_for_update())
        active = s.scalar(select(func.count()).select_from(Job)
                          .where(Job.api_key_id == api_key_id, Job.status.in_(ACTIVE_STATES))) or 0
        if active >= limit:
            raise QuotaExceeded(limit)
        s.add(Job(id=record.job_id, api_key_id=api_key_id, idempotency_key=idempotency_key,
                  status=record.status, stage=record.stage, record=record.to_dict(), callback_url=callback_url,
                  created_at=_aware(record.created_at), updated_at=_aware(record.updated_at)))


def create_share(url: str, token: str, job_id: str, expires_at: dt.datetime) -> ShareLink:
    row = ShareLink(token=token, job_id=job_id, expires_at=expires_at)
    with session(url) as s:
        s.add(row)
    return row


def get_share(url: str, token: str) -> ShareLink | None:
    with session(url, readonly=True) as s:
        return s.get(ShareLink, token)


def revoke_share(url: str, job_id: str, token: str) -> bool:
    """Revoke one live share link of a job; False when the job has no such live link."""
    with session(url) as s:
        result = s.execute(update(ShareLink).where(ShareLink.token == token, ShareLink.job_id == job_id,
                                                   ShareLink.revoked_at.is_(None)).values(revoked_at=utcnow()))
    return result.rowcount == 1


def count_reports(url: str, job_id: str) -> int:
    """Distinct reporters of a job since its last review."""
    with session(url, readonly=True) as s:
        return s.scalar(select(func.count()).select_from(AbuseReport)
                        .where(AbuseReport.job_id == job_id, AbuseReport.reviewed.is_(False))) or 0


def add_report(url: str, job_id: str, reason: str, text_: str | None = None, *, reporter: str,
               reporter_cookie: str | None, hide_at: int) -> tuple[int, bool, str]:
    """Record one report per reporter per job (the same address *or* the same viewer cookie is the
    same reporter); hide the job once ``hide_at`` distinct reporters (since the last review)
    reported it. Returns (open reports, whether this one was new, visibility now)."""
    from sqlalchemy import or_

    with session(url) as s:
        job = s.get(Job, job_id, with_for_update=s.bind.dialect.name == "postgresql")
        if job is None:
            raise ConfigError(f"no job {job_id}", code="no_such_job")
        same = AbuseReport.reporter == reporter
        if reporter_cookie:
            same = or_(same, AbuseReport.reporter_cookie == reporter_cookie)
        seen = s.scalar(select(AbuseReport.id).where(AbuseReport.job_id == job_id, same).limit(1))
        if seen is None:
            s.add(AbuseReport(job_id=job_id, reason=reason, text=text_, reporter=reporter,
                              reporter_cookie=reporter_cookie))
            s.flush()
        count = s.scalar(select(func.count()).select_from(AbuseReport)
                         .where(AbuseReport.job_id == job_id, AbuseReport.reviewed.is_(False))) or 0
        if count >= hide_at and job.visibility == "visible":
            job.visibility = "hidden"
        return count, seen is None, job.visibility


def list_reports(url: str, job_id: str) -> list[AbuseReport]:
    with session(url, readonly=True) as s:
        return list(s.scalars(select(AbuseReport).where(AbuseReport.job_id == job_id).order_by(AbuseReport.id)))


def review(url: str, job_id: str, decision: str) -> str:
    """The owner's decision on a reported video: ``restore`` (visible again; the open reports are
    settled) or ``remove`` (never served again; every share link revoked). Returns the visibility."""
    if decision not in ("restore", "remove"):
        raise ValueError(decision)
    with session(url) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise ConfigError(f"no job {job_id}", code="no_such_job")
        s.execute(update(AbuseReport).where(AbuseReport.job_id == job_id).values(reviewed=True))
        if decision == "restore":
            job.visibility = "visible"
        else:
            job.visibility = "removed"
            s.execute(update(ShareLink).where(ShareLink.job_id == job_id, ShareLink.revoked_at.is_(None))
                      .values(revoked_at=utcnow()))
        return job.visibility


def webhook_target(url: str, job_id: str) -> tuple[str | None, str]:
    """Where a job's webhook goes (the job's callback URL, else its key's) and the HMAC secret."""
    with session(url, readonly=True) as s:
        row = s.execute(select(Job.callback_url, ApiKey.webhook_url, ApiKey.webhook_secret)
                        .join(ApiKey, Job.api_key_id == ApiKey.id, isouter=True).where(Job.id == job_id)).first()
    if row is None or not (row[0] or row[1]) or row[2] is None:
        return None, ""
    return row[0] or row[1], unseal_secret(url, row[2])


def log_delivery(url: str, job_id: str, target: str, event: str, attempt: int, status_code: int | None,
                 error: str | None, delivered: bool) -> None:
    with session(url) as s:
        s.add(WebhookDelivery(job_id=job_id, url=target, event=event, attempt=attempt, status_code=status_code,
                              error=error, delivered=delivered))


def deliveries(url: str, job_id: str) -> list[WebhookDelivery]:
    with session(url, readonly=True) as s:
        return list(s.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
                              .order_by(WebhookDelivery.id)))


def job_counts(url: str) -> dict[str, int]:
    with session(url, readonly=True) as s:
        return {status: count for status, count in s.execute(select(Job.status, func.count()).group_by(Job.status))}


def recent_records(url: str, limit: int = 500) -> list[dict[str, Any]]:
    with session(url, readonly=True) as s:
        return list(s.scalars(select(Job.record).order_by(Job.updated_at.desc()).limit(limit)))


# ------------------------------------------------------------------------------------------------
# The job store


@dataclass
class _Held:
    url: str
    session: Session


# The transaction a ``_locked`` block holds, per thread / task: reads and writes inside the block
# go through it, so the row lock (PostgreSQL) or the write lock (SQLite) covers them.
_HELD: contextvars.ContextVar[_Held | None] = contextvars.ContextVar("alive_job_lock", default=None)
_MIGRATED: set[str] = set()


def _aware(stamp: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(stamp)
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


class SqlJobStore(JobStore):
    """Job records as rows of ``jobs``; the job's files stay in ``storage``.

    An update of one job is serialised across threads and processes: on PostgreSQL by
    ``SELECT ... FOR UPDATE`` on the row, on SQLite by the database's write lock.
    """

    def __init__(self, storage: Storage, settings):
        super().__init__(storage)
        self.url = database_url(settings)
        if self.url not in _MIGRATED:
            migrate(self.url)
            _MIGRATED.add(self.url)
        self._dialect = make_engine(self.url).dialect.name

    @contextlib.contextmanager
    def _session(self, *, readonly: bool = False) -> Iterator[Session]:
        held = _HELD.get()
        if held is not None and held.url == self.url:
            yield held.session
        else:
            with session(self.url, readonly=readonly) as s:
                yield s

    def _lock_row(self, s: Session, job_id: str) -> None:
        if self._dialect == "postgresql":
            s.execute(select(Job.id).where(Job.id == job_id).with_for_update())
        else:
            s.connection()  # starts the transaction: BEGIN IMMEDIATE waits for the write lock

    @contextlib.contextmanager
    def _locked(self, job_id: str) -> Iterator[None]:
        held = _HELD.get()
        if held is not None and held.url == self.url:  # nested: same transaction, one more row
            self._lock_row(held.session, job_id)
            yield
            return
        with session(self.url) as s:
            self._lock_row(s, job_id)
            token = _HELD.set(_Held(self.url, s))
            try:
                yield
            finally:
                _HELD.reset(token)

    def _read(self, job_id: str) -> dict[str, Any] | None:
        with self._session(readonly=True) as s:
            return s.scalar(select(Job.record).where(Job.id == job_id))

    def _write(self, record: JobRecord) -> None:
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        changed = {"record": record.to_dict(), "status": record.status, "stage": record.stage,
                   "updated_at": _aware(record.updated_at)}
        statement = insert(Job).values(id=record.job_id, created_at=_aware(record.created_at), **changed)
        statement = statement.on_conflict_do_update(index_elements=[Job.id], set_=changed)
        with self._session() as s:
            s.execute(statement)

    def list_ids(self) -> list[str]:
        with self._session(readonly=True) as s:
            return list(s.scalars(select(Job.id).order_by(Job.id)))

    def active_ids(self) -> list[str]:
        with self._session(readonly=True) as s:
            return list(s.scalars(select(Job.id).where(Job.status.in_(ACTIVE_STATES)).order_by(Job.created_at)))

    def delete_record(self, job_id: str) -> None:
        """Delete the row; its share links, reports and webhook deliveries go with it (CASCADE)."""
        with self._session() as s:
            s.execute(delete(Job).where(Job.id == job_id))

    def attach(self, job_id: str, *, api_key_id: int | None = None, idempotency_key: str | None = None,
               callback_url: str | None = None) -> None:
        attach_job(self.url, job_id, api_key_id=api_key_id, idempotency_key=idempotency_key,
                   callback_url=callback_url)

    def find_by_idempotency(self, api_key_id: int, key: str) -> str | None:
        return find_by_idempotency(self.url, api_key_id, key)
