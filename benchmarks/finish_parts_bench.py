"""Time the per-frame parts of finishing a story at 1080x1920: the clip fit (resize / pad), the visible
label, the poster choice and the WebP preview; and the photo framing (saliency, Haar face).

Run: .venv/bin/python benchmarks/finish_parts_bench.py [--frames 24]
Frames are a real photo (examples/coffee.jpg) panned a little per frame, so the content is natural.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import PIL
from PIL import Image

from pipeline.frame import fit_clip_to_story, fit_to_size, haar_available
from pipeline.overlay import draw_label
from pipeline.previews import best_frame, write_webp_preview
from pipeline.settings import OverlaySettings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _clip(width: int, height: int, count: int) -> np.ndarray:
    photo = np.asarray(Image.open(EXAMPLES / "coffee.jpg").convert("RGB").resize((width + count, height)))
    return np.stack([photo[:, i:i + width] for i in range(count)])


def _ms_per(fn, count: int, repeat: int = 5) -> float:
    fn()  # warm-up (allocations, OpenCV's thread pool)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000 / count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=24)
    n = parser.parse_args().frames
    print(f"python {platform.python_version()}, numpy {np.__version__}, opencv {cv2.__version__} "
          f"({cv2.getNumThreads()} threads), pillow {PIL.__version__}; {n} frames per run, best of 5")

    portrait, landscape = _clip(576, 1024, n), _clip(1024, 576, n)
    for resampler in ("auto", "lanczos", "cubic", "area"):
        ms = _ms_per(lambda: fit_clip_to_story(portrait, 1080, 1920, resampler=resampler), n)
        print(f"fit_clip_to_story 576x1024 -> 1080x1920 resize, {resampler:8s}: {ms:6.1f} ms/frame")
    for resampler in ("auto", "cubic"):
        ms = _ms_per(lambda: fit_clip_to_story(landscape, 1080, 1920, resampler=resampler), n)
        print(f"fit_clip_to_story 1024x576 -> 1080x1920 pad,    {resampler:8s}: {ms:6.1f} ms/frame")

    story, _ = fit_clip_to_story(portrait, 1080, 1920)
    work = story.copy()
    label_ms = _ms_per(lambda: draw_label(work, OverlaySettings()), n)
    print(f"draw_label 1080x1920 (render once + blend):       {label_ms:6.2f} ms/frame")
    print(f"best_frame 1080x1920:                             {_ms_per(lambda: best_frame(story), n):6.2f} ms/frame")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "p.webp"
        start = time.perf_counter()
        record = write_webp_preview(story, 30.0, out, width=240, preview_fps=12, quality=60)
        print(f"write_webp_preview {n} frames at 30 fps -> {record}: {(time.perf_counter() - start) * 1000:.0f} ms")

    photo = Image.fromarray(cv2.resize(np.asarray(Image.open(EXAMPLES / "astronaut.jpg").convert("RGB")), (4000, 4000)))
    photo = photo.crop((0, 500, 4000, 3500))  # 4000x3000, a phone photo's size
    for focus, backend in (("centre", "none"), ("saliency", "none"), ("face", "haar")):
        if backend == "haar" and not haar_available():
            print("fit_to_size face/haar: skipped (cv2 has no CascadeClassifier; needs opencv-contrib-python-headless)")
            continue
        start = time.perf_counter()
        _, rec = fit_to_size(photo, 576, 1024, "crop", focus=focus, face_backend=backend)
        took = (time.perf_counter() - start) * 1000
        face = f", face {rec['face_box']}" if "face_box" in rec else ""
        print(f"fit_to_size 4000x3000 -> 576x1024 crop, focus={focus:8s}: {took:6.0f} ms (box {rec['crop_box']}{face})")


if __name__ == "__main__":
    main()
