"""No output ever lands on an input (issue 11): the photo's bytes are the same after every run.

A name the user chose that is the photo (also through a symlink or a hard link) is refused with
exit 2 before anything is written; a name alive derives is moved off it, and the user is told.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import ConfigError
from pipeline.outputs import plan_outputs, same_file

SMALL = ["--width", "72", "--height", "128", "--frames", "6", "--seed", "3"]
BATCH_SMALL = ["--engine", "tiny", "--steps", "1", "--frames", "2", "--width", "72", "--height", "128"]
ENV = {"ALIVE_ENCODE__PRESET": "veryfast"}


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def run(settings):
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args], env=ENV)


@pytest.fixture
def photo(tmp_path, sample_photo):
    """The user's photo, in a folder of its own."""
    folder = tmp_path / "photos"
    folder.mkdir()
    return Path(shutil.copy(sample_photo, folder / "cat.jpg"))


def test_animate_without_o_in_the_photos_folder_keeps_the_photo(run, photo, monkeypatch):
    before = digest(photo)
    monkeypatch.chdir(photo.parent)
    result = run("animate", "cat.jpg", *SMALL)  # video cat.mp4 here; its poster would have been cat.jpg
    assert result.exit_code == 0, result.output
    assert digest(photo) == before
    assert "note    poster saved as cat.poster.jpg instead of cat.jpg: cat.jpg is the input photo" in result.output
    assert sorted(p.name for p in photo.parent.iterdir()) == ["cat.jpg", "cat.json", "cat.mp4", "cat.poster.jpg",
                                                             "cat.webp"]
    report = json.loads((photo.parent / "cat.json").read_text())
    assert report["outputs"]["poster"] == "cat.poster.jpg"
    assert any("cat.poster.jpg" in note for note in report["notes"])

    again = run("animate", "cat.jpg", *SMALL)  # a re-run replaces its own earlier outputs, not cat-2.mp4
    assert again.exit_code == 0, again.output
    assert digest(photo) == before
    assert sorted(p.name for p in photo.parent.iterdir()) == ["cat.jpg", "cat.json", "cat.mp4", "cat.poster.jpg",
                                                             "cat.webp"]


def test_o_beside_the_photo_keeps_the_photo(run, tmp_path, sample_photo):
    wide = Path(shutil.copy(sample_photo, tmp_path / "wide.jpg"))
    before = digest(wide)
    result = run("animate", wide, "-o", tmp_path / "wide.mp4", *SMALL)
    assert result.exit_code == 0, result.output
    assert digest(wide) == before
    assert f"poster  {tmp_path / 'wide.poster.jpg'}" in result.output
    assert "poster saved as" in result.output and "is the input photo" in result.output
    assert (tmp_path / "wide.poster.jpg").stat().st_size > 0 and (tmp_path / "wide.mp4").is_file()


def test_derived_poster_does_not_replace_another_file_of_the_user(run, tmp_path, sample_photo):
    """cat.png animated beside the user's other photo cat.jpg: cat.jpg is no input, but alive did not write it."""
    from PIL import Image

    Image.open(sample_photo).save(tmp_path / "cat.png")
    other = Path(shutil.copy(sample_photo, tmp_path / "cat.jpg"))
    before = digest(other)
    result = run("animate", tmp_path / "cat.png", "-o", tmp_path / "cat.mp4", *SMALL)
    assert result.exit_code == 0, result.output
    assert digest(other) == before
    assert "already exists and alive did not write it" in result.output
    assert (tmp_path / "cat.poster.jpg").is_file()


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_link_to_the_photo_as_poster_is_refused(run, photo, tmp_path, kind):
    link = tmp_path / "poster.jpg"
    if kind == "symlink":
        link.symlink_to(photo)
    else:
        os.link(photo, link)
    before = digest(photo)
    out = tmp_path / "out"
    result = run("animate", photo, "-o", out / "s.mp4", "--poster", link, *SMALL)
    assert result.exit_code == 2, result.output
    assert "(output_is_input)" in result.output and str(link) in result.output
    assert f"is the input photo {photo}, through a link" in result.output
    assert "Choose another name with --poster, e.g." in result.output
    assert "Traceback" not in result.output
    assert digest(photo) == before and digest(link) == before  # the link itself is still the photo too
    assert link.is_symlink() == (kind == "symlink")
    assert not out.exists()  # nothing written before the check


