"""Frames (+ an optional WAV sound track) -> a story video and a JPEG poster, via the bundled ffmpeg.

Why it looks like this:
- ffmpeg is imageio-ffmpeg's binary, run with an argv list (never a shell), raw RGB frames piped to
  its stdin. Its stderr is drained by a thread so a chatty ffmpeg can never fill the pipe and
  deadlock us, and it becomes the error message when something fails.
- The file is written to a hidden temp file beside the target and moved onto it with
  ``os.replace`` only after ffmpeg exited 0, the size is within ``max_bytes`` *and* a full decode
  of the result shows the expected frame count and size (and an audio track as long as the video).
  A failed call leaves no partial file behind and an older file untouched.
- No ffmpeg process outlives a call: a watchdog kills it at ``timeout_s``, and ``finally`` kills
  and reaps it whatever happened.
- Encoders (``EncodeSettings.codec``): libx264 (default: plays everywhere), libx265 (HEVC, tagged
  ``hvc1`` so Apple players accept it), libsvtav1 (AV1), libvpx-vp9 (VP9) and h264_nvenc (NVIDIA
  GPUs only). Every stream is 8-bit 4:2:0 BT.709, the only kind every phone decodes, so
  ``settings.profile`` matters to the H.264 encoders only (HEVC Main, AV1 Main, VP9 profile 0 follow).
  ``settings.preset`` takes x264's names for every encoder and maps them onto each encoder's own
  speed scale (``SVT_AV1_PRESETS``, ``VP9_CPU_USED``, ``NVENC_PRESETS``); native values pass too.
- The container follows the output suffix: ``.webm`` -> WebM (VP9 or AV1, Opus audio: WebM holds no
  AAC); anything else -> MP4 with the index first (faststart). Note: c2pa-python 0.38 cannot sign
  WebM (``NotSupported``), so a labelled story must be MP4.

Errors: arguments that a caller got wrong (frames of the wrong shape or type, odd sizes, an fps out
of range, an unknown codec or preset, a crf outside the codec's range, a bad bitrate, a WAV that
does not fit the video) raise ``ConfigError`` (a ``ValueError``), code ``bad_frames`` / ``bad_fps`` /
``bad_quality`` / ``bad_codec`` / ``bad_preset`` / ``bad_crf`` / ``bad_bitrate`` / ``bad_container``
/ ``bad_audio`` / ``bad_audio_codec``, and ``encoder_unavailable`` when h264_nvenc finds no usable
NVIDIA GPU. Everything that goes wrong around ffmpeg or the file system raises ``EncodeFailed``,
codes: ``output_dir_missing`` (we do not create directories: a missing one usually means a wrong
path, and storage owns the layout), ``output_unwritable``, ``encode_failed``, ``encode_timeout``,
``encode_mismatch``, ``too_large`` (over ``max_bytes``).
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import re
import shlex
import subprocess
import threading
import time
import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, Callable, Sequence, cast

import numpy as np
from PIL import Image

from pipeline.errors import ConfigError, EncodeFailed
from pipeline.frame import pixels_key
from pipeline.probe import ffmpeg_exe, mp4_top_level_boxes, probe_video
from pipeline.settings import EncodeSettings
from pipeline.storage import create_temp_beside, publish

log = logging.getLogger(__name__)

__all__ = ["CODECS", "EncodedVideo", "encode_mp4", "nvenc_problem", "write_poster", "probe_video",
           "mp4_top_level_boxes"]

MAX_FPS = 240.0
STDERR_TAIL_LINES = 20
# How far the muxed track may decode from the WAV's length. AAC in MP4 and Opus in WebM decode to the
# exact sample (ffmpeg trims priming and padding); Opus in MP4 keeps its last 20 ms frame whole
# (+17 ms measured).
AUDIO_SLACK_S = 0.03

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
# x264's speed names on the other encoders' own scales, fastest first. SVT-AV1 4.x runs M0 (slowest) to
# M11 (12 and 13 are mapped to 11), and "medium" = M6 costs about what x264 medium does (benchmarks/
# RESULTS.md). libvpx's "good" deadline takes cpu-used 0..5 (higher values encode like 5). NVENC p1..p7.
SVT_AV1_PRESETS = dict(zip(X264_PRESETS, (11, 10, 9, 8, 7, 6, 4, 3, 2, 1)))
VP9_CPU_USED = dict(zip(X264_PRESETS, (5, 5, 5, 4, 3, 2, 1, 1, 0, 0)))
NVENC_PRESETS = dict(zip(X264_PRESETS, ("p1", "p2", "p3", "p3", "p4", "p5", "p6", "p7", "p7", "p7")))


@dataclass(frozen=True)
class _Codec:
    crf_min: int
    crf_max: int
    containers: tuple[str, ...]
    native_presets: tuple[str, ...] = ()  # the encoder's own preset values, accepted as they are


CODECS: dict[str, _Codec] = {
    "libx264": _Codec(0, 51, ("mp4",)),
    "libx265": _Codec(0, 51, ("mp4",)),
    # crf 0 is not "lossless" to ffmpeg's libsvtav1 wrapper but "unset" (it then encodes at its default
    # 35, measured), so the range starts at 1.
    "libsvtav1": _Codec(1, 63, ("mp4", "webm"), tuple(str(n) for n in range(0, 14))),
    "libvpx-vp9": _Codec(0, 63, ("mp4", "webm"), tuple(str(n) for n in range(0, 6))),
    # NVENC reads cq 0 as "the driver picks", not "best", so the range starts at 1 here too.
    "h264_nvenc": _Codec(1, 51, ("mp4",), tuple(f"p{n}" for n in range(1, 8))),
}
AUDIO_ENCODERS = {"aac": "aac", "opus": "libopus", "libopus": "libopus"}
_BITRATE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([kKmM]?)$")


@dataclass(frozen=True)
class EncodedVideo:
    """What was written. ``fps`` is the rate asked for (exact); the other stream facts come from
    decoding the finished file. ``seconds`` is the wall time of the whole call, check included."""

    path: Path
    width: int
    height: int
    fps: float
    frames: int
    codec: str
    pix_fmt: str
    profile: str | None
    bytes: int
    seconds: float
    container: str = "mp4"
    audio: dict[str, Any] | None = None  # probe facts of the muxed track: codec, sample_rate, channels, duration
    encoder: str = ""  # the ffmpeg encoder that wrote it (codec ``auto`` resolved)


# ---------------------------------------------------------------------------------------------
# argument checks and frame conversion


def _check_frame(frame: object, index: int, expected: tuple[int, int] | None) -> tuple[int, int]:
    """Reject anything but an (H, W, 3) uint8 or float array; return (height, width)."""
    if not isinstance(frame, np.ndarray):
        raise ConfigError(f"frame {index} is a {type(frame).__name__}, expected a numpy array (H, W, 3)",
                          code="bad_frames")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ConfigError(f"frame {index} has shape {frame.shape}, expected (height, width, 3) RGB",
                          code="bad_frames")
    if frame.dtype != np.uint8 and not np.issubdtype(frame.dtype, np.floating):
        raise ConfigError(f"frame {index} has dtype {frame.dtype}; pass uint8 (0..255) or float (0..1)",
                          code="bad_frames")
    size = (int(frame.shape[0]), int(frame.shape[1]))
    if expected is not None and size != expected:
        raise ConfigError(f"frame {index} is {size[1]}x{size[0]} but frame 0 is {expected[1]}x{expected[0]}; "
                          "all frames must have the same size", code="bad_frames")
    return size


def _check_size(height: int, width: int) -> None:
    # yuv420p stores one chroma sample per 2x2 block, so libx264 refuses odd sizes (and imageio's
    # writer would silently rescale them): the caller must crop or pad, and say so in its report.
    if height < 2 or width < 2 or height % 2 or width % 2:
        raise ConfigError(f"frames are {width}x{height}; H.264 yuv420p needs an even width and height "
                          "(crop or pad by one pixel first)", code="bad_frames")


def _to_uint8(frame: np.ndarray, index: int) -> np.ndarray:
    """uint8 passes through; float 0..1 is scaled, rounded and clipped. NaN/inf are refused."""
    if frame.dtype == np.uint8:
        return np.ascontiguousarray(frame)
    if not np.isfinite(frame).all():
        raise ConfigError(f"frame {index} contains NaN or infinite values", code="bad_frames")
    return np.clip(np.rint(frame * 255.0), 0, 255).astype(np.uint8)


def _check_fps(fps: float) -> Fraction:
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise ConfigError(f"fps must be a number, got {fps!r}", code="bad_fps") from None
    if not (0 < value <= MAX_FPS):  # also rejects NaN
        raise ConfigError(f"fps must be in (0, {MAX_FPS:g}], got {fps!r}", code="bad_fps")
    # ffmpeg takes a rational; 30000/1001 style rates survive as 29.97 -> 2997/100.
    return Fraction(value).limit_denominator(1001)


def _as_frame_list(frames: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray] | np.ndarray:
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise ConfigError(f"a frames array must be 4-D (count, height, width, 3), got shape {frames.shape}",
                              code="bad_frames")
        return frames
    if isinstance(frames, (str, bytes)):
        raise ConfigError("frames must be a sequence of numpy arrays", code="bad_frames")
    return list(frames)


# ---------------------------------------------------------------------------------------------
# codec, container and audio choices


@dataclass(frozen=True)
class _AudioMux:
    """A checked WAV to mux: trimmed to ``seconds`` (the video's length), coded by ``encoder``."""

    path: Path
    seconds: float
    sample_rate: int
    channels: int
    encoder: str
    bitrate: str


def _container_for(out_path: Path) -> str:
    return "webm" if out_path.suffix.lower() == ".webm" else "mp4"


def check_encoder(settings: EncodeSettings, out_path: str | Path) -> None:
    """Raise ConfigError now if these settings cannot encode to ``out_path`` (codec, container, crf,
    preset, bitrate, NVENC present): callers check before hours of generation, not after."""
    _check_codec(resolve_codec(settings), _container_for(Path(out_path)))


def resolve_codec(settings: EncodeSettings) -> EncodeSettings:
    """``codec: auto`` -> h264_nvenc when ffmpeg can open an NVENC engine here (a GPU with one and
    its driver; asked once per process), else libx264. Other codecs pass through."""
    if settings.codec != "auto":
        return settings
    return settings.model_copy(update={"codec": "h264_nvenc" if nvenc_problem() is None else "libx264"})


def _check_codec(settings: EncodeSettings, container: str) -> None:
    codec = CODECS.get(settings.codec)
    if codec is None:
        raise ConfigError(f"encode.codec {settings.codec!r} is not supported; choose one of: {', '.join(CODECS)}",
                          code="bad_codec")
    if container not in codec.containers:
        raise ConfigError(f"{settings.codec} cannot be written to a .webm file (WebM holds VP9 or AV1 only); "
                          "write .mp4 or choose codec libvpx-vp9 or libsvtav1", code="bad_container")
    if not codec.crf_min <= settings.crf <= codec.crf_max:
        raise ConfigError(f"encode.crf {settings.crf} is out of range for {settings.codec}: use "
                          f"{codec.crf_min}..{codec.crf_max} (lower is better quality, bigger files)", code="bad_crf")
    if settings.preset not in X264_PRESETS and settings.preset not in codec.native_presets:
        native = f", or {settings.codec}'s own {codec.native_presets[0]}..{codec.native_presets[-1]}" \
            if codec.native_presets else ""
        raise ConfigError(f"encode.preset {settings.preset!r} is not a preset name: use one of "
                          f"{', '.join(X264_PRESETS)}{native}", code="bad_preset")
    if settings.maxrate is not None:
        _bits_per_second(settings.maxrate, "encode.maxrate")
    if settings.codec == "h264_nvenc":
        problem = nvenc_problem()
        if problem is not None:
            raise ConfigError(f"encode.codec h264_nvenc needs an NVIDIA GPU with an NVENC engine and its driver, and "
                              f"none is usable here ({problem}); use codec libx264 to encode on the CPU",
                              code="encoder_unavailable")


def _bits_per_second(text: str, name: str) -> int:
    """Parse an ffmpeg-style bitrate (``8M``, ``128k``, ``2500000``) to bits per second."""
    match = _BITRATE_RE.match(str(text))
    value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[match.group(2).lower()] if match else 0.0
    if value < 1000:
        raise ConfigError(f"{name} must be a bitrate like 8M, 2500k or 128k (at least 1k), got {text!r}",
                          code="bad_bitrate")
    return int(value)


@functools.lru_cache(maxsize=1)
def nvenc_problem() -> str | None:
    """None when h264_nvenc can encode on this machine, else ffmpeg's reason (e.g. "Cannot load
    libcuda.so.1"). Asked of ffmpeg itself with a 0.1 s test encode, once per process: a visible GPU
    is not enough (an H100 has no NVENC engine), nor is a driver without one."""
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi",
               "-i", "color=black:s=256x256:d=0.1", "-c:v", "h264_nvenc", "-f", "null", "-"]
    try:
        done = subprocess.run(command, capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the test encode did not finish: {exc}"
    if done.returncode == 0:
        return None
    lines = done.stderr.decode("utf-8", "replace").splitlines()
    said = [line.split("]", 1)[-1].strip() for line in lines if "h264_nvenc @" in line] or lines[-1:]
    return f"ffmpeg: {said[0] if said else 'exit code ' + str(done.returncode)}"


def _check_audio(audio: str | Path, video_seconds: float, fps: float, codec: str, bitrate: str,
                 container: str) -> _AudioMux:
    """Read the WAV's header and make sure it fits the video: as long as it, within one frame."""
    path = Path(audio)
    try:
        with wave.open(str(path), "rb") as wav:
            rate, channels, samples = wav.getframerate(), wav.getnchannels(), wav.getnframes()
    except (OSError, EOFError, wave.Error) as exc:
        raise ConfigError(f"the audio track {path} is not a readable PCM WAV ({exc}); render it with "
                          "pipeline.audio.render_track", code="bad_audio") from exc
    seconds = samples / rate if rate else 0.0
    if abs(seconds - video_seconds) > 1.0 / fps + 0.001:
        raise ConfigError(f"the audio track is {seconds:.3f} s but the video is {video_seconds:.3f} s; render "
                          "the track for the video's length (frames / fps)", code="bad_audio")
    # WebM holds Opus or Vorbis only, so its sound is always Opus, whatever was asked for MP4.
    encoder = "libopus" if container == "webm" else AUDIO_ENCODERS.get(codec, "")
    if not encoder:
        raise ConfigError(f"audio codec {codec!r} is not supported; choose one of: {', '.join(AUDIO_ENCODERS)}",
                          code="bad_audio_codec")
    _bits_per_second(bitrate, "the audio bitrate")
    return _AudioMux(path, min(seconds, video_seconds), rate, channels, encoder, bitrate)


# ---------------------------------------------------------------------------------------------
# files


def _check_output(out_path: Path) -> None:
    parent = out_path.parent
    if not parent.exists():
        raise EncodeFailed(f"cannot write {out_path}: the directory {parent} does not exist "
                           "(create it first; encode does not create directories)", code="output_dir_missing")
    if not parent.is_dir():
        raise EncodeFailed(f"cannot write {out_path}: {parent} is not a directory", code="output_unwritable")
    if out_path.is_dir():
        raise EncodeFailed(f"cannot write {out_path}: it is a directory", code="output_unwritable")


def _create_temp_beside(out_path: Path, suffix: str) -> Path:
    try:
        return create_temp_beside(out_path, suffix)
    except OSError as exc:
        raise EncodeFailed(f"cannot write in {out_path.parent}: {exc.strerror} "
                           "(check permissions, free space, read-only mounts)",
                           code="output_unwritable") from exc


def _commit(temp: Path, out_path: Path) -> None:
    try:
        publish(temp, out_path)
    except OSError as exc:
        raise EncodeFailed(f"cannot move the finished file onto {out_path}: {exc.strerror}",
                           code="output_unwritable") from exc


# ---------------------------------------------------------------------------------------------
# ffmpeg


def _video_codec_args(settings: EncodeSettings) -> list[str]:
    """The encoder and its quality/speed options; ``settings`` is already checked."""
    codec, crf, preset = settings.codec, str(settings.crf), settings.preset
    if codec == "libx264":
        # "avc1" sample entry: what QuickTime / iOS expect
        return ["-c:v", codec, "-preset", preset, "-crf", crf, "-profile:v", settings.profile, "-tag:v", "avc1"]
    if codec == "h264_nvenc":
        return ["-c:v", codec, "-preset", NVENC_PRESETS.get(preset, preset), "-tune", "hq",
                "-rc", "vbr", "-cq", crf, "-b:v", "0", "-profile:v", settings.profile, "-tag:v", "avc1"]
    if codec == "libx265":
        # Apple players refuse HEVC tagged "hev1" (ffmpeg's default) and play "hvc1".
        return ["-c:v", codec, "-preset", preset, "-crf", crf, "-tag:v", "hvc1", "-x265-params", "log-level=error"]
    if codec == "libsvtav1":
        return ["-c:v", codec, "-preset", str(SVT_AV1_PRESETS.get(preset, preset)), "-crf", crf]
    # libvpx-vp9: -b:v 0 with a crf is constant quality; with a maxrate, -b:v caps it ("constrained
    # quality"). row-mt lets both cores work on one frame.
    bitrate = settings.maxrate or "0"
    return ["-c:v", codec, "-deadline", "good", "-cpu-used", str(VP9_CPU_USED.get(preset, preset)),
            "-row-mt", "1", "-crf", crf, "-b:v", bitrate]


def build_command(width: int, height: int, rate: Fraction, settings: EncodeSettings, output: Path, *,
                  container: str = "mp4", audio: _AudioMux | None = None) -> list[str]:
    """The ffmpeg argv for raw rgb24 frames on stdin (+ a WAV) -> MP4 or WebM at ``output``."""
    settings = resolve_codec(settings)
    rate_text = f"{rate.numerator}/{rate.denominator}"
    command = [
        ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", "warning",
        # input 0: raw RGB frames on stdin, size and rate stated (raw video carries neither)
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", rate_text,
        "-i", "pipe:0",
    ]
    if audio is not None:
        # input 1: the WAV, read no further than the video lasts
        command += ["-t", f"{audio.seconds:.6f}", "-i", str(audio.path), "-map", "0:v:0", "-map", "1:a:0"]
    else:
        command += ["-map", "0:v:0", "-an"]
    command += [
        "-map_metadata", "-1", "-fflags", "+bitexact",  # no global metadata, no muxer version string
        "-metadata:s:v:0", "handler_name=",
        # RGB -> YUV with the BT.709 matrix, limited range, and tag the stream so; untagged video
        # is guessed at by players (BT.601 for small sizes), which shifts colours.
        "-vf", "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p,"
               "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv",
        *_video_codec_args(settings),
        # 8-bit 4:2:0 is the only flavour that every phone, browser and social platform decodes;
        # 4:4:4 / 10-bit (e.g. H.264 High 4:4:4, High 10) play as black or are rejected on upload.
        "-pix_fmt", "yuv420p",
        "-r", rate_text,
    ]
    if settings.maxrate is not None:
        # A peak rate needs a buffer to be measured over; twice the rate is the usual VBV choice.
        bufsize = 2 * _bits_per_second(settings.maxrate, "encode.maxrate")
        command += ["-maxrate", settings.maxrate, "-bufsize", str(bufsize)]
    if audio is not None:
        command += ["-c:a", audio.encoder, "-b:a", audio.bitrate, "-metadata:s:a:0", "handler_name="]
    if container == "webm":
        command += ["-cues_to_front", "1", "-f", "webm"]  # the index first, like faststart
    else:
        command += ["-movflags", "+faststart", "-f", "mp4"]  # moov before mdat: playback starts early
    return [*command, "-y", str(output)]


def _drain(stream: IO[bytes], sink: collections.deque[str]) -> None:
    """Read ffmpeg's stderr to the end (so it never blocks on a full pipe), keeping the tail."""
    for raw in iter(stream.readline, b""):
        sink.append(raw.decode("utf-8", "replace").rstrip())
    stream.close()


def _write_all(stdin: IO[bytes], frame: np.ndarray) -> None:
    """Write one frame to an unbuffered pipe; a raw write may take only part of it (signals)."""
    view = memoryview(frame).cast("B")
    while view:
        written = stdin.write(view)
        view = view[written or 0:]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill ffmpeg if it is still running and reap it: nothing may outlive the call."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _failure(message: str, code: str, command: list[str], stderr: collections.deque[str],
             returncode: int | None) -> EncodeFailed:
    tail = "\n".join(list(stderr)[-STDERR_TAIL_LINES:])
    text = f"{message}\ncommand: {shlex.join(command)}\nffmpeg stderr (last lines):\n{tail or '(empty)'}"
    return EncodeFailed(text, code=code,
                        details={"command": command, "stderr_tail": tail, "returncode": returncode})


