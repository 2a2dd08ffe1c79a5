"""The HTTP API against real workers, on SQLite and (when it answers) PostgreSQL."""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid

import pytest
from fastapi.testclient import TestClient

from pipeline.jobs import Keys
from tests.worker_fixtures import WorkerEnv
from tests.deadlines import scaled

pytestmark = pytest.mark.slow


def _postgres_url() -> str | None:
    try:
        import psycopg

        with psycopg.connect("host=127.0.0.1 dbname=postgres user=postgres connect_timeout=2", autocommit=True) as c:
            name = f"alive_api_{uuid.uuid4().hex[:8]}"
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1/{name}"
    except Exception:  # noqa: BLE001
        return None


@pytest.fixture(params=["sqlite", "postgresql"])
def service(request, tmp_path, data_dir):
    # the tests' webhook receivers listen on loopback: allow-listed, as an on-prem operator would
    overrides = {"ALIVE_JOBS__STORE": "database", "ALIVE_API__WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]'}
    if request.param == "postgresql":
        url = _postgres_url()
        if url is None:
            pytest.skip("PostgreSQL at 127.0.0.1:5432 does not answer")
        overrides["ALIVE_JOBS__DATABASE_URL"] = url
    env = WorkerEnv(tmp_path / "d", data_dir / "models", **overrides)
    from service import db
    from service.api import create_app
    from workers.client import connect

    connect(env.settings)
    app = create_app(env.settings)
    url = db.database_url(env.settings)
    _, key = db.create_api_key(url, "test", rate_limit_per_minute=100_000)
    client = TestClient(app, base_url="http://localhost")
    client.headers["Authorization"] = f"Bearer {key}"
    yield env, client, url
    env.close()
    db.dispose_engines()


def _post(client, photo, **form):
    with open(photo, "rb") as fh:
        return client.post("/v1/animations", files={"image": ("p.jpg", fh, "image/jpeg")},
                           data={"engine": "tiny", "duration_s": "0.3", **form})


def _wait(client, job_id, timeout=120):
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        doc = client.get(f"/v1/animations/{job_id}").json()
        if doc["status"] in ("succeeded", "failed", "blocked", "rejected"):
            return doc
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} not finished: {doc}")


