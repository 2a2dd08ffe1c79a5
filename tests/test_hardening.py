"""The API as an attacker and a careless client would use it (issue 11): auth before the body,
quotas and rate limits that hold across requests and processes, the photo never stored as
uploaded, every option refused at submit, security headers, keys from the CLI, `alive serve`
itself (demo key once, SIGTERM stops its workers) and the README's curl example, verbatim.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests import corpus
from tests.deadlines import scaled
from tests.worker_fixtures import REPO, WorkerEnv

MARKERS = (corpus.GPS_MARKER.encode(), corpus.COMMENT_MARKER, corpus.XMP_MARKER)


def _postgres_url():
    from tests.test_api import _postgres_url as make

    return make()


def _env(tmp_path, data_dir, backend="sqlite", **api):
    overrides = {"ALIVE_JOBS__STORE": "database"}
    if backend == "postgresql":
        url = _postgres_url()
        if url is None:
            pytest.skip("PostgreSQL at 127.0.0.1:5432 does not answer")
        overrides["ALIVE_JOBS__DATABASE_URL"] = url
    env = WorkerEnv(tmp_path / "d", data_dir / "models", **overrides)
    if api:
        env.settings = env.settings.model_copy(update={"api": env.settings.api.model_copy(update=api)})
    return env


@pytest.fixture
def api_env(tmp_path, data_dir):
    from service import db
    from workers.client import connect

    env = _env(tmp_path, data_dir)
    connect(env.settings)
    yield env
    env.close()
    db.dispose_engines()


def _client(env, key=None, **api):
    from service.api import create_app

    settings = env.settings.model_copy(update={"api": env.settings.api.model_copy(update=api)}) if api else env.settings
    client = TestClient(create_app(settings), base_url="http://localhost")
    if key:
        client.headers["Authorization"] = f"Bearer {key}"
    return client


def _key(env, **limits):
    from service import db

    url = db.database_url(env.settings)
    db.migrate(url)
    _, plain = db.create_api_key(url, "t", **{"rate_limit_per_minute": 10_000, **limits})
    return plain


def _jobs(env) -> int:
    from service import db

    return sum(db.job_counts(db.database_url(env.settings)).values())


# ------------------------------------------------------------------------------------------------
# authentication before the body


def test_a_wrong_key_gets_401_before_a_byte_of_the_body_is_read(api_env):
    """Finding 5: a 19 MB body with a wrong key used to be read in full before the 401."""
    from service.api import create_app

    app = create_app(api_env.settings)
    reads, sent = [], []

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": b"x" * 65536, "more_body": True}

    async def send(message):
        sent.append(message)

    for headers in ([(b"authorization", b"Bearer alv_wrongwrongwrong")], []):
        reads.clear(), sent.clear()
        scope = {"type": "http", "method": "POST", "path": "/v1/animations", "raw_path": b"/v1/animations",
                 "query_string": b"", "root_path": "", "scheme": "http", "server": ("localhost", 80),
                 "client": ("198.51.100.7", 5000), "http_version": "1.1",
                 "headers": [(b"host", b"localhost"), (b"content-length", b"19000000"),
                             (b"content-type", b"multipart/form-data; boundary=x"), *headers]}
        asyncio.run(app(scope, receive, send))
        assert sent[0]["status"] == 401 and reads == []
        body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
        assert body["error"]["code"] in ("invalid_api_key", "missing_api_key")


def test_guessing_keys_is_rate_limited_per_address(api_env):
    client = _client(api_env, unauthenticated_rate_per_minute=5)
    codes = [client.get("/v1/animations/x", headers={"Authorization": "Bearer alv_guess" + str(i) * 8}).status_code
             for i in range(7)]
    assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]
    shared = client.get("/s/nosuchtoken")  # the same address, a route without a key
    assert shared.status_code == 429 and int(shared.headers["Retry-After"]) >= 1


# ------------------------------------------------------------------------------------------------
# the quota under parallel uploads, on a real server


class LiveServer:
    """uvicorn in a thread on a free port (real HTTP, real concurrency)."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", limit_concurrency=100))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + scaled(30)
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(scaled(30))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_twenty_parallel_uploads_against_a_quota_of_four_accept_exactly_four(tmp_path, data_dir, backend):
    """Finding 3: 12 parallel uploads against max_concurrent_jobs 4 were all accepted."""
    import httpx

    from service import db
    from service.api import create_app
    from workers.client import connect

    env = _env(tmp_path, data_dir, backend)
    try:
        connect(env.settings)
        key = _key(env, max_concurrent_jobs=4)
        photo = corpus.plain_jpeg((96, 96))
        with LiveServer(create_app(env.settings)) as live:
            barrier = threading.Barrier(20)

            def upload(i):
                with httpx.Client(base_url=f"http://localhost:{live.port}", timeout=scaled(60)) as http:
                    barrier.wait()
                    return http.post("/v1/animations", headers={"Authorization": f"Bearer {key}"},
                                     files={"image": (f"{i}.jpg", photo, "image/jpeg")}, data={"engine": "tiny"})

            with concurrent.futures.ThreadPoolExecutor(20) as pool:
                replies = list(pool.map(upload, range(20)))
        codes = sorted(r.status_code for r in replies)
        assert codes == [202] * 4 + [429] * 16, [r.text for r in replies if r.status_code not in (202, 429)]
        assert {r.json()["error"]["code"] for r in replies if r.status_code == 429} == {"too_many_jobs"}
        url = db.database_url(env.settings)
        key_id = db.find_api_key(url, key).id
        assert db.count_active_jobs(url, key_id) == 4 and _jobs(env) == 4  # refused uploads left nothing
    finally:
        env.close()
        db.dispose_engines()