def _run_ffmpeg(command: list[str], frames: Sequence[np.ndarray] | np.ndarray, timeout_s: float,
                progress: Callable[[int, int], None] | None) -> None:
    """Pipe the frames through ffmpeg; raise EncodeFailed unless it exits 0 within ``timeout_s``."""
    total = len(frames)
    stderr: collections.deque[str] = collections.deque(maxlen=200)
    timed_out = threading.Event()
    try:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, bufsize=0)
    except OSError as exc:
        raise EncodeFailed(f"cannot start ffmpeg ({command[0]}): {exc}; reinstall imageio-ffmpeg",
                           code="ffmpeg_missing", details={"command": command}) from exc
    stdin = cast(IO[bytes], proc.stdin)
    try:
        reader = threading.Thread(target=_drain, args=(proc.stderr, stderr), daemon=True)
        reader.start()

        def _on_deadline() -> None:
            if proc.poll() is None:
                timed_out.set()
                proc.kill()  # unblocks a write stuck on a full pipe: it then raises BrokenPipeError

        watchdog = threading.Timer(timeout_s, _on_deadline)
        watchdog.daemon = True
        watchdog.start()
        try:
            try:
                for index in range(total):
                    _write_all(stdin, _to_uint8(frames[index], index))
                    if progress is not None:
                        progress(index + 1, total)
                stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg died (or was killed at the deadline): its stderr explains, below
            returncode = proc.wait()
        finally:
            watchdog.cancel()
        reader.join(timeout=10)
        if returncode != 0 and timed_out.is_set():
            raise _failure(f"ffmpeg did not finish {total} frames within {timeout_s} s and was stopped "
                           "(raise encode.timeout_s or lower the frame count/size)",
                           "encode_timeout", command, stderr, returncode)
        if returncode != 0:
            raise _failure(f"ffmpeg failed with exit code {returncode} while encoding {total} frames",
                           "encode_failed", command, stderr, returncode)
    finally:
        if not stdin.closed:
            try:
                stdin.close()
            except BrokenPipeError:
                pass
        _stop(proc)


