"""alive batch: in-process and through real workers; resumable; a row for every input."""

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from workers.batch import output_names, read_inputs

SMALL = ["--engine", "tiny", "--steps", "1", "--frames", "2", "--width", "72", "--height", "128"]


@pytest.fixture
def photos(tmp_path, sample_photo):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(sample_photo, folder / "a.jpg")
    shutil.copy(sample_photo, folder / "b.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a real jpeg")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    return folder


def _rows(out):
    return {json.loads(line)["input"].rsplit("/", 1)[-1]: json.loads(line)
            for line in (out / "summary.jsonl").read_text().splitlines()}


def test_inputs_from_folder_txt_and_csv(tmp_path, photos):
    assert [p.name for p in read_inputs(photos)] == ["a.jpg", "b.jpg", "broken.jpg"]
    (tmp_path / "list.txt").write_text("# comment\nin/a.jpg\n\nin/b.jpg\n")
    assert [p.name for p in read_inputs(tmp_path / "list.txt")] == ["a.jpg", "b.jpg"]
    (tmp_path / "list.csv").write_text("id,path\n1,in/b.jpg\n")
    assert [p.name for p in read_inputs(tmp_path / "list.csv")] == ["b.jpg"]
    names = output_names([tmp_path / "x/a.jpg", tmp_path / "y/a.jpg", tmp_path / "c.png"], tmp_path / "o")
    assert len({n.name for n in names}) == 3 and names[2].name == "c.mp4"


def test_local_batch_is_resumable_and_one_bad_file_does_not_stop_it(tmp_path, photos, settings):
    out = tmp_path / "out"
    runner = CliRunner()
    env = {"ALIVE_ENCODE__PRESET": "veryfast"}
    first = runner.invoke(app, ["batch", str(photos), "-o", str(out), "--local", *SMALL], env=env)
    assert first.exit_code == 1, first.output  # one rejected item
    rows = _rows(out)
    assert rows["a.jpg"]["status"] == rows["b.jpg"]["status"] == "done"
    assert rows["broken.jpg"]["status"] == "rejected" and rows["broken.jpg"]["code"] == "truncated"
    assert (out / "a.mp4").is_file() and (out / "a.json").is_file() and (out / "a.jpg").is_file()
    second = runner.invoke(app, ["batch", str(photos), "-o", str(out), "--local", *SMALL], env=env)
    rows = _rows(out)
    assert rows["a.jpg"]["status"] == rows["b.jpg"]["status"] == "skipped"
    assert rows["broken.jpg"]["status"] == "rejected"
    assert "skipped 2" in second.output


@pytest.mark.slow
def test_queued_batch_spawns_workers_on_the_embedded_broker(tmp_path, photos, data_dir):
    from tests.worker_fixtures import WorkerEnv

    env = WorkerEnv(tmp_path / "d", data_dir / "models")  # owns the broker; batch spawns its own workers
    try:
        out = tmp_path / "out"
        result = CliRunner().invoke(app, ["batch", str(photos), "-o", str(out), *SMALL, "--timeout", "180"],
                                    env={k: v for k, v in env.env.items() if k.startswith("ALIVE_")})
        assert result.exit_code == 1, result.output
        rows = _rows(out)
        assert rows["a.jpg"]["status"] == "done" and rows["a.jpg"]["job_id"]
        assert rows["broken.jpg"]["status"] == "rejected"
        assert (out / "b.mp4").is_file()
        logs = list((env.data_dir / "logs").glob("worker-*.log"))
        assert len(logs) == 3  # one gpu, one cpu and one webhooks worker, stopped again at the end
    finally:
        env.close()


def test_local_batch_generates_photos_together_and_encodes_behind_the_generator(tmp_path, photos, settings):
    """--batch-clips 2: a.jpg and b.jpg share one model batch (the broken file is refused at intake,
    before generation); the CPU stages run in a second thread; the stats line says how busy the
    generator was."""
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["batch", str(photos), "-o", str(out), "--local", "--batch-clips", "2",
                                      "--seed", "7", *SMALL], env={"ALIVE_ENCODE__PRESET": "veryfast"})
    assert result.exit_code == 1, result.output
    rows = _rows(out)
    assert rows["a.jpg"]["status"] == rows["b.jpg"]["status"] == "done"
    assert rows["broken.jpg"]["status"] == "rejected"
    reports = [json.loads((out / f"{name}.json").read_text()) for name in ("a", "b")]
    assert [r["engine"]["batch_clips"] for r in reports] == [2, 2]
    assert reports[0]["seed"] == reports[1]["seed"] == 7
    assert reports[0]["timings_s"]["generate"] == reports[1]["timings_s"]["generate"]  # one batch, one time
    assert "per model batch; the generator was idle" in result.output


def test_overlapped_and_sequential_local_batches_make_the_same_videos(tmp_path, photos, settings):
    from pipeline.engines import GenerationOptions
    from pipeline.provenance import default_trust_anchors, verify
    from pipeline.probe import decode_frames
    from workers.batch import Batch

    options = GenerationOptions.build(seed=3, num_inference_steps=1, num_frames=2, width=72, height=128)
    # no watermark here: it carries each job's own credential id, so two runs differ by design
    quick = settings.model_copy(update={"encode": settings.encode.model_copy(update={"preset": "veryfast"}),
                                        "label": settings.label.model_copy(update={"watermark": False})})
    frames = {}
    for overlap in (True, False):
        out = tmp_path / f"out-{overlap}"
        batch = Batch(read_inputs(photos), out, quick, options, engine="tiny")
        rows = batch.run_local(overlap=overlap)
        assert [r.status for r in rows] == ["done", "done", "rejected"]
        assert batch.stats["overlap"] is overlap and 0 <= batch.stats["generator_idle_fraction"] < 1
        assert batch.stats["generate_s"] > 0 and batch.stats["clips_per_hour"] > 0
        assert verify(out / "b.mp4", default_trust_anchors(quick)).state == "Trusted"
        frames[overlap] = decode_frames(out / "b.mp4", quick.story.width, quick.story.height)
    assert np.array_equal(frames[True], frames[False])