@pytest.mark.parametrize("name", ["photo", "hardlink.mp4"])
def test_o_naming_the_photo_is_refused(run, photo, name):
    target = photo
    if name != "photo":
        target = photo.parent / name
        os.link(photo, target)
    before = digest(photo)
    result = run("animate", photo, "-o", target, *SMALL)
    assert result.exit_code == 2, result.output
    assert "(output_is_input)" in result.output and f"the video path {target} is the input photo" in result.output
    assert "Choose another name with -o/--output, e.g." in result.output
    assert digest(photo) == before and digest(target) == before
    assert sorted(p.name for p in photo.parent.iterdir()) == sorted({"cat.jpg", target.name})


def test_the_sound_file_is_an_input_too(run, photo, tmp_path):
    sound = tmp_path / "sound.wav"
    sound.write_bytes(b"RIFF not really a wav")
    before = digest(sound)
    result = run("animate", photo, "-o", tmp_path / "s.mp4", "--audio", sound, "--report", sound, *SMALL)
    assert result.exit_code == 2, result.output
    assert "(output_is_input)" in result.output and "is the sound file" in result.output
    assert digest(sound) == before and not (tmp_path / "s.mp4").exists()


def test_two_outputs_of_one_run_may_not_be_one_file(run, photo, tmp_path):
    result = run("animate", photo, "-o", tmp_path / "s.mp4", "--poster", tmp_path / "x.jpg",
                 "--preview", tmp_path / "x.jpg", *SMALL)
    assert result.exit_code == 2, result.output
    assert "(outputs_collide)" in result.output and "the poster and the preview" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_plan_outputs_rules(tmp_path):
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(b"photo")
    (tmp_path / "cat.webp").write_bytes(b"someone else's file")
    plan = plan_outputs(tmp_path / "cat.mp4", inputs=[(photo, "the input photo")])
    assert (plan.poster.name, plan.preview.name, plan.report.name) == ("cat.poster.jpg", "cat.preview.webp", "cat.json")
    assert len(plan.notes) == 2
    (tmp_path / "cat.poster.jpg").write_bytes(b"not ours")
    assert plan_outputs(tmp_path / "cat.mp4", inputs=[(photo, "the input photo")]).poster.name == "cat.poster-2.jpg"
    (tmp_path / "cat.mp4").write_bytes(b"a video of the user's")
    assert plan_outputs(tmp_path / "cat.mp4", named_video=False).video.name == "cat-2.mp4"
    assert plan_outputs(tmp_path / "cat.mp4").video.name == "cat.mp4"  # named: the user's choice
    with pytest.raises(ConfigError) as info:
        plan_outputs(tmp_path / "s.mp4", report=tmp_path / "s.mp4")
    assert info.value.code == "outputs_collide" and info.value.exit_code == 2
    assert same_file(photo, tmp_path / "sub" / ".." / "cat.jpg")


def _rows(out):
    return {Path(json.loads(line)["input"]).name: json.loads(line)
            for line in (out / "summary.jsonl").read_text().splitlines()}


@pytest.fixture
def folder(tmp_path, sample_photo):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        shutil.copy(sample_photo, folder / name)
    return folder


