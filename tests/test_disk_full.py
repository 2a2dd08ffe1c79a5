"""A full store: ``StorageFull`` (code ``disk_full``, a ``TransientError``) with nothing left behind.

The main tests fill a real 2 MiB tmpfs until the kernel answers ENOSPC (they need to mount one:
root or CAP_SYS_ADMIN; skipped otherwise, saying so). The unit tests without a mount inject one
ENOSPC/EDQUOT into a single write and are otherwise real.
"""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import StorageFull, TransientError
from pipeline.jobs import FileJobStore, Keys
from pipeline.settings import load_settings
from pipeline.storage import LocalStorage, write_bytes_atomic

SUBMIT_EXIT = StorageFull("x").exit_code  # the exit code of a TransientError, as EXIT_CODES_HELP says
CHUNK = 1 << 16


def _files_under(root: Path) -> list[str]:
    """Every file and folder below ``root`` (temp files included), relative, sorted."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


# ---- a real, small, full file system ------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """A 2 MiB tmpfs mounted for this test (unmounted after it)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no `mount` command here: the real disk-full tests need a small tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): "
                    f"{(done.stderr or done.stdout).strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(mount: Path, leave: int = 0) -> Path:
    """Write a filler file until the file system answers ENOSPC; then free ``leave`` bytes of it."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * CHUNK)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    assert os.statvfs(mount).f_bavail == 0
    if leave:
        os.truncate(filler, filler.stat().st_size - leave)
    return filler


def test_put_bytes_on_a_full_disk_raises_disk_full_and_leaves_nothing(tmpfs):
    store = LocalStorage(tmpfs / "store")
    _fill(tmpfs)
    with pytest.raises(StorageFull) as caught:
        store.put_bytes("jobs/j1/clean.png", b"x" * 100_000)
    assert caught.value.code == "disk_full" and isinstance(caught.value, TransientError)
    assert "jobs/j1/clean.png" in caught.value.message and "no space left" in caught.value.message
    assert caught.value.details["errno"] == errno.ENOSPC
    assert _files_under(tmpfs) == ["filler"]  # no temp file, and no store, jobs or job folder made


def test_put_over_an_existing_key_on_a_full_disk_keeps_the_old_bytes(tmpfs):
    store = LocalStorage(tmpfs / "store")
    store.put_bytes("jobs/j1/job.json", b"old record")
    before = _files_under(tmpfs)
    _fill(tmpfs)
    with pytest.raises(StorageFull):
        store.put_bytes("jobs/j1/job.json", b"new record" * 10_000)
    assert store.get_bytes("jobs/j1/job.json") == b"old record"
    assert _files_under(tmpfs) == sorted([*before, "filler"])


def test_put_file_across_file_systems_on_a_full_disk(tmpfs, tmp_path):
    """tmp_path is another file system: put_file copies (EXDEV), and the copy meets ENOSPC."""
    store = LocalStorage(tmpfs / "store")
    src = tmp_path / "video.mp4"
    src.write_bytes(os.urandom(300_000))
    _fill(tmpfs)
    with pytest.raises(StorageFull) as caught:
        store.put_file("jobs/j1/story.mp4", src)
    assert "jobs/j1/story.mp4" in caught.value.message
    assert _files_under(tmpfs) == ["filler"]
    assert src.is_file()  # the caller's file is still there to retry with


def test_signing_into_a_full_disk_is_disk_full_and_leaves_nothing(tmpfs, tmp_path):
    import imageio_ffmpeg

    from pipeline.provenance import TRAINED_ALGORITHMIC_MEDIA, LabelInfo, ensure_dev_credentials, sign_video
    from pipeline.settings import LabelSettings

    clip = tmp_path / "clip.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=64x64:rate=8", "-frames:v", "8", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    str(clip)], check=True, capture_output=True, timeout=60)
    info = LabelInfo(title="t", generator_name="alive", generator_version="0", software_agent="test",
                     digital_source_type=TRAINED_ALGORITHMIC_MEDIA)
    _fill(tmpfs)
    with pytest.raises(StorageFull) as caught:
        sign_video(clip, tmpfs / "story.mp4", info, ensure_dev_credentials(tmp_path / "dev"), LabelSettings())
    assert caught.value.code == "disk_full" and "story.mp4" in caught.value.message
    assert _files_under(tmpfs) == ["filler"]


@pytest.fixture
def submit_env(tmp_path, tmpfs):
    """Environment for `alive submit` whose store is on the tmpfs (data dir and broker on disk)."""
    data = tmp_path / "data"
    env = {"ALIVE_DATA_DIR": str(data), "ALIVE_STORAGE__ROOT": str(tmpfs / "store"), "ALIVE_JOBS__STORE": "files"}
    yield env
    from workers.broker import embedded_broker

    embedded_broker(data).stop()


def _job_folders(store_root: Path) -> list[str]:
    jobs = store_root / "jobs"
    return sorted(p.name for p in jobs.iterdir()) if jobs.is_dir() else []


@pytest.mark.parametrize("leave", [0, 64 * 1024], ids=["nothing-fits", "record-fits-photo-does-not"])
def test_submit_on_a_full_store_is_all_or_nothing(submit_env, tmpfs, sample_photo, leave):
    runner = CliRunner()
    store_root = tmpfs / "store"
    filler = _fill(tmpfs, leave=leave)
    failed = runner.invoke(app, ["submit", str(sample_photo)], env=submit_env)
    assert failed.exit_code == SUBMIT_EXIT == 5, failed.output
    assert "error (disk_full)" in failed.output and "no space left" in failed.output
    assert "submit again" in failed.output and "Traceback" not in failed.output
    # no job folder, no record, no temp file: at most the store's own folders (when the record fitted)
    assert _job_folders(store_root) == []
    assert set(_files_under(tmpfs)) - {"filler"} <= {"store", "store/jobs"}
    if leave:  # the record fitted: it was written into jobs/<id>/, then removed with its folder
        assert (store_root / "jobs").is_dir()
    settings = load_settings(data_dir=Path(submit_env["ALIVE_DATA_DIR"]), storage={"root": store_root})
    assert FileJobStore(LocalStorage(store_root)).list_ids() == []

    filler.unlink()
    ok = runner.invoke(app, ["submit", str(sample_photo)], env=submit_env)
    assert ok.exit_code == 0, ok.output
    job_id = ok.output.strip().splitlines()[-1]
    assert _job_folders(store_root) == [job_id]
    record = runner.invoke(app, ["status", job_id], env=submit_env)
    assert record.exit_code == 0 and "queued" in record.output, record.output
    assert LocalStorage(settings.store_root).exists(Keys(job_id).clean)


# ---- one injected ENOSPC / EDQUOT, no mount needed -----------------------------------------------


@pytest.fixture
def full_once(monkeypatch):
    """Make the next ``Path.write_bytes`` into a file whose name contains ``part`` write half its
    data, then fail with the given errno, as a disk that fills up mid-write does."""
    real = pathlib.Path.write_bytes

    def arm(code: int, part: str = "") -> None:
        state = {"armed": True}

        def write_bytes(self, data):
            if state["armed"] and part in self.name:
                state["armed"] = False
                real(self, bytes(data)[: len(data) // 2])
                raise OSError(code, os.strerror(code), str(self))
            return real(self, data)

        monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)

    return arm


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
def test_an_injected_no_space_error_becomes_storage_full(tmp_path, full_once, code):
    store = LocalStorage(tmp_path / "store")
    store.put_bytes("jobs/old/job.json", b"old")
    full_once(code)
    with pytest.raises(StorageFull) as caught:
        store.put_bytes("jobs/new/clean.png", b"y" * 1000)
    assert caught.value.code == "disk_full" and "jobs/new/clean.png" in caught.value.message
    assert caught.value.details["errno"] == code and caught.value.__cause__.errno == code
    assert _files_under(tmp_path / "store") == ["jobs", "jobs/old", "jobs/old/job.json"]
    full_once(code)
    with pytest.raises(StorageFull):
        store.put_bytes("jobs/old/job.json", b"new" * 1000)
    assert store.get_bytes("jobs/old/job.json") == b"old"
    assert _files_under(tmp_path / "store") == ["jobs", "jobs/old", "jobs/old/job.json"]
    store.put_bytes("jobs/new/clean.png", b"y" * 1000)  # the next write, with room, succeeds
    assert store.get_bytes("jobs/new/clean.png") == b"y" * 1000


def test_other_os_errors_pass_unchanged_and_still_leave_nothing(tmp_path, full_once):
    store = LocalStorage(tmp_path / "store")
    full_once(errno.EIO)
    with pytest.raises(OSError) as caught:
        store.put_bytes("jobs/j1/clean.png", b"z" * 1000)
    assert caught.value.errno == errno.EIO and not isinstance(caught.value, StorageFull)
    assert not (tmp_path / "store").exists()


def test_the_atomic_helper_names_the_file_not_its_folder(tmp_path, full_once):
    full_once(errno.ENOSPC)
    with pytest.raises(StorageFull) as caught:
        write_bytes_atomic(tmp_path / "report.json", b"{}")
    assert "report.json" in caught.value.message and str(tmp_path) not in caught.value.message
    assert _files_under(tmp_path) == []


@pytest.mark.parametrize("job_store", ["files", "database"])
def test_submit_removes_the_record_when_the_photo_does_not_fit(tmp_path, full_once, sample_photo, job_store):
    """The record is written, the photo meets ENOSPC: the record (file or row) goes too."""
    from service.stores import open_job_store
    from workers.client import submit

    settings = load_settings(data_dir=tmp_path, jobs={"store": job_store})
    full_once(errno.ENOSPC, part="clean.png")
    with pytest.raises(StorageFull) as caught:
        submit(sample_photo, settings)
    assert caught.value.code == "disk_full" and "submit again" in caught.value.message
    jobs = open_job_store(settings)
    assert jobs.list_ids() == [] and _job_folders(settings.store_root) == []
    if job_store == "database":
        from service import db

        db.dispose_engines()
