"""Numbers that say whether the motion of a clip got better or worse: PSNR, SSIM and flicker.

PSNR and SSIM compare a rebuilt frame with the real one (the interpolation benchmark holds frames
out and rebuilds them). Flicker needs no reference: it measures how much the brightness of a clip
jumps from frame to frame once camera and object motion are taken out, so the job report can show
a regression (a blinking finish step, an interpolator that pulses) without anyone watching the clip.
"""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np

from pipeline.errors import ConfigError

_PEAK = 255.0
# SSIM constants of Wang et al. (2004): Gaussian window 11 x 11, sigma 1.5, K1 0.01, K2 0.03.
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_C1 = (0.01 * _PEAK) ** 2
_C2 = (0.03 * _PEAK) ** 2
# BT.601 luma weights, the ones the reference SSIM code applies to colour images (via rgb2gray).
_LUMA = np.array([0.299, 0.587, 0.114])


def _as_stack(frames: np.ndarray, what: str) -> np.ndarray:
    """(H, W, 3) or (F, H, W, 3) uint8 -> (F, H, W, 3); anything else is refused with what was got."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or frames.shape[-1] != 3:
        raise ConfigError(
            f"{what} must be uint8 RGB, shaped (H, W, 3) or (F, H, W, 3); got {frames.dtype} {frames.shape}",
            code="bad_option",
        )
    return frames[None] if frames.ndim == 3 else frames


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_stack(a, "first argument"), _as_stack(b, "second argument")
    if a.shape != b.shape:
        raise ConfigError(f"frames to compare differ in shape: {a.shape} vs {b.shape}", code="bad_option")
    return a, b


def _luma(frame: np.ndarray) -> np.ndarray:
    """BT.601 luma of one RGB frame, float64 in 0..255."""
    return frame.astype(np.float64) @ _LUMA


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels (one pooled MSE for a stack).

    Pooling the MSE rather than averaging per-frame dB keeps one perfectly rebuilt frame from
    making the whole stack infinite. Identical inputs give ``inf``.
    """
    a, b = _pair(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(_PEAK**2 / mse)


def _blur(img: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(img, (_SSIM_WINDOW, _SSIM_WINDOW), _SSIM_SIGMA)


def _ssim_frame(x: np.ndarray, y: np.ndarray) -> float:
    mu_x, mu_y = _blur(x), _blur(y)
    var_x = _blur(x * x) - mu_x * mu_x
    var_y = _blur(y * y) - mu_y * mu_y
    cov = _blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + _C1) * (2 * cov + _C2)) / ((mu_x**2 + mu_y**2 + _C1) * (var_x + var_y + _C2))
    # Like the reference implementation, score only where the whole window lies inside the picture.
    pad = _SSIM_WINDOW // 2
    inner = ssim_map[pad:-pad, pad:-pad] if min(x.shape) > 2 * pad else ssim_map
    return float(inner.mean())


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity (Wang et al. 2004) on BT.601 luma, averaged over the frames of a stack.

    1.0 means identical; unrelated pictures score near 0 (it can go slightly negative).
    """
    a, b = _pair(a, b)
    return float(np.mean([_ssim_frame(_luma(x), _luma(y)) for x, y in zip(a, b)]))


def _small_luma(frame: np.ndarray, max_side: int) -> np.ndarray:
    h, w = frame.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        frame = cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)  # BT.601 weights, uint8


def flicker(frames: np.ndarray, max_side: int = 256) -> float:
    """Mean absolute luma change between consecutive frames after motion compensation (0..255).

    Each pair is downscaled so its long side is at most ``max_side`` (speed; flicker is a low-
    frequency effect), DIS optical flow maps every pixel of the next frame back into the previous
    one, and the previous frame is warped onto the next. What motion cannot explain is left: a
    brightness jump, a pulsing blend. Pixels whose match falls outside the picture are not scored.
    A single frame scores 0.0. It does not see judder: a repeated frame scores 0 for its pair, so a
    clip padded with duplicates scores lower than the real motion.
    """
    frames = _as_stack(frames, "frames")
    if max_side < 8:
        raise ConfigError(f"flicker max_side must be at least 8 pixels, got {max_side}", code="bad_option")
    if len(frames) < 2:
        return 0.0
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    lumas = [_small_luma(f, max_side) for f in frames]
    h, w = lumas[0].shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    scores = []
    for prev, nxt in itertools.pairwise(lumas):
        back = dis.calc(nxt, prev, None)  # for each pixel of `nxt`, where it was in `prev`
        map_x, map_y = xs + back[..., 0], ys + back[..., 1]
        warped = cv2.remap(prev.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
        diff = np.abs(nxt.astype(np.float32) - warped)
        scores.append(float(diff[inside].mean()) if inside.any() else float(diff.mean()))
    return float(np.mean(scores))
