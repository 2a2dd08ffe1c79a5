"""Files on disk: atomic writes, so a reader never sees half a file where a good one is expected."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterator


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
def staged_path(final: Path, suffix: str = ".part") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; it is moved onto ``final`` only if the block succeeds.

    On any exception the temporary file is removed and ``final`` is left as it was.
    """
    final = Path(final)
    tmp_path = create_temp_beside(final, suffix)
    try:
        yield tmp_path
        publish(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    with staged_path(Path(path)) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: Path, data: Any) -> Path:
    return write_bytes_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


# ------------------------------------------------------------------------------------------------
# Job storage: a small interface so an object store can replace the local directory later.


class Storage:
    """Where job files live, addressed by keys like ``jobs/<job id>/story.mp4``.

    The local implementation below is the default; an object store implements the same methods.
    """

    def put_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def put_file(self, key: str, path: Path) -> None:
        """Store a finished local file under ``key`` (moving it when it can)."""
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def local_path(self, key: str) -> Path:
        """A local file path to read ``key`` from (the file itself for the local store)."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> int:
        raise NotImplementedError

    def url(self, key: str) -> str:
        raise NotImplementedError


class LocalStorage(Storage):
    """A directory on a local or shared file system; every write is atomic."""

    def __init__(self, root: Path, public_base_url: str | None = None):
        self.root = Path(root)
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None

    def path(self, key: str) -> Path:
        parts = [p for p in key.split("/") if p]
        if not parts or any(p in (".", "..") or "\\" in p for p in parts) or key.startswith("/"):
            raise ValueError(f"bad storage key {key!r}")
        return self.root.joinpath(*parts)

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, data)

    def put_file(self, key: str, path: Path) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            publish(path, target)  # same file system: an atomic rename
        except OSError:
            with staged_path(target) as tmp:  # another file system: copy, then rename
                import shutil

                shutil.copyfile(path, tmp)
            Path(path).unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def local_path(self, key: str) -> Path:
        return self.path(key)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        import shutil

        folder = self.path(prefix)
        if not folder.exists():
            return 0
        count = sum(1 for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        return count

    def url(self, key: str) -> str:
        if self.public_base_url:
            return f"{self.public_base_url}/{key}"
        return self.path(key).resolve().as_uri()


def open_storage(settings) -> Storage:
    """The job store configured in settings (the local directory for now)."""
    return LocalStorage(settings.store_root, settings.storage.public_base_url)
