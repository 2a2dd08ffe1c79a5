import datetime as dt
import threading

import pytest

from pipeline.errors import ConfigError
from pipeline.jobs import FileJobStore, JobRecord, Keys, cleanup, status_for
from pipeline.errors import EncodeFailed, InputRejected, ModerationBlocked
from pipeline.settings import load_settings
from pipeline.storage import LocalStorage


@pytest.fixture(params=["files", "sqlite"])
def store(request, tmp_path):
    """The same behaviours from both job stores (tests/test_db.py adds PostgreSQL and SQL specifics)."""
    if request.param == "files":
        yield FileJobStore(LocalStorage(tmp_path / "store"))
        return
    from service import db

    settings = load_settings(data_dir=tmp_path, jobs={"store": "database"})
    yield db.SqlJobStore(LocalStorage(settings.store_root), settings)
    db.dispose_engines()


def test_keys_refuse_path_tricks():
    assert Keys("abc123").video == "jobs/abc123/story.mp4"
    for bad in ("", "../x", "a/b", "a b"):
        with pytest.raises(ValueError):
            Keys(bad)
    with pytest.raises(ValueError):
        LocalStorage("/tmp/x").path("jobs/../../etc/passwd")


def test_record_round_trip_and_merge(store):
    store.create(JobRecord(job_id="j1", options={"seed": 1}))
    store.update("j1", moderation={"image": {"decision": "allow"}})
    store.update("j1", moderation={"video": {"decision": "allow"}}, status="running", stage="encode")
    r = store.load("j1")
    assert set(r.moderation) == {"image", "video"} and r.status == "running" and r.stage == "encode"
    with pytest.raises(AttributeError):
        store.update("j1", nonsense=1)
    with pytest.raises(ConfigError, match="no job") as info:
        store.load("missing")
    assert info.value.code == "no_such_job"
    with pytest.raises(ConfigError, match="no job"):
        store.update("missing", status="failed")
    assert store.exists("j1") and not store.exists("missing")


def test_concurrent_updates_lose_nothing(store):
    store.create(JobRecord(job_id="j2"))

    def bump(i):
        store.update("j2", timings_s={f"s{i}": float(i)})

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.load("j2").timings_s) == 20


def test_status_for_error_classes():
    assert status_for(InputRejected("x")) == "rejected"
    assert status_for(ModerationBlocked("x")) == "blocked"
    assert status_for(EncodeFailed("x")) == "failed"
    assert status_for(RuntimeError("x")) == "failed"


def test_cleanup_removes_only_expired_finished_jobs(store):
    old = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=200)).isoformat()
    for job_id, status in (("old-done", "succeeded"), ("old-running", "running"), ("new-done", "succeeded")):
        store.create(JobRecord(job_id=job_id, status=status))
        store.storage.put_bytes(Keys(job_id).video, b"video")
    for job_id in ("old-done", "old-running"):
        record = store.load(job_id)
        record.updated_at = old
        store._write(record)  # save() would stamp it now
    assert cleanup(store, retention_hours=168) == ["old-done"]
    assert store.list_ids() == ["new-done", "old-running"]
    assert not store.storage.exists(Keys("old-done").video) and store.storage.exists(Keys("old-running").video)


def test_the_library_does_not_import_the_service_or_worker_layers():
    """pipeline/ is the library: the job store is chosen where the front doors are wired
    (service/stores.py), so no module of pipeline/ but the CLI (a front door) imports service/ or
    workers/ (the old pipeline/jobs.py <-> service/db.py cycle)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "pipeline"
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n.split(".")[0] in ("service", "workers")]
    assert offenders == []
