"""Frame-rate conversion: turn a clip at one rate into the same span of time at another rate.

SVD makes 7 fps and the story plays at 30, so most story frames fall between two generated ones.
``flow`` warps both neighbours to the in-between moment along dense optical flow (OpenCV DIS,
Kroeger et al. 2016) and blends them, which keeps edges sharp where a cross-dissolve (``blend``)
shows two half-transparent copies; ``repeat`` holds the earlier frame (stutter, but never a ghost).

How ``flow`` builds the frame at time ``t`` (0 < t < 1) between A and B:

* DIS flow A->B and B->A, once per source pair, at most ``FLOW_MAX_SIDE`` pixels on the long side
  (DIS is coarse-to-fine anyway; full resolution costs 2-3x the time for ~0.3 dB).
* For each output pixel x, the point of A that moves to x by time t solves y + t*F_ab(y) = x; a few
  fixed-point steps y <- x - t*F_ab(y) find it (the same for B with (1-t) and F_ba). This inverts
  the flow properly instead of assuming it is the same at x and at y, which smears moving edges.
* Occlusion: a pixel of A whose flow and the returning flow of B do not cancel (forward-backward
  check) has no partner in B; where the A sample is such a pixel the B sample is the occluder or
  a stranger, so B's weight drops, and the other way round. Weights start at (1-t, t). Measured
  against equal weights: +0.8 dB on a fast camera move, -0.3 dB on a disc crossing a background
  (there DIS smears the flow over both sides of the edge, so both samples look suspect).
* Both frames are warped with ``cv2.remap`` (bicubic) at full resolution and blended with those weights.

Held-out frames (benchmarks/interpolation_quality.py, 576x1024, 2 CPU cores; RESULTS.md has the
run): flow beats blend by 12-18 dB PSNR where things move 5-20 px per source frame, and matches or
beats it (+0.2..4 dB) on slow sub-pixel motion. It degrades with larger steps (~30 dB at ~40 px,
~21 dB at ~75 px) and is no better than blending beyond ~110 px. Weakest at the edges of objects
moving against their background (occlusion): DIS smooths the flow across the edge, a faint fringe
remains. Cost: 0.045-0.09 s per new frame for 7 -> 30 fps (a pair's flows serve ~4 new frames) and
0.07-0.10 s for 2x, the spread being other work on the cores; full-resolution flow costs 2-3x that
for ~0.3 dB.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import cv2
import numpy as np

from pipeline.errors import ConfigError

METHODS = ("flow", "blend", "repeat")

FLOW_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
"""DIS preset for ``flow``: MEDIUM beat FAST by up to 4 dB at moving edges for ~20 ms more per pair."""
FLOW_MAX_SIDE = 512
"""Flow is estimated with the long side at most this many pixels, then upscaled: at 576x1024 this is
2-3x faster than full-resolution flow and ~0.3 dB worse on held-out frames."""

_INVERSE_STEPS = 3  # fixed-point steps that invert the flow; converge for smooth flow, 3 is plenty
_POSITION_EPS = 1e-6  # an output time this close to a source frame is that frame, copied exactly

ProgressFn = Callable[[int, int], None]


def output_count(frames: int, src_fps: float, dst_fps: float) -> int:
    """Frames at ``dst_fps`` that cover the span of ``frames`` frames at ``src_fps``: the first frame
    at time 0, the last no later than the last source frame."""
    return math.floor((frames - 1) * dst_fps / src_fps + 1e-9) + 1


def _check(frames: np.ndarray, src_fps: float, dst_fps: float, method: str, progress: ProgressFn | None) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        got = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise ConfigError(f"frames must be a uint8 array shaped (F, H, W, 3), got {got}", code="bad_option")
    if frames.shape[0] < 1 or frames.shape[1] < 1 or frames.shape[2] < 1:
        raise ConfigError(f"frames must hold at least one non-empty frame, got shape {frames.shape}", code="bad_option")
    for name, fps in (("src_fps", src_fps), ("dst_fps", dst_fps)):
        if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0:
            raise ConfigError(f"{name} must be a positive finite number of frames per second, got {fps!r}",
                              code="bad_option")
    if method not in METHODS:
        raise ConfigError(f"unknown interpolation method {method!r}; use one of {', '.join(METHODS)}",
                          code="bad_option")
    if progress is not None and not callable(progress):
        raise ConfigError(f"progress must be callable(done, total) or None, got {type(progress).__name__}",
                          code="bad_option")


def retime(frames: np.ndarray, src_fps: float, dst_fps: float, method: str = "flow",
           progress: ProgressFn | None = None, *, flow_max_side: int = FLOW_MAX_SIDE) -> np.ndarray:
    """Resample uint8 (F, H, W, 3) frames from ``src_fps`` to ``dst_fps`` over the same span.

    Output frame k shows source time p = k * src_fps / dst_fps; there are ``output_count`` of them.
    Where p is a whole number the source frame is copied exactly. Going up, in-between frames come
    from ``method``; going down (or equal), each output takes the nearest source frame, so the clip
    never plays slower. Flow is computed once per source pair, however many frames fall in it.
    ``progress(done, total)`` is called after each output frame. ``flow_max_side`` caps the long
    side at which flow is estimated (speed against sharper moving edges; see ``FLOW_MAX_SIDE``).
    """
    _check(frames, src_fps, dst_fps, method, progress)
    if isinstance(flow_max_side, bool) or not isinstance(flow_max_side, int) or flow_max_side < 16:
        raise ConfigError(f"flow_max_side must be an integer of at least 16 pixels, got {flow_max_side!r}",
                          code="bad_option")
    total = output_count(len(frames), src_fps, dst_fps)
    last = len(frames) - 1
    out = np.empty((total, *frames.shape[1:]), dtype=np.uint8)
    pair: tuple[int, _FlowPair] | None = None
    for k in range(total):
        p = k * src_fps / dst_fps
        nearest = min(math.floor(p + 0.5), last)
        if dst_fps <= src_fps or abs(p - nearest) < _POSITION_EPS:
            out[k] = frames[nearest]
        else:
            i = min(math.floor(p), last - 1)
            t = p - i
            if method == "repeat":
                out[k] = frames[i]
            elif method == "blend":
                out[k] = cv2.addWeighted(frames[i], 1.0 - t, frames[i + 1], t, 0.0)
            else:
                if pair is None or pair[0] != i:
                    pair = (i, _FlowPair(frames[i], frames[i + 1], flow_max_side))
                out[k] = pair[1].at(t)
        if progress is not None:
            progress(k + 1, total)
    return out


class _FlowPair:
    """Flows and visibility of one source pair, kept while output frames fall between them."""

    def __init__(self, a: np.ndarray, b: np.ndarray, max_side: int):
        self.a, self.b = a, b
        h, w = a.shape[:2]
        self.scale = min(1.0, max_side / max(h, w))
        fh, fw = max(1, round(h * self.scale)), max(1, round(w * self.scale))
        ga, gb = (cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (fw, fh), interpolation=cv2.INTER_AREA)
                  for f in (a, b))
        dis = cv2.DISOpticalFlow_create(FLOW_PRESET)
        # Flow in pixels of the flow grid; the grid, flows and weights all stay at this size.
        self.f_ab = dis.calc(ga, gb, None)
        self.f_ba = dis.calc(gb, ga, None)
        ys, xs = np.mgrid[0:fh, 0:fw].astype(np.float32)
        self.grid = np.dstack([xs, ys])
        self.vis_a = self._visible(self.f_ab, self.f_ba)  # A's pixel has a partner in B
        self.vis_b = self._visible(self.f_ba, self.f_ab)

    def _sample(self, field: np.ndarray, pos: np.ndarray) -> np.ndarray:
        return cv2.remap(field, pos[..., 0], pos[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def _visible(self, fwd: np.ndarray, bwd: np.ndarray) -> np.ndarray:
        """Soft forward-backward check: 1 where fwd(x) + bwd(x + fwd(x)) ~ 0, falling towards 0.

        The tolerance grows with the motion (Sundaram, Brox & Keutzer 2010 use
        |w + w^|^2 < 0.01 (|w|^2 + |w^|^2) + 0.5); here it is a Gaussian of that ratio.
        """
        back = self._sample(bwd, self.grid + fwd)
        err = np.sum((fwd + back) ** 2, axis=-1)
        tol = 0.01 * (np.sum(fwd**2, axis=-1) + np.sum(back**2, axis=-1)) + 0.5
        return np.exp(-err / tol).astype(np.float32)

    def _source_of(self, flow: np.ndarray, t: float) -> np.ndarray:
        """Positions y with y + t*flow(y) = x for every grid point x (fixed-point iteration)."""
        pos = self.grid.copy()
        for _ in range(_INVERSE_STEPS):
            pos = self.grid - t * self._sample(flow, pos)
        return pos

    def _full_res(self, pos: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Flow-grid positions -> sampling maps at the frame's resolution."""
        h, w = shape
        if self.scale == 1.0:
            return pos[..., 0], pos[..., 1]
        disp = cv2.resize(pos - self.grid, (w, h), interpolation=cv2.INTER_LINEAR) / self.scale
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        return xs + disp[..., 0], ys + disp[..., 1]

    def at(self, t: float) -> np.ndarray:
        """The frame at time t in (0, 1) between A and B."""
        pos_a = self._source_of(self.f_ab, t)
        pos_b = self._source_of(self.f_ba, 1.0 - t)
        # A's sample is trusted as far as B's sample has a partner in A, and vice versa.
        w_a = (1.0 - t) * (self._sample(self.vis_b, pos_b) + 1e-3)
        w_b = t * (self._sample(self.vis_a, pos_a) + 1e-3)
        weight_b = w_b / (w_a + w_b)
        h, w = self.a.shape[:2]
        ax, ay = self._full_res(pos_a, (h, w))
        bx, by = self._full_res(pos_b, (h, w))
        # Cubic, not bilinear: bilinear sampling at half-pixel offsets blurs fine texture, which cost
        # 4-5 dB against the real frames on slow clips (sub-pixel motion) and lost to plain blending.
        warped_a = cv2.remap(self.a, ax, ay, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        warped_b = cv2.remap(self.b, bx, by, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        if self.scale != 1.0:
            weight_b = cv2.resize(weight_b, (w, h), interpolation=cv2.INTER_LINEAR)
        mixed = warped_a + weight_b[..., None] * (warped_b - warped_a)
        return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