# ------------------------------------------------------------------------------------------------
# privacy: only sanitised pixels are stored


def _files(root: Path):
    for path in root.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        yield path


def _marker_hits(root: Path) -> list[str]:
    hits = []
    for path in _files(root):
        data = path.read_bytes()
        hits += [f"{path.relative_to(root)}: {m!r}" for m in MARKERS if m in data]
    return hits


@pytest.mark.slow
def test_the_photo_never_touches_disk_as_uploaded(api_env):
    """Finding 4: the upload sat in jobs/<id>/source, 0644, with its EXIF, GPS and comment."""
    from pipeline.jobs import Keys

    photo = corpus.rotated_jpeg_with_everything()
    assert all(m in photo for m in MARKERS)
    client = _client(api_env, _key(api_env))
    reply = client.post("/v1/animations", files={"image": ("p.jpg", photo, "image/jpeg")},
                        data={"engine": "tiny", "duration_s": "0.3"})
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["id"]
    assert reply.json()["status"] == "queued"  # no worker yet: the job waits in the queue
    store = api_env.settings.store_root
    assert not (store / Keys(job_id).source).exists() and (store / Keys(job_id).clean).exists()
    assert _marker_hits(api_env.data_dir) == []
    api_env.start_worker("cpu,gpu")
    deadline = time.monotonic() + scaled(120)
    while (doc := client.get(f"/v1/animations/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, doc
        time.sleep(0.3)
    assert doc["status"] == "succeeded", doc
    assert _marker_hits(api_env.data_dir) == []
    assert not (store / Keys(job_id).clean).exists()


# ------------------------------------------------------------------------------------------------
# every option is checked at submit


def test_everything_a_job_could_fail_on_before_generation_is_refused_at_upload(api_env, sample_photo):
    """Finding 5/6: a bad language or sound file failed only at encode; a 0-byte or text file got 202."""
    client = _client(api_env, _key(api_env), engines_allowed=["tiny"])
    good = sample_photo.read_bytes()
    cases = [
        ({"image": ("empty.jpg", b"", "image/jpeg")}, {}, None),
        ({"image": ("notes.jpg", b"just some text, not a photo\n" * 20, "image/jpeg")}, {}, None),
        ({"image": ("p.jpg", good, "image/jpeg")}, {"language": "xx"}, "bad_option"),
        ({"image": ("p.jpg", good, "image/jpeg"), "audio": ("a.mp3", b"not a sound" * 50, "audio/mpeg")}, {},
         "bad_audio"),
        ({"image": ("p.jpg", good, "image/jpeg")}, {"engine": "svd"}, "engine_not_allowed"),
        ({"image": ("p.jpg", good, "image/jpeg")}, {"engine": "motion"}, "engine_not_allowed"),
    ]
    for files, form, code in cases:
        reply = client.post("/v1/animations", files=files, data={"engine": "tiny", **form})
        error = reply.json()["error"]
        assert reply.status_code == 422, (form, reply.text)
        assert code is None or error["code"] == code, error
        assert not re.search(r"/\w+/\w", error["message"]) and "alive " not in error["message"], error  # no paths/hints
        assert "stabilityai" not in error["message"]
    assert _jobs(api_env) == 0  # nothing was created for any of them


def test_client_errors_carry_no_paths_model_ids_or_cli_hints():
    from service.api import public_error

    raw = {"code": "model_unavailable", "type": "ModelUnavailable",
           "message": "stabilityai/stable-video-diffusion-img2vid-xt is not in /root/.cache/hub; run `alive models pull`"}
    assert "stabilityai" not in public_error(raw)["message"] and "alive" not in public_error(raw)["message"]
    other = public_error({"code": "encode_failed", "message": "ffmpeg could not write /srv/x/y/z.mp4; use `alive x`"})
    assert "/srv" not in other["message"] and "alive x" not in other["message"]


# ------------------------------------------------------------------------------------------------
# configuration that assumes a hostile network


def test_security_headers_local_docs_and_trusted_hosts(api_env):
    client = _client(api_env)
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "sha256-" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    for reply in (page, client.get("/healthz"), client.get("/v1/animations/x")):
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["x-frame-options"] == "DENY" and reply.headers["referrer-policy"] == "no-referrer"
    docs = client.get("/docs").text
    assert "cdn" not in docs.lower() and "<script>" not in docs
    for asset in re.findall(r'(?:src|href)="(/[^"]+)"', docs):
        assert client.get(asset).status_code == 200, asset
    assert "?key=" not in page.text and "location.search" not in page.text  # keys never travel in URLs

    evil = client.get("/healthz", headers={"Host": "evil.example"})
    assert evil.status_code == 400  # links would be built from this Host: refused

    off = _client(api_env, docs=False)
    assert off.get("/docs").status_code == 404 and off.get("/openapi.json").status_code == 404


def test_links_use_public_url_whatever_the_host_header(api_env, sample_photo):
    key = _key(api_env)
    client = _client(api_env, key, public_url="https://alive.example")
    reply = client.post("/v1/animations", files={"image": ("p.jpg", sample_photo.read_bytes(), "image/jpeg")},
                        data={"engine": "tiny"}, headers={"Host": "evil.example"})
    assert reply.status_code == 202 and reply.json()["status_url"].startswith("https://alive.example/v1/")


def test_metrics_token_and_cache(api_env, sample_photo):
    client = _client(api_env, _key(api_env), metrics_token="s3cret", metrics_cache_s=600)
    assert client.get("/metrics").status_code == 401
    auth = {"Authorization": "Bearer s3cret"}
    first = client.get("/metrics", headers=auth).text
    assert 'alive_jobs{status="queued"} 0' in first
    client.post("/v1/animations", files={"image": ("p.jpg", sample_photo.read_bytes(), "image/jpeg")},
                data={"engine": "tiny"})
    assert client.get("/metrics", headers=auth).text == first  # served from the cache, no new query


# ------------------------------------------------------------------------------------------------
# keys from the CLI


def test_keys_create_list_revoke_round_trip(api_env):
    from typer.testing import CliRunner

    from pipeline.cli import app

    runner = CliRunner()
    env = {"ALIVE_DATA_DIR": str(api_env.data_dir)}
    made = runner.invoke(app, ["keys", "create", "--name", "shop", "--rate", "50", "--max-jobs", "2"], env=env)
    assert made.exit_code == 0, made.output
    plain = re.search(r"key\s+(alv_\S+)", made.output).group(1)
    secret = re.search(r"webhook secret\s+(whsec_\S+)", made.output).group(1)
    key_id = int(re.search(r"id\s+(\d+)", made.output).group(1))
    listed = runner.invoke(app, ["keys", "list", "--json"], env=env)
    rows = {r["id"]: r for r in json.loads(listed.output)}
    assert rows[key_id]["name"] == "shop" and rows[key_id]["max_concurrent_jobs"] == 2
    assert plain not in listed.output and secret not in listed.output  # shown once, never again

    client = _client(api_env, plain)
    assert client.get("/v1/animations/" + "0" * 32).status_code == 404  # the key works
    quiet = runner.invoke(app, ["keys", "create", "-q"], env=env)
    assert re.fullmatch(r"alv_\S+\n", quiet.output)
    rotated = runner.invoke(app, ["keys", "rotate-secret", str(key_id)], env=env)
    assert rotated.exit_code == 0 and rotated.output.strip().startswith("whsec_") and secret not in rotated.output

    assert runner.invoke(app, ["keys", "revoke", str(key_id)], env=env).exit_code == 0
    assert client.get("/v1/animations/" + "0" * 32).json()["error"]["code"] == "invalid_api_key"
    again = runner.invoke(app, ["keys", "revoke", str(key_id)], env=env)
    assert again.exit_code == 2 and "no live API key" in again.output


def test_webhook_secrets_are_encrypted_at_rest(api_env):
    from service import db

    url = db.database_url(api_env.settings)
    db.migrate(url)
    row, _ = db.create_api_key(url, "w")
    with db.session(url, readonly=True) as s:
        stored = s.get(db.ApiKey, row.id).webhook_secret
    assert stored.startswith("enc:") and row.plain_webhook_secret not in stored
    assert db.unseal_secret(url, stored) == row.plain_webhook_secret
    key_file = api_env.data_dir / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


# ------------------------------------------------------------------------------------------------
# `alive serve` as a process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """`alive serve` in its own process, on a free port, in a private data dir."""

    def __init__(self, data_dir: Path, *args: str):
        self.port = _free_port()
        self.data_dir = data_dir
        self.log = data_dir.parent / f"serve-{self.port}.log"
        env = {**os.environ, "ALIVE_DATA_DIR": str(data_dir), "ALIVE_ENCODE__PRESET": "veryfast",
               "PYTHONPATH": str(REPO)}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", "--port", str(self.port),
                                          *args], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + scaled(120)
        while b"Uvicorn running" not in self.log.read_bytes():
            assert self.proc.poll() is None, self.output
            assert time.monotonic() < deadline, self.output
            time.sleep(0.2)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self) -> list[int]:
        kids = []
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
            except OSError:
                continue
            if re.search(rf"^PPid:\s+{self.proc.pid}$", text, re.M):
                kids.append(int(status.parent.name))
        return kids

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(scaled(60))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def _alive_processes_gone(pids: list[int]) -> bool:
    return all(not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
               for pid in pids)


