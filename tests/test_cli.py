"""The CLI's contract: exit codes, messages without tracebacks, files where it says."""

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

SMALL = ["--width", "72", "--height", "128", "--frames", "6", "--seed", "3"]


@pytest.fixture
def run(settings):
    runner = CliRunner()

    def invoke(*args, env=None):
        return runner.invoke(app, [str(a) for a in args], env={"ALIVE_ENCODE__PRESET": "veryfast", **(env or {})})

    return invoke


def test_help_documents_exit_codes(run):
    result = run("--help")
    assert result.exit_code == 0
    assert "3 input rejected" in result.output and "4 blocked by moderation" in result.output
    assert "Exit codes" in run("animate", "--help").output


def test_animate_ok_then_verify_ok(run, tmp_path, sample_photo):
    out = tmp_path / "s.mp4"
    result = run("animate", sample_photo, "-o", out, *SMALL)
    assert result.exit_code == 0, result.output
    assert "C2PA Trusted" in result.output and str(out) in result.output
    assert out.is_file() and out.with_suffix(".json").is_file() and out.with_suffix(".jpg").is_file()
    checked = run("verify", out)
    assert checked.exit_code == 0, checked.output
    # the default engine is motion: classical, no trained model, and the label says so
    assert "algorithmicMedia" in checked.output and "trainedAlgorithmicMedia" not in checked.output
    assert "Trusted" in checked.output and "AI-generated        no" in checked.output
    assert "AI-generated: no" in result.output and "digitalSourceType algorithmicMedia" in result.output


def test_animate_json_output(run, tmp_path, sample_photo):
    import json

    result = run("animate", sample_photo, "-o", tmp_path / "j.mp4", "--json", *SMALL)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["seed"] == 3 and doc["options"]["num_frames"] == 6 and doc["outputs"]["frames"] == 12


def test_verify_unsigned_file_exits_1(run, tmp_path):
    from pipeline.encode import encode_mp4
    import numpy as np

    plain = tmp_path / "plain.mp4"
    encode_mp4(np.zeros((4, 64, 64, 3), np.uint8), plain, 8)
    result = run("verify", plain)
    assert result.exit_code == 1 and "NoManifest" in result.output


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--steps", "0"], "num_inference_steps"),
        (["--width", "100"], "width"),
        (["--engine", "sora"], "engine.name"),
        (["-o", "story.gif"], ".mp4"),
        (["--no-such-flag"], "No such option"),
    ],
)
def test_usage_errors_exit_2(run, sample_photo, args, fragment):
    result = run("animate", sample_photo, *args)
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output


def test_rejected_input_exits_3(run, tmp_path):
    fake = tmp_path / "note.jpg"
    fake.write_text("this is not a photo")
    result = run("animate", fake, "-o", tmp_path / "x.mp4")
    assert result.exit_code == 3, result.output
    assert "not_an_image" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.mp4").exists()
    missing = run("animate", tmp_path / "nope.png", "-o", tmp_path / "x.mp4")
    assert missing.exit_code == 3 and "not_found" in missing.output


def test_blocked_exits_4(run, tmp_path, sample_photo):
    cfg = tmp_path / "strict.yaml"
    cfg.write_text("moderation:\n  nsfw_review_threshold: 0.0\n  nsfw_block_threshold: 0.0\n")
    result = run("animate", sample_photo, "-o", tmp_path / "x.mp4", "--config", cfg, *SMALL)
    assert result.exit_code == 4, result.output
    assert "blocked" in result.output and not (tmp_path / "x.mp4").exists()
    assert run("moderate", sample_photo, "--config", cfg).exit_code == 4
    prompt = run("animate", sample_photo, "-o", tmp_path / "x.mp4", "--prompt", "make her naked", *SMALL)
    assert prompt.exit_code == 4 and "blocked_prompt" in prompt.output


def test_moderate_allows_a_real_photo(run, sample_photo):
    result = run("moderate", sample_photo)
    assert result.exit_code == 0, result.output
    assert "image: ALLOW" in result.output and "not checked: violence" in result.output


def test_missing_model_exits_5_with_instructions(run, tmp_path, sample_photo):
    result = run("animate", sample_photo, "-o", tmp_path / "x.mp4", "--engine", "svd", *SMALL,
                 env={"ALIVE_ENGINE__CACHE_DIR": str(tmp_path / "empty-cache")})
    assert result.exit_code == 5, result.output
    assert "alive models pull" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.mp4").exists()


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "alive"
    exe = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert exe.returncode == 0 and exe.stdout.startswith("alive ")
