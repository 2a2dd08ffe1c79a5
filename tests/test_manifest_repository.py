"""The manifest repository (service/manifests.py) on a real database: SQLite (a temp file) and
PostgreSQL (127.0.0.1:5432, a fresh database per test, dropped afterwards; skipped when it does not
answer). Manifests are built by hand: no watermark is needed to store and find them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets

import pytest
from sqlalchemy import MetaData, Table, func, inspect, select, text

from pipeline import fingerprint, watermark
from pipeline.manifests import StoredManifest
from pipeline.settings import load_settings
from service import db, manifests
from service.manifests import DatabaseManifestRepository, fingerprint_binding_value, open_manifest_repository

from tests.pg_fixtures import fresh_database
HEAD = "0003"
T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    """Settings whose database is SQLite's default file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield load_settings(data_dir=tmp_path)  # <data_dir>/alive.db
        db.dispose_engines()
        return
    with fresh_database(request.getfixturevalue("pg_user"), "alive_manifests") as url:
        yield load_settings(data_dir=tmp_path, jobs={"database_url": url})


@pytest.fixture
def repo(settings) -> DatabaseManifestRepository:
    return open_manifest_repository(settings)


def _hashes(count: int = 8) -> list[str]:
    return [secrets.token_hex(8) for _ in range(count)]


def _flip(hashes: list[str], bits: int) -> list[str]:
    """The same fingerprint with the lowest ``bits`` bits of every hash flipped: similarity 1 - bits/64."""
    return [f"{int(h, 16) ^ ((1 << bits) - 1):016x}" for h in hashes]


def _manifest(job_id: str = "job1", *, fp: list[str] | None = None, at: dt.datetime = T0, **changes) -> StoredManifest:
    credential_id = secrets.token_hex(6)
    stored = StoredManifest(
        manifest_id=credential_id, job_id=job_id, manifest_store=b"c2pa" + secrets.token_bytes(64),
        manifest_label=f"urn:c2pa:{credential_id}", watermark_alg=watermark.ALGORITHM,
        watermark_value=watermark.binding_value(credential_id), fingerprint_alg=fingerprint.ALGORITHM,
        fingerprint=fp if fp is not None else _hashes(),
        digital_source_type="http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia",
        title="AI-generated story video", signer="alive development signer", generator="alive/0.1", created_at=at)
    return dataclasses.replace(stored, **changes)


def _rows(url: str) -> int:
    with db.session(url, readonly=True) as s:
        return s.scalar(select(func.count()).select_from(db.Manifest))


def test_add_and_get_keep_every_field(repo):
    stored = _manifest()
    repo.add(stored)
    got = repo.get(stored.manifest_id)
    assert got == stored  # bytes, list, aware UTC time: all as given
    assert got.created_at.tzinfo is not None and got.created_at == T0
    assert repo.get("0" * 12) is None
    assert repo.get("not an id") is None  # never reaches the database


def test_created_at_defaults_to_now_and_ids_must_be_credential_ids(repo):
    stored = _manifest(at=None)
    repo.add(stored)
    age = dt.datetime.now(dt.timezone.utc) - repo.get(stored.manifest_id).created_at
    assert dt.timedelta(0) <= age < dt.timedelta(minutes=1)
    for bad in ("ABCDEF012345", "abc", "0123456789abc", "g23456789abc"):
        with pytest.raises(ValueError, match="12 lowercase hex digits"):
            repo.add(dataclasses.replace(stored, manifest_id=bad))


def test_adding_the_same_id_again_replaces_it(repo):
    """A retried label signs again: the second add wins, in one row, without an error."""
    first = _manifest()
    repo.add(first)
    again = dataclasses.replace(first, manifest_store=b"second signature", fingerprint=_hashes(),
                                created_at=T0 + dt.timedelta(minutes=5))
    repo.add(again)
    assert repo.get(first.manifest_id) == again
    assert _rows(repo.url) == 1


