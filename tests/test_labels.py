"""Labels that tell the truth: what made the frames decides the C2PA digital source type, the visible
label, the report and `alive verify`; verify says plainly when a file is no video at all, and its
signer line never contradicts its state.

IPTC (https://cv.iptc.org/newscodes/digitalsourcetype/): trainedAlgorithmicMedia is "created
algorithmically using an Artificial Intelligence model trained on captured content"; algorithmicMedia
is "created purely by an algorithm not based on any sampled training data". The motion engine moves
the photo's own pixels with a formula and no model: algorithmicMedia. svd and tiny (SVD code on
random weights) run a diffusion model: trainedAlgorithmicMedia.
"""

from __future__ import annotations

import json
import os
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline import provenance, stages
from pipeline.cli import app
from pipeline.engines import ENGINE_NAMES, engine_class
from pipeline.errors import LabelFailed
from pipeline.finish import finish
from pipeline.overlay import AI_LABEL_TEXTS, ANIMATED_LABEL_TEXTS, LABEL_TEXTS, draw_label
from pipeline.provenance import (
    ALGORITHMIC_MEDIA,
    TRAINED_ALGORITHMIC_MEDIA,
    LabelInfo,
    build_manifest,
    ensure_dev_credentials,
    sign_video,
    verify,
)
from pipeline.settings import LabelSettings, OverlaySettings
from tests.deadlines import scaled

SMALL = ["--width", "72", "--height", "128", "--frames", "6", "--seed", "3"]
# what `curl -o story.mp4` saves when the video is not ready yet (service/api.py's error body)
JSON_ERROR_BODY = (b'{"error": {"code": "not_ready", "message": "the video of j_4f2a is not ready (see its status)", '
                   b'"status": 409}}')


@pytest.fixture
def run(settings):
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args], env={"ALIVE_ENCODE__PRESET": "veryfast"})

    return invoke


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=64x64:rate=8", "-frames:v", "8", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-movflags", "+faststart", str(path)], check=True, capture_output=True, timeout=60)
    return path


def _info(source_type: str) -> LabelInfo:
    return LabelInfo(title="t", generator_name="alive", generator_version="0.1.0",
                     software_agent="alive motion engine (classical Ken Burns/parallax, no generative model)",
                     digital_source_type=source_type)


# ---- one decision per engine -------------------------------------------------------------------


def test_each_engine_declares_what_makes_its_frames():
    assert engine_class("motion").digital_source_type == ALGORITHMIC_MEDIA
    assert engine_class("svd").digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    assert engine_class("tiny").digital_source_type == TRAINED_ALGORITHMIC_MEDIA  # SVD code, random weights
    for name in ENGINE_NAMES:  # every engine says it; none inherits a label by default
        assert engine_class(name).digital_source_type.startswith(provenance.IPTC_DIGITAL_SOURCE_TYPE)
    assert not provenance.is_ai_generated(ALGORITHMIC_MEDIA) and provenance.is_ai_generated(TRAINED_ALGORITHMIC_MEDIA)


def test_a_job_record_carries_the_engines_source_type_to_the_workers(settings):
    svd_worker = settings.model_copy(update={"engine": settings.engine.model_copy(update={"name": "svd"})})
    # the record's own entry wins over the worker's configured engine (a client asked for motion)
    assert stages.digital_source_type(svd_worker, {"engine": "motion", "digital_source_type": ALGORITHMIC_MEDIA}) \
        == ALGORITHMIC_MEDIA
    assert stages.digital_source_type(svd_worker, {"engine": "motion"}) == ALGORITHMIC_MEDIA  # older record
    assert stages.digital_source_type(settings, {"engine": "tiny"}) == TRAINED_ALGORITHMIC_MEDIA
    assert stages.digital_source_type(svd_worker) == TRAINED_ALGORITHMIC_MEDIA
    assert stages.digital_source_type(settings) == ALGORITHMIC_MEDIA  # the default engine is motion


def test_the_manifest_refuses_a_source_type_that_is_no_vocabulary_term():
    with pytest.raises(LabelFailed) as caught:
        build_manifest(_info("AI-generated"), LabelSettings())
    assert caught.value.code == "bad_source_type"


def test_algorithmic_media_signs_and_verifies_trusted_and_not_ai(tmp_path, clip, data_dir):
    creds = ensure_dev_credentials(tmp_path / "dev")
    summary = sign_video(clip, tmp_path / "s.mp4", _info(ALGORITHMIC_MEDIA), creds, LabelSettings())
    assert summary["state"] == "Trusted" and summary["ai_generated"] is False
    report = verify(tmp_path / "s.mp4", creds.trust_anchors_pem)
    assert report.state == "Trusted" and report.failure_codes == []
    assert report.digital_source_type == ALGORITHMIC_MEDIA and report.ai_generated is False
    assert report.actions[0] == {"action": "c2pa.created", "description": None, "digitalSourceType": ALGORITHMIC_MEDIA}


