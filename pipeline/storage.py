"""Files on disk: atomic writes, so a reader never sees half a file where a good one is expected.

A write that finds no space (ENOSPC, EDQUOT) raises ``StorageFull`` (code ``disk_full``, a
``TransientError``: retried) naming what it wrote, after removing its temporary file; the final
file keeps its old content, or stays absent. Other ``OSError``s pass unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator

from pipeline.errors import StorageFull, is_disk_full


def create_temp_beside(final: Path, suffix: str = ".part") -> Path:
    """Create an empty hidden temp file in ``final``'s directory (same file system, so the final
    ``os.replace`` is atomic), with mode 0o666 minus the umask like any new file.

    Raises ``OSError`` when the directory is missing or not writable; callers turn that into their
    own error class.
    """
    final = Path(final)
    while True:
        temp = final.with_name(f".{final.name}.{secrets.token_hex(6)}{suffix}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return temp


def publish(temp: Path, final: Path) -> None:
    """fsync a finished temp file, then move it onto ``final`` in one step (readers see old or new)."""
    with Path(temp).open("rb+") as fh:  # the data is on disk before the name points at it
        os.fsync(fh.fileno())
    os.replace(temp, final)


@contextlib.contextmanager
def disk_full_as_storage_full(what: str) -> Iterator[None]:
    """Turn an ``OSError`` that means "no space left" (ENOSPC, EDQUOT) inside the block into
    ``StorageFull`` naming ``what``; every other exception passes unchanged."""
    try:
        yield
    except OSError as exc:
        if is_disk_full(exc):
            raise StorageFull.from_os_error(exc, what) from exc
        raise


@contextlib.contextmanager
def staged_path(final: Path, suffix: str = ".part", *, what: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; it is moved onto ``final`` only if the block succeeds.

    On any exception the temporary file is removed and ``final`` is left as it was. No space left
    (while creating the temp file, in the block, or while publishing) raises ``StorageFull`` naming
    ``what`` (default: ``final``'s file name, never its folder).
    """
    final = Path(final)
    with disk_full_as_storage_full(what or final.name):
        tmp_path = create_temp_beside(final, suffix)
        try:
            yield tmp_path
            publish(tmp_path, final)
        finally:
            tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes, *, what: str | None = None) -> Path:
    with staged_path(Path(path), what=what) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: Path, data: Any) -> Path:
    return write_bytes_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


# ------------------------------------------------------------------------------------------------
# Job storage: one interface, a local directory (default) or an S3-compatible object store.


class Storage:
    """Where job files live, addressed by keys like ``jobs/<job id>/story.mp4``.

    Every write is atomic from a reader's view: a key holds the old object, the new one or nothing,
    never half of one. Workers never assume a shared disk: they read through ``readable_path`` (the
    file itself here, a download into the task's scratch folder for an object store).
    """

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        raise NotImplementedError

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        """Store a finished local file under ``key``; ``path`` may be moved away (it is the caller's temp)."""
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def readable_path(self, key: str, scratch: Path) -> Path:
        """A local file with the object's bytes, to read (never to write): the stored file itself for a
        local store, a copy downloaded into ``scratch`` (the task's temp folder) for an object store."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def size(self, key: str) -> int | None:
        """Bytes of the object, or None when there is none."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> int:
        raise NotImplementedError

    def list_prefix(self, prefix: str) -> list[str]:
        """Keys of the objects under ``prefix/`` (recursively), sorted."""
        raise NotImplementedError

    def url(self, key: str) -> str:
        """A stable reference for reports (file:// URI, public URL, or s3://bucket/key); not a download link."""
        raise NotImplementedError

    def presigned_url(self, key: str, ttl_s: int, *, filename: str | None = None,
                      content_type: str | None = None) -> str | None:
        """A time-limited download URL anyone holding it may GET (Range works), or None when this store
        cannot make one (a local folder: the API serves the file itself)."""
        return None

    def open_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes ``start``..``end`` (inclusive; None = to the end) of an object, in chunks."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise ``OSError`` when the store cannot be written (readiness probes, start-up)."""


class LocalStorage(Storage):
    """A directory on a local file system; every write is atomic (temp file + rename)."""

    def __init__(self, root: Path, public_base_url: str | None = None):
        self.root = Path(root)
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None

    def path(self, key: str) -> Path:
        parts = [p for p in key.split("/") if p]
        if not parts or any(p in (".", "..") or "\\" in p for p in parts) or key.startswith("/"):
            raise ValueError(f"bad storage key {key!r}")
        return self.root.joinpath(*parts)

    def local_path(self, key: str) -> Path:
        """The file behind ``key`` (local store only: the API serves it, the file job store locks beside it)."""
        return self.path(key)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        target = self.path(key)
        with self._writing(key, target):
            write_bytes_atomic(target, data, what=key)

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        target = self.path(key)
        with self._writing(key, target):
            try:
                publish(path, target)  # same file system: an atomic rename
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                with staged_path(target, what=key) as tmp:  # another file system: copy, then rename
                    shutil.copyfile(path, tmp)
                Path(path).unlink(missing_ok=True)

    @contextlib.contextmanager
    def _writing(self, key: str, target: Path) -> Iterator[None]:
        """Make ``target``'s folder for one write; if the write fails, remove the folders this call
        made that are still empty (no job folder is left behind by a failed first write), and
        report no space left as ``StorageFull`` naming ``key``."""
        with disk_full_as_storage_full(key):
            created = _make_folders(target.parent)
            try:
                yield
            except BaseException:
                _remove_empty(created)
                raise

    def get_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def readable_path(self, key: str, scratch: Path) -> Path:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(f"no object {key!r} in the store")
        return path

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int | None:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        folder = self.path(prefix)
        if not folder.exists():
            return 0
        count = sum(1 for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        return count

    def list_prefix(self, prefix: str) -> list[str]:
        folder = self.path(prefix)
        if not folder.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file())

    def url(self, key: str) -> str:
        if self.public_base_url:
            return f"{self.public_base_url}/{key}"
        return self.path(key).resolve().as_uri()

    def open_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        with self.path(key).open("rb") as fh:
            fh.seek(start)
            left = None if end is None else end - start + 1
            while left is None or left > 0:
                chunk = fh.read(1 << 20 if left is None else min(1 << 20, left))
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        probe = create_temp_beside(self.root / "probe")
        probe.unlink()


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the ones this call made, deepest first
    (a folder another process makes meanwhile is not counted)."""
    missing = []
    while not folder.is_dir() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    created: list[Path] = []
    try:
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                if not path.is_dir():
                    raise
                continue
            created.append(path)
    except BaseException:
        _remove_empty(created[::-1])
        raise
    return created[::-1]


def _remove_empty(folders: list[Path]) -> None:
    """rmdir each folder (deepest first) while it is empty; stop at the first that is not."""
    for path in folders:
        try:
            path.rmdir()
        except OSError:
            return


def open_storage(settings) -> Storage:
    """The job store configured in settings: ``storage.backend`` local (default) or s3."""
    if settings.storage.backend == "s3":
        from pipeline.s3 import S3Storage

        return S3Storage.from_settings(settings)
    return LocalStorage(settings.store_root, settings.storage.public_base_url)
