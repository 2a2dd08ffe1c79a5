"""Robustness of the invisible-watermark candidates and of the fingerprint, on a real story.

    .venv/bin/python benchmarks/watermark_bench.py [--story PATH | --photo PHOTO] [--candidates alive,rivagan,dwtDct,dwtDctSvd]
        [--frames 30] [--fp-videos 56] [--others 6] [--json out.json] [--markdown out.md] [--quick]

Third-party candidates need (benchmark-only; --no-deps keeps a second OpenCV out of the venv):
    .venv/bin/pip install --no-deps invisible-watermark==0.2.0 PyWavelets
A candidate whose package is missing is skipped with a message (see watermark_candidates.py).

What it does:
(a) Robustness. The story: the frames that ``alive animate PHOTO --seed 1`` encodes (default
    photo examples/astronaut.jpg), made with alive's own stage functions in-process and taken
    before encoding, so they carry no watermark yet; or the decoded frames of ``--story PATH`` (an
    unwatermarked story). These frames are the cover. Each
    candidate embeds a random credential id into the cover (slow candidates: only the first
    ``--frames`` frames; alive: all), the result is encoded the way alive encodes (libx264 crf 18
    yuv420p BT.709, preset medium, through pipeline.encode.encode_mp4), and every attack in
    ``build_attacks`` is applied to that file with the bundled ffmpeg; the exact commands are in the
    output. Per candidate x attack: per-frame bit accuracy (mean over frames, of the raw bits vs the
    embedded ones), bit accuracy after voting over all frames, id recovered (alive: its detector
    reports the right id, which needs a valid Reed-Solomon codeword and CRC; the others, which have
    no check value: every voted bit right), confidence. Plus PSNR of the watermarked vs the cover
    frames (before encoding), embed and detect ms per 1080x1920 frame, and the cost per story.
(b) False positives. ``--fp-videos`` videos that carry no watermark, made with plain ffmpeg: lavfi
    sources (testsrc2, mandelbrot, life, gradients, noise, flat colours ...), generated images
    (smooth noise, gradients, stripes, shapes) and example photos flipped / cropped / zoomed, at
    several sizes; and ``--others`` "alive videos from a different repository": alive stories of
    other photos, each watermarked by every candidate with another random id, which must decode to
    *their* id and never to the id under test. Counted per candidate: videos that decode to a valid
    id (alive: any found id; the others: every bit equal to the id under test, and within 10 % of
    its bits), and the fingerprint similarity of every video vs the story.
(c) Writes a JSON file (``--json``) and a Markdown section (``--markdown``, ready for
    benchmarks/RESULTS.md) with the device, commit and date.

The fingerprint (pipeline/fingerprint.py) is measured on the attacked copies of the full-length
story (alive's copies when alive ran on every frame, else the unwatermarked story's own).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import cv2  # noqa: E402
import imageio_ffmpeg  # noqa: E402

from pipeline import fingerprint as fp  # noqa: E402
from pipeline.encode import build_command, encode_mp4  # noqa: E402
from pipeline.probe import ffmpeg_exe  # noqa: E402
from pipeline.settings import EncodeSettings  # noqa: E402
from watermark_candidates import Candidate, Decoded, load_candidates  # noqa: E402

PHOTO = REPO / "examples" / "astronaut.jpg"
ALL_CANDIDATES = ("alive", "rivagan", "dwtDct", "dwtDctSvd")
FAST_CANDIDATES = ("alive",)  # these watermark and decode every frame; the others the first --frames
FFMPEG_FLAGS = ["-hide_banner", "-nostdin", "-loglevel", "error", "-y"]  # added to every attack command
STORY_FPS = 30


# -- attacks ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attack:
    name: str
    what: str
    steps: tuple[tuple[str, ...], ...]  # ffmpeg arguments between "-i IN" and "OUT", one tuple per pass
    crop: float = 0.0  # share of each side cut away (for the report)

    def commands(self, src: str = "story.mp4", dst: str = "copy.mp4") -> list[str]:
        """The shell form of each pass, as run (ffmpeg = imageio-ffmpeg's bundled binary)."""
        out = []
        for i, step in enumerate(self.steps):
            a = src if i == 0 else f"pass{i}.mp4"
            b = dst if i == len(self.steps) - 1 else f"pass{i + 1}.mp4"
            out.append(shlex.join(["ffmpeg", *FFMPEG_FLAGS, "-i", a, *step, b]))
        return out


def _even(value: float) -> int:
    return max(2, int(round(value / 2)) * 2)


def build_attacks(width: int = 1080, height: int = 1920) -> list[Attack]:
    """The attacks for a ``width`` x ``height`` story (1080x1920: the sizes below are the issue's).

    Sizes scale with the story so a tiny test video gets the same proportions. x264/x265 run at
    their default preset (medium); where no crf is stated, ffmpeg's libx264 default (23)."""
    w720, h720 = _even(width * 2 / 3), _even(height * 2 / 3)
    w540, h540 = _even(width / 2), _even(height / 2)
    x264 = ("-c:v", "libx264")

    def crop(share: float) -> str:
        keep = 1 - share
        return f"crop=trunc(iw*{keep:g}/2)*2:trunc(ih*{keep:g}/2)*2"  # centred, even sizes

    return [
        Attack("none", "the watermarked story as published (libx264 crf 18)", ()),
        Attack("h264-crf23", "H.264 re-encode crf 23", ((*x264, "-crf", "23"),)),
        Attack("h264-crf28", "H.264 re-encode crf 28", ((*x264, "-crf", "28"),)),
        Attack("h264-crf35", "H.264 re-encode crf 35", ((*x264, "-crf", "35"),)),
        Attack("h265-crf28", "H.265 (libx265) crf 28",
               (("-c:v", "libx265", "-crf", "28", "-x265-params", "log-level=error"),)),
        Attack(f"scale-{w720}x{h720}", f"downscale to {w720}x{h720}, crf 28",
               (("-vf", f"scale={w720}:{h720}", *x264, "-crf", "28"),)),
        Attack(f"scale-{w540}x{h540}", f"downscale to {w540}x{h540}, crf 28",
               (("-vf", f"scale={w540}:{h540}", *x264, "-crf", "28"),)),
        Attack("crop5-rescaled", f"centre crop 5 %, scaled back to {width}x{height}",
               (("-vf", f"{crop(0.05)},scale={width}:{height}", *x264, "-crf", "23"),), 0.05),
        Attack("crop10-rescaled", f"centre crop 10 %, scaled back to {width}x{height}",
               (("-vf", f"{crop(0.10)},scale={width}:{height}", *x264, "-crf", "23"),), 0.10),
        Attack("crop5", "centre crop 5 %, left at the cropped size",
               (("-vf", crop(0.05), *x264, "-crf", "23"),), 0.05),
        Attack("crop10", "centre crop 10 %, left at the cropped size",
               (("-vf", crop(0.10), *x264, "-crf", "23"),), 0.10),
        Attack("fps24", "frame rate 30 -> 24 fps", (("-vf", "fps=24", *x264, "-crf", "23"),)),
        Attack("fps15", "frame rate 30 -> 15 fps", (("-vf", "fps=15", *x264, "-crf", "23"),)),
        Attack("brightness+0.1", "eq brightness +0.1", (("-vf", "eq=brightness=0.1", *x264, "-crf", "23"),)),
        Attack("contrast1.2", "eq contrast 1.2", (("-vf", "eq=contrast=1.2", *x264, "-crf", "23"),)),
        Attack("gamma1.3", "eq gamma 1.3", (("-vf", "eq=gamma=1.3", *x264, "-crf", "23"),)),
        Attack("reencode-twice", f"{w720}x{h720} crf 28, then crf 28 again",
               (("-vf", f"scale={w720}:{h720}", *x264, "-crf", "28"), (*x264, "-crf", "28"))),
        Attack("issue-command", "the issue's command (metadata stripped, 720p crf 28)",
               (("-map_metadata", "-1", *x264, "-crf", "28", "-vf", f"scale={w720}:{h720}"),)),
    ]


def run_attack(attack: Attack, src: Path, dst: Path, timeout_s: float = 600) -> Path:
    """Apply ``attack`` to ``src``, writing ``dst`` (a copy of ``src`` for "none")."""
    if not attack.steps:
        shutil.copyfile(src, dst)
        return dst
    current = src
    for i, step in enumerate(attack.steps):
        out = dst if i == len(attack.steps) - 1 else dst.with_name(f"{dst.stem}.pass{i + 1}.mp4")
        command = [ffmpeg_exe(), *FFMPEG_FLAGS, "-i", str(current), *step, str(out)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode != 0 or not out.exists() or out.stat().st_size == 0:
            raise RuntimeError(f"attack {attack.name} failed: {shlex.join(command)}\n{done.stderr[-2000:]}")
        if current != src:
            current.unlink(missing_ok=True)
        current = out
    return dst


# -- video helpers -----------------------------------------------------------------------------------
def read_frames(path: Path, limit: int | None = None) -> np.ndarray:
    """Decode up to ``limit`` frames of ``path`` as (N, H, W, 3) uint8 RGB, at the file's own size."""
    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(reader)
        width, height = meta["size"]
        frames = []
        for raw in reader:
            frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3))
            if limit is not None and len(frames) >= limit:
                break
    finally:
        reader.close()
    return np.stack(frames) if frames else np.zeros((0, 2, 2, 3), np.uint8)