def test_by_binding_finds_exactly_the_watermark_value_newest_first(repo):
    target = _manifest(at=T0)
    other = _manifest(at=T0 + dt.timedelta(hours=1))
    repo.add(target)
    repo.add(other)
    assert repo.by_binding(watermark.ALGORITHM, target.watermark_value) == [target]
    assert repo.by_binding(watermark.ALGORITHM, watermark.binding_value("0" * 12)) == []
    assert repo.by_binding("com.example.watermark.1", target.watermark_value) == []  # another algorithm
    # two manifests with one binding (only possible by hand): newest first, and the limit holds
    twin = dataclasses.replace(other, manifest_id=secrets.token_hex(6), watermark_value=target.watermark_value)
    repo.add(twin)
    assert [m.manifest_id for m in repo.by_binding(watermark.ALGORITHM, target.watermark_value)] == \
        [twin.manifest_id, target.manifest_id]
    assert repo.by_binding(watermark.ALGORITHM, target.watermark_value, limit=1) == [twin]


def test_by_binding_with_a_fingerprint_value_finds_it_hash_for_hash(repo):
    stored = _manifest()
    repo.add(stored)
    assert repo.by_binding(fingerprint.ALGORITHM, fingerprint_binding_value(stored.fingerprint)) == [stored]
    assert repo.by_binding(fingerprint.ALGORITHM, fingerprint_binding_value(_flip(stored.fingerprint, 1))) == []


def test_by_fingerprint_orders_by_similarity_and_drops_what_is_below_the_threshold(repo, monkeypatch):
    monkeypatch.setattr(manifests, "PAGE", 2)  # five rows read over three pages
    query = _hashes()
    close = _manifest(fp=_flip(query, 2))  # similarity 62/64
    closer = _manifest(fp=_flip(query, 1))  # 63/64
    farther = _manifest(fp=_flip(query, 8))  # 56/64 = 0.875
    below = _manifest(fp=_flip(query, 20))  # 44/64 = 0.69: under MATCH_THRESHOLD
    unrelated = _manifest(fp=_hashes())  # ~0.5
    other_alg = _manifest(fp=query, fingerprint_alg="com.example.fingerprint.1")  # identical, but not ours
    assert fingerprint.similarity(query, below.fingerprint) < fingerprint.MATCH_THRESHOLD \
        <= fingerprint.similarity(query, farther.fingerprint)
    for stored in (close, below, unrelated, closer, other_alg, farther):
        repo.add(stored)

    found = repo.by_fingerprint(query)
    assert [m.manifest.manifest_id for m in found] == [closer.manifest_id, close.manifest_id, farther.manifest_id]
    assert [m.similarity for m in found] == [63 / 64, 62 / 64, 56 / 64]
    assert {m.by for m in found} == {"fingerprint"} and found[0].manifest == closer
    assert [m.manifest for m in repo.by_fingerprint(query, limit=1)] == [closer]
    assert repo.by_fingerprint(_hashes()) == []


def test_by_fingerprint_breaks_ties_newest_first(repo):
    query = _hashes()
    old = _manifest(fp=query, at=T0)
    new = _manifest(fp=query, at=T0 + dt.timedelta(days=1))
    repo.add(old)
    repo.add(new)
    assert [m.manifest.manifest_id for m in repo.by_fingerprint(query)] == [new.manifest_id, old.manifest_id]


def test_forget_job_removes_only_that_jobs_manifests(repo):
    mine = [_manifest("job-a"), _manifest("job-a")]
    theirs = _manifest("job-b")
    for stored in (*mine, theirs):
        repo.add(stored)
    assert repo.for_job("job-a") == sorted(m.manifest_id for m in mine)
    assert repo.forget_job("job-a") == 2
    assert [repo.get(m.manifest_id) for m in mine] == [None, None]
    assert repo.get(theirs.manifest_id) == theirs
    assert repo.forget_job("job-a") == 0 and repo.for_job("job-a") == []


def _upgrade_to(url: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS))
    with db.make_engine(url).begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def _insert(database: str, table: str, **values) -> None:
    with db.make_engine(database).begin() as conn:
        conn.execute(Table(table, MetaData(), autoload_with=conn).insert().values(**values))