# ---------------------------------------------------------------------------------------------
# public API


def encode_mp4(
    frames: Sequence[np.ndarray] | np.ndarray,
    out_path: str | Path,
    fps: float,
    settings: EncodeSettings | None = None,
    progress: Callable[[int, int], None] | None = None,
    audio: str | Path | None = None,
    *,
    audio_codec: str = "aac",
    audio_bitrate: str = "128k",
    repeat: int = 1,
) -> EncodedVideo:
    """Encode RGB frames (uint8 0..255 or float 0..1, all (H, W, 3), even H and W) to a video file:
    MP4, or WebM when ``out_path`` ends in ``.webm``; see the module docstring for codecs and errors.

    ``audio`` is a WAV as long as the video (``pipeline.audio.render_track``), muxed as
    ``audio_codec`` (aac or opus; always Opus in WebM) at ``audio_bitrate``. ``progress(frames_written,
    total)`` is called after each frame reaches ffmpeg. The result is checked by decoding it before
    it replaces ``out_path``.

    ``repeat``: the video is ``frames`` played ``repeat`` times (a seamless cycle, ``split_cycle``).
    With libx264 in MP4 the cycle is encoded once (a closed GOP: it starts on an IDR frame) and the
    file is that stream copied ``repeat`` times (ffmpeg's concat demuxer), so x264 works on one
    cycle, not the whole story; the decoded frames are the cycle's, again and again. Other
    encoders get the frames repeated.
    """
    started = time.perf_counter()
    asked = settings or EncodeSettings()
    settings = resolve_codec(asked)
    out_path = Path(out_path)
    container = _container_for(out_path)

    # 1. check everything that can be checked before starting a process
    frames = _as_frame_list(frames)
    if len(frames) == 0:
        raise ConfigError("no frames to encode: got an empty frame list", code="bad_frames")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ConfigError(f"repeat must be a whole number >= 1, got {repeat!r}", code="bad_option")
    if repeat > 1 and not (container == "mp4" and settings.codec == "libx264"):
        frames, repeat = [frames[i % len(frames)] for i in range(len(frames) * repeat)], 1
    height, width = _check_frame(frames[0], 0, None)
    for index in range(1, len(frames)):
        _check_frame(frames[index], index, (height, width))
    _check_size(height, width)
    rate = _check_fps(fps)
    _check_codec(settings, container)
    total = len(frames) * repeat
    video_seconds = total / float(rate)
    track = None
    if audio is not None:
        track = _check_audio(audio, video_seconds, float(rate), audio_codec, audio_bitrate, container)
    _check_output(out_path)

    # 2. encode into a temp file beside the target
    temp = _create_temp_beside(out_path, f".part.{container}")
    if repeat > 1:
        cycle = _create_temp_beside(out_path, ".cycle.part.mp4")
        command = build_command(width, height, rate, settings, cycle, container=container, audio=None)
    else:
        command = build_command(width, height, rate, settings, temp, container=container, audio=track)
    try:
        if repeat > 1:
            scaled = None if progress is None else (lambda done, _n: progress(done * repeat, total))
            _run_ffmpeg(command, frames, settings.timeout_s, scaled)
            command = _repeat_cycle(cycle, repeat, temp, track, settings.timeout_s)
        else:
            try:
                _run_ffmpeg(command, frames, settings.timeout_s, progress)
            except EncodeFailed as exc:
                if asked.codec != "auto" or settings.codec == "libx264" or exc.code == "encode_timeout":
                    raise
                # auto chose NVENC and it failed on the real frames (driver, session limit): the CPU encoder
                log.warning("h264_nvenc failed (%s); encoding with libx264 instead", exc.message.splitlines()[0])
                settings = settings.model_copy(update={"codec": "libx264"})
                command = build_command(width, height, rate, settings, temp, container=container, audio=track)
                _run_ffmpeg(command, frames, settings.timeout_s, progress)

        # 3. prove the file is what we asked for before anyone can see it
        size = temp.stat().st_size
        if size == 0:
            raise EncodeFailed(f"ffmpeg exited 0 but wrote an empty file\ncommand: {shlex.join(command)}",
                               code="encode_failed", details={"command": command, "returncode": 0})
        if settings.max_bytes is not None and size > settings.max_bytes:
            raise EncodeFailed(
                f"the encoded video is {size:,} bytes ({size / 1e6:.1f} MB), over the limit of "
                f"{settings.max_bytes:,} bytes (encode.max_bytes); raise encode.crf (+6 roughly halves the size), "
                "set or lower encode.maxrate, or make the story shorter or smaller",
                code="too_large", details={"bytes": size, "max_bytes": settings.max_bytes},
            )
        facts = probe_video(temp, timeout_s=settings.timeout_s)
        got = (facts["frames"], facts["width"], facts["height"])
        if got != (total, width, height):
            raise EncodeFailed(
                f"the encoded file decodes to {got[0]} frames of {got[1]}x{got[2]}, expected "
                f"{total} frames of {width}x{height}\ncommand: {shlex.join(command)}",
                code="encode_mismatch", details={"command": command, "probe": facts},
            )
        _check_muxed_audio(facts, track, command)

        # 4. publish atomically
        _commit(temp, out_path)
    finally:
        temp.unlink(missing_ok=True)  # no-op after a successful replace
        if repeat > 1:
            cycle.unlink(missing_ok=True)

    return EncodedVideo(
        path=out_path, width=width, height=height, fps=float(fps), frames=facts["frames"],
        codec=facts["codec"], pix_fmt=facts["pix_fmt"], profile=facts["profile"],
        bytes=facts["bytes"], seconds=time.perf_counter() - started, container=container, audio=facts["audio"],
        encoder=settings.codec,
    )


