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


@contextlib.contextmanager
def staged_path(final: Path, suffix: str = ".part") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; it is moved onto ``final`` only if the block succeeds.

    On any exception the temporary file is removed and ``final`` is left as it was.
    """
    final = Path(final)
    tmp_path = create_temp_beside(final, suffix)
    try:
        yield tmp_path
        with tmp_path.open("rb+") as fh:  # the data is on disk before the name points at it
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    with staged_path(Path(path)) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: Path, data: Any) -> Path:
    return write_bytes_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode())
