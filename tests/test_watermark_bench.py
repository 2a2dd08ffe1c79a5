"""benchmarks/watermark_bench.py on a tiny synthetic video: the attack commands, one candidate's
evaluation through real ffmpeg, and the JSON / Markdown writers. No timing and no robustness
assertions (those are the benchmark's figures, measured at 1080x1920)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import watermark_bench as bench  # noqa: E402

W, H, N = 96, 160, 10


def tiny_video() -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    frames = []
    for i in range(N):
        r = 128 + 90 * np.sin((x + 2 * i) / 9.0)
        g = 128 + 90 * np.cos((y - i) / 13.0)
        b = 128 + 60 * np.sin((x + y) / 17.0)
        frames.append(np.stack([r, g, b], axis=-1))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def test_attacks_for_a_story_are_the_issues():
    attacks = {a.name: a for a in bench.build_attacks(1080, 1920)}
    assert list(attacks) == ["none", "h264-crf23", "h264-crf28", "h264-crf35", "h265-crf28", "scale-720x1280",
                             "scale-540x960", "crop5-rescaled", "crop10-rescaled", "crop5", "crop10", "fps24", "fps15",
                             "brightness+0.1", "contrast1.2", "gamma1.3", "reencode-twice", "issue-command"]
    flags = " ".join(bench.FFMPEG_FLAGS)
    # the issue's exact command (plus the quiet / overwrite flags every attack gets)
    assert attacks["issue-command"].commands() == [
        f"ffmpeg {flags} -i story.mp4 -map_metadata -1 -c:v libx264 -crf 28 -vf scale=720:1280 copy.mp4"]
    assert attacks["none"].commands() == []
    twice = attacks["reencode-twice"].commands()
    assert len(twice) == 2 and "-i story.mp4" in twice[0] and "pass1.mp4" in twice[0] and "-i pass1.mp4" in twice[1]
    assert "scale=1080:1920" in attacks["crop10-rescaled"].commands()[0]
    assert "scale" not in attacks["crop10"].commands()[0]
    assert "eq=gamma=1.3" in attacks["gamma1.3"].commands()[0]
    assert "libx265" in attacks["h265-crf28"].commands()[0]
    for attack in attacks.values():
        for command in attack.commands():
            assert shlex.split(command)[0] == "ffmpeg"  # each one a runnable shell line


def test_attack_sizes_follow_a_small_story():
    names = [a.name for a in bench.build_attacks(W, H)]
    assert "scale-64x106" in names and "scale-48x80" in names


@pytest.fixture(scope="module")
def alive_candidate():
    if not (REPO / "pipeline" / "watermark.py").exists():
        pytest.skip("pipeline/watermark.py is not there yet")
    candidates, skipped = bench.load_candidates(["alive"])
    if not candidates:
        pytest.skip(f"alive's watermark is not importable: {skipped}")
    return candidates[0]


def test_bench_runs_attacks_and_writes_the_table(alive_candidate, tmp_path):
    cover = tiny_video()
    attacks = bench.build_attacks(W, H)
    args = bench.parse_args(["--frames", "4", "--preset", "ultrafast", "--per-frame", "2"])
    result, sampled = bench.evaluate_candidate(alive_candidate, cover, tmp_path, attacks, args, lambda _: None)

    # every attack ran through ffmpeg and was decoded
    assert [row.attack for row in result.attacks] == [a.name for a in attacks]
    rows = {row.attack: row for row in result.attacks}
    assert rows["none"].frames == N
    assert rows["fps15"].frames < N  # the frame rate really changed
    for row in result.attacks:
        assert 0.0 <= row.confidence <= 1.0
        assert row.fingerprint_similarity is not None and 0.0 <= row.fingerprint_similarity <= 1.0
    assert result.frames == N and result.payload_bits == len(alive_candidate.payload_bits(result.credential_id))
    assert np.isfinite(result.psnr_db) and result.embed_ms_per_frame > 0
    assert "libx264" in result.encode_command and "-crf 18" in result.encode_command
    assert set(sampled) == {"__story__", *rows}

    bench.evaluate_false_positives(alive_candidate, result, [], [("other", cover[::-1].copy())], tmp_path, args,
                                   lambda _: None)
    assert result.others == 1 and result.others_test_id == 0

    report = bench.make_report("--quick", "tiny synthetic video", cover.shape, attacks, [result],
                               {"rivagan": "not installed"}, None, [], 1, [], 1.0, result.encode_command)
    json_path, md_path = tmp_path / "out.json", tmp_path / "out.md"
    text = bench.write_outputs(report, json_path, md_path)
    assert md_path.read_text() == text

    doc = json.loads(json_path.read_text())
    assert doc["environment"]["commit"] and doc["environment"]["cores"] and doc["environment"]["cpu"]
    assert doc["story"]["width"] == W and doc["story"]["height"] == H and doc["story"]["frames"] == N
    assert [a["name"] for a in doc["attacks"]] == [a.name for a in attacks]
    assert doc["candidates"][0]["name"] == "alive"

    lines = text.splitlines()
    assert lines[0].startswith("## watermark: ")
    assert any(line.startswith("Command: `.venv/bin/python benchmarks/watermark_bench.py --quick`") for line in lines)
    assert any(line.startswith("Device: ") for line in lines)
    # every table is well formed: a header, a separator, rows with the header's column count
    tables, current = [], []
    for line in lines + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    assert len(tables) == 3  # attack commands, summary, per-attack results
    for table in tables:
        columns = table[0].count("|")
        assert set(table[1].replace("|", "").split()) <= {"---", "---:"}
        assert all(row.count("|") == columns for row in table[2:]), table
    commands, summary, per_attack = tables
    assert len(commands) == 2 + len(attacks) and len(per_attack) == 2 + len(attacks)
    assert summary[2].startswith("| alive | ")
    assert any(row.startswith("| rivagan | skipped: not installed") for row in summary)
    assert per_attack[0] == "| attack | alive |"
    for row, attack in zip(per_attack[2:], attacks):
        assert row.startswith(f"| {attack.name} | ")
        cells = row.split("|")[2].strip().split(" / ")
        assert len(cells) == 4 and cells[2] in ("**yes**", "no")
