"""Downloads through the HTTP API when job files live in an object store (a real SeaweedFS, see
tests/s3_server.py): a 302 to a presigned URL (``api.download: redirect``) or the bytes streamed
through the API with Range (``proxy``); share links the same way. The finished job is made directly
in the job database and the store; no worker runs."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from pipeline.jobs import JobRecord, Keys, new_job_id
from tests.worker_fixtures import WorkerEnv


@dataclass
class S3Api:
    env: WorkerEnv
    db_url: str
    key: str
    job_id: str
    video: bytes
    poster: bytes
    storage: object
    endpoint_url: str

    def client(self, download: str, key: str | None = "own") -> TestClient:
        from service.api import create_app

        settings = self.env.settings
        settings = settings.model_copy(update={"api": settings.api.model_copy(update={"download": download})})
        client = TestClient(create_app(settings), base_url="http://localhost", follow_redirects=False)
        if key:
            client.headers["Authorization"] = f"Bearer {self.key if key == 'own' else key}"
        return client


@pytest.fixture
def s3_api(tmp_path, data_dir, s3_server):
    from service import db
    from service.stores import open_job_store
    from workers.client import connect

    s3 = {"endpoint_url": s3_server.endpoint_url, "bucket": s3_server.new_bucket("api"), "prefix": "alive"}
    env = WorkerEnv(tmp_path / "d", data_dir / "models", ALIVE_JOBS__STORE="database", ALIVE_STORAGE__BACKEND="s3",
                    ALIVE_STORAGE__S3=json.dumps(s3))
    try:
        connect(env.settings)
        url = db.database_url(env.settings)
        db.migrate(url)
        row, key = db.create_api_key(url, "t", rate_limit_per_minute=100_000)
        jobs = open_job_store(env.settings)
        job_id = new_job_id()
        jobs.create(JobRecord(job_id=job_id, status="succeeded", stage="done"))
        db.attach_job(url, job_id, api_key_id=row.id)
        video, poster = os.urandom(300_000), os.urandom(5_000)
        jobs.storage.put_bytes(Keys(job_id).video, video, content_type="video/mp4")
        jobs.storage.put_bytes(Keys(job_id).poster, poster, content_type="image/jpeg")
        yield S3Api(env, url, key, job_id, video, poster, jobs.storage, s3_server.endpoint_url)
    finally:
        env.close()
        db.dispose_engines()


def _fetch(url: str, headers: dict[str, str] | None = None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as reply:
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def _redirected(reply, s3_api):
    assert reply.status_code == 302, reply.text
    assert reply.headers["cache-control"] == "private, no-store"
    location = reply.headers["location"]
    assert location.startswith(f"{s3_api.endpoint_url}/") and "X-Amz-Signature=" in location
    return location


def test_redirect_gives_a_presigned_url_that_downloads_and_ranges(s3_api):
    client, job = s3_api.client("redirect"), s3_api.job_id
    location = _redirected(client.get(f"/v1/animations/{job}/video"), s3_api)
    status, headers, body = _fetch(location)
    assert status == 200 and body == s3_api.video
    assert headers["Content-Type"] == "video/mp4"
    assert headers["Content-Disposition"] == f'attachment; filename="{job}.mp4"'
    status, headers, body = _fetch(location, {"Range": "bytes=100-199"})
    assert status == 206 and body == s3_api.video[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(s3_api.video)}"

    status, headers, body = _fetch(_redirected(client.get(f"/v1/animations/{job}/poster"), s3_api))
    assert status == 200 and body == s3_api.poster and headers["Content-Type"] == "image/jpeg"
    missing = client.get(f"/v1/animations/{job}/preview")  # never stored: not ready, no redirect to a 404
    assert missing.status_code == 409 and missing.json()["error"]["code"] == "not_ready"
    # the checks in front stay: no key, another key's job, an unknown job
    assert s3_api.client("redirect", key=None).get(f"/v1/animations/{job}/video").status_code == 401
    assert client.get(f"/v1/animations/{'0' * 32}/video").status_code == 404
    # an object store has no local store folder to create or harden
    assert not s3_api.env.settings.store_root.exists()


def test_proxy_streams_with_ranges(s3_api):
    client, job, video = s3_api.client("proxy"), s3_api.job_id, s3_api.video
    whole = client.get(f"/v1/animations/{job}/video")
    assert whole.status_code == 200 and whole.content == video
    assert whole.headers["content-type"] == "video/mp4" and whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-length"] == str(len(video))
    assert whole.headers["content-disposition"] == f'attachment; filename="{job}.mp4"'
    for header, start, end in (("bytes=100-199", 100, 199), ("bytes=299990-", 299990, len(video) - 1),
                               ("bytes=-10", len(video) - 10, len(video) - 1), ("bytes=0-0", 0, 0),
                               ("bytes=299000-999999", 299000, len(video) - 1)):
        part = client.get(f"/v1/animations/{job}/video", headers={"Range": header})
        assert part.status_code == 206, (header, part.status_code)
        assert part.content == video[start:end + 1], header
        assert part.headers["content-range"] == f"bytes {start}-{end}/{len(video)}"
        assert part.headers["content-length"] == str(end - start + 1)
    bad = client.get(f"/v1/animations/{job}/video", headers={"Range": f"bytes={len(video)}-"})
    assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(video)}"
    assert bad.json()["error"]["code"] == "range_not_satisfiable"
    for ignored in ("bytes=5-2", "bytes=0-1,5-6", "items=0-9"):  # invalid or several ranges: the whole file
        reply = client.get(f"/v1/animations/{job}/video", headers={"Range": ignored})
        assert reply.status_code == 200 and reply.content == video, ignored
    poster = client.get(f"/v1/animations/{job}/poster")
    assert poster.status_code == 200 and poster.content == s3_api.poster
    assert client.get(f"/v1/animations/{job}/preview").status_code == 409


def test_share_link_redirects_or_streams_then_removal_deletes_the_objects(s3_api):
    redirect, proxy, job = s3_api.client("redirect"), s3_api.client("proxy"), s3_api.job_id
    link = redirect.post(f"/v1/animations/{job}/share", json={"ttl_hours": 1})
    assert link.status_code == 201, link.text
    token = link.json()["token"]
    anonymous_redirect, anonymous_proxy = s3_api.client("redirect", key=None), s3_api.client("proxy", key=None)
    location = _redirected(anonymous_redirect.get(f"/s/{token}"), s3_api)
    assert _fetch(location)[2] == s3_api.video
    status, _, body = _fetch(location, {"Range": "bytes=-100"})
    assert status == 206 and body == s3_api.video[-100:]
    streamed = anonymous_proxy.get(f"/s/{token}")
    assert streamed.status_code == 200 and streamed.content == s3_api.video
    part = anonymous_proxy.get(f"/s/{token}", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == s3_api.video[10:20]
    assert anonymous_proxy.get("/s/nonesuch").status_code == 404

    assert redirect.post(f"/v1/animations/{job}/review", json={"decision": "remove"}).json() == \
        {"visibility": "removed"}
    assert not s3_api.storage.exists(Keys(job).video) and not s3_api.storage.exists(Keys(job).poster)
    assert proxy.get(f"/v1/animations/{job}/video").status_code == 410
    assert redirect.get(f"/v1/animations/{job}/video").status_code == 410
    assert redirect.delete(f"/v1/animations/{job}").status_code == 200  # the body says what is kept (the manifest)
    assert s3_api.storage.list_prefix(Keys(job).prefix) == []
