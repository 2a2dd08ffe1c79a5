"""What people see before they press play: the poster frame and a small looping animated WebP.

The poster is the frame a viewer judges the video by, so it is chosen, not taken: generated clips often
start soft (the model settles) or drift into blur, and frame 0 is rarely the best.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from pipeline.errors import ConfigError, EncodeFailed
from pipeline.storage import create_temp_beside, publish

_SCORE_SIDE = 256  # frames are scored at about this long side: sharpness is compared, not measured absolutely
_MAX_CANDIDATES = 64  # longer clips are scored on an even subset of their frames
_CENTRE_WEIGHT = 0.15  # the clip's ends score up to 15% lower than its middle
_DARK_MEAN = 0.2  # mean luminance (0..1) under which a frame counts as under-exposed
_CLIP_LOW, _CLIP_HIGH = 5, 250  # grey levels counted as crushed black / blown white


def _check_frames(frames: np.ndarray, what: str) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ConfigError(f"{what} needs uint8 frames shaped (F, H, W, 3) with F >= 1, "
                          f"got {frames.dtype} {frames.shape}", code="bad_frames")


def _frame_scores(frame: np.ndarray) -> tuple[float, float]:
    """(sharpness, exposure) of one frame: variance of the Laplacian on a small grey copy; the share of
    pixels neither crushed nor blown, scaled down further when the frame is dark overall."""
    h, w = frame.shape[:2]
    step = max(1, -(-max(h, w) // _SCORE_SIDE))  # a whole factor: OpenCV's fast area-averaging path
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if step > 1:
        grey = cv2.resize(grey, (max(1, w // step), max(1, h // step)), interpolation=cv2.INTER_AREA)
    sharpness = float(cv2.Laplacian(grey, cv2.CV_32F).var())
    clipped = float(np.mean((grey <= _CLIP_LOW) | (grey >= _CLIP_HIGH)))
    mean = float(grey.mean()) / 255.0
    exposure = (1.0 - clipped) * min(1.0, mean / _DARK_MEAN)
    return sharpness, exposure


def best_frame(frames: np.ndarray) -> tuple[int, dict[str, Any]]:
    """Pick the poster frame of uint8 frames (F, H, W, 3): the sharpest well-exposed one, preferring the
    middle of the clip a little. Returns its index and its scores (JSON-able):
    ``score = sharpness / best sharpness x exposure x centre``, each 0..1."""
    _check_frames(frames, "best_frame")
    count = len(frames)
    candidates = sorted({round(i) for i in np.linspace(0, count - 1, min(count, _MAX_CANDIDATES))})
    measured = [_frame_scores(frames[i]) for i in candidates]
    top_sharpness = max(s for s, _ in measured) or 1.0
    middle = (count - 1) / 2
    rows = []
    for index, (sharpness, exposure) in zip(candidates, measured):
        centre = 1.0 - _CENTRE_WEIGHT * ((index - middle) / middle) ** 2 if middle else 1.0
        parts = {"sharpness": sharpness / top_sharpness, "exposure": exposure, "centre": centre}
        rows.append((parts["sharpness"] * exposure * centre, index, parts))
    score, index, parts = max(rows, key=lambda row: row[0])
    return index, {"score": round(score, 4), **{k: round(v, 4) for k, v in parts.items()},
                   "candidates": len(candidates), "method": "laplacian variance x exposure x centre"}


def preview_indices(count: int, fps: float, preview_fps: int) -> list[int]:
    """Frames shown at ``preview_fps``: the source frame on screen at each preview tick."""
    if preview_fps >= fps:
        return list(range(count))
    ticks = math.floor(count * preview_fps / fps + 1e-9)
    return [min(count - 1, math.floor(k * fps / preview_fps + 1e-9)) for k in range(max(1, ticks))]


def preview_size(src_w: int, src_h: int, width: int) -> tuple[int, int]:
    """The preview's (width, height): ``width`` wide at most, never wider than the frames, same aspect."""
    out_w = min(width, src_w)
    return out_w, max(1, round(src_h * out_w / src_w))


def shrink_for_preview(frames, indices, width: int) -> np.ndarray:
    """Only the frames at ``indices``, each shrunk (area average) to the preview size one at a time:
    a stack of 36 small frames instead of 36 full-size ones (213 MiB at 1080x1920)."""
    first = frames[indices[0]]
    size = preview_size(first.shape[1], first.shape[0], width)
    return np.stack([cv2.resize(frames[i], size, interpolation=cv2.INTER_AREA) for i in indices])


def write_webp_preview(frames: np.ndarray, fps: float, out_path: Path, *, width: int, preview_fps: int,
                       quality: int) -> dict[str, Any]:
    """Write a small looping animated WebP of the frames (never wider than they are), atomically.

    Frames are taken at ``preview_fps`` (or every frame when the clip is slower) and shrunk with area
    averaging. Returns {width, height, frames, bytes, fps}.
    """
    _check_frames(frames, "write_webp_preview")
    if fps <= 0 or width < 1 or preview_fps < 1 or not 1 <= quality <= 100:
        raise ConfigError(f"preview needs fps > 0, width >= 1, preview_fps >= 1, quality 1..100; got fps={fps}, "
                          f"width={width}, preview_fps={preview_fps}, quality={quality}", code="bad_option")
    out_path = Path(out_path)
    out_w, out_h = preview_size(frames.shape[2], frames.shape[1], width)
    shown = preview_indices(len(frames), fps, preview_fps)
    rate = min(float(preview_fps), float(fps))
    images = [Image.fromarray(cv2.resize(frames[i], (out_w, out_h), interpolation=cv2.INTER_AREA)) for i in shown]
    # per-frame durations from rounded tick times, so the loop's total length does not drift
    ticks = [round(k * 1000 / rate) for k in range(len(images) + 1)]
    durations = [b - a for a, b in zip(ticks, ticks[1:])]

    try:
        temp = create_temp_beside(out_path)
    except OSError as exc:
        raise EncodeFailed(f"cannot write the preview {out_path}: {exc.strerror} (check that the directory "
                           "exists and is writable)", code="output_unwritable") from exc
    try:
        try:
            images[0].save(temp, format="WEBP", save_all=True, append_images=images[1:], loop=0,
                           duration=durations, quality=quality)
            publish(temp, out_path)
        except OSError as exc:
            raise EncodeFailed(f"cannot write the preview {out_path}: {exc}", code="output_unwritable") from exc
    finally:
        temp.unlink(missing_ok=True)  # no-op after publish
    return {"width": out_w, "height": out_h, "frames": len(images), "bytes": out_path.stat().st_size,
            "fps": rate}
