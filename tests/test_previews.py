import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ConfigError, EncodeFailed
from pipeline.previews import best_frame, preview_indices, write_webp_preview


def _scene(h=144, w=256, seed=1):
    """A textured, well-exposed picture: edges everywhere for the Laplacian to find."""
    rng = np.random.default_rng(seed)
    small = rng.integers(40, 215, (h // 8, w // 8, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def _blurred(frame, sigma):
    return cv2.GaussianBlur(frame, (0, 0), sigmaX=sigma)


def test_best_frame_prefers_a_sharp_middle_frame_over_a_blurred_first_frame():
    sharp = _scene()
    frames = np.stack([_blurred(sharp, 1.5), _blurred(sharp, 3), sharp, _blurred(sharp, 2), _blurred(sharp, 4)])
    index, scores = best_frame(frames)
    assert index == 2
    assert scores["sharpness"] == 1.0 and scores["candidates"] == 5
    assert 0 < scores["score"] <= 1


def test_best_frame_passes_over_blown_out_and_black_frames():
    scene = _scene()
    blown = np.clip(scene.astype(int) * 3, 0, 255).astype(np.uint8)  # sharper edges, mostly clipped
    dark = (scene // 12).astype(np.uint8)
    frames = np.stack([dark, blown, _blurred(scene, 0.6), blown, dark])
    assert best_frame(frames)[0] == 2


def test_identical_frames_give_the_middle_not_frame_zero():
    frames = np.stack([_scene()] * 7)
    assert best_frame(frames)[0] == 3


def test_preview_takes_frames_at_the_preview_rate():
    assert preview_indices(24, 24, 12) == list(range(0, 24, 2))
    assert preview_indices(10, 8, 12) == list(range(10))  # slower clip: every frame
    assert preview_indices(1, 30, 12) == [0]


def test_webp_preview_is_a_small_looping_animation(tmp_path):
    frames = np.stack([np.roll(_scene(), 8 * i, axis=1) for i in range(24)])
    out = tmp_path / "preview.webp"
    record = write_webp_preview(frames, 24.0, out, width=128, preview_fps=12, quality=60)
    assert record == {"width": 128, "height": 72, "frames": 12, "bytes": out.stat().st_size, "fps": 12.0}
    with Image.open(out) as im:
        assert im.format == "WEBP" and im.is_animated and im.n_frames == 12
        assert im.size == (128, 72) and im.info["loop"] == 0
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            im.load()
            durations.append(im.info["duration"])
    assert sum(durations) == 1000  # 12 frames at 12 fps: one second, without rounding drift
    assert set(durations) <= {83, 84}
    assert [p.name for p in tmp_path.iterdir()] == ["preview.webp"]  # no temp file left behind


def test_webp_preview_is_never_wider_than_the_frames(tmp_path):
    record = write_webp_preview(np.stack([_scene(64, 64)] * 2), 12.0, tmp_path / "p.webp", width=240,
                                preview_fps=12, quality=50)
    assert (record["width"], record["height"], record["frames"]) == (64, 64, 2)


def test_webp_preview_failures_leave_nothing(tmp_path):
    with pytest.raises(EncodeFailed):
        write_webp_preview(np.stack([_scene()] * 2), 12.0, tmp_path / "missing" / "p.webp", width=64,
                           preview_fps=12, quality=50)
    with pytest.raises(ConfigError):
        write_webp_preview(np.stack([_scene()] * 2), 12.0, tmp_path / "p.webp", width=64, preview_fps=12, quality=0)
    assert list(tmp_path.iterdir()) == []
