"""Real worker processes on a real broker, for integration and fault tests.

``WorkerEnv`` owns one data dir, its embedded Redis (or an external broker URL) and the worker
subprocesses it starts; ``close()`` stops all of them (the fixtures call it), so no process
outlives a test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.settings import load_settings
from workers.broker import embedded_broker
from tests.deadlines import scaled

REPO = Path(__file__).resolve().parent.parent


class WorkerEnv:
    def __init__(self, data_dir: Path, shared_models: Path, broker_url: str | None = None, **overrides):
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        models = data_dir / "models"
        if not models.exists():
            shared_models.mkdir(parents=True, exist_ok=True)
            models.symlink_to(shared_models)  # the tiny model is built once per test session
        self.env = {
            **os.environ,
            "ALIVE_DATA_DIR": str(data_dir),
            "ALIVE_ENCODE__PRESET": "veryfast",
            "ALIVE_WORKER__UNACKED_RESTORE_INTERVAL_S": "1",
            "PYTHONPATH": str(REPO),
        }
        if broker_url:
            self.env["ALIVE_WORKER__BROKER_URL"] = broker_url
        for key, value in overrides.items():
            self.env[key] = str(value)
        sections = {"encode": {"preset": "veryfast"}, "worker": {"broker_url": broker_url, "unacked_restore_interval_s": 1},
                    # the API of a test server offers the tiny engine the tests use
                    "api": {"engines_allowed": ["motion", "tiny", "svd"]}}
        for section, values in _nested(overrides).items():
            sections.setdefault(section, {}).update(values)
        self.settings = load_settings(data_dir=data_dir, **sections)
        self.broker = None if broker_url else embedded_broker(data_dir).start()
        self.workers: list[subprocess.Popen] = []

    def start_worker(self, queues: str = "cpu,gpu", concurrency: int = 1, name: str | None = None,
                     pool: str = "prefork", beat: bool = False, env: dict | None = None) -> subprocess.Popen:
        """``beat``: also run the periodic tasks (the reconciler); ``env``: this worker's own overrides
        (e.g. its own ALIVE_DATA_DIR: workers that share no folder)."""
        name = name or f"w{len(self.workers)}-{queues.replace(',', '-')}"
        log = open(self.data_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "worker", "-Q", queues, "-c", str(concurrency), "--pool", pool,
             "--name", f"{name}@%h", "--loglevel", "INFO", *(["--beat"] if beat else [])],
            env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
        )
        log.close()
        self.workers.append(proc)
        self._wait_ready(name)
        return proc

    def _wait_ready(self, name: str, timeout: float = 60.0) -> None:
        log = self.data_dir / f"{name}.log"
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.exists() and b" ready." in log.read_bytes():
                return
            if self.workers[-1].poll() is not None:
                raise RuntimeError(f"worker {name} exited early:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"worker {name} not ready after {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")

    def stop_worker(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def close(self) -> None:
        for proc in self.workers:
            self.stop_worker(proc, signal.SIGKILL if proc.poll() is None else signal.SIGTERM, timeout=10)
        self.workers.clear()
        if self.broker is not None:
            self.broker.stop()


def _nested(overrides: dict) -> dict:
    """ALIVE_SECTION__KEY=value overrides -> {"section": {"key": value}} for load_settings."""
    out: dict = {}
    for key, value in overrides.items():
        section, name = key.removeprefix("ALIVE_").lower().split("__", 1)
        if isinstance(value, str) and value.startswith(("[", "{")):  # as pydantic-settings reads the env
            import json

            value = json.loads(value)
        out.setdefault(section, {})[name] = value
    return out


@contextlib.contextmanager
def machine_redis_db(db: int):
    """The machine's own Redis (127.0.0.1:6379), database ``db``, flushed before and after; a skip
    saying why when none answers."""
    import pytest
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=db, socket_timeout=2, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis answers on 127.0.0.1:6379 ({exc})")
    client.flushdb()
    try:
        yield f"redis://127.0.0.1:6379/{db}"
    finally:
        client.flushdb()
        client.close()