def alive_encode_settings(preset: str) -> EncodeSettings:
    return EncodeSettings(codec="libx264", crf=18, preset=preset, profile="high")


def encode_like_alive(frames: np.ndarray, path: Path, preset: str, fps: int = STORY_FPS) -> str:
    """Encode as alive does; returns the ffmpeg command (shell form, ffmpeg = the bundled binary)."""
    settings = alive_encode_settings(preset)
    encode_mp4(frames, path, fps, settings)
    h, w = frames.shape[1:3]
    command = build_command(w, h, Fraction(fps), settings, Path(path.name))
    return shlex.join(["ffmpeg", *command[1:]])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def story_frames(photo: Path, duration: float | None = None, seed: int = 1) -> np.ndarray:
    """The story ``alive animate PHOTO --seed SEED`` makes, as frames before encoding (so before the
    watermark): the same stage calls as pipeline.run (intake, moderation, motion engine with its
    defaults, finish with the default settings: 1080x1920, 30 fps, 4 s pingpong, visible label)."""
    from pipeline import stages  # noqa: PLC0415
    from pipeline.engines import GenerationOptions  # noqa: PLC0415
    from pipeline.finish import StoryOptions, story_settings  # noqa: PLC0415
    from pipeline.settings import load_settings  # noqa: PLC0415

    settings = load_settings()
    if duration is not None:
        settings = story_settings(settings, StoryOptions(duration_s=duration))
    taken, _ = stages.intake(photo, settings)
    stages.moderate_input(taken.image, None, settings, {})
    made = stages.generate(taken.image, GenerationOptions.build(seed=seed), settings)
    finished = stages.finish(made.clip.frames, made.clip.fps, settings)
    return np.stack(finished.frames)


# -- the false-positive corpus -------------------------------------------------------------------------
@dataclass
class CleanVideo:
    name: str
    category: str
    path: Path
    command: str
    derived_from_story_photo: bool = False


