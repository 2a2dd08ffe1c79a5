"""The database layer, run against SQLite (a temp file) and PostgreSQL (127.0.0.1:5432, skipped when
it does not answer). Each PostgreSQL test gets a fresh database, dropped afterwards."""

from __future__ import annotations

import datetime as dt
import hashlib
import multiprocessing

import pytest
from sqlalchemy import func, inspect, select, text

from pipeline.errors import ConfigError
from pipeline.jobs import JobRecord, Keys
from service.stores import open_job_store
from pipeline.settings import load_settings
from pipeline.storage import LocalStorage
from service import db

from tests.pg_fixtures import fresh_database
TABLES = {"alembic_version", "api_keys", "jobs", "share_links", "reports", "webhook_deliveries", "manifests"}


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    """Settings with jobs in the database: SQLite's default file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield load_settings(data_dir=tmp_path, jobs={"store": "database"})  # database_url None: <data_dir>/alive.db
        db.dispose_engines()
        return
    with fresh_database(request.getfixturevalue("pg_user"), "alive_test") as url:
        yield load_settings(data_dir=tmp_path, jobs={"store": "database", "database_url": url})


@pytest.fixture
def url(settings) -> str:
    return db.database_url(settings)


@pytest.fixture
def store(settings) -> db.SqlJobStore:
    return db.SqlJobStore(LocalStorage(settings.store_root), settings)


def _schema(url: str) -> tuple[set[str], list[str], list]:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with db.make_engine(url).connect() as conn:
        tables = set(inspect(conn).get_table_names())
        versions = list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
        drift = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), db.Base.metadata)
    return tables, versions, drift


def test_default_url_is_sqlite_in_the_data_dir(tmp_path):
    assert db.database_url(load_settings(data_dir=tmp_path)) == f"sqlite:///{tmp_path}/alive.db"
    with pytest.raises(ConfigError, match="postgresql://") as info:
        db.make_engine("mysql://x@localhost/alive")
    assert info.value.code == "database_unsupported"


def test_migrate_twice_is_a_no_op_and_matches_the_models(url):
    db.migrate(url)
    first = _schema(url)
    assert first == (TABLES, ["0003"], [])  # no drift between the migration and the models
    db.migrate(url)
    assert _schema(url) == first


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(tmp_path):
    url = f"sqlite:///{tmp_path}/new/dir/alive.db"  # the folder is made
    try:
        with db.make_engine(url).connect() as conn:
            pragma = {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                      for name in ("journal_mode", "busy_timeout", "foreign_keys")}
        assert pragma == {"journal_mode": "wal", "busy_timeout": 30000, "foreign_keys": 1}
        assert db.make_engine(url) is db.make_engine(url)  # one engine per URL per process
    finally:
        db.dispose_engines()


def test_open_job_store_picks_the_database(settings):
    assert isinstance(open_job_store(settings), db.SqlJobStore)


def test_record_columns_follow_the_record(store):
    """Generic store behaviour is in tests/test_jobs.py; here: the SQL columns mirror the JSON record."""
    store.create(JobRecord(job_id="j1", options={"seed": 1}))
    store.update("j1", moderation={"video": {"decision": "allow"}}, status="running", stage="encode")
    record = store.load("j1")
    assert record.options == {"seed": 1}
    row = db.get_job(store.url, "j1")
    assert (row.status, row.stage, row.record["moderation"]["video"]) == ("running", "encode", {"decision": "allow"})
    assert row.updated_at.tzinfo is not None and row.updated_at == dt.datetime.fromisoformat(record.updated_at)


def _process_worker(data_dir: str, database_url: str | None, index: int, barrier, updates: int) -> None:
    """One of four spawned processes: migrate at the same moment, then update one job in turns."""
    settings = load_settings(data_dir=data_dir, jobs={"store": "database", "database_url": database_url})
    barrier.wait(timeout=60)
    store = db.SqlJobStore(LocalStorage(settings.store_root), settings)  # all four migrate at once
    barrier.wait(timeout=60)
    if index == 0:
        store.create(JobRecord(job_id="shared"))
    barrier.wait(timeout=60)
    for i in range(updates):
        store.update("shared", timings_s={f"p{index}-{i}": float(i)})


def test_processes_migrate_at_once_and_lose_no_update(settings, url):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_process_worker, args=(str(settings.data_dir), settings.jobs.database_url, i,
                                                        barrier, 10)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert _schema(url)[:2] == (TABLES, ["0003"])
    store = db.SqlJobStore(LocalStorage(settings.store_root), settings)
    assert len(store.load("shared").timings_s) == 40


def _forked_child(url: str, queue) -> None:
    with db.make_engine(url).connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar() if conn.dialect.name == "postgresql" else None
    db.attach_job(url, "forked", callback_url="https://example.com/hook")
    queue.put(pid)


def test_a_forked_child_uses_its_own_connections(store, url):
    """Celery prefork: the child must not talk over the parent's pooled socket, nor close it."""
    store.create(JobRecord(job_id="forked"))
    engine = db.make_engine(url)
    is_pg = engine.dialect.name == "postgresql"
    backend_pid = "SELECT pg_backend_pid()" if is_pg else "SELECT 1"
    with engine.connect() as conn:  # the parent's connection now waits in the pool
        before = conn.execute(text(backend_pid)).scalar()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_forked_child, args=(url, queue))
    child.start()
    child_pid = queue.get(timeout=30)
    child.join(timeout=30)
    assert child.exitcode == 0
    with engine.connect() as conn:
        assert conn.execute(text(backend_pid)).scalar() == before  # same pooled session, still alive
    if is_pg:
        assert child_pid != before
    assert db.get_job(url, "forked").callback_url == "https://example.com/hook"


