"""Encode time, size and quality per platform preset and per video codec, on this machine.

    .venv/bin/python benchmarks/encode_presets.py --append benchmarks/RESULTS.md

The clip is realistic rather than synthetic: the motion engine animates examples/astronaut.jpg at
576x1024 (60 frames), each frame is resized with cv2 Lanczos to the preset's story size (1080x1920;
720x1280 for whatsapp-status) and the clip is ping-pong looped to 120 frames (4 s at 30 fps). The
sound track is the "waves" ambience (render_track) at the preset's sample rate.

Each preset is loaded with ``load_settings(preset=name)`` (its maxrate, profile, max_bytes and audio
settings apply) and encoded with each codec at a crf of roughly equal visual quality (CODEC_CRF);
preset speed stays the project default ("medium", mapped per encoder by pipeline.encode).

Figures: ``encode s`` is the wall time of the whole encode_mp4 call (ffmpeg + the verifying decode
that every call makes), ``ffmpeg CPU s`` the CPU time of its ffmpeg processes (user + system, less
sensitive than wall time to other work on the machine), ``verify s`` that decode alone (timed again
after the call), ``realtime x`` = clip length /
encode s (above 1: faster than real time), bytes and Mbit/s of the file, and PSNR (dB, RGB, all
frames) of the decoded video against the frames given to the encoder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import imageio_ffmpeg  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.audio import render_track  # noqa: E402
from pipeline.encode import encode_mp4  # noqa: E402
from pipeline.engines.base import GenerationOptions  # noqa: E402
from pipeline.engines.motion import MotionEngine  # noqa: E402
from pipeline.frame import fit_to_size  # noqa: E402
from pipeline.probe import decode_frames, ffmpeg_exe, probe_video  # noqa: E402
from pipeline.settings import load_settings, preset_names  # noqa: E402

FPS = 30
FRAMES = 120
SOURCE_FRAMES = 60
# crf per codec for about the same look: the project's x264 default 18; x265 needs ~+5 for the same
# quality, SVT-AV1 and libvpx-vp9 (0..63 scales) about 30-32 (common guidance; PSNR column checks it).
CODEC_CRF = {"libx264": 18, "libx265": 23, "libsvtav1": 32, "libvpx-vp9": 31}


def source_clip() -> np.ndarray:
    """The motion engine's clip of the example photo at its generation size (576x1024)."""
    photo = Image.open(REPO / "examples" / "astronaut.jpg").convert("RGB")
    framed, _ = fit_to_size(photo, 576, 1024, "auto")
    options = GenerationOptions.build(seed=1, num_frames=SOURCE_FRAMES, fps=FPS, width=576, height=1024)
    return MotionEngine().generate(framed, options).frames


def story_frames(clip: np.ndarray, width: int, height: int) -> np.ndarray:
    """Lanczos-resize to the story size and ping-pong loop to FRAMES frames."""
    big = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_LANCZOS4) for f in clip])
    cycle = list(range(len(big))) + list(range(len(big) - 2, 0, -1))
    return big[[cycle[i % len(cycle)] for i in range(FRAMES)]]


