"""Frames -> MP4 (H.264 High, yuv420p, faststart) and a JPEG poster, via the bundled ffmpeg.

Why it looks like this:
- ffmpeg is imageio-ffmpeg's binary, run with an argv list (never a shell), raw RGB frames piped to
  its stdin. Its stderr is drained by a thread so a chatty ffmpeg can never fill the pipe and
  deadlock us, and it becomes the error message when something fails.
- The file is written to a hidden temp file beside the target and moved onto it with
  ``os.replace`` only after ffmpeg exited 0 *and* a full decode of the result shows the expected
  frame count and size. A failed call leaves no partial file behind and an older file untouched.
- No ffmpeg process outlives a call: a watchdog kills it at ``timeout_s``, and ``finally`` kills
  and reaps it whatever happened.

Errors: arguments that a caller got wrong (frames of the wrong shape or type, odd sizes, an fps out
of range) raise ``ConfigError`` (a ``ValueError``: a programming error of the caller, not a
property of the machine), code ``bad_frames`` / ``bad_fps`` / ``bad_quality``. Everything that goes
wrong around ffmpeg or the file system raises ``EncodeFailed``, codes: ``output_dir_missing``
(we do not create directories: a missing one usually means a wrong path, and storage owns the
layout), ``output_unwritable``, ``encode_failed``, ``encode_timeout``, ``encode_mismatch``.
"""

from __future__ import annotations

import collections
import os
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Callable, Sequence, cast

import numpy as np
from PIL import Image

from pipeline.errors import ConfigError, EncodeFailed
from pipeline.probe import ffmpeg_exe, mp4_top_level_boxes, probe_video
from pipeline.settings import EncodeSettings
from pipeline.storage import create_temp_beside, publish

__all__ = ["EncodedVideo", "encode_mp4", "write_poster", "probe_video", "mp4_top_level_boxes"]

MAX_FPS = 240.0
STDERR_TAIL_LINES = 20


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


def build_command(width: int, height: int, rate: Fraction, settings: EncodeSettings, output: Path) -> list[str]:
    """The ffmpeg argv for raw rgb24 frames on stdin -> MP4 at ``output``."""
    rate_text = f"{rate.numerator}/{rate.denominator}"
    return [
        ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", "warning",
        # input: raw RGB frames on stdin, size and rate stated (raw video carries neither)
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", rate_text,
        "-i", "pipe:0",
        "-map", "0:v:0", "-an",  # video only (no audio track yet)
        "-map_metadata", "-1", "-fflags", "+bitexact",  # no global metadata, no muxer version string
        "-metadata:s:v:0", "handler_name=",
        # RGB -> YUV with the BT.709 matrix, limited range, and tag the stream so; untagged video
        # is guessed at by players (BT.601 for small sizes), which shifts colours.
        "-vf", "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p,"
               "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv",
        "-c:v", settings.codec, "-preset", settings.preset, "-crf", str(settings.crf),
        "-profile:v", settings.profile,
        # 8-bit 4:2:0 is the only H.264 flavour that every phone, browser and social platform
        # decodes; yuv444p / 10-bit (High 4:4:4, High 10) play as black or are rejected on upload.
        "-pix_fmt", "yuv420p",
        "-tag:v", "avc1",  # "avc1" sample entry: what QuickTime / iOS expect
        "-r", rate_text,
        "-movflags", "+faststart",  # moov before mdat: playback starts before the download ends
        "-f", "mp4", "-y", str(output),
    ]


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
) -> EncodedVideo:
    """Encode RGB frames (uint8 0..255 or float 0..1, all (H, W, 3), even H and W) to an MP4.

    ``progress(frames_written, total)`` is called after each frame reaches ffmpeg. The result is
    checked by decoding it before it replaces ``out_path``; see the module docstring for errors.
    """
    started = time.perf_counter()
    settings = settings or EncodeSettings()
    out_path = Path(out_path)

    # 1. check everything that can be checked before starting a process
    frames = _as_frame_list(frames)
    if len(frames) == 0:
        raise ConfigError("no frames to encode: got an empty frame list", code="bad_frames")
    height, width = _check_frame(frames[0], 0, None)
    for index in range(1, len(frames)):
        _check_frame(frames[index], index, (height, width))
    _check_size(height, width)
    rate = _check_fps(fps)
    _check_output(out_path)

    # 2. encode into a temp file beside the target
    temp = _create_temp_beside(out_path, ".part.mp4")
    command = build_command(width, height, rate, settings, temp)
    try:
        _run_ffmpeg(command, frames, settings.timeout_s, progress)

        # 3. prove the file is what we asked for before anyone can see it
        if temp.stat().st_size == 0:
            raise EncodeFailed(f"ffmpeg exited 0 but wrote an empty file\ncommand: {shlex.join(command)}",
                               code="encode_failed", details={"command": command, "returncode": 0})
        facts = probe_video(temp, timeout_s=settings.timeout_s)
        got = (facts["frames"], facts["width"], facts["height"])
        if got != (len(frames), width, height):
            raise EncodeFailed(
                f"the encoded file decodes to {got[0]} frames of {got[1]}x{got[2]}, expected "
                f"{len(frames)} frames of {width}x{height}\ncommand: {shlex.join(command)}",
                code="encode_mismatch", details={"command": command, "probe": facts},
            )

        # 4. publish atomically
        _commit(temp, out_path)
    finally:
        temp.unlink(missing_ok=True)  # no-op after a successful replace

    return EncodedVideo(
        path=out_path, width=width, height=height, fps=float(fps), frames=facts["frames"],
        codec=facts["codec"], pix_fmt=facts["pix_fmt"], profile=facts["profile"],
        bytes=facts["bytes"], seconds=time.perf_counter() - started,
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
