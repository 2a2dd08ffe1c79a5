"""Stills of the motion engine for looking at: first, middle and last frame of a default story's cycle,
side by side, plus what changed between the first and the middle frame (grey = still, amplified 4x).

    .venv/bin/python benchmarks/motion_stills.py [--out docs/stills] [--style auto]

One PNG per photo: the three examples (examples/), a selfie-like close crop of the astronaut, and two
photos drawn in code (benchmarks/synthetic_photos.py: a landscape, a sky over the sea). Each is
framed as a job frames it (``fit_to_size``, strategy auto) and rendered at 1080x1920 like a story;
the stills are scaled to 360 px high. A JSON file beside them lists what moved in each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.synthetic_photos import landscape, selfie, sky_and_sea  # noqa: E402
from pipeline.engines import GenerationOptions  # noqa: E402
from pipeline.engines.motion import MotionEngine  # noqa: E402
from pipeline.frame import fit_to_size  # noqa: E402
from pipeline.settings import StorySettings  # noqa: E402

HEIGHT = 360


def photos() -> dict[str, Image.Image]:
    examples = REPO / "examples"
    astronaut = Image.open(examples / "astronaut.jpg").convert("RGB")
    return {"astronaut": astronaut, "chelsea": Image.open(examples / "chelsea.jpg").convert("RGB"),
            "coffee": Image.open(examples / "coffee.jpg").convert("RGB"), "selfie": selfie(astronaut),
            "landscape": landscape(), "sky-and-sea": sky_and_sea()}


def _panel(frame: np.ndarray, caption: str) -> np.ndarray:
    h, w = frame.shape[:2]
    small = cv2.resize(frame, (round(w * HEIGHT / h), HEIGHT), interpolation=cv2.INTER_AREA)
    cv2.rectangle(small, (0, 0), (small.shape[1], 18), (0, 0, 0), -1)
    cv2.putText(small, caption, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return small


def stills(image: Image.Image, style: str, seed: int = 1) -> tuple[np.ndarray, dict]:
    story = StorySettings()
    engine = MotionEngine()
    options = engine.resolve_for_story(GenerationOptions.build(seed=seed, motion_style=style), story)
    framed, _ = fit_to_size(image, options.width, options.height, "auto")
    clip = engine.generate(framed, options)
    frames = clip.frames
    first, middle, last = frames[0], frames[len(frames) // 2], frames[-1]
    change = np.clip(128 + 4 * (middle.astype(np.int16) - first.astype(np.int16)), 0, 255).astype(np.uint8)
    row = np.hstack([_panel(first, "first"), _panel(middle, "middle"), _panel(last, "last"),
                     _panel(change, "middle - first, x4")])
    return row, {"motion": clip.details["motion"], "scene": clip.details["scene"], "notes": clip.notes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "stills")
    parser.add_argument("--style", default="auto")
    parser.add_argument("--only", nargs="*", help="names of the photos to render (default: all)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    facts = {}
    for name, image in photos().items():
        if args.only and name not in args.only:
            continue
        row, what = stills(image, args.style)
        path = args.out / f"{name}-{args.style}.png"
        # 256 colours keep each still small (< 300 kB) and are plenty to judge motion by
        Image.fromarray(row).quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
        facts[name] = what
        moved = ", ".join(f"{k} ({v['motion']})" for k, v in what["motion"]["moved"].items()) or "nothing"
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        print(f"{shown}: {path.stat().st_size // 1024} kB; moved: {moved}")
    (args.out / f"stills-{args.style}.json").write_text(json.dumps(facts, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