def test_batch_into_the_photos_own_folder_keeps_every_photo_and_resumes(folder):
    before = {p.name: digest(p) for p in folder.iterdir()}
    runner = CliRunner()
    first = runner.invoke(app, ["batch", str(folder), "-o", str(folder), "--local", *BATCH_SMALL], env=ENV)
    assert first.exit_code == 0, first.output
    assert {name: digest(folder / name) for name in before} == before
    assert "note    a.jpg: poster saved as" in first.output and "a.poster.jpg" in first.output
    rows = _rows(folder)
    assert rows["a.jpg"]["status"] == rows["b.jpg"]["status"] == "done"
    assert rows["a.jpg"]["poster"].endswith("a.poster.jpg")
    assert "is an input photo of this batch" in rows["a.jpg"]["notes"][0]
    assert (folder / "a.mp4").is_file() and (folder / "a.poster.jpg").is_file() and (folder / "a.json").is_file()
    assert any("a.poster.jpg" in n for n in json.loads((folder / "a.json").read_text())["notes"])

    second = runner.invoke(app, ["batch", str(folder), "-o", str(folder), "--local", *BATCH_SMALL], env=ENV)
    assert second.exit_code == 0, second.output
    rows = _rows(folder)
    assert rows["a.jpg"]["status"] == rows["b.jpg"]["status"] == "skipped"  # resumable with the new names
    assert rows["a.poster.jpg"]["status"] == "skipped" and rows["a.poster.jpg"]["code"] == "earlier_output"
    assert {name: digest(folder / name) for name in before} == before
    assert not list(folder.glob("*.poster.poster.jpg")) and not list(folder.glob("*-2.mp4"))


def test_queued_batch_delivers_beside_the_photos_without_touching_them(folder, tmp_path, settings, sample_photo,
                                                                      monkeypatch):
    """run_queued's copy from the job store (_deliver) uses the planned names; workers are faked by
    a store that already holds a finished job's files."""
    import workers.client
    from pipeline.engines import GenerationOptions
    from pipeline.jobs import JobRecord, Keys, new_job_id
    from pipeline.run import animate
    from pipeline.storage import open_storage
    from workers.batch import Batch, read_inputs

    made = animate(sample_photo, tmp_path / "made" / "story.mp4", settings,
                   GenerationOptions.build(seed=1, num_frames=4, width=72, height=128))
    storage = open_storage(settings)

    def submit(source, settings, options, **kw):
        job_id = new_job_id()
        keys = Keys(job_id)
        for key, path in ((keys.video, made.video), (keys.poster, made.poster), (keys.preview, made.preview)):
            storage.put_bytes(key, Path(path).read_bytes())
        report = {**made.report, "job_id": job_id, "outputs": {"video": storage.url(keys.video),
                                                               "poster": storage.url(keys.poster)}}
        storage.put_bytes(keys.report, json.dumps(report).encode())
        return job_id

    def wait(job_ids, settings, timeout=None, on_change=None):
        records = {j: JobRecord(job_id=j, status="succeeded") for j in job_ids}
        on_change(records)
        return records

    monkeypatch.setattr(workers.client, "submit", submit)
    monkeypatch.setattr(workers.client, "wait", wait)
    before = {p.name: digest(p) for p in folder.iterdir()}
    rows = Batch(read_inputs(folder), folder, settings, GenerationOptions()).run_queued()
    assert [r.status for r in rows] == ["done", "done"]
    assert {name: digest(folder / name) for name in before} == before
    assert (folder / "a.poster.jpg").is_file() and (folder / "b.mp4").is_file()
    report = json.loads((folder / "a.json").read_text())
    assert report["outputs"]["poster"] == str(folder / "a.poster.jpg") and "stored" in report["outputs"]
    assert any("a.poster.jpg" in n for n in report["notes"])
    again = Batch(read_inputs(folder), folder, settings, GenerationOptions())
    assert [(Path(r.input).name, r.status) for r in again.rows] == [  # the earlier posters and previews are no photos
        ("a.jpg", "queued"), ("a.poster.jpg", "skipped"), ("a.webp", "skipped"),
        ("b.jpg", "queued"), ("b.poster.jpg", "skipped"), ("b.webp", "skipped")]
    assert [Path(r.poster).name for r in again.rows if r.poster] == ["a.poster.jpg", "b.poster.jpg"]
    assert {r.status for r in again.run_queued()} == {"skipped"}  # resumable: nothing submitted again
