"""One small error hierarchy for the whole project.

Every error a user can meet is an ``AliveError``: it carries a stable machine-readable ``code``,
a sentence for humans, and the CLI exit code it maps to. Subclasses also inherit the built-in
meaning (``InputRejected`` is a ``ValueError``) so callers may catch either.
"""

from __future__ import annotations

import errno
from typing import Any


class AliveError(Exception):
    """Base of every error raised on purpose by alive."""

    exit_code: int = 5
    default_code: str = "internal"

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = dict(details or {})

    def to_dict(self) -> dict[str, Any]:
        return {"error": type(self).__name__, "code": self.code, "message": self.message, **self.details}


class ConfigError(AliveError, ValueError):
    """A setting or option is invalid (bad config file, out-of-range parameter)."""

    exit_code = 2
    default_code = "bad_config"


class InputRejected(AliveError, ValueError):
    """The uploaded file is not something we animate (corrupt, too large, animated, ...)."""

    exit_code = 3
    default_code = "rejected"


class ModerationBlocked(AliveError):
    """Moderation decided the image, prompt or generated video must not be published."""

    exit_code = 4
    default_code = "blocked"

    def __init__(self, message: str, *, verdict: Any = None, code: str | None = None):
        details = {"verdict": verdict.to_dict()} if hasattr(verdict, "to_dict") else {}
        super().__init__(message, code=code, details=details)
        self.verdict = verdict


class TransientError(AliveError):
    """A failure that may succeed when retried (resource busy, out of memory, broker away)."""

    default_code = "transient"


#: errno values that mean "no space left": a full disk (ENOSPC) or a user/project quota (EDQUOT).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class StorageFull(TransientError):
    """The store has no room (a full disk, a quota, an object store that refuses for space).

    Retried with backoff (``worker.disk_full_retries``): space usually comes back when cleanup runs
    or an operator frees it. Whatever was half written is removed before this is raised."""

    default_code = "disk_full"

    @classmethod
    def from_os_error(cls, exc: OSError, what: str) -> "StorageFull":
        return cls(f"no space left to write {what} ({exc.strerror or exc}); free space in the store "
                   "or raise its quota, the job is retried", details={"errno": exc.errno})


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


class WorkerLost(AliveError):
    """A stage's attempts kept dying with their worker (killed, out of memory, host lost)."""

    default_code = "worker_lost"


class ModelUnavailable(AliveError):
    """Model weights are not on this machine and may not be downloaded at run time."""

    default_code = "model_unavailable"


class GenerationFailed(AliveError):
    """The generation engine failed for a reason that a retry will not fix."""

    default_code = "generation_failed"


class EncodeFailed(AliveError):
    """ffmpeg failed or produced an empty or unreadable file."""

    default_code = "encode_failed"


class LabelFailed(AliveError):
    """C2PA signing or the verification right after signing failed."""

    default_code = "label_failed"
