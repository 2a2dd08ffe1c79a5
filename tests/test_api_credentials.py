"""The public manifest resolver (/v1/credentials, the C2PA Soft Binding Resolution API's shape) and
what DELETE of a job keeps, on a real uvicorn server with the embedded Redis (rate limits) and the
SQLite job database. Manifests are added to the real repository by hand; the by-content tests make
real watermarked MP4s with pipeline/watermark.py and the bundled ffmpeg.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import subprocess

import httpx
import numpy as np
import pytest

from pipeline import fingerprint, watermark
from pipeline.jobs import JobRecord, new_job_id
from pipeline.manifests import StoredManifest
from service.manifests import fingerprint_binding_value, open_manifest_repository
from tests.test_hardening import LiveServer
from tests.test_web_page import browser  # noqa: F401 - the headless Chromium fixture (skips without it)
from tests.worker_fixtures import WorkerEnv

AI = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def env(tmp_path, data_dir):
    from service import db
    from workers.client import connect

    env = WorkerEnv(tmp_path / "d", data_dir / "models", ALIVE_JOBS__STORE="database")
    connect(env.settings)
    yield env
    env.close()
    db.dispose_engines()


def _serve(env, **api):
    from service.api import create_app

    settings = env.settings.model_copy(update={"api": env.settings.api.model_copy(update=api)}) if api else env.settings
    return LiveServer(create_app(settings))


@pytest.fixture
def live(env):
    """(httpx client without any API key, the manifest repository) on a running server."""
    with _serve(env) as server, httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=60) as client:
        yield client, open_manifest_repository(env.settings)


def _manifest(job_id: str = "job1", fp: list[str] | None = None) -> StoredManifest:
    credential_id = secrets.token_hex(6)
    return StoredManifest(
        manifest_id=credential_id, job_id=job_id, manifest_store=b"\x00\x00\x00\x20jumb" + secrets.token_bytes(200),
        manifest_label=f"urn:c2pa:{credential_id}", watermark_alg=watermark.ALGORITHM,
        watermark_value=watermark.binding_value(credential_id), fingerprint_alg=fingerprint.ALGORITHM,
        fingerprint=fp or [secrets.token_hex(8) for _ in range(8)], digital_source_type=AI,
        title="AI-generated story video", signer="alive development signer", generator="alive/0.1", created_at=T0)


def _error(reply, status: int, code: str) -> None:
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["code"] == code and reply.json()["error"]["status"] == status


# ------------------------------------------------------------------------------------------------
# by binding, and fetching the manifest


def test_a_watermark_binding_finds_its_manifest_with_no_api_key(live):
    client, repo = live
    stored = _manifest()
    repo.add(stored)
    query = {"alg": watermark.ALGORITHM, "value": stored.watermark_value}
    expected = {"matches": [{"manifestId": stored.manifest_id, "similarityScore": 100}]}
    assert client.get("/v1/credentials/matches/byBinding", params=query).json() == expected
    assert client.post("/v1/credentials/matches/byBinding", json=query).json() == expected
    unknown = {"alg": watermark.ALGORITHM, "value": watermark.binding_value("0" * 12)}
    assert client.get("/v1/credentials/matches/byBinding", params=unknown).json() == {"matches": []}
    other = {"alg": "com.example.watermark.1", "value": stored.watermark_value}
    assert client.get("/v1/credentials/matches/byBinding", params=other).json() == {"matches": []}
    _error(client.get("/v1/credentials/matches/byBinding", params={"alg": watermark.ALGORITHM, "value": "%%%"}),
           400, "invalid_binding_value")
    _error(client.get("/v1/credentials/matches/byBinding", params={**query, "maxResults": 0}), 422, "invalid_request")
    _error(client.post("/v1/credentials/matches/byBinding", json={"alg": watermark.ALGORITHM}), 422, "invalid_request")


def test_a_fingerprint_binding_matches_by_similarity(live):
    client, repo = live
    query = [secrets.token_hex(8) for _ in range(8)]
    near = _manifest(fp=[f"{int(h, 16) ^ 0b11:016x}" for h in query])  # 2 of 64 bits off: 97
    repo.add(near)
    repo.add(_manifest())  # unrelated
    body = {"alg": fingerprint.ALGORITHM, "value": fingerprint_binding_value(query)}
    assert client.post("/v1/credentials/matches/byBinding", json=body).json() == \
        {"matches": [{"manifestId": near.manifest_id, "similarityScore": 97}]}
    _error(client.post("/v1/credentials/matches/byBinding", json={**body, "value": "AAAA"}), 400, "invalid_binding_value")


def test_a_manifest_is_served_as_c2pa_or_summarised_as_json(live):
    client, repo = live
    stored = _manifest("job-42")
    repo.add(stored)
    reply = client.get(f"/v1/credentials/manifests/{stored.manifest_id}")
    assert reply.status_code == 200 and reply.content == stored.manifest_store
    assert reply.headers["content-type"] == "application/c2pa"
    assert reply.headers["x-content-type-options"] == "nosniff"  # the API's security headers, public or not
    assert client.get(f"/v1/credentials/manifests/{stored.manifest_id.upper()}").content == stored.manifest_store
    summary = client.get(f"/v1/credentials/manifests/{stored.manifest_id}", params={"format": "json"}).json()
    assert summary == {
        "manifest_id": stored.manifest_id, "job_id": "job-42", "created_at": T0.isoformat(),
        "digital_source_type": AI, "source_type": summary["source_type"], "ai_generated": True,
        "title": "AI-generated story video", "signer": "alive development signer", "generator": "alive/0.1",
        "manifest_label": stored.manifest_label, "watermark_alg": watermark.ALGORITHM,
        "fingerprint_alg": fingerprint.ALGORITHM, "size_bytes": len(stored.manifest_store),
        "manifest_url": f"/v1/credentials/manifests/{stored.manifest_id}"}
    assert summary["source_type"]  # the IPTC name, e.g. "Trained algorithmic media"
    _error(client.get("/v1/credentials/manifests/0123456789ab"), 404, "not_found")
    _error(client.get("/v1/credentials/manifests/not-an-id"), 400, "invalid_manifest_id")
    _error(client.get(f"/v1/credentials/manifests/{stored.manifest_id}", params={"format": "xml"}), 422,
           "invalid_request")


def test_supported_algorithms(live):
    client, _ = live
    assert client.get("/v1/credentials/services/supportedAlgorithms").json() == {
        "watermarks": [{"alg": watermark.ALGORITHM}], "fingerprints": [{"alg": fingerprint.ALGORITHM}]}


def test_lookups_are_rate_limited_per_address_and_need_no_key(env):
    with _serve(env, unauthenticated_rate_per_minute=5) as server, \
            httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as client:
        codes = [client.get("/v1/credentials/manifests/0123456789ab").status_code for _ in range(7)]
        assert codes == [404] * 5 + [429, 429]
        limited = client.post("/v1/credentials/matches/byBinding", json={"alg": "x", "value": "y"})
        _error(limited, 429, "rate_limited")
        assert int(limited.headers["Retry-After"]) >= 1
        # the rest of /v1 still asks for a key (and counts against the same address)
        assert client.get("/v1/animations/x").status_code in (401, 429)


def test_a_by_content_upload_over_the_limit_is_refused(env):
    with _serve(env) as server, httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=60) as client:
        limit = env.settings.intake.max_bytes
        _error(client.post("/v1/credentials/matches/byContent", content=b"\0" * (limit + 1),
                           headers={"Content-Type": "video/mp4"}), 413, "too_large")
        _error(client.post("/v1/credentials/matches/byContent", content=b"", headers={"Content-Type": "video/mp4"}),
               400, "empty_upload")
        _error(client.post("/v1/credentials/matches/byContent", files={"other": ("a.mp4", b"x", "video/mp4")}),
               400, "missing_file")


# ------------------------------------------------------------------------------------------------
# DELETE keeps the manifest unless asked


def _owned_job(env) -> tuple[str, str]:
    """(job id, API key) of a finished-looking job row of a fresh key (no worker needed)."""
    from service import db

    url = db.database_url(env.settings)
    key_row, key = db.create_api_key(url, "owner", rate_limit_per_minute=10_000)
    job_id = new_job_id()
    db.insert_job_within_quota(url, JobRecord(job_id=job_id, status="succeeded"), api_key_id=key_row.id, limit=10)
    return job_id, key


def test_delete_keeps_the_signed_manifest_and_says_why(env, live):
    client, repo = live
    job_id, key = _owned_job(env)
    stored = _manifest(job_id)
    repo.add(stored)
    reply = client.delete(f"/v1/animations/{job_id}", headers={"Authorization": f"Bearer {key}"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["id"] == job_id and "video" in body["deleted"] and "job record" in body["deleted"]
    assert body["kept_manifests"] == [stored.manifest_id] and body["forgotten_manifests"] == []
    assert "record of provenance" in body["message"] and "forget_credentials=true" in body["message"]
    assert client.get(f"/v1/animations/{job_id}", headers={"Authorization": f"Bearer {key}"}).status_code == 404
    assert client.get(f"/v1/credentials/manifests/{stored.manifest_id}").content == stored.manifest_store


def test_delete_with_forget_credentials_removes_the_manifest_too(env, live):
    client, repo = live
    job_id, key = _owned_job(env)
    stored, other = _manifest(job_id), _manifest("someone-else")
    repo.add(stored)
    repo.add(other)
    reply = client.delete(f"/v1/animations/{job_id}", params={"forget_credentials": "true"},
                          headers={"Authorization": f"Bearer {key}"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["kept_manifests"] == [] and body["forgotten_manifests"] == [stored.manifest_id]
    assert "removed from the manifest repository" in body["message"]
    _error(client.get(f"/v1/credentials/manifests/{stored.manifest_id}"), 404, "not_found")
    assert client.get(f"/v1/credentials/manifests/{other.manifest_id}").status_code == 200


def test_delete_of_a_job_without_a_manifest_says_so(env, live):
    client, _ = live
    job_id, key = _owned_job(env)
    body = client.delete(f"/v1/animations/{job_id}", headers={"Authorization": f"Bearer {key}"}).json()
    assert body["kept_manifests"] == body["forgotten_manifests"] == []
    assert body["message"] == "this animation had no signed manifest in the manifest repository"
    stranger_job, _ = _owned_job(env)  # another key's job: still 404 for this one
    _error(client.delete(f"/v1/animations/{stranger_job}", headers={"Authorization": f"Bearer {key}"}),
           404, "not_found")


# ------------------------------------------------------------------------------------------------
# by content: real watermarked MP4s (needs pipeline/softbinding.py)


def _frames(seed: int, count: int = 24) -> np.ndarray:
    """A textured 540x960 picture panning sideways: enough detail to hide the mark in."""
    import cv2

    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 255, (96, 54, 3), dtype=np.uint8), (540, 960), interpolation=cv2.INTER_CUBIC)
    return np.stack([np.roll(base, 4 * i, axis=1) for i in range(count)])


def _mp4(frames: np.ndarray, path) -> bytes:
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(str(path), (frames.shape[2], frames.shape[1]), fps=24, codec="libx264",
                                         pix_fmt_out="yuv420p", quality=None, macro_block_size=1,
                                         output_params=["-crf", "18"])
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path.read_bytes()


def _platform_copy(source, path) -> bytes:
    """What a platform does: re-encode smaller and harder, metadata dropped."""
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(source), "-map_metadata", "-1",
                    "-vf", "scale=360:640", "-c:v", "libx264", "-crf", "28", "-pix_fmt", "yuv420p", str(path)],
                   check=True, timeout=120)
    return path.read_bytes()


@pytest.fixture
def content(tmp_path):
    pytest.importorskip("pipeline.softbinding", reason="pipeline/softbinding.py (inspect_file) is not written yet")
    credential_id = secrets.token_hex(6)
    frames = watermark.embed(_frames(1), credential_id)
    story = tmp_path / "story.mp4"
    return credential_id, fingerprint.fingerprint(frames), _mp4(frames, story), _platform_copy(story, tmp_path / "copy.mp4")


def _by_content(client, data: bytes, *, multipart: bool = True):
    if multipart:
        return client.post("/v1/credentials/matches/byContent", files={"file": ("clip.mp4", data, "video/mp4")})
    return client.post("/v1/credentials/matches/byContent", content=data, headers={"Content-Type": "video/mp4"})


@pytest.mark.slow
def test_by_content_finds_a_watermarked_story_and_its_platform_copy(live, content):
    client, repo = live
    credential_id, fp, story, copy = content
    stored = dataclasses.replace(_manifest("job-c", fp=fp), manifest_id=credential_id,
                                 watermark_value=watermark.binding_value(credential_id))
    repo.add(stored)
    repo.add(_manifest("noise"))
    for data, multipart in ((story, True), (copy, True), (copy, False)):
        reply = _by_content(client, data, multipart=multipart)
        assert reply.status_code == 200, reply.text
        matches = reply.json()["matches"]
        assert [m["manifestId"] for m in matches] == [credential_id], matches
        assert fingerprint.MATCH_THRESHOLD * 100 <= matches[0]["similarityScore"] <= 100


@pytest.mark.slow
def test_by_content_refuses_a_watermark_on_other_pixels_and_non_videos(live, content, tmp_path):
    """The id alone is not enough: the same mark embedded in another video is not that story."""
    client, repo = live
    credential_id, fp, _, _ = content
    repo.add(dataclasses.replace(_manifest("job-c", fp=fp), manifest_id=credential_id,
                                 watermark_value=watermark.binding_value(credential_id)))
    forged = _mp4(watermark.embed(_frames(2), credential_id), tmp_path / "forged.mp4")
    reply = _by_content(client, forged)
    assert reply.status_code == 200 and reply.json() == {"matches": []}, reply.text
    unmarked = _mp4(_frames(3), tmp_path / "plain.mp4")
    assert _by_content(client, unmarked).json() == {"matches": []}
    _error(_by_content(client, secrets.token_bytes(4096)), 415, "not_a_video")


# ------------------------------------------------------------------------------------------------
# the web page's "Check a video" form


def test_the_page_has_the_check_form_and_its_csp_still_covers_every_inline_block(live):
    import base64
    import hashlib
    import re

    client, _ = live
    page = client.get("/")
    html, csp = page.text, page.headers["content-security-policy"]
    for element in ('id="check-file"', 'id="check-zone"', 'id="check-status"', 'id="check-credential"'):
        assert element in html
    assert '"/v1/credentials/matches/byContent"' in html and "?format=json" in html
    for tag in ("script", "style"):
        for block in re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S):
            digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in csp, f"an inline <{tag}> is not in the CSP"
    assert "unsafe-inline" not in csp and "connect-src 'self'" in csp
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", html), "no external assets"


def test_the_pages_script_parses(live, tmp_path):
    import re
    import shutil

    node = shutil.which("node")
    if node is None:
        pytest.skip("no node to parse the page's script with")
    client, _ = live
    script = tmp_path / "page.js"
    script.write_text("\n".join(re.findall(r"<script>(.*?)</script>", client.get("/").text, flags=re.S)))
    done = subprocess.run([node, "--check", str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_check_a_video_in_the_browser(live, content, tmp_path, request):
    """Headless Chromium (skipped without it, like tests/test_web_page.py): choose a platform copy
    of a story and see its credential; choose a file that is no video and see the error."""
    browser = request.getfixturevalue("browser")
    client, repo = live
    credential_id, fp, _, copy = content
    repo.add(dataclasses.replace(_manifest("job-c", fp=fp), manifest_id=credential_id,
                                 watermark_value=watermark.binding_value(credential_id)))
    (tmp_path / "copy.mp4").write_bytes(copy)
    (tmp_path / "notes.txt").write_bytes(b"not a video at all\n" * 50)
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    try:
        page.goto(str(client.base_url) + "/")
        page.set_input_files("#check-file", str(tmp_path / "copy.mp4"))
        page.wait_for_function("() => !document.getElementById('check-credential').hidden", timeout=120_000)
        terms = page.eval_on_selector_all("#check-credential dt", "els => els.map(e => e.textContent)")
        values = page.eval_on_selector_all("#check-credential dd", "els => els.map(e => e.textContent)")
        shown = dict(zip(terms, values))
        assert shown["AI-generated"] == "yes" and shown["signed by"] == "alive development signer", shown
        assert shown["credential"].startswith(credential_id), shown
        assert page.get_attribute("#check-download", "href") == f"/v1/credentials/manifests/{credential_id}"
        page.set_input_files("#check-file", str(tmp_path / "notes.txt"))
        page.wait_for_function("() => document.getElementById('check-status').className === 'error'", timeout=60_000)
        assert "not_a_video" in page.text_content("#check-status")
        assert not problems, problems
    finally:
        page.close()


# ------------------------------------------------------------------------------------------------
# end to end: a story made by a real worker is found again from a platform copy


@pytest.mark.slow
def test_a_workers_story_is_found_from_a_platform_copy_and_outlives_its_job(env, sample_photo, tmp_path):
    pytest.importorskip("pipeline.softbinding", reason="pipeline/softbinding.py (inspect_file) is not written yet")
    import time

    from service import db
    from tests.deadlines import scaled

    url = db.database_url(env.settings)
    db.migrate(url)
    _, key = db.create_api_key(url, "e2e", rate_limit_per_minute=10_000)
    env.start_worker("cpu,gpu")
    with _serve(env) as server, httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=120,
                                             headers={"Authorization": f"Bearer {key}"}) as client:
        created = client.post("/v1/animations", files={"image": ("p.jpg", sample_photo.read_bytes(), "image/jpeg")},
                              data={"engine": "tiny", "duration_s": "0.5", "seed": "5"})
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        deadline = time.monotonic() + scaled(240)
        while (doc := client.get(f"/v1/animations/{job_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, doc
            time.sleep(0.5)
        assert doc["status"] == "succeeded", doc
        story = tmp_path / "story.mp4"
        story.write_bytes(client.get(f"/v1/animations/{job_id}/video").content)
        copy = _platform_copy(story, tmp_path / "copy.mp4")

        credential_id = watermark.credential_id_for(job_id)
        anonymous = httpx.Client(base_url=client.base_url, timeout=120)
        found = _by_content(anonymous, copy).json()["matches"]
        assert [m["manifestId"] for m in found] == [credential_id], found
        summary = anonymous.get(f"/v1/credentials/manifests/{credential_id}", params={"format": "json"}).json()
        assert summary["job_id"] == job_id and summary["ai_generated"] is True
        signed = anonymous.get(f"/v1/credentials/manifests/{credential_id}")
        assert signed.headers["content-type"] == "application/c2pa" and len(signed.content) > 1000

        gone = client.delete(f"/v1/animations/{job_id}").json()
        assert gone["kept_manifests"] == [credential_id]
        assert [m["manifestId"] for m in _by_content(anonymous, copy).json()["matches"]] == [credential_id]
        anonymous.close()