# ---- the visible label ---------------------------------------------------------------------------


def test_every_language_has_an_ai_and_an_animated_text():
    assert set(AI_LABEL_TEXTS) == set(ANIMATED_LABEL_TEXTS) == set(LABEL_TEXTS) >= {"en", "id", "es", "pt", "fr", "de"}
    assert ANIMATED_LABEL_TEXTS["en"] == "Animated photo" and AI_LABEL_TEXTS["en"] == "AI-generated"
    for language in LABEL_TEXTS:
        frames = np.zeros((1, 256, 144, 3), np.uint8)
        animated = draw_label(frames, OverlaySettings(language=language), ai_generated=False)
        assert animated["text"] == ANIMATED_LABEL_TEXTS[language] and animated["ai_generated"] is False
        assert "AI" not in animated["text"].split() and "IA" not in animated["text"].split()
        ai = draw_label(frames, OverlaySettings(language=language), ai_generated=True)
        assert ai["text"] == AI_LABEL_TEXTS[language] != animated["text"]


def test_finish_draws_the_label_of_the_clips_source_type(settings):
    clip = np.random.default_rng(0).integers(0, 256, (6, 128, 72, 3), dtype=np.uint8)
    motion = finish(clip, 24.0, settings, digital_source_type=ALGORITHMIC_MEDIA)
    assert motion.record["overlay"]["text"] == "Animated photo"
    assert any("Animated photo" in a["parameters"]["description"] for a in motion.actions)
    trained = finish(clip, 24.0, settings, digital_source_type=TRAINED_ALGORITHMIC_MEDIA)
    assert trained.record["overlay"]["text"] == "AI-generated"
    # the stage function (CLI, workers) takes the configured engine's when it is not told
    assert stages.finish(clip, 24.0, settings).record["overlay"]["text"] == "Animated photo"


# ---- the whole chain, through the CLI -----------------------------------------------------------


def test_motion_story_says_animated_not_ai_everywhere(run, tmp_path, sample_photo):
    out = tmp_path / "m.mp4"
    made = run("animate", sample_photo, "-o", out, "--language", "de", *SMALL)
    assert made.exit_code == 0, made.output
    assert "AI-generated: no" in made.output and "digitalSourceType algorithmicMedia" in made.output
    assert '"Animiertes Foto"' in made.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["c2pa"]["verification"]["ai_generated"] is False and report["c2pa"]["ai_generated"] is False
    assert report["c2pa"]["digital_source_type"] == ALGORITHMIC_MEDIA
    assert report["finish"]["overlay"]["text"] == "Animiertes Foto"
    checked = run("verify", out)
    assert checked.exit_code == 0, checked.output
    assert "state               Trusted" in checked.output and "AI-generated        no" in checked.output
    assert "algorithmicMedia (Pure algorithmic media)" in checked.output
    assert "trainedAlgorithmicMedia" not in checked.output
    assert "title               Animated photo story video" in checked.output  # not "AI-generated story video"


def test_tiny_story_stays_trained_and_ai_generated(run, tmp_path, sample_photo):
    out = tmp_path / "t.mp4"
    made = run("animate", sample_photo, "-o", out, "--engine", "tiny", "--steps", "2", "--width", "72",
               "--height", "128", "--frames", "4", "--seed", "1")
    assert made.exit_code == 0, made.output
    assert "AI-generated: yes" in made.output and "digitalSourceType trainedAlgorithmicMedia" in made.output
    assert '"AI-generated"' in made.output
    checked = run("verify", out)
    assert checked.exit_code == 0 and "AI-generated        yes" in checked.output
    assert "trainedAlgorithmicMedia (Created using Generative AI)" in checked.output
    assert "title               AI-generated story video" in checked.output


# ---- verify on files that are no video ----------------------------------------------------------


@pytest.mark.parametrize("name, data, kind", [
    ("story.mp4", JSON_ERROR_BODY, "json"),
    ("empty.mp4", b"", "empty"),
    ("notes.txt", b"just some notes\nnothing to see\n", "text"),
    ("page.mp4", b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "html"),
])
def test_verify_says_a_non_media_file_is_not_a_video(run, tmp_path, name, data, kind):
    path = tmp_path / name
    path.write_bytes(data)
    report = verify(path)
    assert report.state == "NotMedia" and report.content == kind and not report.ai_generated
    assert report.detail.startswith(f"{name} is not a video or image")
    result = run("verify", path)
    assert result.exit_code == 1, result.output  # verify found no valid credential
    assert "state               NotMedia" in result.output
    assert f"error (not_a_video): {name} is not a video or image" in result.output
    assert "c2pa.error" not in result.output and "Invalid" not in result.output
    as_json = run("verify", path, "--json")
    assert as_json.exit_code == 1
    doc = json.loads(as_json.stdout)
    assert doc["state"] == "NotMedia" and doc["content"] == kind
    assert doc["error"]["code"] == "not_a_video" and doc["error"]["message"] == report.detail


