"""A CPU-only classical engine that animates the scene, not the frame: a living photo.

No weights, no GPU. It looks at the photo (``pipeline.scene``: faces, subject, sky, water, foliage)
and moves what should move by itself (``pipeline.living``): clouds drift and the sky's colour
shifts, water flows, leaves sway, and a camera floats with the subject on its own parallax layer.
What it is not sure of stays still; a face is never warped. Every motion is periodic in the clip's
length, so the clip is one seamless cycle (``Clip.looped``).

Given the story's size and frame rate (``resolve_for_story``, the default for a job), it renders the
story frames directly, from the framed photo at full story resolution: no small render, no
interpolation, no upscale (``finish`` only repeats the cycle, labels and measures). The cycle is the
story's length, or the largest whole fraction of it whose frames fit ``CYCLE_BUDGET_BYTES``: a
default 1080x1920 story (120 frames) is three 40-frame cycles, 237 MiB in memory instead of 712.

Its frames are the user's photo moved and blended by fixed formulas (image analysis, advection,
periodic displacement, affine layers): no model, nothing learned from sampled data. So its label is
IPTC ``algorithmicMedia`` ("Pure algorithmic media: created purely by an algorithm not based on any
sampled training data"), not ``trainedAlgorithmicMedia``, and the visible label says "Animated photo",
not "AI-generated".
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from pipeline.engines.base import Clip, Engine, GenerationOptions, ProgressFn, pick_seed
from pipeline.living import LivingPhoto
from pipeline.provenance import ALGORITHMIC_MEDIA
from pipeline.scene import analyse

DEFAULT_FPS = 24  # when no story is given (the engine called on its own)
DEFAULT_FRAMES = 96  # 4 s at 24 fps
CYCLE_BUDGET_BYTES = 256 * 1024 * 1024  # frames of one cycle held in memory at most (default story: 40)


def cycle_frames(total: int, frame_bytes: int, fps: int) -> int:
    """Frames in one cycle of a ``total``-frame story: the story itself when it fits the budget, else
    its largest divisor that does (a story of whole cycles loops without a seam), never under a
    second; a story with no such divisor gets the largest cycle that fits."""
    most = max(1, CYCLE_BUDGET_BYTES // max(1, frame_bytes))
    if total <= most:
        return total
    for frames in range(most, max(1, fps) - 1, -1):
        if total % frames == 0:
            return frames
    return most


class MotionEngine(Engine):
    """Scene analysis + looping advection, sway and layered parallax (OpenCV, numpy)."""

    name = "motion"
    digital_source_type = ALGORITHMIC_MEDIA  # formulas move the photo's own pixels; no trained model
    renders_story = True

    def load(self) -> None:  # nothing to load
        return None

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "model": None,
                "method": "living photo: faces (Haar), subject (saliency + GrabCut), sky/water/foliage (colour, "
                          "texture, position); looping advection, sway and layered parallax (OpenCV)"}

    @property
    def software_agent(self) -> str:
        return "alive motion engine (classical scene animation: sky, water, foliage, parallax; no generative model)"

    def resolve_for_story(self, options: GenerationOptions, story: Any) -> GenerationOptions:
        """Render the story directly: its size and frame rate, a cycle that repeats into its length.
        A caller who pinned another size gets a clip of that size that ``finish`` fits as usual."""
        if options.width is not None or options.height is not None:
            if (options.width, options.height) != (story.width, story.height):
                return self.resolve(options)
        fps = options.fps or story.fps
        update: dict[str, Any] = {"width": story.width, "height": story.height, "fps": fps}
        if options.num_frames is None:
            total = max(1, round(story.duration_s * fps))
            update["num_frames"] = cycle_frames(total, story.width * story.height * 3, fps)
        return options.model_copy(update=update)

    def generate(self, image: Image.Image, options: GenerationOptions, progress: ProgressFn | None = None) -> Clip:
        if image.size != (options.width, options.height):
            raise ValueError(f"image is {image.size}, expected the framed size {(options.width, options.height)}")
        seed = pick_seed(options.seed)
        fps = options.fps or DEFAULT_FPS
        count = options.num_frames or DEFAULT_FRAMES
        strength = min(options.motion_bucket_id / 127.0, 3.0)

        photo = np.asarray(image.convert("RGB"), dtype=np.uint8)
        scene = analyse(photo)
        living = LivingPhoto(photo, scene, style=options.motion_style, cycle=count, fps=fps, strength=strength,
                             seed=seed)
        frames = np.empty((count, *photo.shape), dtype=np.uint8)
        for i in range(count):
            living.render(i, frames[i])
            if progress is not None:
                progress(i + 1, count)
        motion = living.describe()
        del living  # its plates and fields: the clip is what stays
        _return_freed_memory()
        details = {"motion": motion, "scene": scene.describe()}
        return Clip(frames=frames, fps=float(fps), seed=seed, notes=[*motion["notes"], _summary(motion)],
                    looped=True, details=details)


def _return_freed_memory() -> None:
    """Give the analysis' and the plates' freed buffers back to the OS (glibc keeps freed heap
    memory by default: ~70 MB of a 1080x1920 set-up would otherwise stay resident beside the clip).
    A no-op where the C library has no ``malloc_trim``."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _summary(motion: dict[str, Any]) -> str:
    """One sentence for the report's notes: which regions moved and how."""
    parts = [f"{name}: {facts['motion']}" for name, facts in motion["moved"].items()]
    what = "; ".join(parts) if parts else "nothing moved"
    return f"motion engine (style {motion['style']}, {motion['cycle_frames']}-frame seamless cycle): {what}"
