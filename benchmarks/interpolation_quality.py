"""Held-out-frame test of frame interpolation: drop every other frame, rebuild it, compare.

    .venv/bin/python benchmarks/interpolation_quality.py

Every clip is 576x1024 (the generation size; the story retimes there, before upscaling). Each
keeps its even frames, rebuilds the odd ones with ``pipeline.interpolate.retime`` (flow at the
default flow resolution, flow at full resolution, blend, repeat) and scores them against the real
odd frames with PSNR (pooled MSE) and SSIM (luma, mean over frames). Clips:

* ``motion/<photo>``: the project's motion engine on each photo in examples/ (framed like a job,
  default 96 frames at 24 fps, seed 1): slow eased zoom/pan with a parallax bulge.
* ``motion-fast/<photo>``: the same engine at 3x strength over 25 frames (SVD-XT's frame count), so
  each held-out step moves several times further.
* ``camera`` / ``camera-fast``: a photo seen through a virtual camera that translates, rotates and
  zooms along a smooth path (``cv2.warpAffine``, cubic), 49 frames; the fast one moves 3x as far,
  and the same fast path in 25 and 13 frames shows where flow stops keeping up.
* ``layers``: a cut-out disc (coffee cup) moving over a background panning the other way, so
  parts of the background are covered and uncovered (occlusion, which flow methods find hardest).

Also measured: seconds per interpolated frame for 2x and for 7 -> 30 fps (SVD-XT's 25 frames to a
30 fps story), and flicker (pipeline.quality) of each rebuilt 2x clip next to the real clip's.
Prints a Markdown section and appends it to benchmarks/RESULTS.md (``--dry-run``: print only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import PIL
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.engines import GenerationOptions, get_engine  # noqa: E402
from pipeline.frame import fit_to_size  # noqa: E402
from pipeline.interpolate import FLOW_MAX_SIDE, retime  # noqa: E402
from pipeline.quality import flicker, psnr, ssim  # noqa: E402
from pipeline.settings import load_settings  # noqa: E402

WIDTH, HEIGHT = 576, 1024
PHOTOS = sorted((REPO / "examples").glob("*.jpg"))
# (label, retime method, flow_max_side)
VARIANTS = [(f"flow ({FLOW_MAX_SIDE} px flow)", "flow", FLOW_MAX_SIDE), ("flow (full-res flow)", "flow", 1024),
            ("blend", "blend", FLOW_MAX_SIDE), ("repeat", "repeat", FLOW_MAX_SIDE)]


@dataclass
class Score:
    psnr: float
    ssim: float
    seconds: float  # retime wall time
    new_frames: int
    sq_err: float  # sum of squared errors, for the pooled PSNR over all clips
    values: int
    ssim_sum: float
    flicker: float


def _framed(photo: Path) -> Image.Image:
    framed, _ = fit_to_size(Image.open(photo).convert("RGB"), WIDTH, HEIGHT, "auto")
    return framed


def motion_clip(photo: Path, frames: int | None, strength: int) -> np.ndarray:
    settings = load_settings(engine={"name": "motion"})
    engine = get_engine(settings)
    options = engine.resolve(GenerationOptions.build(seed=1, num_frames=frames, motion_bucket_id=strength,
                                                     width=WIDTH, height=HEIGHT))
    return engine.generate(_framed(photo), options).frames


def _canvas(photo: Path, w: int, h: int) -> np.ndarray:
    """The photo scaled to cover w x h and centre-cropped: room for the virtual camera to move."""
    img = Image.open(photo).convert("RGB")
    scale = max(w / img.width, h / img.height)
    img = img.resize((math.ceil(img.width * scale), math.ceil(img.height * scale)), Image.Resampling.LANCZOS)
    x0, y0 = (img.width - w) // 2, (img.height - h) // 2
    return np.asarray(img.crop((x0, y0, x0 + w, y0 + h)))


def _camera(canvas: np.ndarray, cx: float, cy: float, angle_deg: float, zoom: float) -> np.ndarray:
    """What a WIDTH x HEIGHT camera centred at (cx, cy) of the canvas, turned and zoomed, sees."""
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) / zoom
    # frame pixel u -> canvas point c + rot @ (u - frame centre); warpAffine wants that map inverted
    offset = np.array([cx, cy]) - rot @ np.array([(WIDTH - 1) / 2, (HEIGHT - 1) / 2])
    to_canvas = np.hstack([rot, offset[:, None]]).astype(np.float64)
    return cv2.warpAffine(canvas, to_canvas, (WIDTH, HEIGHT), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def camera_clip(photo: Path, frames: int, speed: float) -> np.ndarray:
    canvas = _canvas(photo, 1320, 1520)
    ch, cw = canvas.shape[:2]
    out = []
    for i in range(frames):
        s = i / (frames - 1)
        ease = 0.5 - 0.5 * math.cos(math.pi * s)
        cx = cw / 2 + speed * (90 * math.sin(2.4 * s) - 30 * s)
        cy = ch / 2 + speed * (70 * (ease - 0.5) + 20 * math.sin(5 * s))
        out.append(_camera(canvas, cx, cy, angle_deg=speed * 2.5 * math.sin(2 * s), zoom=1 + speed * 0.06 * ease))
    return np.stack(out)


def layers_clip(background: Path, foreground: Path, frames: int) -> np.ndarray:
    canvas = _canvas(background, WIDTH + 260, HEIGHT + 200).astype(np.float32)
    disc = 300
    fg = np.asarray(Image.open(foreground).convert("RGB").resize((disc, disc), Image.Resampling.LANCZOS),
                    dtype=np.float32)
    mask = np.zeros((disc, disc), np.float32)
    cv2.circle(mask, (disc // 2, disc // 2), disc // 2 - 8, 1.0, -1, lineType=cv2.LINE_AA)
    mask = cv2.GaussianBlur(mask, (0, 0), 1.5)[..., None]
    out = []
    for i in range(frames):
        s = i / (frames - 1)
        bx, by = round(240 * s), round(180 * (1 - s))  # background pans left and down
        frame = canvas[by:by + HEIGHT, bx:bx + WIDTH].copy()
        fx, fy = round(20 + 240 * s), round(260 + 420 * s * s)  # the disc moves right and falls
        region = frame[fy:fy + disc, fx:fx + disc]
        frame[fy:fy + disc, fx:fx + disc] = region * (1 - mask) + fg * mask
        out.append(np.clip(frame + 0.5, 0, 255).astype(np.uint8))
    return np.stack(out)


def motion_per_step(kept: np.ndarray) -> float:
    """Median displacement (px) between consecutive kept frames: how hard each clip is."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in kept]
    steps = [np.median(np.linalg.norm(dis.calc(a, b, None), axis=-1)) for a, b in itertools.pairwise(gray)]
    return float(np.median(steps))