def test_idempotency_key_is_unique_per_api_key(store, url):
    key, _ = db.create_api_key(url, "app")
    other, _ = db.create_api_key(url, "other app")
    for job_id in ("a1", "a2", "a3", "a4", "a5"):
        store.create(JobRecord(job_id=job_id))
    store.attach("a1", api_key_id=key.id, idempotency_key="req-1", callback_url="https://example.com/cb")
    with pytest.raises(db.IntegrityError):
        store.attach("a2", api_key_id=key.id, idempotency_key="req-1")
    assert store.find_by_idempotency(key.id, "req-1") == "a1"
    assert store.find_by_idempotency(key.id, "req-2") is None
    store.attach("a3", api_key_id=other.id, idempotency_key="req-1")  # another key may reuse the value
    store.attach("a4", idempotency_key="req-1")  # without a key, NULLs never collide
    store.attach("a5", idempotency_key="req-1")
    assert store.find_by_idempotency(other.id, "req-1") == "a3"
    with pytest.raises(ConfigError) as info:
        store.attach("nope", api_key_id=key.id)
    assert info.value.code == "no_such_job"

    store.update("a1", status="running", stage="generate")  # record writes keep the API-only columns
    row = db.get_job(url, "a1")
    assert (row.api_key_id, row.idempotency_key, row.callback_url, row.status) == (
        key.id, "req-1", "https://example.com/cb", "running")
    assert db.count_active_jobs(url, key.id) == 1
    store.update("a1", status="succeeded")
    assert db.count_active_jobs(url, key.id) == 0


def _everything_stored(settings, url: str) -> bytes:
    """Every row of every table as text, plus (SQLite) the raw database files."""
    dump = []
    with db.make_engine(url).connect() as conn:
        for table in sorted(TABLES):
            dump += [repr(tuple(row)) for row in conn.execute(text(f"SELECT * FROM {table}"))]
    blob = "\n".join(dump).encode()
    if url.startswith("sqlite"):
        for path in sorted(settings.data_dir.glob("alive.db*")):  # the database, its -wal and -shm
            blob += path.read_bytes()
    return blob


