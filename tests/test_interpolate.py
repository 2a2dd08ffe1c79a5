"""Frame-rate conversion (pipeline/interpolate.py) and the quality metrics (pipeline/quality.py).

Small frames throughout; the 576x1024 figures live in benchmarks/interpolation_quality.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.interpolate import output_count, retime
from pipeline.quality import flicker, psnr, ssim

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smoothed colour noise: detail at every scale a flow estimator needs, no repeating pattern."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
    fine = cv2.GaussianBlur(noise, (0, 0), 1.5)
    coarse = cv2.GaussianBlur(noise, (0, 0), 6.0)
    mixed = 0.5 * (fine - fine.mean()) * 3 + 0.5 * (coarse - coarse.mean()) * 8 + 128
    return np.clip(mixed, 0, 255).astype(np.uint8)


def _photo(w: int, h: int) -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES / "astronaut.jpg").convert("RGB").resize((w, h), Image.Resampling.LANCZOS))


def _pan(big: np.ndarray, h: int, w: int, offsets: list[tuple[int, int]]) -> np.ndarray:
    return np.stack([big[y:y + h, x:x + w] for x, y in offsets])


def _random_frames(count: int, h: int = 16, w: int = 24) -> np.ndarray:
    return np.random.default_rng(count).integers(0, 256, (count, h, w, 3), dtype=np.uint8)


# --- counts and exact copies -------------------------------------------------------------------

@pytest.mark.parametrize("frames, src, dst", [(25, 7, 30), (96, 24, 30), (14, 7, 30), (49, 12, 24), (96, 24, 12),
                                              (30, 30, 30), (1, 7, 30), (10, 25, 23.976)])
def test_count_follows_the_formula(frames, src, dst):
    out = retime(_random_frames(frames), src, dst, method="blend")
    assert len(out) == output_count(frames, src, dst) == math.floor((frames - 1) * dst / src + 1e-9) + 1
    # the output never runs past the last source frame and ends within one output period of it
    assert (len(out) - 1) * src / dst <= frames - 1 + 1e-9
    assert frames - 1 - (len(out) - 1) * src / dst < src / dst


def test_svd_and_film_rates_to_thirty():
    assert len(retime(_random_frames(25), 7, 30, method="repeat")) == 103  # SVD-XT clip, 3.43 s
    assert len(retime(_random_frames(96), 24, 30, method="repeat")) == 119  # motion engine, 3.96 s


@pytest.mark.parametrize("method", ["flow", "blend", "repeat"])
def test_whole_positions_are_exact_copies(method):
    frames = _random_frames(9, 32, 48)
    out = retime(frames, 24, 30, method=method)  # output k sits at source position 0.8 k
    for k in range(0, len(out), 5):
        np.testing.assert_array_equal(out[k], frames[round(k * 0.8)])
    doubled = retime(frames, 12, 24, method=method)
    np.testing.assert_array_equal(doubled[::2], frames)


def test_same_rate_is_identity_and_one_frame_stays_one():
    frames = _random_frames(6)
    np.testing.assert_array_equal(retime(frames, 24, 24), frames)
    np.testing.assert_array_equal(retime(frames, np.int64(24), np.float32(24.0)), frames)  # numpy numbers work
    assert retime(frames[:1], 7, 30).shape == (1, *frames.shape[1:])


def test_slowing_down_is_never_done_by_interpolation():
    frames = _random_frames(31)
    out = retime(frames, 30, 24, method="flow")  # nearest frame, never a blend
    assert len(out) == 25
    for k, frame in enumerate(out):
        np.testing.assert_array_equal(frame, frames[math.floor(k * 30 / 24 + 0.5)])


def test_blend_and_repeat_in_between():
    frames = np.stack([np.full((8, 8, 3), 40, np.uint8), np.full((8, 8, 3), 200, np.uint8)])
    assert int(retime(frames, 1, 4, method="blend")[2, 0, 0, 0]) == 120
    assert int(retime(frames, 1, 4, method="blend")[1, 0, 0, 0]) == 80
    np.testing.assert_array_equal(retime(frames, 1, 4, method="repeat")[1:4], np.stack([frames[0]] * 3))


def test_progress_is_called_per_output_frame():
    calls: list[tuple[int, int]] = []
    out = retime(_random_frames(8), 7, 30, method="flow", progress=lambda d, t: calls.append((d, t)))
    assert calls == [(k + 1, len(out)) for k in range(len(out))]


# --- flow quality ------------------------------------------------------------------------------

def test_flow_beats_blend_on_a_translating_texture():
    big = _texture(200, 260)
    h, w = 144, 192
    frames = _pan(big, h, w, [(0, 0), (12, 6)])  # 12 px right, 6 px down between the two frames
    truth = big[3:3 + h, 6:6 + w]  # the true middle frame
    flow = retime(frames, 1, 2, method="flow")[1]
    blend = retime(frames, 1, 2, method="blend")[1]
    margin = (slice(12, -12), slice(16, -16))  # content entering at the edges exists in one frame only
    p_flow, p_blend = psnr(flow[margin], truth[margin]), psnr(blend[margin], truth[margin])
    assert p_flow > 30 and p_flow > p_blend + 10, (p_flow, p_blend)
    assert ssim(flow[margin], truth[margin]) > 0.95
    assert ssim(blend[margin], truth[margin]) < 0.6


def test_flow_on_a_photo_pan_at_quarter_positions():
    big = _photo(300, 300)
    h, w = 192, 144
    frames = _pan(big, h, w, [(0, 0), (16, 8)])
    out = retime(frames, 1, 4, method="flow")
    for k, (dx, dy) in ((1, (4, 2)), (2, (8, 4)), (3, (12, 6))):
        truth = big[dy:dy + h, dx:dx + w]
        inner = (slice(10, -10), slice(18, -18))
        blend = retime(frames, 1, 4, method="blend")[k]
        assert psnr(out[k][inner], truth[inner]) > psnr(blend[inner], truth[inner]) + 3


# --- metrics -----------------------------------------------------------------------------------

def test_psnr_and_ssim_identities_and_ranges():
    a = _photo(96, 64)
    assert psnr(a, a) == float("inf")
    assert ssim(a, a) == pytest.approx(1.0)
    noisy = np.clip(a + np.random.default_rng(1).normal(0, 10, a.shape), 0, 255).astype(np.uint8)
    very_noisy = np.clip(a + np.random.default_rng(2).normal(0, 40, a.shape), 0, 255).astype(np.uint8)
    assert 20 < psnr(a, noisy) < 35 and psnr(a, very_noisy) < psnr(a, noisy)
    assert 0 < ssim(a, very_noisy) < ssim(a, noisy) < 1
    assert psnr(a, noisy) == psnr(noisy, a) and ssim(a, noisy) == pytest.approx(ssim(noisy, a))
    # a single-grey-level error of 1 everywhere: MSE 1 -> 20 log10(255)
    assert psnr(a, np.where(a < 255, a + 1, a - 1).astype(np.uint8)) == pytest.approx(20 * math.log10(255))
    unrelated = _texture(64, 96)
    assert ssim(a, unrelated) < 0.2
    stack_a, stack_b = np.stack([a, a]), np.stack([a, noisy])
    assert ssim(stack_a, stack_b) == pytest.approx((1.0 + ssim(a, noisy)) / 2)


def test_metrics_refuse_mismatched_or_non_rgb_input():
    a = _photo(32, 32)
    with pytest.raises(ConfigError) as err:
        psnr(a, a[:16])
    assert err.value.code == "bad_option" and "(1, 16, 32, 3)" in err.value.message
    with pytest.raises(ConfigError):
        ssim(a.astype(np.float32), a)
    with pytest.raises(ConfigError):
        flicker(a[..., 0])


def test_flicker_orders_static_pan_and_brightness_jumps():
    big = _photo(260, 260)
    h, w = 144, 96
    static = np.stack([big[:h, :w]] * 6)
    pan = _pan(big, h, w, [(4 * i, 2 * i) for i in range(6)])
    gains = np.array([1.0, 0.75] * 3)[:, None, None, None]
    blinking = np.clip(static.astype(np.float32) * gains, 0, 255).astype(np.uint8)
    f_static, f_pan, f_blink = flicker(static), flicker(pan), flicker(blinking)
    assert f_static < 0.05
    assert f_static < f_pan < 3.0
    assert f_blink > 10 and f_blink > 5 * f_pan, (f_static, f_pan, f_blink)
    assert flicker(static[:1]) == 0.0


# --- bad arguments -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    ({"src_fps": 0}, "src_fps"),
    ({"dst_fps": -30}, "dst_fps"),
    ({"dst_fps": float("nan")}, "dst_fps"),
    ({"src_fps": float("inf")}, "src_fps"),
    ({"src_fps": True}, "src_fps"),
    ({"dst_fps": "30"}, "dst_fps"),
    ({"method": "cubic"}, "flow, blend, repeat"),
    ({"progress": 3}, "progress"),
    ({"flow_max_side": 4}, "flow_max_side"),
    ({"frames": np.zeros((2, 8, 8, 3), np.float32)}, "uint8"),
    ({"frames": np.zeros((8, 8, 3), np.uint8)}, "(F, H, W, 3)"),
    ({"frames": np.zeros((2, 8, 8, 4), np.uint8)}, "(2, 8, 8, 4)"),
    ({"frames": np.zeros((0, 8, 8, 3), np.uint8)}, "at least one"),
    ({"frames": [[1, 2, 3]]}, "list"),
])
def test_bad_arguments_raise_config_error(kwargs, words):
    args = {"frames": _random_frames(3), "src_fps": 7, "dst_fps": 30, **kwargs}
    with pytest.raises(ConfigError) as err:
        retime(**args)
    assert err.value.code == "bad_option"
    assert words in err.value.message


def test_flow_is_computed_once_per_source_pair(monkeypatch):
    from pipeline import interpolate

    built: list[int] = []

    class Counting(interpolate._FlowPair):
        def __init__(self, *args):
            built.append(1)
            super().__init__(*args)

    monkeypatch.setattr(interpolate, "_FlowPair", Counting)
    out = retime(_random_frames(8), 7, 30, method="flow")  # 31 frames: 7 pairs, ~4 in-between frames each
    assert len(out) == 31 and len(built) == 7
