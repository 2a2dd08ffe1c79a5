"""Three "hosts" that share no folder: the API, a gpu worker and a cpu worker, each with its own
``ALIVE_DATA_DIR``, sharing only the machine's Redis (a database index of their own), a fresh
PostgreSQL database and a real S3 server (SeaweedFS). Jobs go in over HTTP, the videos come back
through presigned links and verify Trusted against the anchors every host was given, and after
the run no data dir holds any file of any job (only caches and the beat's schedule)."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deadlines import scaled
from tests.worker_fixtures import REPO, machine_redis_db

pytestmark = pytest.mark.slow

REDIS_DB = 11
PG = {"host": "127.0.0.1", "port": 5432, "dbname": "postgres", "connect_timeout": 3}


@pytest.fixture
def postgres_url():
    psycopg = pytest.importorskip("psycopg")
    name = f"alive_multihost_{secrets.token_hex(5)}"
    try:
        with psycopg.connect(user="postgres", autocommit=True, **PG) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 does not answer ({exc})")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    from service import db

    db.dispose_engines()
    with psycopg.connect(user="postgres", autocommit=True, **PG) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def redis_url():
    with machine_redis_db(REDIS_DB) as url:
        yield url


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Host:
    """One process with its own data dir (and its own log, kept outside that dir)."""

    def __init__(self, name: str, root: Path, env: dict[str, str]):
        self.name, self.data_dir = name, root / name
        self.data_dir.mkdir(parents=True)
        self.log = root / f"{name}.log"
        self.env = {**env, "ALIVE_DATA_DIR": str(self.data_dir)}
        self.proc: subprocess.Popen | None = None

    def run(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=scaled(120))
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def start(self, *args: str) -> "Host":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], env=self.env, cwd=REPO,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_for(self, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + scaled(timeout)
        while time.monotonic() < deadline:
            if self.log.exists() and text in self.log.read_text(errors="replace"):
                return
            assert self.proc.poll() is None, f"{self.name} exited:\n{self.log.read_text(errors='replace')[-3000:]}"
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: no {text!r} after {timeout} s:\n{self.log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(scaled(30))
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def test_api_gpu_and_cpu_hosts_share_no_folder(tmp_path, data_dir, s3_server, postgres_url, redis_url,
                                                 sample_photo):
    import httpx

    from pipeline.engines.tiny import ensure_tiny_svd
    from pipeline.provenance import init_credentials, verify

    credentials = init_credentials(tmp_path / "secrets")  # shared as files, as a secret volume would be
    bucket = s3_server.new_bucket("multihost")
    shared_models = data_dir / "models"
    ensure_tiny_svd(shared_models)
    common = {
        **os.environ,
        "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
        "ALIVE_STORAGE__BACKEND": "s3", "ALIVE_STORAGE__S3__ENDPOINT_URL": s3_server.endpoint_url,
        "ALIVE_STORAGE__S3__BUCKET": bucket,
        "ALIVE_JOBS__STORE": "database", "ALIVE_JOBS__DATABASE_URL": postgres_url,
        "ALIVE_WORKER__BROKER_URL": redis_url,
        **credentials.env(),
        "ALIVE_API__SECRET_KEY_FILE": str(tmp_path / "secrets" / "webhook.key"),
        "ALIVE_API__ENGINES_ALLOWED": '["tiny", "motion"]',
        "ALIVE_ENCODE__PRESET": "veryfast",
    }
    port = _free_port()
    api, gpu, cpu = (Host(name, tmp_path, common) for name in ("api", "gpu", "cpu"))
    (gpu.data_dir / "models").symlink_to(shared_models)  # a model cache, not job data
    hosts = [api, gpu, cpu]
    try:
        api.start("serve", "--no-workers", "--host", "127.0.0.1", "--port", str(port))
        api.wait_for("Uvicorn running")
        key = re.search(r"alv_[A-Za-z0-9_\-]+", api.run("keys", "create", "--name", "multihost", "--max-jobs", "10", "--rate", "100000")).group(0)
        gpu.start("worker", "-Q", "gpu", "--name", "gpu@%h")
        cpu.start("worker", "-Q", "cpu,webhooks", "--beat", "--name", "cpu@%h")
        for host in (gpu, cpu):
            host.wait_for(" ready.")
        client = httpx.Client(base_url=f"http://localhost:{port}", headers={"Authorization": f"Bearer {key}"},
                              timeout=60)
        ids = []
        for seed in range(5):
            with open(sample_photo, "rb") as fh:
                made = client.post("/v1/animations", files={"image": ("p.jpg", fh, "image/jpeg")},
                                   data={"engine": "tiny", "duration_s": "0.3", "seed": str(seed)})
            assert made.status_code == 202, made.text
            ids.append(made.json()["id"])
        deadline = time.monotonic() + scaled(300)
        docs = {}
        while time.monotonic() < deadline and len(docs) < len(ids):
            for job_id in ids:
                doc = client.get(f"/v1/animations/{job_id}").json()
                assert "status" in doc, doc
                if doc["status"] in ("succeeded", "failed", "blocked", "rejected"):
                    docs[job_id] = doc
            time.sleep(0.5)
        assert len(docs) == len(ids), ("not finished", {j: client.get(f"/v1/animations/{j}").json()["status"]
                                                         for j in ids if j not in docs})
        assert {d["status"] for d in docs.values()} == {"succeeded"}, docs
        anchors = Path(credentials.trust_anchors).read_bytes()
        for job_id in ids:
            answer = client.get(f"/v1/animations/{job_id}/video", follow_redirects=False)
            assert answer.status_code == 302, answer.text
            link = answer.headers["location"]
            assert link.startswith(s3_server.endpoint_url) and "X-Amz-Signature" in link
            video = httpx.get(link, timeout=60)  # anyone holding the link, no API key
            assert video.status_code == 200 and video.content[4:8] == b"ftyp"
            path = tmp_path / f"{job_id}.mp4"
            path.write_bytes(video.content)
            report = verify(path, anchors)
            assert report.state == "Trusted", report
            part = httpx.get(link, headers={"Range": "bytes=0-99"}, timeout=60)
            assert part.status_code == 206 and part.content == video.content[:100]
    finally:
        for host in reversed(hosts):
            host.stop()
    leftovers = {}
    for host in hosts:
        files = [p for p in host.data_dir.rglob("*") if p.is_file() and "models" not in p.relative_to(host.data_dir).parts]
        job_files = [str(p.relative_to(host.data_dir)) for p in files
                     if any(j in str(p) for j in ids) or p.relative_to(host.data_dir).parts[0] in ("store", "scratch")]
        if job_files:
            leftovers[host.name] = job_files
    assert leftovers == {}, leftovers
    stored = s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0)
    assert stored == 5 * 4, stored  # story.mp4, poster.jpg, preview.webp, report.json per job: in S3 only
    print("hosts' data dirs after 5 jobs:", {h.name: sorted(str(p.relative_to(h.data_dir))
                                                             for p in h.data_dir.rglob("*") if p.is_file())
                                              for h in hosts})
