"""A CPU-only classical engine: a slow, eased Ken Burns push with a gentle parallax "breath".

No weights, no GPU, a watchable clip in about a second. It is the README demo's default and the
fallback for CPU-only deployments; reports and labels name it, so nobody mistakes it for SVD.

Its frames are the user's photo moved and warped by a fixed formula (zoom, pan, radial parallax):
no model, nothing learned from sampled data. So its label is IPTC ``algorithmicMedia`` ("Pure
algorithmic media: created purely by an algorithm not based on any sampled training data"), not
``trainedAlgorithmicMedia``, and the visible label says "Animated photo", not "AI-generated".
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
from PIL import Image

from pipeline.engines.base import Clip, Engine, GenerationOptions, ProgressFn, pick_seed
from pipeline.provenance import ALGORITHMIC_MEDIA

DEFAULT_FPS = 24
DEFAULT_FRAMES = 96  # 4 s at 24 fps


def _ease_in_out(t: float) -> float:
    return 0.5 - 0.5 * math.cos(math.pi * t)


class MotionEngine(Engine):
    """Zoom + pan with easing, plus a radial parallax that lifts the centre of the picture."""

    name = "motion"
    digital_source_type = ALGORITHMIC_MEDIA  # a formula moves the photo's own pixels; no trained model

    def load(self) -> None:  # nothing to load
        return None

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "model": None, "method": "eased zoom/pan with radial parallax (OpenCV remap)"}

    @property
    def software_agent(self) -> str:
        return "alive motion engine (classical Ken Burns/parallax, no generative model)"

    def generate(self, image: Image.Image, options: GenerationOptions, progress: ProgressFn | None = None) -> Clip:
        if image.size != (options.width, options.height):
            raise ValueError(f"image is {image.size}, expected the framed size {(options.width, options.height)}")
        seed = pick_seed(options.seed)
        rng = np.random.default_rng(seed)
        fps = options.fps or DEFAULT_FPS
        count = options.num_frames or DEFAULT_FRAMES
        strength = min(options.motion_bucket_id / 127.0, 3.0)

        src = np.asarray(image.convert("RGB"), dtype=np.uint8)
        h, w = src.shape[:2]
        # The seed picks where the camera drifts; strength scales zoom, drift and parallax together.
        angle = rng.uniform(0, 2 * math.pi)
        zoom_end = 1.0 + 0.10 * strength
        drift = 0.03 * strength * np.array([math.cos(angle) * w, math.sin(angle) * h])
        parallax = 0.012 * strength * min(w, h)

        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        nx, ny = (xs - cx) / np.float32(w / 2.0), (ys - cy) / np.float32(h / 2.0)
        bulge = np.clip(1.0 - (nx**2 + ny**2), 0.0, 1.0).astype(np.float32)  # 1 at centre, 0 at corners

        frames = np.empty((count, h, w, 3), dtype=np.uint8)
        for i in range(count):
            t = _ease_in_out(i / max(count - 1, 1))
            zoom = 1.0 + (zoom_end - 1.0) * t
            shift_x, shift_y = drift * t
            lift = parallax * math.sin(math.pi * t)  # the centre comes forward and settles back
            map_x = (cx + (xs - cx) / zoom - shift_x / zoom - lift * bulge * nx).astype(np.float32)
            map_y = (cy + (ys - cy) / zoom - shift_y / zoom - lift * bulge * ny).astype(np.float32)
            frames[i] = cv2.remap(src, map_x, map_y, interpolation=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
            if progress is not None:
                progress(i + 1, count)
        return Clip(frames=frames, fps=float(fps), seed=seed)
