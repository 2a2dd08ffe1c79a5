"""The whole chain in-process, with real moderation, ffmpeg and C2PA."""

import json

import pytest

from pipeline.engines import GenerationOptions
from pipeline.errors import EncodeFailed, LabelFailed, ModerationBlocked
from pipeline.probe import probe_video
from pipeline.provenance import ALGORITHMIC_MEDIA, TRAINED_ALGORITHMIC_MEDIA, verify
from pipeline.run import STAGES, animate

STORY = dict(width=72, height=128)  # 9:16, multiples of 8, small enough to be fast


def _only_outputs(folder, names):
    assert sorted(p.name for p in folder.iterdir()) == sorted(names), "temporary or partial files were left"


def test_motion_story_end_to_end(tmp_path, settings, sample_photo):
    out = tmp_path / "story.mp4"
    seen = []
    result = animate(sample_photo, out, settings, GenerationOptions.build(seed=5, num_frames=12, **STORY),
                     prompt="a gentle breeze", progress=lambda s, d, t: seen.append(s))
    _only_outputs(tmp_path, ["story.mp4", "story.jpg", "story.webp", "story.json"])
    facts = probe_video(out)  # the suite's small story (conftest): 144x256, 12 fps, 1 s
    assert (facts["codec"], facts["pix_fmt"], facts["width"], facts["height"]) == ("h264", "yuv420p", 144, 256)
    assert facts["profile"] == "High" and facts["frames"] == 12 and facts["fps"] == pytest.approx(12)
    assert facts["moov_before_mdat"]
    assert facts["audio"]["codec"] == "aac" and facts["audio"]["duration"] == pytest.approx(1.0, abs=0.05)

    checked = verify(out, (settings.dev_credentials_dir / "root.pem").read_bytes())
    # the classical motion engine uses no trained model: labelled as such, not as AI-generated
    assert checked.state == "Trusted" and not checked.ai_generated
    assert checked.digital_source_type == ALGORITHMIC_MEDIA
    assert "motion engine" in checked.software_agent
    assert not checked.has_ingredient_thumbnail

    report = json.loads((tmp_path / "story.json").read_text())
    assert report == json.loads(json.dumps(result.report, default=str))
    assert report["status"] == "succeeded" and report["seed"] == 5 and report["prompt"] == "a gentle breeze"
    assert report["engine"]["engine"] == "motion"
    assert set(STAGES) <= set(report["timings_s"]) and report["timings_s"]["total"] > 0
    assert report["framing"]["strategy"] == "pad" and report["changes"]  # the square photo was padded, and said so
    assert {"prompt", "image", "video"} <= set(report["moderation"])
    assert report["options"]["seed"] == 5 and report["options"]["num_frames"] == 12
    assert report["finish"]["retime"]["from_fps"] == 24 and report["finish"]["loop"]["mode"] == "pingpong"
    assert report["audio"]["kind"] == "silent" and report["outputs"]["preview"].endswith("story.webp")
    signed = [a["action"] for a in checked.actions]  # what the label, read back from the file, says was done
    assert signed == ["c2pa.created", "c2pa.edited", "c2pa.edited", "c2pa.resized", "c2pa.edited", "c2pa.edited",
                      "c2pa.transcoded"], checked.actions
    assert any("Animated photo" in (a["description"] or "") for a in checked.actions)
    assert not any("AI-generated" in (a["description"] or "") for a in checked.actions)
    assert report["finish"]["overlay"]["text"] == "Animated photo"
    assert report["finish"]["overlay"]["ai_generated"] is False
    assert report["engine"]["digital_source_type"] == ALGORITHMIC_MEDIA
    assert "violence" in report["moderation"]["image"]["unchecked"]
    assert report["c2pa"]["verification"]["state"] == "Trusted"
    assert report["source_retained"] is False
    assert set(STAGES) <= set(seen)


def test_tiny_engine_story(tmp_path, settings, sample_photo):
    s = settings.model_copy(update={"engine": settings.engine.model_copy(update={"name": "tiny"})})
    out = tmp_path / "tiny.mp4"
    result = animate(sample_photo, out, s, GenerationOptions.build(seed=1, num_frames=4, num_inference_steps=2, **STORY))
    report = result.report
    assert report["engine"]["engine"] == "tiny" and report["engine"]["model"] == "local:tiny-svd-v2"
    assert any("noise" in n for n in report["notes"])
    assert report["options"]["num_frames"] == 4 and report["options"]["fps"] == 7
    assert report["outputs"]["frames"] == 12 and report["outputs"]["fps"] == 12  # the story, retimed and looped
    checked = verify(out, (s.dev_credentials_dir / "root.pem").read_bytes())
    assert checked.state == "Trusted" and "tiny" in checked.software_agent
    # tiny is SVD on random weights (the same code as svd): labelled as made by a trained model
    assert checked.digital_source_type == TRAINED_ALGORITHMIC_MEDIA and checked.ai_generated
    assert report["finish"]["overlay"]["text"] == "AI-generated"
    assert any("AI-generated" in (a["description"] or "") for a in checked.actions)


def test_blocked_photo_writes_nothing(tmp_path, settings, sample_photo):
    s = settings.model_copy(update={"moderation": settings.moderation.model_copy(
        update={"nsfw_review_threshold": 0.0, "nsfw_block_threshold": 0.0})})
    with pytest.raises(ModerationBlocked) as info:
        animate(sample_photo, tmp_path / "story.mp4", s, GenerationOptions.build(num_frames=4, **STORY))
    assert info.value.code == "blocked_image" and info.value.verdict.decision == "block"
    _only_outputs(tmp_path, [])


def test_encode_failure_leaves_nothing(tmp_path, settings, sample_photo):
    s = settings.model_copy(update={"encode": settings.encode.model_copy(update={"profile": "no_such_profile"})})
    with pytest.raises(EncodeFailed) as info:  # ffmpeg itself refuses: a real encoder failure
        animate(sample_photo, tmp_path / "story.mp4", s, GenerationOptions.build(num_frames=4, **STORY))
    assert "no_such_profile" in str(info.value)
    _only_outputs(tmp_path, [])


def test_label_failure_leaves_nothing(tmp_path, settings, sample_photo):
    s = settings.model_copy(update={"label": settings.label.model_copy(
        update={"cert_chain": tmp_path / "missing-chain.pem", "private_key": tmp_path / "missing.key"})})
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(LabelFailed) as info:
        animate(sample_photo, out_dir / "story.mp4", s, GenerationOptions.build(num_frames=4, **STORY))
    assert "missing-chain.pem" in str(info.value)
    _only_outputs(out_dir, [])


def test_existing_output_is_replaced_whole(tmp_path, settings, sample_photo):
    out = tmp_path / "story.mp4"
    out.write_bytes(b"old")
    animate(sample_photo, out, settings, GenerationOptions.build(seed=2, num_frames=4, **STORY))
    assert out.stat().st_size > 1000
    _only_outputs(tmp_path, ["story.mp4", "story.jpg", "story.webp", "story.json"])