def test_a_json_error_body_is_called_one(tmp_path):
    path = tmp_path / "story.mp4"
    path.write_bytes(JSON_ERROR_BODY)
    detail = verify(path).detail
    assert "JSON" in detail and f"({len(JSON_ERROR_BODY)} bytes)" in detail and '{"error"' in detail
    assert "not ready" in detail


def test_random_bytes_are_not_media_but_real_media_still_verifies(tmp_path, clip):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(400).replace(b"ftyp", b"xxxx"))
    assert verify(junk).state == "NotMedia" and verify(junk).content == "binary"
    assert verify(clip).state == "NoManifest" and verify(clip).content == "mp4"  # an unsigned MP4
    photo = tmp_path / "photo.jpg"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(photo)
    assert verify(photo).state == "NoManifest" and verify(photo).content == "jpeg"


# ---- the signer line ----------------------------------------------------------------------------


def test_a_development_signature_reads_trusted_on_this_machine_only(tmp_path, clip):
    creds = ensure_dev_credentials(tmp_path / "dev")
    sign_video(clip, tmp_path / "s.mp4", _info(ALGORITHMIC_MEDIA), creds, LabelSettings())
    trusted = verify(tmp_path / "s.mp4", creds.trust_anchors_pem)
    assert trusted.state == "Trusted" and trusted.development_certificate
    assert "untrusted" not in trusted.signer and "alive dev signer" in trusted.signer
    assert trusted.signer_trust.startswith("trusted on this machine only")
    elsewhere = verify(tmp_path / "s.mp4")  # a verifier without this machine's root
    assert elsewhere.state == "Valid" and elsewhere.signer_trust.startswith("not trusted")


def test_verify_never_prints_trusted_beside_untrusted(run, tmp_path, clip, monkeypatch):
    """Development chains generated before the rename name their organisation "alive development
    (untrusted)"; verify printed that next to "Trusted"."""
    monkeypatch.setattr(provenance, "DEV_ORGANIZATION", "alive development (untrusted)")
    creds = ensure_dev_credentials(tmp_path / "old-dev")
    monkeypatch.undo()
    summary = sign_video(clip, tmp_path / "s.mp4", _info(ALGORITHMIC_MEDIA), creds, LabelSettings())
    assert "untrusted" not in summary["signer"]
    (tmp_path / "root.pem").write_bytes(creds.trust_anchors_pem)
    result = run("verify", tmp_path / "s.mp4", "--trust", tmp_path / "root.pem")
    assert result.exit_code == 0, result.output
    assert "state               Trusted" in result.output
    shown = [line for line in result.output.splitlines() if not line.startswith("file ")]  # not the tmp path
    assert shown and not [line for line in shown if "untrusted" in line.lower()], result.output
    assert "signer trust        trusted on this machine only" in result.output
    doc = json.loads(run("verify", tmp_path / "s.mp4", "--trust", tmp_path / "root.pem", "--json").stdout)
    assert doc["state"] == "Trusted" and "untrusted" not in json.dumps(doc["signer"])
    assert doc["development_certificate"] is True


# ---- the Celery chain: the same decision, carried by the job record -----------------------------


@pytest.mark.slow
def test_celery_chain_labels_motion_on_an_svd_worker_as_animated(tmp_path, data_dir, sample_photo):
    """A server configured for svd runs a job that asked for motion: the encode task (visible label)
    and the label task (C2PA) follow the engine that made the frames, not the worker's setting."""
    from pipeline.engines import GenerationOptions
    from pipeline.jobs import Keys
    from pipeline.storage import open_storage
    from tests.worker_fixtures import WorkerEnv
    from workers.client import connect, submit, wait

    env = WorkerEnv(tmp_path / "d", data_dir / "models", ALIVE_ENGINE__NAME="svd")
    try:
        connect(env.settings)
        env.start_worker("cpu,gpu", name="all")
        options = GenerationOptions.build(seed=2, num_frames=6, width=72, height=128)
        job_id = submit(sample_photo, env.settings, options, engine="motion")
        record = wait([job_id], env.settings, timeout=scaled(120))[job_id]
        assert record.status == "succeeded", record.error
        assert record.engine["engine"] == "motion" and record.engine["digital_source_type"] == ALGORITHMIC_MEDIA
        assert record.finish["overlay"]["text"] == "Animated photo"
        assert record.c2pa["digital_source_type"] == ALGORITHMIC_MEDIA and record.c2pa["ai_generated"] is False
        video = open_storage(env.settings).local_path(Keys(job_id).video)
        checked = verify(video, (env.settings.dev_credentials_dir / "root.pem").read_bytes())
        assert checked.state == "Trusted" and not checked.ai_generated
        assert checked.digital_source_type == ALGORITHMIC_MEDIA
    finally:
        env.close()
