"""Time of every CPU stage of one story on this machine, per clip and per second of video.

    .venv/bin/python benchmarks/stages_bench.py [--repeat 3] [--append benchmarks/RESULTS.md]

The clip is what the GPU stage would hand over for SVD-XT: 25 frames at 7 fps, 576x1024. Here the
motion engine makes them from examples/astronaut.jpg (the content is real photo pixels, moving
smoothly; its compute cost downstream is that of any 25-frame clip of that size). Then, with the
default settings (1080x1920, 30 fps, 4 s pingpong, flow interpolation, Lanczos, label on, silent
AAC): intake, moderation of the photo and of the clip, finish, encode per platform preset, label
(sign + verify), and a separate verify. Each figure is the median of ``--repeat`` runs.

These are the CPU-side costs that issue 6's target compares with the GPU clip time ("CPU side <= 5%
of clip time"); on a GPU machine run the same command there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline import stages  # noqa: E402
from pipeline.engines import GenerationOptions  # noqa: E402
from pipeline.engines.motion import MotionEngine  # noqa: E402
from pipeline.provenance import load_credentials, verify  # noqa: E402
from pipeline.settings import load_settings, preset_names  # noqa: E402

PHOTO = REPO / "examples" / "astronaut.jpg"


def timed(work, repeat: int):
    seconds, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = work()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--append", type=Path, help="append the Markdown section to this file")
    args = parser.parse_args()

    settings = load_settings()
    rows: list[tuple[str, float, float]] = []  # (stage, seconds per clip, seconds per second of video)
    photo_bytes = PHOTO.read_bytes()
    s, (taken, _) = timed(lambda: stages.intake(photo_bytes, settings), args.repeat)
    seconds_of_video = settings.story.duration_s
    rows.append(("intake (decode, checks, sanitise)", s, s / seconds_of_video))
    s, _ = timed(lambda: stages.moderate_input(taken.image, None, settings, {}), args.repeat)
    rows.append(("moderate photo (open-nsfw ONNX)", s, s / seconds_of_video))

    framed = taken.image.resize((576, 1024))
    clip = MotionEngine().generate(framed, GenerationOptions.build(seed=1, num_frames=25, fps=7, width=576, height=1024))
    frames = clip.frames
    s, _ = timed(lambda: stages.moderate_video(frames, settings, {}), args.repeat)
    rows.append(("moderate clip (4 sampled frames)", s, s / seconds_of_video))
    s, finished = timed(lambda: stages.finish(frames, 7.0, settings), args.repeat)
    rows.append(("finish: 7->30 fps flow, pingpong 4 s, 1080x1920 Lanczos, label, poster", s, s / seconds_of_video))

    credentials = load_credentials(settings.label, settings.dev_credentials_dir)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for name in preset_names():
            preset = load_settings(preset=name)
            story = stages.finish(frames, 7.0, preset) if preset.story != settings.story else finished
            s, encoded = timed(lambda: stages.encode(story, work / f"{name}.mp4", work / "p.jpg", work / "p.webp",
                                                     preset), args.repeat)
            size = f"{preset.story.width}x{preset.story.height}"
            rows.append((f"encode {name} ({size}, {preset.encode.codec}, silent AAC, poster, WebP preview)",
                         s, s / story.duration_s))
        unsigned = work / "tiktok.mp4"
        png = stages.png_bytes(taken.image)
        s, _ = timed(lambda: stages.label(unsigned, work / "signed.mp4", png, "bench", settings,
                                          finished.actions), args.repeat)
        rows.append(("label: C2PA sign + verify", s, s / seconds_of_video))
        s, report = timed(lambda: verify(work / "signed.mp4", credentials.trust_anchors_pem), args.repeat)
        assert report.state == "Trusted", report
        rows.append(("verify alone", s, s / seconds_of_video))

    total = sum(r[1] for r in rows if not r[0].startswith(("encode reels", "encode shorts", "encode whatsapp",
                                                          "verify alone")))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    import cv2
    import torch

    lines = [
        f"## stages: CPU cost of one story per stage ({dt.date.today()}, commit {commit})",
        "",
        f"Command: `.venv/bin/python benchmarks/stages_bench.py --repeat {args.repeat}`",
        f"Device: CPU, {os.cpu_count()} cores ({platform.machine()}), load average at the end "
        f"{os.getloadavg()[0]:.1f}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"OpenCV {cv2.__version__}. Input: a 25-frame 7 fps 576x1024 clip (what SVD-XT hands over), "
        "story defaults (1080x1920, 30 fps, 4 s pingpong, 120 frames). Median of the runs.",
        "",
        "| stage | s per clip | s per second of video |",
        "| --- | ---: | ---: |",
        *[f"| {name} | {per_clip:.3f} | {per_second:.3f} |" for name, per_clip, per_second in rows],
        f"| **CPU side of one tiktok story** (intake + moderation + finish + encode + label) | **{total:.2f}** | "
        f"**{total / seconds_of_video:.2f}** |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.append:
        with args.append.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
