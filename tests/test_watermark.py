"""The invisible watermark: what it promises (README "Durable Content Credentials"), on real frames
and real ffmpeg re-encodes at small sizes (the full-size attack table is benchmarks/watermark_bench.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline import watermark as wm
from pipeline.probe import ffmpeg_exe
from pipeline.softbinding import SoftBinding, bind, inspect_file

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def story_frames(n: int = 20, size=(1080, 1920), photo: str = "chelsea.jpg") -> np.ndarray:
    """A moving picture: a photo panned a pixel per frame, as slow as a story's camera (the mark
    stays put, the content moves under it)."""
    image = cv2.cvtColor(cv2.imread(str(EXAMPLES / photo)), cv2.COLOR_BGR2RGB)
    big = cv2.resize(image, (size[0] + n, size[1] + n), interpolation=cv2.INTER_AREA)
    return np.stack([big[k:k + size[1], k:k + size[0]] for k in range(n)]).copy()


def write_mp4(frames: np.ndarray, path: Path, crf: int = 18, fps: int = 30) -> Path:
    h, w = frames.shape[1:3]
    cmd = [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-r", str(fps), "-i", "-", "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p",
           str(path)]
    subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), check=True)
    return path


def attack(src: Path, dst: Path, *args: str) -> Path:
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), *args, "-pix_fmt", "yuv420p", str(dst)],
                   check=True)
    return dst


@pytest.fixture(scope="module")
def marked(tmp_path_factory):
    frames = story_frames()
    clean = frames.copy()
    cid = "a1b2c3d4e5f6"
    wm.embed(frames, cid)
    folder = tmp_path_factory.mktemp("wm")
    return cid, clean, frames, write_mp4(frames, folder / "story.mp4")


def test_the_payload_round_trips_and_values_are_checked():
    cid = wm.new_credential_id()
    assert len(cid) == 12 and wm.credential_id_from_value(wm.binding_value(cid)) == cid
    assert wm.credential_id_for("job-1") == wm.credential_id_for("job-1") != wm.credential_id_for("job-2")
    assert len(wm.payload_bits(cid)) == wm.CODE_BITS == 96
    for bad in ("", "xyz", "a1b2c3", "a1b2c3d4e5f6a7"):
        with pytest.raises(ValueError, match="12 hex digits"):
            wm.binding_value(bad)
    with pytest.raises(ValueError, match="base64"):
        wm.credential_id_from_value("not base64!")


def test_embedding_is_invisible_by_psnr_and_weak_on_flat_areas(marked):
    _, clean, frames, _ = marked
    mse = np.mean((frames.astype(np.float64) - clean) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) >= 40.0
    flat = np.full((1, 1920, 1080, 3), 128, np.uint8)
    wm.embed(flat, "a1b2c3d4e5f6")
    # a flat grey frame gets the weakest mark: at most ~2 levels either side
    assert np.abs(flat.astype(int) - 128).max() <= 2


def test_a_looped_story_s_repeated_frames_are_marked_once():
    """A pingpong story is a list of views: frame k and frame N-k share one buffer. Each buffer
    gets the mark once, exactly as if the frames were distinct."""
    cid = "a1b2c3d4e5f6"
    clip = story_frames(6, size=(270, 480))
    clean = clip.copy()
    looped = [clip[i] for i in (0, 1, 2, 3, 4, 5, 4, 3, 2, 1)]
    wm.embed(looped, cid)
    once = clean.copy()
    wm.embed(once, cid)
    assert np.array_equal(clip, once)


def test_the_mark_decodes_from_frames_and_from_the_encoded_video(marked, tmp_path):
    cid, _, frames, video = marked
    direct = wm.detect(list(frames))
    assert direct.found and direct.credential_id == cid and direct.bit_accuracy == 1.0
    read = inspect_file(video)
    assert read.watermark.found and read.watermark.credential_id == cid and read.watermark.confidence > 0.5


@pytest.mark.parametrize("name,args", [
    ("reencode-crf28-smaller", ["-vf", "scale=720:1280", "-c:v", "libx264", "-crf", "28"]),  # x264 default preset
    ("crop-10-percent", ["-vf", "crop=iw*0.9:ih*0.9", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23"]),
    pytest.param("brighter-contrast-gamma", ["-vf", "eq=brightness=0.08:contrast=1.2:gamma=1.3", "-c:v", "libx264",
                                             "-preset", "veryfast", "-crf", "23"], marks=pytest.mark.slow),
    pytest.param("h265", ["-c:v", "libx265", "-preset", "veryfast", "-crf", "28", "-x265-params", "log-level=none"],
                 marks=pytest.mark.slow),
    pytest.param("15-fps", ["-vf", "fps=15", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23"],
                 marks=pytest.mark.slow),
])
def test_the_mark_survives_what_platforms_do(marked, tmp_path, name, args):
    cid, _, _, video = marked
    copy = attack(video, tmp_path / f"{name}.mp4", *args)
    found = inspect_file(copy).watermark
    assert found.found and found.credential_id == cid, (name, found)


def test_unmarked_pictures_never_decode_to_an_id(tmp_path):
    rng = np.random.default_rng(7)
    candidates = [story_frames(photo=p) for p in ("chelsea.jpg", "coffee.jpg", "astronaut.jpg")]
    candidates.append(rng.integers(0, 256, (6, 960, 540, 3), dtype=np.uint8))  # noise
    candidates.append(np.tile(np.linspace(0, 255, 540, dtype=np.uint8)[None, None, :, None], (4, 960, 1, 3)))
    for frames in candidates:
        found = wm.detect(list(frames))
        assert not found.found and found.credential_id is None and found.confidence < 0.5


def test_a_different_id_is_read_as_itself(tmp_path):
    frames = story_frames(n=6, photo="coffee.jpg")
    wm.embed(frames, "0123456789ab")
    assert wm.detect(list(frames)).credential_id == "0123456789ab"


def test_bind_marks_the_frames_and_writes_both_soft_binding_assertions():
    frames = list(story_frames(n=6))
    before = frames[0].copy()
    soft = bind(frames, "a1b2c3d4e5f6")
    assert not np.array_equal(frames[0], before)  # in place
    labels = [(a["label"], a["data"]["alg"]) for a in soft.assertions()]
    assert labels == [("c2pa.soft-binding", wm.ALGORITHM), ("c2pa.soft-binding", "com.alive.fingerprint.1")]
    assert soft.assertions()[0]["data"]["blocks"][0]["value"] == wm.binding_value("a1b2c3d4e5f6")
    assert SoftBinding.from_dict(soft.to_dict()) == SoftBinding.from_dict(soft.to_dict())
    unmarked = list(story_frames(n=6))
    off = bind(unmarked, "a1b2c3d4e5f6", watermark_on=False)
    assert np.array_equal(unmarked[0], before) and [a["data"]["alg"] for a in off.assertions()] == [
        "com.alive.fingerprint.1"]


def test_a_single_image_and_a_text_file(tmp_path, marked):
    from PIL import Image

    from pipeline.errors import InputRejected

    cid, _, frames, _ = marked
    poster = tmp_path / "poster.jpg"
    Image.fromarray(frames[3]).save(poster, quality=85)
    assert inspect_file(poster).watermark.credential_id == cid
    note = tmp_path / "video.mp4"
    note.write_text('{"error": "not ready"}')
    with pytest.raises(InputRejected, match="not a video or image"):
        inspect_file(note)