SIZES = [(1080, 1920), (720, 1280), (540, 960), (1920, 1080), (1080, 1080), (640, 360), (480, 854)]
LAVFI = [
    ("testsrc2", "testsrc2=size={w}x{h}:rate=30"),
    ("mandelbrot", "mandelbrot=size={w}x{h}:rate=30"),
    ("cellauto", "cellauto=size={w}x{h}:rate=30"),
    ("life", "life=size={w}x{h}:rate=30:mold=10:ratio=0.1:death_color=#202020:life_color=#c0ffc0"),
    ("gradients", "gradients=size={w}x{h}:rate=30:speed=0.05"),
    ("smptehdbars", "smptehdbars=size={w}x{h}:rate=30"),
    ("noise", "color=c=gray:size={w}x{h}:rate=30,noise=alls=60:allf=t"),
    ("sierpinski", "sierpinski=size={w}x{h}:rate=30"),
    ("zoneplate", "zoneplate=size={w}x{h}:rate=30:kt2=2"),
    ("black", "color=c=black:size={w}x{h}:rate=30"),
    ("white", "color=c=white:size={w}x{h}:rate=30"),
    ("grey-noise-light", "color=c=0x808080:size={w}x{h}:rate=30,noise=alls=8:allf=t+u"),
    ("rgbtestsrc", "rgbtestsrc=size={w}x{h}:rate=30"),
]