def split_cycle(frames: Sequence[np.ndarray]) -> tuple[Sequence[np.ndarray], int]:
    """(cycle, repeats) when ``frames`` is one shorter run of frame buffers played again and again
    (a looped story is a list of views of its cycle's frames), else (frames, 1). Frames count as the
    same when they are views of the same pixels (data pointer, shape and strides)."""
    count = len(frames)
    keys = [pixels_key(f) for f in frames] if not isinstance(frames, np.ndarray) else []
    for period in range(1, count // 2 + 1):
        if keys and count % period == 0 and all(keys[i] == keys[i % period] for i in range(period, count)):
            return frames[:period], count // period
    return frames, 1


def _repeat_cycle(cycle: Path, repeat: int, output: Path, track: _AudioMux | None, timeout_s: float) -> list[str]:
    """Write ``output``: the encoded ``cycle`` stream copied ``repeat`` times (+ the sound track), as
    the MP4 build_command would have made (no metadata, faststart). Returns the command run."""
    listing = cycle.with_suffix(".txt")
    quoted = str(cycle.resolve()).replace("'", "'\\''")
    listing.write_text("".join(f"file '{quoted}'\n" for _ in range(repeat)))
    command = [ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", "warning",
               "-f", "concat", "-safe", "0", "-i", str(listing)]
    if track is not None:
        command += ["-t", f"{track.seconds:.6f}", "-i", str(track.path), "-map", "0:v:0", "-map", "1:a:0"]
    else:
        command += ["-map", "0:v:0", "-an"]
    command += ["-map_metadata", "-1", "-fflags", "+bitexact", "-metadata:s:v:0", "handler_name=", "-c:v", "copy"]
    if track is not None:
        command += ["-c:a", track.encoder, "-b:a", track.bitrate, "-metadata:s:a:0", "handler_name="]
    command += ["-movflags", "+faststart", "-f", "mp4", "-y", str(output)]
    try:
        _run_ffmpeg(command, [], timeout_s, None)
    finally:
        listing.unlink(missing_ok=True)
    return command


def _check_muxed_audio(facts: dict[str, Any], track: _AudioMux | None, command: list[str]) -> None:
    """The file has a sound track exactly when one was given, and it lasts as long as the WAV did."""
    muxed = facts["audio"]
    if track is None and muxed is None:
        return
    if track is None or muxed is None:
        raise EncodeFailed(f"the encoded file {'has' if muxed else 'lacks'} an audio track, which was "
                           f"{'not ' if track is None else ''}asked for\ncommand: {shlex.join(command)}",
                           code="encode_mismatch", details={"command": command, "probe": facts})
    if abs(muxed["duration"] - track.seconds) > AUDIO_SLACK_S or muxed["channels"] != track.channels:
        raise EncodeFailed(
            f"the encoded audio track decodes to {muxed['duration']:.3f} s, {muxed['channels']} channel(s); "
            f"expected {track.seconds:.3f} s, {track.channels}\ncommand: {shlex.join(command)}",
            code="encode_mismatch", details={"command": command, "probe": facts},
        )


def write_poster(frame: np.ndarray, out_path: str | Path, quality: int = 90) -> Path:
    """Save one RGB frame as a baseline JPEG with no metadata (no EXIF, no comment), atomically.

    Odd sizes are fine here (JPEG has no such limit). Returns ``out_path`` as a Path.
    """
    out_path = Path(out_path)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"poster quality must be an integer 1..100, got {quality!r}", code="bad_quality")
    _check_frame(frame, 0, None)
    pixels = _to_uint8(frame, 0)
    _check_output(out_path)
    temp = _create_temp_beside(out_path, ".part.jpg")
    try:
        try:
            with temp.open("wb") as fh:
                # A fresh image from raw pixels carries no info dict, so nothing but JFIF is written.
                Image.fromarray(pixels).save(fh, "JPEG", quality=quality, optimize=True)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise EncodeFailed(f"cannot write the poster {out_path}: {exc}", code="output_unwritable") from exc
        _commit(temp, out_path)
    finally:
        temp.unlink(missing_ok=True)
    return out_path