def _children_cpu() -> float:
    """User + system CPU seconds of finished child processes (the ffmpeg runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return 10 * np.log10(255.0**2 / mse) if mse else float("inf")


def run(presets: list[str], codecs: list[str], work: Path) -> list[dict]:
    clip = source_clip()
    rows = []
    for preset in presets:
        settings = load_settings(preset=preset, data_dir=work)
        frames = story_frames(clip, settings.story.width, settings.story.height)
        wav = work / f"{preset}.wav"
        render_track(FRAMES / FPS, settings.audio, wav, ambience="waves")
        for codec in codecs:
            encode = settings.encode.model_copy(update={"codec": codec, "crf": CODEC_CRF[codec]})
            out = work / f"{preset}-{codec}.mp4"
            cpu_before = _children_cpu()
            started = time.perf_counter()
            result = encode_mp4(frames, out, FPS, encode, audio=wav, audio_codec=settings.audio.codec,
                                audio_bitrate=settings.audio.bitrate)
            seconds = time.perf_counter() - started
            cpu = _children_cpu() - cpu_before
            check_started = time.perf_counter()
            probe_video(out)
            verify_s = time.perf_counter() - check_started
            quality = psnr(decode_frames(out, settings.story.width, settings.story.height), frames)
            rows.append({
                "preset": preset, "size": f"{settings.story.width}x{settings.story.height}", "codec": codec,
                "crf": encode.crf, "maxrate": encode.maxrate, "encode_s": seconds, "cpu_s": cpu, "verify_s": verify_s,
                "realtime": (FRAMES / FPS) / seconds, "bytes": result.bytes,
                "mbps": result.bytes * 8 / (FRAMES / FPS) / 1e6, "psnr": quality,
                "stream": f"{result.codec} {result.profile}", "audio": f"{result.audio['codec']} "
                f"{result.audio['sample_rate'] / 1000:g}k {settings.audio.bitrate}",
            })
            print(f"{preset:16s} {codec:11s} {seconds:6.2f} s  cpu {cpu:6.1f} s  {result.bytes:>10,} B  "
                  f"PSNR {quality:5.2f}", flush=True)
            out.unlink()
    return rows


def load_average() -> str:
    """The 1-minute load average: other work on the machine inflates wall times (not CPU times)."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def markdown(rows: list[dict], command: str, loads: tuple[str, str]) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    ffmpeg_version = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True).stdout.splitlines()[0]
    svt = subprocess.run([ffmpeg_exe(), "-hide_banner", "-f", "lavfi", "-i", "color=s=64x64:d=0.04",
                          "-c:v", "libsvtav1", "-f", "null", "-"], capture_output=True, text=True).stderr
    svt_version = next((line.split("Lib ")[-1] for line in svt.splitlines() if "Encoder Lib" in line), "?")
    lines = [
        f"## encode: platform presets x video codecs ({dt.date.today().isoformat()}, commit {commit})",
        "",
        f"Command: `{command}`",
        f"Device: CPU, 2 cores (no GPU); {ffmpeg_version.split(' Copyright')[0]} from imageio-ffmpeg "
        f"{imageio_ffmpeg.__version__} (SVT-AV1 {svt_version}), numpy {np.__version__}, opencv {cv2.__version__}.",
        f"Clip: motion engine on examples/astronaut.jpg (576x1024, {SOURCE_FRAMES} frames), Lanczos-resized to the "
        f"preset's story size, ping-pong looped to {FRAMES} frames = {FRAMES / FPS:g} s at {FPS} fps; sound: "
        "\"waves\" ambience. Encoder preset \"medium\" (x264/x265 medium, SVT-AV1 M6, VP9 cpu-used 2); "
        "each preset's maxrate (bufsize 2x), profile and audio settings. One run each. "
        f"Load average (1 min) at start / end: {loads[0]} / {loads[1]}.",
        "",
        "| preset | size | codec | crf | maxrate | encode s | ffmpeg CPU s | of which verify s | realtime x | bytes "
        "| Mbit/s | PSNR dB | video | audio |",
        "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['size']} | {r['codec']} | {r['crf']} | {r['maxrate']} | "
                     f"{r['encode_s']:.2f} | {r['cpu_s']:.1f} | {r['verify_s']:.2f} | {r['realtime']:.2f} | "
                     f"{r['bytes']:,} | {r['mbps']:.2f} | {r['psnr']:.2f} | {r['stream']} | {r['audio']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="*", default=preset_names())
    ap.add_argument("--codecs", nargs="*", default=list(CODEC_CRF), choices=list(CODEC_CRF))
    ap.add_argument("--append", type=Path, help="append the Markdown section to this file (one write)")
    args = ap.parse_args()
    load_at_start = load_average()
    with tempfile.TemporaryDirectory(prefix="alive-encode-bench-") as work:
        rows = run(args.presets, args.codecs, Path(work))
    text = markdown(rows, " ".join([".venv/bin/python", *sys.argv]), (load_at_start, load_average()))
    print("\n" + text)
    if args.append:
        with args.append.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