def _generated_image(kind: str, seed: int, w: int, h: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "smooth-noise":
        scale = [4, 8, 16, 32][seed % 4]
        small = rng.random((scale * 2, max(2, scale * w // h * 2), 3)).astype(np.float32)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) * 255
    elif kind == "linear-gradient":
        angle = rng.uniform(0, np.pi)
        t = (x * np.cos(angle) + y * np.sin(angle))
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        img = a + t[..., None] * (b - a)
    elif kind == "radial-gradient":
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = np.hypot(x - cx, y - cy)
        t = t / t.max()
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        img = a + t[..., None] * (b - a)
    elif kind == "stripes":
        period = rng.uniform(12, 200)
        angle = rng.uniform(0, np.pi)
        t = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period)
        img = (127 + 100 * t)[..., None] * rng.uniform(0.5, 1, 3)
    elif kind == "shapes":
        img = np.full((h, w, 3), rng.uniform(0, 255, 3), np.float32)
        for _ in range(12):
            colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
            if rng.random() < 0.5:
                p0 = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
                p1 = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
                cv2.rectangle(img, p0, p1, colour, -1)
            else:
                cv2.circle(img, (int(rng.uniform(0, w)), int(rng.uniform(0, h))), int(rng.uniform(10, w / 3)),
                           colour, -1)
    elif kind == "checker":
        cell = int(rng.uniform(8, 120))
        t = ((x // cell + y // cell) % 2)
        img = (40 + 175 * t)[..., None] * np.ones(3)
    else:
        raise ValueError(kind)
    return np.clip(img, 0, 255).astype(np.uint8)


def _photo_variant(photo: Path, variant: str, w: int, h: int) -> np.ndarray:
    img = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    ih, iw = img.shape[:2]
    if variant == "hflip":
        img = img[:, ::-1]
    elif variant == "vflip":
        img = img[::-1]
    elif variant == "crop-topleft":
        img = img[: ih * 2 // 3, : iw * 2 // 3]
    elif variant == "crop-bottomright":
        img = img[ih // 3:, iw // 3:]
    elif variant == "rot90":
        img = np.rot90(img)
    elif variant == "grey":
        img = np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    elif variant == "negative":
        img = 255 - img
    # cover the frame (centre crop to the aspect ratio, then resize)
    ih, iw = img.shape[:2]
    target = w / h
    if iw / ih > target:
        cw = int(ih * target)
        img = img[:, (iw - cw) // 2:(iw - cw) // 2 + cw]
    else:
        ch = int(iw / target)
        img = img[(ih - ch) // 2:(ih - ch) // 2 + ch]
    return cv2.resize(np.ascontiguousarray(img), (w, h), interpolation=cv2.INTER_AREA)


def _image_video(image: np.ndarray, out: Path, motion: str, frames: int) -> str:
    png = out.with_suffix(".png")
    cv2.imwrite(str(png), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    h, w = image.shape[:2]
    if motion == "zoompan":
        vf = f"zoompan=z='min(zoom+0.004,1.3)':x='iw/2-(iw/zoom/2)':y='ih/2-(ih/zoom/2)':d={frames}:s={w}x{h}:fps=30"
        args = ["-i", png.name, "-vf", vf]
    else:  # a still image looped
        args = ["-loop", "1", "-framerate", "30", "-i", png.name]
    args += ["-frames:v", str(frames), "-c:v", "libx264", "-crf", "23", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
    done = subprocess.run([ffmpeg_exe(), *FFMPEG_FLAGS, *args, out.name], cwd=out.parent, capture_output=True,
                          text=True, timeout=300, check=False)
    png.unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {done.stderr[-1500:]}")
    return shlex.join(["ffmpeg", *args, out.name])


def clean_corpus(folder: Path, count: int, frames: int = 30, story_photo: Path = PHOTO) -> list[CleanVideo]:
    """``count`` unwatermarked videos of 1 s (``frames`` frames at 30 fps) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    specs: list[tuple[str, str, Any]] = []
    for i, (name, source) in enumerate(LAVFI):
        specs.append(("lavfi", name, (source, SIZES[i % len(SIZES)])))
    kinds = ["smooth-noise", "linear-gradient", "radial-gradient", "stripes", "shapes", "checker"]
    for i in range(18):
        specs.append(("generated", f"{kinds[i % len(kinds)]}-{i}",
                      (kinds[i % len(kinds)], i, SIZES[(i + 2) % len(SIZES)], "zoompan" if i % 2 else "loop")))
    photos = [p for p in sorted((REPO / "examples").glob("*.jpg"))]
    variants = ["hflip", "vflip", "crop-topleft", "crop-bottomright", "rot90", "grey", "negative", "none"]
    j = 0
    for photo in photos:
        for variant in variants:
            if photo.resolve() == story_photo.resolve() and variant in ("none", "crop-topleft", "crop-bottomright"):
                continue  # the story's own photo, unflipped: not a *different* video
            specs.append(("photo", f"{photo.stem}-{variant}", (photo, variant, SIZES[j % len(SIZES)],
                                                                "zoompan" if j % 2 else "loop")))
            j += 1
    videos: list[CleanVideo] = []
    for index in range(count):
        category, name, params = specs[index % len(specs)]
        round_ = index // len(specs)
        out = folder / f"clean{index:03d}-{name}.mp4"
        if category == "lavfi":
            source, (w, h) = params
            if round_:
                w, h = SIZES[(SIZES.index((w, h)) + round_) % len(SIZES)]
            args = ["-f", "lavfi", "-i", source.format(w=w, h=h), "-frames:v", str(frames), "-c:v", "libx264",
                    "-crf", "23", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
            done = subprocess.run([ffmpeg_exe(), *FFMPEG_FLAGS, *args, str(out)], capture_output=True, text=True,
                                  timeout=300, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {done.stderr[-1500:]}")
            command = shlex.join(["ffmpeg", *args, out.name])
            derived = False
        elif category == "generated":
            kind, seed, (w, h), motion = params
            image = _generated_image(kind, seed + 100 * round_, w, h)
            command = _image_video(image, out, motion, frames)
            derived = False
        else:
            photo, variant, (w, h), motion = params
            image = _photo_variant(photo, variant, w, h)
            command = _image_video(image, out, motion, frames)
            derived = photo.resolve() == story_photo.resolve()
        videos.append(CleanVideo(f"{name}" + (f"#{round_}" if round_ else ""), category, out, command, derived))
    return videos


def generated_photos(folder: Path, count: int) -> list[Path]:
    """Photos for the "other repository" alive stories: the other examples, then generated images."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = [p for p in sorted((REPO / "examples").glob("*.jpg")) if p.name != PHOTO.name]
    kinds = ["smooth-noise", "shapes", "radial-gradient", "stripes", "linear-gradient", "checker"]
    i = 0
    while len(photos) < count:
        path = folder / f"generated{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(_generated_image(kinds[i % len(kinds)], 1000 + i, 768, 1024),
                                            cv2.COLOR_RGB2BGR))
        photos.append(path)
        i += 1
    return photos[:count]


# -- evaluation ---------------------------------------------------------------------------------------
@dataclass
class AttackResult:
    attack: str
    frames: int
    frame_bit_accuracy: float | None  # mean over frames of the raw bits vs the embedded bits
    frame_bits_measured: int  # frames the per-frame figure is over
    voted_bit_accuracy: float | None  # after voting over the frames
    recovered: bool
    confidence: float
    reported_id: str | None = None
    fingerprint_similarity: float | None = None
    seconds: float = 0.0


@dataclass
class CandidateResult:
    name: str
    payload_bits: int
    credential_id: str
    frames: int  # frames watermarked and decoded
    psnr_db: float
    embed_ms_per_frame: float
    detect_ms_per_frame: float  # detect call time / frames given, on the published copy at 1080x1920
    detect_s_per_call: float
    encode_command: str
    attacks: list[AttackResult] = field(default_factory=list)
    fp_videos: int = 0
    fp_valid_id: int = 0  # clean videos that decode to a valid id (alive: found; others: the id under test exactly)
    fp_near_id: int = 0  # others: within 10 % of the id under test's bits
    fp_max_bit_accuracy: float | None = None  # best voted bit accuracy vs the id under test on a clean video
    fp_mean_bit_accuracy: float | None = None
    fp_max_confidence: float = 0.0
    others: int = 0
    others_own_id: int = 0  # alive stories of other photos, watermarked with their own id: decoded to it
    others_test_id: int = 0  # ... decoded to the id under test (must be 0)
    others_own_id_after_issue_command: int = 0
    others_detail: list[dict[str, Any]] = field(default_factory=list)  # per story: what was read, plain and attacked
    notes: list[str] = field(default_factory=list)


def _accuracy(bits: np.ndarray | None, expected: np.ndarray) -> float | None:
    if bits is None:
        return None
    return float(np.mean(np.asarray(bits, dtype=np.uint8) == expected))


def recovered(candidate: Candidate, decoded: Decoded, credential_id: str) -> bool:
    if candidate.name == "alive":
        return decoded.credential_id == credential_id
    return decoded.bits is not None and bool(np.array_equal(decoded.bits, candidate.payload_bits(credential_id)))


def per_frame_accuracy(candidate: Candidate, decoded: Decoded, frames: np.ndarray, expected: np.ndarray,
                       most: int) -> tuple[float | None, int]:
    if decoded.frame_bits is not None:
        values = [_accuracy(b, expected) for b in decoded.frame_bits]
    else:
        picks = np.linspace(0, len(frames) - 1, min(most, len(frames))).round().astype(int) if len(frames) else []
        values = [_accuracy(candidate.frame_bits(frames[i]), expected) for i in picks]
    values = [v for v in values if v is not None]
    return (float(np.mean(values)) if values else None), len(values)


def evaluate_candidate(candidate: Candidate, cover: np.ndarray, work: Path, attacks: list[Attack], args,
                       log) -> tuple[CandidateResult, dict[str, np.ndarray]]:
    """Embed, encode, attack, detect. Returns the result and, when the candidate covered the whole
    story, the fingerprint's sampled frames of the published frames ("__story__") and of each copy."""
    folder = work / candidate.name
    folder.mkdir(parents=True, exist_ok=True)
    full = candidate.name in FAST_CANDIDATES
    n = len(cover) if full else min(args.frames, len(cover))
    credential_id = secrets.token_hex(6)
    expected = candidate.payload_bits(credential_id)
    source = np.ascontiguousarray(cover[:n])
    start = time.perf_counter()
    marked = candidate.embed(source.copy(), credential_id)
    embed_ms = (time.perf_counter() - start) * 1000 / n
    result = CandidateResult(candidate.name, int(len(expected)), credential_id, n, psnr(marked, source), embed_ms,
                             0.0, 0.0, "")
    published = folder / "marked.mp4"
    result.encode_command = encode_like_alive(marked, published, args.preset)
    log(f"  {candidate.name}: embedded {n} frames, {embed_ms:.0f} ms/frame, PSNR {result.psnr_db:.2f} dB")
    sampled: dict[str, np.ndarray] = {}
    story_fingerprint = None
    if full:
        sampled["__story__"] = marked[fp.sample_indices(len(marked))].copy()  # what the pipeline fingerprints
        story_fingerprint = fp.fingerprint(sampled["__story__"])
    del marked
    for attack in attacks:
        start = time.perf_counter()
        copy = run_attack(attack, published, folder / f"{attack.name}.mp4")
        frames = read_frames(copy, None if full else n)
        t0 = time.perf_counter()
        decoded = candidate.detect(frames)
        detect_s = time.perf_counter() - t0
        if attack.name == "none":
            result.detect_s_per_call = detect_s
            result.detect_ms_per_frame = detect_s * 1000 / max(1, len(frames))
        frame_acc, measured = per_frame_accuracy(candidate, decoded, frames, expected, args.per_frame)
        row = AttackResult(attack.name, len(frames), frame_acc, measured, _accuracy(decoded.bits, expected),
                           recovered(candidate, decoded, credential_id), round(decoded.confidence, 4),
                           decoded.credential_id)
        if candidate.name == "alive" and decoded.bit_accuracy is not None and decoded.credential_id == credential_id:
            row.voted_bit_accuracy = decoded.bit_accuracy  # raw bits vs the codeword = the embedded bits
        elif candidate.name == "alive" and decoded.credential_id is None:
            row.voted_bit_accuracy = None
        if full:
            sampled[attack.name] = frames[fp.sample_indices(len(frames))].copy()
            row.fingerprint_similarity = round(fp.similarity(story_fingerprint, fp.fingerprint(sampled[attack.name])), 4)
        row.seconds = round(time.perf_counter() - start, 2)
        result.attacks.append(row)
        if not args.keep:
            copy.unlink(missing_ok=True)
        log(f"    {attack.name:16s} frames {len(frames):3d}  per-frame {_fmt(frame_acc)}  voted {_fmt(row.voted_bit_accuracy)}"
            f"  recovered {'yes' if row.recovered else 'no '}  conf {row.confidence:.3f}  ({row.seconds:.1f} s)")
        del frames
    return result, sampled


def _fmt(value: float | None) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def evaluate_false_positives(candidate: Candidate, result: CandidateResult, clean: list[CleanVideo],
                             others: list[tuple[str, np.ndarray]], work: Path, args, log) -> None:
    full = candidate.name in FAST_CANDIDATES
    limit = None if full else args.fp_frames
    expected = candidate.payload_bits(result.credential_id)
    tolerance = int(len(expected) * 0.1)
    accuracies, worst = [], []
    for video in clean:
        frames = read_frames(video.path, limit)
        decoded = candidate.detect(frames)
        result.fp_videos += 1
        result.fp_max_confidence = max(result.fp_max_confidence, float(decoded.confidence))
        if candidate.name == "alive":
            if decoded.credential_id is not None:
                result.fp_valid_id += 1
                worst.append(f"{video.name}: found {decoded.credential_id}")
        else:
            acc = _accuracy(decoded.bits, expected)
            accuracies.append(acc)
            if acc == 1.0:
                result.fp_valid_id += 1
                worst.append(f"{video.name}: decodes to the id under test")
            if acc is not None and (1 - acc) * len(expected) <= tolerance:
                result.fp_near_id += 1
    if accuracies:
        result.fp_max_bit_accuracy = float(max(accuracies))
        result.fp_mean_bit_accuracy = float(np.mean(accuracies))
    result.notes += worst
    for name, cover in others:
        n = len(cover) if full else min(args.fp_frames, len(cover))
        own = secrets.token_hex(6)
        marked = candidate.embed(np.ascontiguousarray(cover[:n]).copy(), own)
        path = work / candidate.name / f"other-{name}.mp4"
        encode_like_alive(marked, path, args.preset)
        del marked
        result.others += 1
        h, w = cover.shape[1:3]
        issue = next(a for a in build_attacks(w, h) if a.name == "issue-command")
        for attacked in (False, True):
            src = path
            if attacked:
                src = run_attack(issue, path, path.with_name(path.stem + "-issue.mp4"))
            decoded = candidate.detect(read_frames(src, n))
            result.others_detail.append({"story": name, "after_issue_command": attacked, "embedded_id": own,
                                         "reported_id": decoded.credential_id,
                                         "bit_accuracy": _accuracy(decoded.bits, candidate.payload_bits(own)),
                                         "confidence": round(float(decoded.confidence), 4)})
            if candidate.name == "alive":
                got_own = decoded.credential_id == own
                got_test = decoded.credential_id == result.credential_id
            else:
                got_own = decoded.bits is not None and bool(np.array_equal(decoded.bits, candidate.payload_bits(own)))
                got_test = decoded.bits is not None and bool(np.array_equal(decoded.bits, expected))
            if attacked:
                result.others_own_id_after_issue_command += int(got_own)
                if not args.keep:
                    src.unlink(missing_ok=True)
            else:
                result.others_own_id += int(got_own)
            result.others_test_id += int(got_test)
    log(f"  {candidate.name}: false positives {result.fp_valid_id}/{result.fp_videos} clean videos"
        + (f" (within 10 %: {result.fp_near_id}, best bit accuracy {result.fp_max_bit_accuracy:.3f})"
           if result.fp_max_bit_accuracy is not None else "")
        + f"; other alive stories: own id {result.others_own_id}/{result.others}, after the issue's command "
          f"{result.others_own_id_after_issue_command}/{result.others}, id under test {result.others_test_id}")


# -- fingerprint study ----------------------------------------------------------------------------------
def fingerprint_study(story_fp: list[str], attacked: dict[str, list[str]], different: dict[str, list[str]],
                      derived: set[str]) -> dict[str, Any]:
    same = {k: fp.similarity(story_fp, v) for k, v in attacked.items()}
    diff = {k: fp.similarity(story_fp, v) for k, v in different.items()}
    strict = {k: v for k, v in diff.items() if k not in derived}
    out: dict[str, Any] = {
        "threshold": fp.MATCH_THRESHOLD,
        "attacked": {k: round(v, 4) for k, v in same.items()},
        "different": {k: round(v, 4) for k, v in sorted(diff.items(), key=lambda kv: -kv[1])},
        "derived_from_story_photo": sorted(derived),
        "attacked_min": round(min(same.values()), 4) if same else None,
        "different_max": round(max(strict.values()), 4) if strict else None,
        "different_max_incl_derived": round(max(diff.values()), 4) if diff else None,
        "different_mean": round(float(np.mean(list(strict.values()))), 4) if strict else None,
        "different_p99": round(float(np.percentile(list(strict.values()), 99)), 4) if strict else None,
        "attacked_below_threshold": sorted(k for k, v in same.items() if v < fp.MATCH_THRESHOLD),
        "different_above_threshold": sorted(k for k, v in diff.items() if v >= fp.MATCH_THRESHOLD),
    }
    return out


# -- report --------------------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    versions = {"numpy": np.__version__, "opencv": cv2.__version__, "imageio-ffmpeg": imageio_ffmpeg.__version__}
    for module, label in (("onnxruntime", "onnxruntime"), ("pywt", "PyWavelets")):
        try:
            versions[label] = __import__(module).__version__
        except ImportError:
            pass
    try:
        from importlib.metadata import version  # noqa: PLC0415

        versions["invisible-watermark"] = version("invisible-watermark")
    except Exception:  # noqa: BLE001 (not installed)
        pass
    ffmpeg_version = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    # the measured modules may differ from the commit (work in progress): their content hashes
    sources = {}
    for name in ("pipeline/watermark.py", "pipeline/fingerprint.py"):
        path = REPO / name
        if path.exists():
            changed = subprocess.run(["git", "status", "--porcelain", name], cwd=REPO, capture_output=True,
                                     text=True).stdout.strip()
            sources[name] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16],
                             "modified": dt.datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="minutes"),
                             "uncommitted": bool(changed)}
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "commit": commit, "sources": sources, "date": dt.date.today().isoformat(), "ffmpeg": ffmpeg_version, "versions": versions,
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"## watermark: robustness of the invisible-watermark candidates and of the fingerprint "
        f"({env['date']}, commit {env['commit'][:7]})",
        "",
        f"Command: `{report['command']}`",
        f"Device: {env['cpu']}, {env['cores']} cores ({env['machine']}), load average at the end "
        f"{env['load_average'][0]}; Python {env['python']}, "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + f"; {env['ffmpeg']}."
        + "".join(f" {name}: sha256 {info['sha256']} ({'uncommitted, ' if info['uncommitted'] else ''}"
                  f"modified {info['modified']})." for name, info in env.get("sources", {}).items()),
        f"Story: {report['story']['source']} ({report['story']['width']}x{report['story']['height']}, "
        f"{report['story']['frames']} frames at {STORY_FPS} fps); published the way alive encodes: "
        f"`{report['story'].get('encode_command', '')}`.",
        "Attacks, each applied to the published copy (`ffmpeg` = imageio-ffmpeg's bundled binary; where no crf "
        "is given, libx264's default 23; x264/x265 preset medium):",
        "",
        "| attack | command |",
        "| --- | --- |",
    ]
    for attack in report["attacks"]:
        commands = " ; ".join(f"`{c}`" for c in attack["commands"]) or "(none)"
        lines.append(f"| {attack['name']} | {commands} |")
    lines += ["", "Summary per candidate (embed/detect times: per 1080x1920 frame on this CPU; cost per story: "
              "embedding all frames of a 4 s story + one detection):", "",
              "| candidate | payload bits | frames | PSNR dB | embed ms/frame | detect ms/frame | cost per story s | "
              "attacks survived | clean videos -> valid id | other stories -> own id / after issue cmd / id under test |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    story_frames = report["story"]["frames"]
    for c in report["candidates"]:
        survived = sum(1 for a in c["attacks"] if a["recovered"] and a["attack"] != "none")
        total = sum(1 for a in c["attacks"] if a["attack"] != "none")
        cost = c["embed_ms_per_frame"] * story_frames / 1000 + (
            c["detect_s_per_call"] if c["name"] in FAST_CANDIDATES else c["detect_ms_per_frame"] * c["frames"] / 1000)
        fp_text = f"{c['fp_valid_id']}/{c['fp_videos']}"
        if c["name"] != "alive" and c.get("fp_max_bit_accuracy") is not None:
            fp_text += f" (<=10 % bits off: {c['fp_near_id']}; best {c['fp_max_bit_accuracy']:.2f})"
        lines.append(
            f"| {c['name']} | {c['payload_bits']} | {c['frames']} | {c['psnr_db']:.2f} | {c['embed_ms_per_frame']:.0f} | "
            f"{c['detect_ms_per_frame']:.0f} | {cost:.1f} | {survived}/{total} | {fp_text} | "
            f"{c['others_own_id']}/{c['others']} / {c['others_own_id_after_issue_command']}/{c['others']} / "
            f"{c['others_test_id']} |")
    for name, reason in report.get("skipped", {}).items():
        lines.append(f"| {name} | skipped: {reason} | | | | | | | | |")
    lines += ["", "Per attack: per-frame bit accuracy (mean over frames) / bit accuracy after voting over the frames / "
              "id recovered / confidence:", ""]
    names = [c["name"] for c in report["candidates"]]
    lines += ["| attack | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for i, attack in enumerate(report["attacks"]):
        cells = []
        for c in report["candidates"]:
            a = c["attacks"][i]
            cells.append(f"{_fmt(a['frame_bit_accuracy']).strip()} / {_fmt(a['voted_bit_accuracy']).strip()} / "
                         f"{'**yes**' if a['recovered'] else 'no'} / {a['confidence']:.2f}")
        lines.append(f"| {attack['name']} | " + " | ".join(cells) + " |")
    study = report.get("fingerprint")
    if study:
        lines += ["", f"Fingerprint ({fp.ALGORITHM}: {fp.SAMPLES} frames at fixed fractions of the duration, each "
                  f"{len(fp.SCALES)} 64-bit DCT pHashes of the luma (regions "
                  + ", ".join(f"{s:.0%}" for s in fp.SCALES) + " of each side), best pairing of regions), "
                  f"similarity to the story (threshold {study['threshold']}):", "",
                  "| attacked copy | similarity |", "| --- | ---: |"]
        for name, value in study["attacked"].items():
            lines.append(f"| {name} | {value:.3f} |")
        lines += ["", f"Attacked copies: min {study['attacked_min']}; different videos ({len(study['different'])}): "
                  f"max {study['different_max']} (incl. mirrored/zoomed copies of the story's own photo: "
                  f"{study['different_max_incl_derived']}), mean {study['different_mean']}, p99 "
                  f"{study['different_p99']}. Below the threshold: {study['attacked_below_threshold'] or 'none'}; "
                  f"different videos above it: {study['different_above_threshold'] or 'none'}.",
                  "", "Highest-scoring different videos: " + ", ".join(
                      f"{k}{' (story photo)' if k in study['derived_from_story_photo'] else ''} {v:.3f}"
                      for k, v in list(study["different"].items())[:8]) + "."]
        if study.get("variants"):
            lines += ["", "Fingerprint variants (min over attacked copies / max over different videos, derived "
                      "excluded; margin = min - max):", "", "| variant | attacked min | different max | margin | "
                      "worst attack |", "| --- | ---: | ---: | ---: | --- |"]
            for v in study["variants"]:
                lines.append(f"| {v['name']} | {v['attacked_min']:.3f} | {v['different_max']:.3f} | "
                             f"{v['attacked_min'] - v['different_max']:+.3f} | {v['worst_attack']} |")
    lines += ["", f"False-positive corpus: {report['corpus']['clean']} clean videos "
              f"({', '.join(f'{k} {v}' for k, v in report['corpus']['categories'].items())}), "
              f"{report['corpus']['others']} alive stories of other photos. Run time {report['seconds']:.0f} s.", ""]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--story", type=Path, help="an existing unwatermarked story MP4 (default: make one)")
    parser.add_argument("--photo", type=Path, default=PHOTO, help="photo for the story made with `alive animate`")
    parser.add_argument("--candidates", default=",".join(ALL_CANDIDATES))
    parser.add_argument("--frames", type=int, default=30, help="frames watermarked/decoded by the slow candidates")
    parser.add_argument("--fp-videos", type=int, default=56, help="clean videos for the false-positive count")
    parser.add_argument("--fp-frames", type=int, default=8, help="frames decoded per clean video (slow candidates)")
    parser.add_argument("--others", type=int, default=6, help="alive stories of other photos (other ids)")
    parser.add_argument("--per-frame", type=int, default=16, help="frames for alive's per-frame bit accuracy")
    parser.add_argument("--preset", default="medium", help="x264 preset of the published copy (alive: medium)")
    parser.add_argument("--attacks", default="", help="comma-separated attack names (default: all)")
    parser.add_argument("--workdir", type=Path, help="keep the videos here (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep every attacked copy")
    parser.add_argument("--json", type=Path, help="write the full results here")
    parser.add_argument("--markdown", type=Path, help="write the Markdown section here ('-' = stdout)")
    parser.add_argument("--quick", action="store_true", help="CI-sized: 8 frames, 12 clean videos, 2 others, veryfast")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.fp_videos, args.fp_frames, args.others = min(args.frames, 8), 12, 4, 2
        args.preset, args.per_frame = "veryfast", 4
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {message}", flush=True)

    own_temp = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="watermark-bench-")) if own_temp else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, work, log, started)
    finally:
        if own_temp:
            shutil.rmtree(work, ignore_errors=True)


def _run(args, work: Path, log, started: float) -> dict[str, Any]:
    names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    candidates, skipped = load_candidates(names)
    for name, reason in skipped.items():
        log(f"skipping {name}: {reason}")
    # 1. the story (the cover)
    if args.story:
        story_path, story_source = args.story, str(args.story)
    else:
        shown = args.photo.relative_to(REPO) if args.photo.is_relative_to(REPO) else args.photo
        duration = 1.0 if args.quick else None
        log(f"making the story of {shown} (alive's stages up to encoding)")
        cover = story_frames(args.photo, duration=duration)
        story_source = (f"the frames `alive animate {shown} --seed 1{' --duration 1' if args.quick else ''}` "
                        "encodes (its stage functions, in-process, stopped before encoding: no watermark yet)")
    if args.story:
        cover = read_frames(story_path)
        if args.quick:
            cover = cover[:30]
    height, width = cover.shape[1:3]
    log(f"story {width}x{height}, {len(cover)} frames")
    attacks = build_attacks(width, height)
    if args.attacks:
        wanted = {a.strip() for a in args.attacks.split(",")}
        attacks = [a for a in attacks if a.name in wanted or a.name == "none"]
    notes = []
    alive = next((c for c in candidates if c.name == "alive"), None)
    if alive is not None:
        pre = alive.detect(cover[:30])
        if pre.credential_id:
            notes.append(f"the cover already carries alive's watermark (id {pre.credential_id}): results for alive "
                         "are of a second mark over the first; pass an unwatermarked --story")
            log("WARNING: " + notes[-1])

    # 2. robustness per candidate
    results: list[CandidateResult] = []
    copies: dict[str, np.ndarray] = {}  # sampled frames of the story ("__story__") and of its attacked copies
    for candidate in candidates:
        log(f"candidate {candidate.name}")
        result, sampled = evaluate_candidate(candidate, cover, work, attacks, args, log)
        results.append(result)
        if sampled and not copies:
            copies = sampled
    clean_story_command = None
    if not copies:  # no candidate covered the whole story: attack the unwatermarked story itself
        log("fingerprint: attacking the unwatermarked story")
        published = work / "clean-story.mp4"
        clean_story_command = encode_like_alive(cover, published, args.preset)
        copies["__story__"] = cover[fp.sample_indices(len(cover))].copy()
        for attack in attacks:
            copy = run_attack(attack, published, work / f"clean-{attack.name}.mp4")
            frames = read_frames(copy)
            copies[attack.name] = frames[fp.sample_indices(len(frames))].copy()
            copy.unlink(missing_ok=True)
            del frames
    story_sampled = copies.pop("__story__")
    story_fp = fp.fingerprint(story_sampled)
    attacked_fps = {name: fp.fingerprint(frames) for name, frames in copies.items()}

    # 3. false positives
    log(f"false-positive corpus: {args.fp_videos} clean videos, {args.others} alive stories of other photos")
    clean = clean_corpus(work / "clean", args.fp_videos, story_photo=args.photo)
    others: list[tuple[str, np.ndarray]] = []
    for photo in generated_photos(work / "photos", args.others):
        others.append((photo.stem, story_frames(photo, duration=1.0, seed=7)))
    log("corpus ready")
    for candidate, result in zip(candidates, results):
        evaluate_false_positives(candidate, result, clean, others, work, args, log)

    # 4. fingerprint: similarity of every attacked copy and every different video to the story
    different: dict[str, list[str]] = {}
    derived = set()
    clean_frames: dict[str, np.ndarray] = {}
    for video in clean:
        frames = read_frames(video.path)
        different[video.name] = fp.fingerprint(frames)
        clean_frames[video.name] = frames[fp.sample_indices(len(frames))]
        if video.derived_from_story_photo:
            derived.add(video.name)
    for name, frames in others:
        different[f"alive-story:{name}"] = fp.fingerprint(frames)
        clean_frames[f"alive-story:{name}"] = frames[fp.sample_indices(len(frames))]
    study = fingerprint_study(story_fp, attacked_fps, different, derived)
    study["variants"] = fingerprint_variants(story_sampled, copies, clean_frames, derived)
    if study:
        log(f"fingerprint: attacked min {study['attacked_min']}, different max {study['different_max']} "
            f"(incl. derived {study['different_max_incl_derived']}), threshold {fp.MATCH_THRESHOLD}")

    # 5. the report
    report = make_report(" ".join(sys.argv[1:]), story_source, cover.shape, attacks, results, skipped, study,
                         clean, len(others), notes, time.perf_counter() - started,
                         next((r.encode_command for r in results), clean_story_command))
    write_outputs(report, args.json, args.markdown)
    return report


def make_report(arguments: str, story_source: str, cover_shape: tuple[int, ...], attacks: list[Attack],
                results: list[CandidateResult], skipped: dict[str, str], study: dict[str, Any] | None,
                clean: list[CleanVideo], others: int, notes: list[str], seconds: float,
                encode_command: str | None) -> dict[str, Any]:
    """The JSON-ready result document (``markdown`` renders it)."""
    categories: dict[str, int] = {}
    for video in clean:
        categories[video.category] = categories.get(video.category, 0) + 1
    return {
        "command": f".venv/bin/python benchmarks/watermark_bench.py {arguments}".strip(),
        "environment": environment(),
        "story": {"source": story_source, "width": int(cover_shape[2]), "height": int(cover_shape[1]),
                  "frames": int(cover_shape[0]), "encode_command": encode_command},
        "attacks": [{"name": a.name, "what": a.what, "commands": a.commands()} for a in attacks],
        "candidates": [asdict(r) for r in results],
        "skipped": skipped,
        "fingerprint": study,
        "corpus": {"clean": len(clean), "others": others, "categories": categories,
                   "videos": [{"name": v.name, "category": v.category, "command": v.command,
                               "derived_from_story_photo": v.derived_from_story_photo} for v in clean]},
        "notes": notes,
        "seconds": round(seconds, 1),
    }


def _plain_similarity(a: list[str], b: list[str]) -> float:
    """1 - mean Hamming distance over all bits of equally long single-hash fingerprints."""
    bits = [np.unpackbits(np.frombuffer(bytes.fromhex("".join(h)), np.uint8)) for h in (a, b)]
    return float(1.0 - np.mean(bits[0] != bits[1]))


def fingerprint_variants(story: np.ndarray, copies: dict[str, np.ndarray], clean_frames: dict[str, np.ndarray],
                         derived: set[str]) -> list[dict[str, Any]]:
    """Other hash sizes / regions on the same sampled frames: margin = attacked min - different max."""
    variants = [("3 x 64-bit: whole frame, middle 95 % and 90 % (used)", 0, 0, 0.0),
                ("64-bit, whole frame", 8, 32, 1.0), ("64-bit, middle 90 %", 8, 32, 0.9),
                ("64-bit, middle 80 %", 8, 32, 0.8), ("64-bit, middle 60 %", 8, 32, 0.6),
                ("256-bit, middle 80 %", 16, 64, 0.8), ("256-bit, whole frame", 16, 64, 1.0)]
    out = []
    for name, hash_size, dct_size, centre in variants:
        def hashes(sampled: np.ndarray) -> list[str]:
            if not hash_size:
                return [h for f in sampled for h in fp.frame_hashes(f)]
            return [fp._hex(fp._bits(f, hash_size, dct_size, centre)) for f in sampled]
        compare = fp.similarity if not hash_size else _plain_similarity
        reference = hashes(story)
        same = {k: compare(reference, hashes(v)) for k, v in copies.items()}
        diff = {k: compare(reference, hashes(v)) for k, v in clean_frames.items() if k not in derived}
        worst = min(same, key=same.get)
        out.append({"name": name, "attacked_min": round(same[worst], 4), "worst_attack": worst,
                    "different_max": round(max(diff.values()), 4), "different_worst": max(diff, key=diff.get),
                    "attacked": {k: round(v, 4) for k, v in same.items()}})
    return out


def write_outputs(report: dict[str, Any], json_path: Path | None, markdown_path: Path | None) -> str:
    text = markdown(report)
    if json_path:
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    if markdown_path:
        if str(markdown_path) == "-":
            print(text)
        else:
            markdown_path.write_text(text, encoding="utf-8")
    return text


if __name__ == "__main__":
    main()