@pytest.mark.parametrize("start", ["0001", "0002"])
def test_a_database_of_an_older_revision_migrates_and_keeps_its_rows(settings, start):
    url = db.database_url(settings)
    _upgrade_to(url, start)
    _insert(url, "api_keys", id=1, name="old key", prefix="alv_oldoldol", key_hash="0" * 64, created_at=T0,
            webhook_secret="whsec_plain")
    _insert(url, "jobs", id="oldjob", api_key_id=1, status="succeeded", record={"job_id": "oldjob", "status": "succeeded"},
            created_at=T0, updated_at=T0)
    _insert(url, "share_links", token="oldtoken", job_id="oldjob", created_at=T0, expires_at=T0 + dt.timedelta(days=9))
    _insert(url, "reports", id=1, job_id="oldjob", reason="spam", created_at=T0)
    _insert(url, "webhook_deliveries", id=1, job_id="oldjob", url="https://example.com/hook", event="job.succeeded",
            attempt=1, delivered=True, created_at=T0)

    repo = open_manifest_repository(settings)  # migrates to the head
    with db.make_engine(url).connect() as conn:
        assert list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars()) == [HEAD]
        assert "manifests" in inspect(conn).get_table_names()
        assert conn.execute(text("SELECT name FROM api_keys WHERE id = 1")).scalar() == "old key"
        # SQLite rebuilds jobs and api_keys by copy + drop: with foreign keys on, the drop would have
        # run ON DELETE (links, reports, deliveries gone; the job's key NULL)
        counts = [conn.execute(text(f"SELECT count(*) FROM {t}")).scalar()
                  for t in ("share_links", "reports", "webhook_deliveries")]
        assert counts == [1, 1, 1]
        if conn.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1  # on again after migrating
    job = db.get_job(url, "oldjob")
    assert (job.status, job.record["job_id"], job.api_key_id, job.visibility) == ("succeeded", "oldjob", 1, "visible")
    assert db.get_share(url, "oldtoken").job_id == "oldjob" and db.count_reports(url, "oldjob") == 1
    stored = _manifest("oldjob")
    repo.add(stored)
    assert repo.get(stored.manifest_id) == stored


def test_the_migration_matches_the_model(settings):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    url = open_manifest_repository(settings).url
    with db.make_engine(url).connect() as conn:
        drift = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), db.Base.metadata)
        indexes = {ix["name"]: ix["column_names"] for ix in inspect(conn).get_indexes("manifests")}
    assert drift == []
    assert indexes == {"ix_manifests_job_id": ["job_id"],
                       "ix_manifests_watermark_alg_watermark_value": ["watermark_alg", "watermark_value"]}


def test_a_deleted_job_row_leaves_its_manifest(settings):
    """No foreign key: the manifest is the record of provenance and outlives the job row."""
    from pipeline.jobs import JobRecord
    from pipeline.storage import LocalStorage

    store = db.SqlJobStore(LocalStorage(settings.store_root), settings)
    store.create(JobRecord(job_id="gone"))
    repo = open_manifest_repository(settings)
    stored = _manifest("gone")
    repo.add(stored)
    store.delete_job("gone")
    assert db.get_job(store.url, "gone") is None and repo.get(stored.manifest_id) == stored


def test_softbinding_lookup_on_this_repository_confirms_a_watermark_with_the_fingerprint(repo):
    """``pipeline.softbinding.lookup`` (what the HTTP by-content route runs) against this repository,
    on decoded bindings built by hand (no video needed)."""
    from pipeline.softbinding import Bindings, lookup

    query = _hashes()
    marked = _manifest("job-a", fp=_flip(query, 1))
    lookalike = _manifest("job-b", fp=_flip(query, 3))
    stranger = _manifest("job-c", fp=_hashes())
    for stored in (marked, lookalike, stranger):
        repo.add(stored)

    def bindings(credential_id):
        detection = watermark.Detection(credential_id is not None, credential_id, 0.9 if credential_id else 0.0, 8)
        return Bindings(watermark=detection, fingerprint=query, fingerprint_alg=fingerprint.ALGORITHM)

    hit = lookup(bindings(marked.manifest_id), repo)
    assert [(m.manifest.manifest_id, m.by) for m in hit] == [(marked.manifest_id, "watermark+fingerprint")]
    # the watermark names a manifest whose fingerprint disagrees: not a match; the fingerprint decides
    wrong = lookup(bindings(stranger.manifest_id), repo)
    assert [(m.manifest.manifest_id, m.by) for m in wrong] == [(marked.manifest_id, "fingerprint"),
                                                               (lookalike.manifest_id, "fingerprint")]
    assert [m.manifest.manifest_id for m in lookup(bindings(None), repo)] == [marked.manifest_id, lookalike.manifest_id]