def test_api_keys_create_find_revoke_and_only_the_hash_is_stored(settings, url):
    db.migrate(url)
    row, plain = db.create_api_key(url, "my app", rate_limit_per_minute=30, max_concurrent_jobs=2,
                                   webhook_url="https://example.com/hook")
    assert plain.startswith("alv_") and len(plain) >= 4 + 43 and row.prefix == plain[:12]
    assert row.key_hash == hashlib.sha256(plain.encode()).hexdigest() and len(row.webhook_secret) >= 43
    found = db.find_api_key(url, plain)
    assert (found.id, found.name, found.rate_limit_per_minute, found.max_concurrent_jobs) == (row.id, "my app", 30, 2)
    assert found.webhook_secret == row.webhook_secret and found.created_at.tzinfo is not None
    for wrong in (plain[:-1] + ("A" if plain[-1] != "A" else "B"), plain[:12], "", "alv_", "Bearer " + plain):
        assert db.find_api_key(url, wrong) is None
    second, plain2 = db.create_api_key(url, "no limits")
    assert second.rate_limit_per_minute is None and db.find_api_key(url, plain2).id == second.id

    stored = _everything_stored(settings, url)
    assert row.key_hash.encode() in stored and row.prefix.encode() in stored  # the dump does see the row
    for secret in (plain, plain2, plain[12:], plain2[12:]):
        assert secret.encode() not in stored

    assert db.revoke_api_key(url, row.id) is True
    assert db.find_api_key(url, plain) is None
    assert db.revoke_api_key(url, row.id) is False
    assert db.find_api_key(url, plain2).id == second.id


def test_deleting_a_job_deletes_its_links_reports_and_deliveries(store, url):
    store.create(JobRecord(job_id="gone", status="succeeded"))
    store.create(JobRecord(job_id="kept", status="succeeded"))
    store.storage.put_bytes(Keys("gone").video, b"video")
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    for job_id in ("gone", "kept"):
        db.create_share(url, f"tok-{job_id}", job_id, expires)
        assert db.add_report(url, job_id, "spam", reporter="a", reporter_cookie=None, hide_at=3)[:2] == (1, True)
        assert db.add_report(url, job_id, "other", "looks wrong", reporter="b", reporter_cookie="c",
                             hide_at=3)[:2] == (2, True)
        with db.session(url) as s:
            s.add(db.WebhookDelivery(job_id=job_id, url="https://example.com/hook", event="animation.succeeded",
                                     attempt=1, status_code=500, error="HTTP 500", delivered=False))
    link = db.get_share(url, "tok-gone")
    assert link.job_id == "gone" and link.expires_at == expires and link.expires_at.tzinfo is not None
    assert db.count_reports(url, "gone") == 2

    assert store.delete_job("gone") == 1
    assert db.get_share(url, "tok-gone") is None and db.count_reports(url, "gone") == 0
    with db.session(url, readonly=True) as s:
        deliveries = s.scalars(select(db.WebhookDelivery.job_id)).all()
    assert deliveries == ["kept"] and db.count_reports(url, "kept") == 2 and db.get_share(url, "tok-kept")
    assert store.list_ids() == ["kept"] and not store.storage.exists(Keys("gone").video)


def test_deleting_an_api_key_keeps_its_jobs(store, url):
    key, _ = db.create_api_key(url, "app")
    store.create(JobRecord(job_id="orphan"))
    store.attach("orphan", api_key_id=key.id, idempotency_key="r")
    with db.session(url) as s:
        s.delete(s.get(db.ApiKey, key.id))
    assert db.get_job(url, "orphan").api_key_id is None and store.load("orphan").job_id == "orphan"


def test_session_commits_rolls_back_and_readonly_refuses_writes_on_postgresql(store, url):
    store.create(JobRecord(job_id="s1"))
    with pytest.raises(RuntimeError):
        with db.session(url) as s:
            s.execute(db.Job.__table__.update().where(db.Job.id == "s1").values(stage="changed"))
            raise RuntimeError("boom")
    assert db.get_job(url, "s1").stage is None  # rolled back
    with db.session(url) as s:
        s.get(db.Job, "s1").stage = "changed"
    assert db.get_job(url, "s1").stage == "changed"  # committed
    if url.startswith("postgresql"):
        from sqlalchemy.exc import InternalError

        with pytest.raises(InternalError, match="read-only"):
            with db.session(url, readonly=True) as s:
                s.get(db.Job, "s1").stage = "again"
    with db.session(url, readonly=True) as s:
        assert s.scalar(select(func.count()).select_from(db.Job)) == 1
    assert db.ping(url) and not db.ping("postgresql+psycopg://nobody@127.0.0.1:1/nothing")