def test_upload_poll_download_share_report_delete(service, sample_photo):
    env, client, url = service
    env.start_worker("cpu,gpu")
    created = _post(client, sample_photo, seed="3")
    assert created.status_code == 202 and created.headers["Location"].endswith(created.json()["id"])
    job_id = created.json()["id"]
    doc = _wait(client, job_id)
    assert doc["status"] == "succeeded", doc
    assert doc["c2pa"]["ai_generated"] and doc["c2pa"]["state"] == "Trusted"
    assert doc["c2pa"]["digital_source_type"].endswith("trainedAlgorithmicMedia")
    assert doc["moderation"]["image"]["decision"] == "allow"

    video = client.get(f"/v1/animations/{job_id}/video")
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    part = client.get(f"/v1/animations/{job_id}/video", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and len(part.content) == 100 and part.content == video.content[:100]
    assert client.get(f"/v1/animations/{job_id}/poster").headers["content-type"] == "image/jpeg"

    link = client.post(f"/v1/animations/{job_id}/share", json={"ttl_hours": 1}).json()
    anonymous = TestClient(client.app, base_url="http://localhost")
    assert anonymous.get(f"/s/{link['token']}").content == video.content  # no API key needed
    hide_at = env.settings.api.reports_to_hide
    viewers = [TestClient(client.app, base_url="http://localhost", client=(f"203.0.113.{i}", 4000))
               for i in range(hide_at)]
    for viewer in viewers[:-1]:
        assert viewer.post(f"/s/{link['token']}/reports", json={"reason": "spam"}).status_code == 201
        again = viewer.post(f"/s/{link['token']}/reports", json={"reason": "spam"})  # same viewer: not counted
        assert again.status_code == 200 and again.json()["duplicate"] is True
    assert anonymous.get(f"/s/{link['token']}").status_code == 200  # hide_at - 1 distinct viewers
    last = viewers[-1].post(f"/s/{link['token']}/reports", json={"reason": "nudity", "text": "<b>x</b>"})
    assert last.status_code == 201 and last.json()["hidden"] is True
    hidden = anonymous.get(f"/s/{link['token']}")
    assert hidden.status_code == 403 and hidden.json()["error"]["code"] == "hidden_pending_review"
    listed = client.get(f"/v1/animations/{job_id}/reports").json()
    assert listed["visibility"] == "hidden" and listed["open"] == hide_at
    assert "<b>x</b>" in [r["text"] for r in listed["reports"]]  # stored as text, returned as JSON
    assert client.post(f"/v1/animations/{job_id}/review", json={"decision": "restore"}).json() == {"visibility": "visible"}
    assert anonymous.get(f"/s/{link['token']}").status_code == 200
    assert client.delete(f"/v1/animations/{job_id}/share/{link['token']}").status_code == 204
    assert anonymous.get(f"/s/{link['token']}").status_code == 404  # revoked
    link = client.post(f"/v1/animations/{job_id}/share", json={"ttl_hours": 1}).json()

    short = client.post(f"/v1/animations/{job_id}/share", json={"ttl_hours": 0.0003}).json()  # ~1 s
    time.sleep(1.5)
    gone = anonymous.get(f"/s/{short['token']}")
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "share_expired"

    folder = env.settings.store_root / Keys(job_id).prefix
    assert folder.is_dir()
    assert client.delete(f"/v1/animations/{job_id}").status_code == 200  # the body says what is kept (the manifest)
    assert not folder.exists()
    assert client.get(f"/v1/animations/{job_id}").status_code == 404
    assert anonymous.get(f"/s/{link['token']}").status_code == 404


def test_auth_errors_and_one_error_format(service, sample_photo):
    _, client, _ = service
    anonymous = TestClient(client.app, base_url="http://localhost")
    for reply, code in ((anonymous.get("/v1/animations/abc"), "missing_api_key"),
                        (anonymous.get("/v1/animations/abc", headers={"Authorization": "Bearer alv_nope"}),
                         "invalid_api_key"),
                        (client.get("/v1/animations/" + "0" * 32), "not_found"),
                        (client.post("/v1/animations", data={"engine": "sora"}), "invalid_request")):
        body = reply.json()
        assert set(body) == {"error"} and body["error"]["code"] == code, body
        assert body["error"]["status"] == reply.status_code


def test_idempotency_quota_rate_limit_and_size_limit(service, sample_photo):
    env, client, url = service
    from service import db

    a = client.post("/v1/animations", headers={"Idempotency-Key": "k1"},
                    files={"image": ("p.jpg", sample_photo.read_bytes(), "image/jpeg")}, data={"engine": "tiny"})
    b = client.post("/v1/animations", headers={"Idempotency-Key": "k1"},
                    files={"image": ("p.jpg", sample_photo.read_bytes(), "image/jpeg")}, data={"engine": "tiny"})
    assert a.status_code == 202 and b.status_code == 200 and a.json()["id"] == b.json()["id"]

    _, limited = db.create_api_key(url, "limited", rate_limit_per_minute=3, max_concurrent_jobs=1)
    other = TestClient(client.app, base_url="http://localhost")
    other.headers["Authorization"] = f"Bearer {limited}"
    assert _post(other, sample_photo).status_code == 202  # no worker runs: it stays queued
    quota = _post(other, sample_photo)
    assert quota.status_code == 429 and quota.json()["error"]["code"] == "too_many_jobs"
    other.get("/v1/animations/" + "0" * 32)
    rate = other.get("/v1/animations/" + "0" * 32)
    assert rate.status_code == 429 and rate.json()["error"]["code"] == "rate_limited"
    assert int(rate.headers["Retry-After"]) >= 1

    big = b"\xff\xd8" + b"0" * (env.settings.intake.max_bytes + 100_000)
    too_big = client.post("/v1/animations", files={"image": ("big.jpg", big, "image/jpeg")})
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "too_large"


def test_signed_webhook_is_delivered_and_logged(service, sample_photo):
    env, client, url = service
    from service import db
    from service.webhooks import verify_signature

    received = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env.start_worker("cpu,gpu,webhooks")
        job_id = _post(client, sample_photo,
                       callback_url=f"http://127.0.0.1:{server.server_address[1]}/hook").json()["id"]
        assert _wait(client, job_id)["status"] == "succeeded"
        deadline = time.monotonic() + scaled(30)
        while not received and time.monotonic() < deadline:
            time.sleep(0.2)
        assert received, "no webhook arrived"
        headers, body = received[0]
        with db.session(url, readonly=True) as s:
            secret = db.unseal_secret(url, s.get(db.ApiKey, db.get_job(url, job_id).api_key_id).webhook_secret)
        assert verify_signature(secret, headers["X-Alive-Timestamp"], body, headers["X-Alive-Signature"])
        assert not verify_signature(secret, headers["X-Alive-Timestamp"], body + b" ", headers["X-Alive-Signature"])
        assert json.loads(body)["event"] == "animation.succeeded"
        time.sleep(0.5)
        assert [d.delivered for d in db.deliveries(url, job_id)] == [True]
    finally:
        server.shutdown()


def test_ops_endpoints(service):
    _, client, _ = service
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    metrics = client.get("/metrics").text
    assert 'alive_jobs{status="succeeded"}' in metrics and "alive_stage_seconds_count" in metrics
    schema = client.get("/openapi.json").json()
    assert {"/v1/animations", "/v1/animations/{job_id}", "/s/{token}"} <= set(schema["paths"])
    assert "Animate a photo" in client.get("/").text or "<title>alive" in client.get("/").text


def test_motion_style_is_a_form_field_kept_with_the_job_and_checked(service, sample_photo):
    env, client, _ = service
    from service.stores import open_job_store

    made = _post(client, sample_photo, engine="motion", motion_style="still-camera")
    assert made.status_code == 202, made.text
    assert open_job_store(env.settings).load(made.json()["id"]).options["motion_style"] == "still-camera"
    refused = _post(client, sample_photo, engine="motion", motion_style="wobble")
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_request", refused.text
