"""Rate limits shared by every API process: a sliding one-minute (or one-hour) window in Redis.

The window lives in the broker's Redis (``api.rate_limit_redis_url`` overrides it), so two
``alive serve`` processes on one broker share one limit and a restart does not reset it. One Lua
script per hit trims the window, counts and records atomically, with the Redis server's clock
(hosts whose clocks drift still agree). Keys: ``alive:rl:<bucket>``, expiring with their window.

Buckets: ``key:<id>`` (an API key's requests), ``ip:<hash>`` (a client address on routes without a
key), ``report:<hash>`` (viewer reports per address). Addresses are hashed before they reach Redis.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from pipeline.errors import ConfigError, TransientError
from pipeline.settings import Settings

log = logging.getLogger(__name__)

# KEYS[1] window key; ARGV[1] limit, ARGV[2] window ms, ARGV[3] a unique member.
# Returns {allowed (1/0), retry_after_ms, count}.
_SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local retry = window
  if oldest[2] then retry = tonumber(oldest[2]) + window - now end
  return {0, retry, count}
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return {1, 0, count + 1}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: int
    count: int


def redis_url(settings: Settings) -> str:
    """Where the limits live: the configured URL, else the broker's (or result backend's) Redis."""
    from workers.app import broker_url

    for candidate in (settings.api.rate_limit_redis_url, broker_url(settings), settings.worker.result_backend):
        if candidate and candidate.startswith(("redis://", "rediss://", "redis+socket://", "unix://")):
            return candidate
    raise ConfigError("the API's rate limits need a Redis shared by every API process, and neither the broker "
                      "nor the result backend is Redis: set api.rate_limit_redis_url", code="rate_limit_redis")


def _client(url: str):
    import redis

    if url.startswith("redis+socket://"):  # kombu's spelling of a unix socket
        path = unquote(urlsplit(url).path)
        return redis.Redis(unix_socket_path=path, socket_timeout=2, socket_connect_timeout=2)
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


class RateLimiter:
    """Sliding windows in Redis. ``hit`` raises nothing for an over-limit caller: it says so."""

    def __init__(self, settings: Settings):
        self.url = redis_url(settings)
        self._redis = None
        self._script = None
        self._lock = threading.Lock()

    def _ready(self):
        with self._lock:
            if self._script is None:
                self._redis = _client(self.url)
                self._script = self._redis.register_script(_SLIDING_WINDOW)
            return self._script

    def hit(self, bucket: str, limit: int, window_s: int = 60) -> Decision:
        try:
            allowed, retry_ms, count = self._ready()(keys=[f"alive:rl:{bucket}"],
                                                      args=[limit, window_s * 1000, secrets.token_hex(8)])
        except Exception as exc:  # noqa: BLE001 - redis raises many connection error types
            # Fail closed: a limit that silently stops counting is no limit. The broker is down
            # anyway when this happens (it is the same Redis), so no job could be queued either.
            raise TransientError("the rate limiter's Redis does not answer; try again shortly",
                                 code="rate_limiter_unavailable") from exc
        return Decision(bool(allowed), max(1, -(-int(retry_ms) // 1000)) if not allowed else 0, int(count))

    def reset(self, bucket: str) -> None:
        """Forget a bucket (tests, operators)."""
        self._ready()
        self._redis.delete(f"alive:rl:{bucket}")


def address_bucket(prefix: str, address: str, salt: str) -> str:
    """A bucket name for a client address that does not reveal the address."""
    return f"{prefix}:" + hashlib.sha256(f"{salt}|{address}".encode()).hexdigest()[:32]
