"""The README's "Durable Content Credentials" promise, end to end with the real CLI, ffmpeg, C2PA
and a live `alive serve`: a default story copied the way a platform copies it (metadata stripped,
re-encoded, downscaled) is still found to be alive's, with its signed manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.probe import ffmpeg_exe

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
ALIVE = str(Path(sys.executable).parent / "alive")
# the exact copy command
COPY = ["-map_metadata", "-1", "-c:v", "libx264", "-crf", "28", "-vf", "scale=720:1280"]


def alive(*args, data_dir: Path, check_rc: int | None = 0):
    # the real story defaults (1080x1920, 30 fps, 4 s), not the suite's small story (tests/conftest.py)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ALIVE_STORY__")}, "ALIVE_DATA_DIR": str(data_dir)}
    done = subprocess.run([ALIVE, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    if check_rc is not None:
        assert done.returncode == check_rc, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    return done


def verify_json(path: Path, data_dir: Path, *extra) -> tuple[int, dict]:
    done = alive("verify", path, "--json", *extra, data_dir=data_dir, check_rc=None)
    return done.returncode, json.loads(done.stdout)


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """One default story (the motion engine, 1080x1920, 4 s) and the platform copy of it."""
    folder = tmp_path_factory.mktemp("durable")
    data = folder / "data"
    video = folder / "story.mp4"
    alive("animate", REPO / "examples" / "chelsea.jpg", "-o", video, "--json", data_dir=data)
    report = json.loads((folder / "story.json").read_text())
    assert (report["finish"]["size"], report["finish"]["frames"]) == ([1080, 1920], 120)  # a default story
    copy = folder / "copy.mp4"
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(video), *COPY, str(copy)], check=True)
    return {"folder": folder, "data": data, "video": video, "copy": copy, "report": report}


def test_the_story_carries_its_credential_id_in_pixels_and_manifest(story):
    code, doc = verify_json(story["video"], story["data"])
    credential = story["report"]["credential"]
    assert code == 0 and doc["embedded"]["state"] == "Trusted" and doc["recovered"] is None
    assert doc["watermark"]["found"] and doc["watermark"]["id"] == credential["id"]
    assert doc["watermark"]["agrees_with_manifest"] is True
    algs = {b["alg"] for b in doc["embedded"]["soft_bindings"]}
    assert algs == {"com.alive.watermark.1", "com.alive.fingerprint.1"}
    assert story["report"]["c2pa"]["kept_in_repository"] is True


def test_a_platform_copy_has_no_manifest_but_alive_verify_recovers_it(story):
    code, doc = verify_json(story["copy"], story["data"])
    report = story["report"]
    assert doc["state"] == "NoManifest" and doc["embedded"] is None
    assert doc["watermark"]["found"] and doc["watermark"]["id"] == report["credential"]["id"]
    assert doc["watermark"]["confidence"] > 0.3
    recovered = doc["recovered"]
    assert code == 0, doc
    assert recovered["state"] == "Trusted" and recovered["job_id"] == report["job_id"]
    assert recovered["digital_source_type"].endswith("/algorithmicMedia")  # the motion engine: not "AI"
    assert recovered["found_by"] == "watermark+fingerprint" and recovered["fingerprint_in_manifest_matches"]
    assert any("stripped" in lost for lost in recovered["lost"])
    text = alive("verify", story["copy"], data_dir=story["data"]).stdout
    assert "modified copy of a credentialed" in text and report["job_id"] in text


def test_without_a_repository_the_copy_is_found_but_not_recovered_and_exits_1(story, tmp_path):
    code, doc = verify_json(story["copy"], tmp_path / "elsewhere")
    assert code == 1 and doc["watermark"]["found"] and doc["recovered"] is None
    assert not (tmp_path / "elsewhere" / "alive.db").exists()  # checking a file creates no database


def test_a_resolver_over_http_recovers_it_for_another_machine(story, tmp_path):
    from pipeline.settings import load_settings
    from service.api import create_app
    from tests.test_hardening import LiveServer
    from workers.broker import embedded_broker
    from workers.client import connect

    settings = load_settings(data_dir=story["data"])
    connect(settings)  # as `alive serve` does: the embedded Redis holds the rate limits
    try:
        with LiveServer(create_app(settings)) as live:
            url = f"http://127.0.0.1:{live.port}/v1/credentials"
            code, doc = verify_json(story["copy"], tmp_path / "elsewhere", "--resolver", url)
            trusting, trusted = verify_json(story["copy"], tmp_path / "elsewhere", "--resolver", url,
                                            "--trust", story["data"] / "dev-c2pa" / "root.pem")
    finally:
        embedded_broker(settings.data_dir).stop()
    # another machine does not trust this one's development root: the signature is Valid, not Trusted
    assert code == 0 and doc["recovered"]["state"] == "Valid", doc
    assert trusting == 0 and trusted["recovered"]["state"] == "Trusted"
    assert trusted["recovered"]["manifest_id"] == story["report"]["credential"]["id"]


def test_an_unrelated_video_finds_nothing(story, tmp_path):
    other = tmp_path / "other.mp4"
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=720x1280:rate=30:duration=2", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(other)],
                   check=True)
    code, doc = verify_json(other, story["data"])
    assert code == 1 and doc["watermark"]["found"] is False and doc["recovered"] is None


def test_the_poster_carries_the_id_and_the_small_preview_its_fingerprint(story):
    """The 240 px WebP preview is too small for the 96 coded bits (a cell is 2 px there): it is
    found by its fingerprint instead, as the README says."""
    from pipeline import fingerprint as fp
    from pipeline.softbinding import inspect_file

    folder, credential = story["folder"], story["report"]["credential"]
    poster = inspect_file(folder / "story.jpg").watermark
    assert poster.found and poster.credential_id == credential["id"]
    preview = inspect_file(folder / "story.webp")
    assert fp.similarity(preview.fingerprint, credential["fingerprint"]["hashes"]) >= fp.MATCH_THRESHOLD
