"""The story a user posts, end to end with the real defaults: 1080x1920, 30 fps, 4 s pingpong,
visible label, sound, C2PA listing every edit; and the CLI's story options and refusals."""

from __future__ import annotations

import json
import wave

import imageio_ffmpeg
import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.engines import GenerationOptions
from pipeline.probe import probe_video
from pipeline.provenance import ALGORITHMIC_MEDIA, verify
from pipeline.run import animate
from pipeline.settings import load_settings


def _first_frame(path, size):
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    assert tuple(meta["size"]) == size
    frame = np.frombuffer(next(reader), np.uint8).reshape(size[1], size[0], 3)
    reader.close()
    return frame


def test_default_story_with_ambience_is_what_a_platform_expects(tmp_path, story_defaults, data_dir, sample_photo):
    settings = load_settings(data_dir=data_dir, encode={"preset": "veryfast"})
    from pipeline.finish import StoryOptions

    out = tmp_path / "story.mp4"
    result = animate(sample_photo, out, settings, GenerationOptions.build(seed=2),
                     story=StoryOptions.build(ambience="waves", language="id"))
    facts = probe_video(out)
    assert (facts["width"], facts["height"], facts["frames"]) == (1080, 1920, 120)
    assert facts["fps"] == pytest.approx(30) and facts["codec"] == "h264" and facts["pix_fmt"] == "yuv420p"
    assert facts["audio"]["codec"] == "aac" and facts["audio"]["duration"] == pytest.approx(4.0, abs=0.05)

    report = result.report
    # the motion engine renders the story itself: a seamless cycle at 1080x1920 and 30 fps, repeated
    # (no interpolation, no pingpong, no upscale)
    assert report["finish"]["loop"]["mode"] == "cycle" and report["finish"]["retime"]["method"] == "none"
    assert report["finish"]["fit"]["how"] == "none"
    assert report["audio"]["kind"] == "ambience" and report["audio"]["name"] == "waves"
    # the motion engine uses no trained model: its label says so, in Indonesian (not "Dibuat dengan AI")
    assert report["finish"]["overlay"]["text"] == "Foto dianimasikan"

    # the label is visible in the decoded video: white text on a dark pill inside the recorded box
    x0, y0, x1, y1 = report["finish"]["overlay"]["box"]
    luma = _first_frame(out, (1080, 1920)).astype(np.float32).mean(axis=2)
    box = luma[y0:y1, x0:x1]
    assert 0.05 < (box > 200).mean() < 0.6 and (box < 80).mean() > 0.2

    checked = verify(out, (settings.dev_credentials_dir / "root.pem").read_bytes())
    assert checked.state == "Trusted" and not checked.ai_generated
    assert checked.digital_source_type == ALGORITHMIC_MEDIA
    descriptions = " | ".join(a["description"] or "" for a in checked.actions)
    for edit in ("seamless 40-frame cycle", "Foto dianimasikan", "waves", "libx264"):
        assert edit in descriptions, (edit, descriptions)
    assert any(a.get("digitalSourceType") == ALGORITHMIC_MEDIA for a in checked.actions)  # procedural sound
    assert result.preview.read_bytes()[8:12] == b"WEBP"


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


SMALL = ["--width", "72", "--height", "128", "--frames", "6", "--seed", "3"]


def test_cli_mixes_a_users_sound_file(run, tmp_path, sample_photo):
    track = tmp_path / "song.wav"
    with wave.open(str(track), "wb") as w:  # 3 s of a 440 Hz tone, longer than the 1 s story
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(44100)
        t = np.arange(3 * 44100) / 44100
        w.writeframes((np.sin(2 * np.pi * 440 * t) * 12000).astype("<i2").tobytes())
    out = tmp_path / "s.mp4"
    result = run("animate", sample_photo, "-o", out, "--audio", track, "--loop", "crossfade", "--json", *SMALL)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["audio"]["kind"] == "file" and doc["audio"]["source_duration_s"] == pytest.approx(3.0, abs=0.01)
    assert doc["finish"]["loop"]["mode"] == "crossfade"
    assert probe_video(out)["audio"]["duration"] == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("args, fragment", [
    (["--preset", "whatsapp-status", "--duration", "90"], "max_duration_s"),
    (["--preset", "myspace"], "unknown preset"),
    (["--loop", "bounce"], "loop"),
    (["--ambience", "traffic"], "ambience"),
    (["--audio", "/no/such/song.mp3"], "no such file"),
    (["--codec", "h264_nvenc"], "nvenc"),
])
def test_cli_refuses_bad_story_options_before_work(run, tmp_path, sample_photo, args, fragment):
    result = run("animate", sample_photo, "-o", tmp_path / "s.mp4", *args, *SMALL)
    assert result.exit_code == 2, result.output
    assert fragment.lower() in result.output.lower()
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_webm_output(run, tmp_path, sample_photo):
    result = run("animate", sample_photo, "-o", tmp_path / "s.webm", *SMALL)
    assert result.exit_code == 2 and "MP4" in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_users_non_audio_file_is_rejected(run, tmp_path, sample_photo):
    fake = tmp_path / "song.mp3"
    fake.write_bytes(b"this is not audio at all" * 100)
    out = tmp_path / "out"
    out.mkdir()
    result = run("animate", sample_photo, "-o", out / "s.mp4", "--audio", fake, *SMALL)
    assert result.exit_code == 3, result.output
    assert "bad_audio" in result.output
    assert list(out.iterdir()) == []


def test_fit_generate_animates_a_landscape_photo_whole_and_pads_the_clip(run, tmp_path, sample_photo):
    out = tmp_path / "wide.mp4"
    result = run("animate", sample_photo.parent / "coffee.jpg", "-o", out, "--framing", "fit-generate", "--json", *SMALL)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["framing"]["strategy"] == "fit-generate" and doc["framing"]["size"] == [128, 72]  # landscape
    assert doc["finish"]["fit"]["how"] == "pad" and doc["finish"]["size"] == [144, 256]
    assert probe_video(out)["width"] == 144