@pytest.fixture
def serve_dir(tmp_path, data_dir):
    folder = tmp_path / "serve-data"
    folder.mkdir()
    (folder / "models").symlink_to(data_dir / "models", target_is_directory=True)
    yield folder
    from workers.broker import embedded_broker

    embedded_broker(folder).stop()


@pytest.mark.slow
def test_serve_prints_a_demo_key_once_as_a_header_and_sigterm_stops_its_workers(serve_dir):
    first = Serve(serve_dir)
    try:
        deadline = time.monotonic() + scaled(60)
        while len(first.children()) < 3:  # gpu, cpu and webhooks workers
            assert time.monotonic() < deadline, first.output
            time.sleep(0.2)
        workers = first.children()
        out = first.output
        assert re.search(r"Authorization: Bearer alv_\S+", out) and "?key=" not in out
    finally:
        code = first.stop(signal.SIGTERM)
    deadline = time.monotonic() + scaled(60)
    while not _alive_processes_gone(workers):
        assert time.monotonic() < deadline, f"workers {workers} outlived `alive serve` (exit {code})"
        time.sleep(0.2)
    second = Serve(serve_dir, "--no-workers")
    try:
        assert "Authorization: Bearer" not in second.output and "alive keys" in second.output
        assert second.children() == []
    finally:
        second.stop()
    private = [p for p in _files(serve_dir) if stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert private == [], "files readable by others: " + ", ".join(str(p) for p in private)
    open_dirs = [p for p in serve_dir.rglob("*") if p.is_dir() and not p.is_symlink()
                 and stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert open_dirs == [] and stat.S_IMODE(serve_dir.stat().st_mode) == 0o700


@pytest.mark.slow
def test_two_serve_processes_share_one_rate_limit_and_a_restart_keeps_it(serve_dir):
    from typer.testing import CliRunner

    from pipeline.cli import app

    a = Serve(serve_dir, "--no-workers")
    b = Serve(serve_dir, "--no-workers")
    try:
        made = CliRunner().invoke(app, ["keys", "create", "-q", "--rate", "6"], env={"ALIVE_DATA_DIR": str(serve_dir)})
        key = made.output.strip()
        import httpx

        def get(server):
            return httpx.get(f"http://127.0.0.1:{server.port}/v1/animations/{'0' * 32}",
                             headers={"Authorization": f"Bearer {key}"}, timeout=scaled(30))

        codes = [get(server).status_code for server in (a, b) * 4]
        assert codes == [404] * 6 + [429, 429], codes  # one window of 6 between the two processes
        a.stop()
        a = Serve(serve_dir, "--no-workers")
        assert get(a).status_code == 429  # a restart does not reset it
    finally:
        a.stop()
        b.stop()


def _readme_curl_block() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("End to end with curl")
    return re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)


@pytest.mark.slow
def test_the_readme_curl_example_pasted_verbatim_ends_with_a_verified_video(serve_dir, tmp_path):
    """Finding 6: the README downloaded the video 2 s after submitting: a JSON error saved as story.mp4."""
    server = Serve(serve_dir)
    try:
        block = _readme_curl_block()
        assert block.count("http://127.0.0.1:8000") == 1  # one place names the server
        script = block.replace("http://127.0.0.1:8000", f"http://127.0.0.1:{server.port}")
        work = tmp_path / "user"
        work.mkdir()
        (work / ".venv").symlink_to(REPO / ".venv", target_is_directory=True)
        (work / "examples").symlink_to(REPO / "examples", target_is_directory=True)
        env = {**os.environ, "ALIVE_DATA_DIR": str(serve_dir)}
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True,
                              text=True, timeout=scaled(300))
        assert done.returncode == 0, done.stdout + done.stderr + server.output[-3000:]
        assert re.search(r"^state\s+Trusted", done.stdout, re.M), done.stdout
        assert (work / "story.mp4").read_bytes()[4:8] == b"ftyp"
    finally:
        server.stop()
