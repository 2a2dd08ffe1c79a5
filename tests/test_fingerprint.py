"""The perceptual fingerprint: sampling at fractions of the duration, the hash, the similarity,
and real ffmpeg copies of a small story-like video (re-encode, downscale, crop, frame rate, eq).

Small sizes keep ffmpeg fast; the threshold itself comes from benchmarks/watermark_bench.py on a
full 1080x1920 story (benchmarks/RESULTS.md)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest

from pipeline import fingerprint as fp

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
W, H = 180, 320  # 9:16, even
FPS = 30


def story_like(photo: str, frames: int = 30, width: int = W, height: int = H) -> np.ndarray:
    """A photo slowly zoomed and panned, cover-cropped to 9:16: moving real pixels."""
    image = cv2.cvtColor(cv2.imread(str(EXAMPLES / photo)), cv2.COLOR_BGR2RGB)
    ih, iw = image.shape[:2]
    out = []
    for i in range(frames):
        zoom = 1.0 + 0.15 * i / frames
        ch = int(ih / zoom)
        cw = int(ch * width / height)
        cw = min(cw, iw)
        x0 = (iw - cw) // 2 + int(5 * np.sin(i / 5))
        y0 = (ih - ch) // 2
        x0 = min(max(0, x0), iw - cw)
        out.append(cv2.resize(image[y0:y0 + ch, x0:x0 + cw], (width, height), interpolation=cv2.INTER_AREA))
    return np.stack(out)


def write_video(frames: np.ndarray, path: Path, fps: int = FPS) -> Path:
    h, w = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24",
                                         pix_fmt_out="yuv420p", quality=None, macro_block_size=1,
                                         output_params=["-crf", "18", "-preset", "veryfast"])
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    assert path.stat().st_size > 0
    return path


def ffmpeg(src: Path, dst: Path, *args: str) -> Path:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
               "-i", str(src), *args, "-preset", "veryfast", str(dst)]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return dst


def read_video(path: Path) -> np.ndarray:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(raw, np.uint8).reshape(h, w, 3) for raw in reader]
    return np.stack(frames)


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> tuple[np.ndarray, Path]:
    frames = story_like("coffee.jpg")
    path = write_video(frames, tmp_path_factory.mktemp("fp") / "story.mp4")
    return frames, path


def test_shape_of_a_fingerprint():
    frames = story_like("coffee.jpg", frames=20)
    hashes = fp.fingerprint(frames)
    # per sampled frame three 64-bit pHashes (whole frame, middle 95 %, middle 90 %), 16 hex digits each
    assert len(hashes) == fp.SAMPLES * len(fp.SCALES) == 24
    assert all(len(h) == 16 and int(h, 16) >= 0 for h in hashes)
    # the bytes of the list split back into the same hashes 8 bytes at a time (the binding value)
    raw = b"".join(bytes.fromhex(h) for h in hashes)
    assert [raw[i:i + 8].hex() for i in range(0, len(raw), 8)] == hashes
    assert fp.fingerprint(frames) == hashes  # deterministic
    assert fp.fingerprint(list(frames)) == hashes  # a list of frames is the same as the array
    assert fp.similarity(hashes, hashes) == 1.0
    assert fp.ALGORITHM == "com.alive.fingerprint.1"
    assert 0.5 < fp.MATCH_THRESHOLD < 1.0


def test_samples_sit_at_fixed_fractions_of_the_duration():
    # the same moments of a 4 s story at 30, 24 and 15 fps
    at30, at24, at15 = (fp.sample_indices(n) for n in (120, 96, 60))
    assert at30 == [7, 22, 37, 52, 67, 82, 97, 112]
    for a, b, c in zip(at30, at24, at15):
        assert abs(a / 30 - b / 24) < 0.05 and abs(a / 30 - c / 15) < 0.07
    assert fp.sample_indices(5) == [0, 1, 2, 3, 4]  # fewer frames than samples: all of them
    assert fp.sample_indices(0) == []


def test_an_image_has_one_hash_and_matches_its_video():
    frames = story_like("coffee.jpg", frames=16)
    image = fp.fingerprint(frames[8])
    assert image == fp.frame_hashes(frames[8]) and len(image) == len(fp.SCALES)
    assert fp.similarity(image, fp.fingerprint(frames)) > 0.9  # best match among the video's samples
    grey = cv2.cvtColor(frames[8], cv2.COLOR_RGB2GRAY)
    assert fp.similarity(fp.fingerprint(grey), image) > 0.95  # the hash is of the luma
    assert fp.fingerprint(frames[:5]) == [h for f in frames[:5] for h in fp.frame_hashes(f)]  # few frames: all


def test_the_same_label_on_different_pictures_does_not_make_them_match():
    # every alive story carries the visible label in the same corner; the whole-frame hash sees it
    a, b = story_like("chelsea.jpg", frames=8), story_like("astronaut.jpg", frames=8)
    for video in (a, b):
        video[:, -H // 12:, : W // 2] = 255  # a label-sized box in the bottom 8 %
    assert fp.similarity(fp.fingerprint(a), fp.fingerprint(b)) < fp.MATCH_THRESHOLD


def test_a_crop_is_matched_by_the_inner_regions():
    frames = story_like("coffee.jpg", frames=8)
    h, w = frames.shape[1:3]
    for share in (0.05, 0.10):
        dy, dx = round(h * share / 2), round(w * share / 2)
        cropped = np.stack([cv2.resize(f[dy:h - dy, dx:w - dx], (w, h), interpolation=cv2.INTER_AREA) for f in frames])
        mine, theirs = fp.fingerprint(frames), fp.fingerprint(cropped)
        whole_only = fp.similarity(mine[::3], theirs[::3])  # whole-frame hashes only, as plain pHashes
        assert fp.similarity(mine, theirs) >= max(0.95, whole_only)
        assert fp.similarity(theirs, mine) == fp.similarity(mine, theirs)  # either way round


def test_brightness_and_contrast_do_not_move_the_bits():
    frames = story_like("coffee.jpg", frames=8)
    brighter = np.clip(frames.astype(np.float32) * 1.2 + 10, 0, 255).astype(np.uint8)
    # (x1.2 + 10 clips 16 % of these pixels at 255: a real change, still far above the threshold)
    assert fp.similarity(fp.fingerprint(frames), fp.fingerprint(brighter)) >= 0.9


@pytest.mark.parametrize("name,args", [
    ("h264 crf 35", ["-c:v", "libx264", "-crf", "35"]),
    ("downscale to half, crf 28", ["-vf", f"scale={W // 2}:{H // 2}", "-c:v", "libx264", "-crf", "28"]),
    ("frame rate 15", ["-vf", "fps=15", "-c:v", "libx264", "-crf", "23"]),
    ("frame rate 24", ["-vf", "fps=24", "-c:v", "libx264", "-crf", "23"]),
    ("crop 10 %, rescaled", ["-vf", f"crop=trunc(iw*0.9/2)*2:trunc(ih*0.9/2)*2,scale={W}:{H}", "-c:v", "libx264"]),
    ("crop 5 %, cropped size", ["-vf", "crop=trunc(iw*0.95/2)*2:trunc(ih*0.95/2)*2", "-c:v", "libx264"]),
    ("eq gamma 1.3", ["-vf", "eq=gamma=1.3", "-c:v", "libx264"]),
    ("eq brightness 0.1", ["-vf", "eq=brightness=0.1", "-c:v", "libx264"]),
    ("h265 crf 28", ["-c:v", "libx265", "-crf", "28", "-x265-params", "log-level=error"]),
])
def test_a_copy_through_ffmpeg_still_matches(original, tmp_path, name, args):
    frames, path = original
    copy = read_video(ffmpeg(path, tmp_path / "copy.mp4", *args))
    score = fp.similarity(fp.fingerprint(frames), fp.fingerprint(copy))
    assert score >= fp.MATCH_THRESHOLD, f"{name}: {score:.3f}"


def test_different_videos_do_not_match(original):
    frames, _ = original
    mine = fp.fingerprint(frames)
    others = {
        "another photo": story_like("chelsea.jpg"),
        "a third photo": story_like("astronaut.jpg"),
        "the same photo mirrored": frames[:, :, ::-1],
        "the same photo upside down": frames[:, ::-1],
        "noise": np.random.default_rng(3).integers(0, 256, (10, H, W, 3), dtype=np.uint8),
    }
    for name, video in others.items():
        score = fp.similarity(mine, fp.fingerprint(video))
        assert score < fp.MATCH_THRESHOLD, f"{name}: {score:.3f}"


def test_similarity_with_a_trimmed_copy_and_other_lengths():
    frames = story_like("coffee.jpg", frames=40)
    full = fp.fingerprint(frames)
    trimmed = fp.fingerprint(frames[5:])  # the first 1/8 cut away: samples move by under one slot
    assert fp.similarity(full, trimmed, max_shift=1) >= fp.similarity(full, trimmed)
    # a shorter fingerprint is compared with the samples at the same fractions of the duration
    frames_ = [full[i:i + 3] for i in range(0, len(full), 3)]
    assert fp.similarity(full, [h for i in (1, 3, 5, 7) for h in frames_[i]]) == 1.0
    # a plain list of one hash per frame (length no multiple of 3) compares whole-frame hashes
    assert fp.similarity(full[::3], full[::3]) == 1.0
    assert fp.similarity(full, []) == 0.0


def test_bad_input_is_refused_with_what_was_got():
    with pytest.raises(ValueError, match="empty"):
        fp.fingerprint([])
    with pytest.raises(ValueError, match="shape"):
        fp.fingerprint(np.zeros((2, 3, 4, 5, 6), np.uint8))
    with pytest.raises(ValueError, match="hex"):
        fp.similarity(["zz"], ["00"])
    with pytest.raises(ValueError, match="same length"):
        fp.similarity(["00" * 8, "00" * 16], ["00" * 8])
    with pytest.raises(ValueError, match="multiple of 64"):
        fp.similarity(["00" * 3], ["00" * 3])
    with pytest.raises(ValueError, match="shape"):
        fp.fingerprint(np.zeros((2, 2, 3), np.uint8))