def held_out(clip: np.ndarray, method: str, max_side: int) -> Score:
    kept = clip[::2]
    truth = clip[1::2][: len(kept) - 1]
    start = time.perf_counter()
    rebuilt_clip = retime(kept, 1.0, 2.0, method=method, flow_max_side=max_side)
    seconds = time.perf_counter() - start
    rebuilt = rebuilt_clip[1::2]
    assert rebuilt.shape == truth.shape, (rebuilt.shape, truth.shape)
    sq = float(np.sum((rebuilt.astype(np.float64) - truth) ** 2))
    per_frame_ssim = [ssim(r, t) for r, t in zip(rebuilt, truth)]
    return Score(psnr(rebuilt, truth), float(np.mean(per_frame_ssim)), seconds, len(rebuilt), sq, truth.size,
                 float(np.sum(per_frame_ssim)), flicker(rebuilt_clip))


def speed_7_to_30(clip: np.ndarray, max_side: int) -> float:
    """Seconds per new frame when an SVD-XT-like 25-frame clip at 7 fps becomes 30 fps."""
    source = clip[:25]
    start = time.perf_counter()
    out = retime(source, 7, 30, method="flow", flow_max_side=max_side)
    return (time.perf_counter() - start) / (len(out) - len(source))


def _pooled_psnr(sq: float, values: int) -> float:
    return float("inf") if sq == 0 else 10 * math.log10(255.0**2 / (sq / values))


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def _commit() -> str:
    dirty = " + uncommitted working tree" if _git("status", "--porcelain") else ""
    return _git("rev-parse", "--short", "HEAD") + dirty


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def build_clips() -> list[tuple[str, np.ndarray]]:
    examples = REPO / "examples"
    clips = [(f"motion/{photo.stem}", motion_clip(photo, None, 127)) for photo in PHOTOS]
    clips += [(f"motion-fast/{photo.stem}", motion_clip(photo, 25, 381)) for photo in PHOTOS]
    clips.append(("camera (astronaut)", camera_clip(examples / "astronaut.jpg", 49, 1.0)))
    clips.append(("camera-fast (astronaut)", camera_clip(examples / "astronaut.jpg", 49, 3.0)))
    clips.append(("camera-fast, 25 frames (astronaut)", camera_clip(examples / "astronaut.jpg", 25, 3.0)))
    clips.append(("camera-fast, 13 frames (astronaut)", camera_clip(examples / "astronaut.jpg", 13, 3.0)))
    clips.append(("layers (coffee over astronaut)",
                  layers_clip(examples / "astronaut.jpg", examples / "coffee.jpg", 49)))
    return clips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print the section, do not append it to RESULTS.md")
    args = ap.parse_args()

    started, load_before = time.perf_counter(), os.getloadavg()[0]
    labels = [label for label, _, _ in VARIANTS]
    rows, flicker_rows = [], []
    per_variant: dict[str, list[Score]] = {label: [] for label in labels}
    clips = build_clips()
    for name, clip in clips:
        scores = {label: held_out(clip, method, side) for label, method, side in VARIANTS}
        rows.append(_row(name, len(clip), f"{motion_per_step(clip[::2]):.1f}",
                         *(f"{s.psnr:.2f} / {s.ssim:.4f}" for s in scores.values())))
        flicker_rows.append(_row(name, f"{flicker(clip):.3f}", *(f"{s.flicker:.3f}" for s in scores.values())))
        for label, score in scores.items():
            per_variant[label].append(score)
        print(f"{name}: " + ", ".join(f"{k} {v.psnr:.2f} dB" for k, v in scores.items()), file=sys.stderr, flush=True)

    def pooled(scores: list[Score]) -> str:
        frames = sum(s.new_frames for s in scores)
        value = _pooled_psnr(sum(s.sq_err for s in scores), sum(s.values for s in scores))
        return f"**{value:.2f} / {sum(s.ssim_sum for s in scores) / frames:.4f}**"

    held_out_frames = sum(s.new_frames for s in per_variant[labels[0]])
    rows.append(_row(f"**all clips** ({held_out_frames} held-out frames)", "", "",
                     *(pooled(per_variant[label]) for label in labels)))
    speed_2x = [f"{sum(s.seconds for s in v) / sum(s.new_frames for s in v):.4f}" for v in per_variant.values()]
    speed_730 = [f"{speed_7_to_30(clips[0][1], side):.4f}" for side in (FLOW_MAX_SIDE, 1024)]
    load_after = os.getloadavg()[0]
    lead = {name: f.psnr - b.psnr for (name, _), f, b in zip(clips, per_variant[labels[0]], per_variant["blend"])}
    close = [f"{name} ({margin:+.2f} dB)" for name, margin in lead.items() if margin < 1.0]
    best = max(lead, key=lead.get)
    verdict = (f"Verdict: {labels[0]} vs blend, PSNR per clip: "
               + ("flow ahead by at least 1 dB on every clip" if not close
                  else "flow ahead by less than 1 dB, or behind, on " + ", ".join(close))
               + f"; largest lead {lead[best]:+.2f} dB ({best}).")

    versions = (f"Python {platform.python_version()}, numpy {np.__version__}, opencv {cv2.__version__}, "
                f"Pillow {PIL.__version__}")
    header = _row("clip", *labels)
    rule = _row(*(["---"] * (len(labels) + 1)))
    section = "\n".join([
        f"## interpolation: held-out-frame quality of frame-rate conversion "
        f"({dt.date.today().isoformat()}, commit {_commit()})",
        "",
        "Command: `.venv/bin/python benchmarks/interpolation_quality.py`",
        f"Device: CPU, 2 cores ({platform.machine()}), no GPU; {versions}; OpenCV threads {cv2.getNumThreads()}; "
        f"1-min load average {load_before:.1f} at start, {load_after:.1f} at end (other work shared the cores, "
        "so seconds are pessimistic).",
        f"Clips are {WIDTH}x{HEIGHT}. Every other frame is dropped and rebuilt from its two neighbours "
        "(t = 0.5); cells are PSNR (dB, pooled MSE over the clip's held-out frames) / SSIM (BT.601 luma, "
        "Gaussian 11/1.5, mean over frames) against the real frames. `motion px` = median displacement "
        "between the kept frames the interpolator sees. Clip recipes: the script's docstring.",
        "",
        _row("clip", "frames", "motion px", *labels),
        _row(*(["---"] * (len(labels) + 3))),
        *rows,
        "",
        verdict,
        "",
        "Speed, seconds per interpolated frame (576x1024; flow includes computing both flows of each pair):",
        "",
        header.replace("| clip |", "| case |", 1),
        rule,
        _row("2x (one new frame per source pair), all clips", *speed_2x),
        _row("7 -> 30 fps, 25 frames -> 103 (a pair's flows serve ~4 new frames)", *speed_730, "", ""),
        "",
        "Flicker (pipeline.quality.flicker, 0..255, motion-compensated) of each rebuilt 2x clip beside the "
        "real clip's. It does not see judder: `repeat` scores low because every other pair is identical.",
        "",
        _row("clip", "real", *labels),
        _row(*(["---"] * (len(labels) + 2))),
        *flicker_rows,
        "",
        f"Benchmark wall time: {time.perf_counter() - started:.0f} s.",
        "",
    ])
    print(section)
    if not args.dry_run:
        with open(REPO / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as results:
            results.write("\n" + section)


if __name__ == "__main__":
    main()
