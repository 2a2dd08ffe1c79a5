"""Inspect a video (MP4 or WebM) without ffprobe.

imageio-ffmpeg bundles ``ffmpeg`` but no ``ffprobe``, so the stream facts come from the text that
``ffmpeg -i`` prints, the frame count from an actual decode (``-f null``), which also proves the
file is readable end to end, and the audio duration from decoding the audio track and counting its
samples (the container's duration is the longest stream's, and it rounds). Where the container
layout matters (is ``moov`` before ``mdat`` so a player can start before the download ends? where is
``mdat`` so a test can flip a byte in it?) we walk the top-level ISO-BMFF boxes in Python: that is
exact, and ffmpeg's log does not say it.
"""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np

from pipeline.errors import EncodeFailed

DEFAULT_PROBE_TIMEOUT_S = 120.0


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg (no system ffmpeg needed)."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def mp4_top_level_boxes(path: str | Path) -> list[tuple[str, int, int]]:
    """List the top-level boxes of an MP4 as ``(type, offset, size)``.

    ``offset`` is where the box header starts and ``size`` is the whole box, header included, so the
    payload of a box lies in ``[offset + header, offset + size)`` (header 8 bytes, 16 with a 64-bit
    size). A box that claims more bytes than the file holds raises ``EncodeFailed`` (code
    ``mp4_malformed``): a truncated file must not look fine.
    """
    path = Path(path)
    boxes: list[tuple[str, int, int]] = []
    with path.open("rb") as fh:
        file_size = fh.seek(0, 2)
        offset = 0
        while offset < file_size:
            fh.seek(offset)
            header = fh.read(8)
            if len(header) < 8:
                raise EncodeFailed(
                    f"{path} is not a valid MP4: {file_size - offset} stray bytes at offset {offset} "
                    "where a box header was expected",
                    code="mp4_malformed",
                )
            size, raw_type = struct.unpack(">I4s", header)
            box_type = raw_type.decode("latin-1")
            if size == 1:  # 64-bit "largesize" follows the type
                large = fh.read(8)
                if len(large) < 8:
                    raise EncodeFailed(f"{path} is not a valid MP4: truncated box header at {offset}",
                                       code="mp4_malformed")
                (size,) = struct.unpack(">Q", large)
                min_size = 16
            elif size == 0:  # box runs to the end of the file
                size = file_size - offset
                min_size = 8
            else:
                min_size = 8
            if size < min_size or offset + size > file_size:
                raise EncodeFailed(
                    f"{path} is not a valid MP4: box {box_type!r} at offset {offset} claims {size} bytes "
                    f"but the file has {file_size - offset} bytes from there (truncated or not an MP4)",
                    code="mp4_malformed",
                )
            boxes.append((box_type, offset, size))
            offset += size
    return boxes


def moov_before_mdat(path: str | Path) -> bool:
    """True when the index (``moov``) precedes the media data (``mdat``): "faststart" playback."""
    order = [box_type for box_type, _, _ in mp4_top_level_boxes(path)]
    return "moov" in order and "mdat" in order and order.index("moov") < order.index("mdat")


def _split_top_level(text: str) -> list[str]:
    """Split a stream description on commas that are not inside parentheses or brackets."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return parts


_STREAM_RE = re.compile(r"^\s*Stream #\d+:\d+\S*: (Video|Audio|Subtitle|Data|Attachment): (.*)$")
_DURATION_RE = re.compile(r"Duration: (\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
_SIZE_RE = re.compile(r"^(\d+)x(\d+)")
_FPS_RE = re.compile(r"^([\d.]+)(k?) fps$")
_PIX_FMT_RE = re.compile(r"^([a-z0-9_]+)(?:\((.*)\))?$")
_RATE_RE = re.compile(r"^(\d+) Hz$")
_CHANNELS_RE = re.compile(r"^(\d+) channels")
# ffmpeg's names for the usual channel layouts (an optional "(side)" style suffix is dropped first).
_LAYOUT_CHANNELS = {"mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "4.0": 4, "quad": 4,
                    "4.1": 5, "5.0": 5, "5.1": 6, "6.0": 6, "6.1": 7, "7.0": 7, "7.1": 8}


def _parse_video_description(desc: str) -> dict[str, Any]:
    """Read codec, profile, pix_fmt, size and fps from e.g.
    ``h264 (High) (avc1 / 0x31637661), yuv420p(tv, bt709, progressive), 576x1024 [SAR 1:1], 24 fps``.
    """
    parts = _split_top_level(desc)
    head = parts[0]
    codec = head.split(" ", 1)[0]
    profile = None
    for group in re.findall(r"\(([^()]*)\)", head):
        # "(avc1 / 0x31637661)" is the codec tag and "(libdav1d)" the decoder ffmpeg chose, as in
        # "av1 (libdav1d) (Main) (av01 / 0x31307661)": neither is the profile.
        if " / 0x" not in group and not group.startswith("lib"):
            profile = group
            break
    info: dict[str, Any] = {"codec": codec, "profile": profile, "pix_fmt": None, "color": None,
                            "width": None, "height": None, "fps": None}
    for part in parts[1:]:
        size = _SIZE_RE.match(part)
        fps = _FPS_RE.match(part)
        if size and info["width"] is None:
            info["width"], info["height"] = int(size.group(1)), int(size.group(2))
        elif fps:
            info["fps"] = float(fps.group(1)) * (1000 if fps.group(2) else 1)
        elif info["pix_fmt"] is None and info["width"] is None:
            pix = _PIX_FMT_RE.match(part)
            if pix:
                info["pix_fmt"], info["color"] = pix.group(1), pix.group(2)
    return info


def _parse_audio_description(desc: str) -> dict[str, Any]:
    """Read codec, sample rate and channels from e.g.
    ``aac (LC) (mp4a / 0x6134706D), 48000 Hz, stereo, fltp, 128 kb/s`` or ``opus, 48000 Hz, 5.1(side), fltp``.
    ``channels`` is None for a layout this table does not know (``channel_layout`` keeps the text).
    """
    parts = _split_top_level(desc)
    info: dict[str, Any] = {"codec": parts[0].split(" ", 1)[0], "sample_rate": None, "channels": None,
                            "channel_layout": None}
    for part in parts[1:]:
        rate = _RATE_RE.match(part)
        count = _CHANNELS_RE.match(part)
        if rate:
            info["sample_rate"] = int(rate.group(1))
        elif info["sample_rate"] is not None and info["channel_layout"] is None:  # the part after "Hz"
            info["channel_layout"] = part
            info["channels"] = int(count.group(1)) if count else _LAYOUT_CHANNELS.get(part.split("(", 1)[0])
    return info


def parse_ffmpeg_info(stderr: str) -> dict[str, Any]:
    """Turn the input description ``ffmpeg -i`` prints into facts about the first video stream and
    the first audio stream (``None`` where the file has no such stream)."""
    input_section = stderr.split("Stream mapping:", 1)[0]  # ignore the description of the output
    video: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    for line in input_section.splitlines():
        match = _STREAM_RE.match(line)
        if not match:
            continue
        if match.group(1) == "Audio" and audio is None:
            audio = _parse_audio_description(match.group(2))
        elif match.group(1) == "Video" and video is None:
            video = _parse_video_description(match.group(2))
    duration = None
    dur = _DURATION_RE.search(input_section)
    if dur:
        duration = int(dur.group(1)) * 3600 + int(dur.group(2)) * 60 + float(dur.group(3))
    return {"video": video, "audio": audio, "has_audio": audio is not None, "duration": duration}


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def probe_video(path: str | Path, timeout_s: float = DEFAULT_PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Describe a video file: codec, profile, pix_fmt, width, height, fps, frames, duration,
    has_audio, audio, moov_before_mdat (plus color, the pix_fmt's detail, and bytes).

    ``frames`` is counted by decoding the first video stream completely, so a file that probes
    fine here is playable to its last frame by ffmpeg. ``audio`` is None without an audio track,
    else ``{codec, sample_rate, channels, channel_layout, duration}`` with ``duration`` counted from
    the decoded samples (encoder priming and padding already trimmed, as a player plays it).
    Unreadable files raise ``EncodeFailed`` (code ``unreadable_video``) with ffmpeg's own words.
    """
    path = Path(path)
    if not path.is_file():
        raise EncodeFailed(f"cannot probe {path}: no such file", code="unreadable_video")
    # One run gives both: the input description on stderr, the decoded frame count on stdout.
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-progress", "pipe:1",
               "-i", str(path), "-map", "0:v:0", "-f", "null", "-"]
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise EncodeFailed(f"probing {path} took longer than {timeout_s} s", code="probe_timeout") from exc
    stderr = done.stderr.decode("utf-8", "replace")
    facts = parse_ffmpeg_info(stderr)
    frames = [int(v) for v in re.findall(r"^frame=(\d+)$", done.stdout.decode("ascii", "replace"), re.M)]
    if done.returncode != 0 or facts["video"] is None or not frames:
        raise EncodeFailed(
            f"{path} is not a readable video (ffmpeg exit {done.returncode}); ffmpeg said:\n{_tail(stderr)}",
            code="unreadable_video",
            details={"stderr_tail": _tail(stderr), "returncode": done.returncode},
        )
    audio = facts["audio"]
    if audio is not None:
        audio = {**audio, "duration": _decoded_audio_seconds(path, audio["sample_rate"], timeout_s)}
    try:
        faststart = moov_before_mdat(path)
    except EncodeFailed:
        faststart = False  # not an ISO-BMFF file (e.g. a .webm): the question does not apply
    return {
        **facts["video"],
        "frames": frames[-1],
        "duration": facts["duration"],
        "has_audio": facts["has_audio"],
        "audio": audio,
        "moov_before_mdat": faststart,
        "bytes": path.stat().st_size,
    }


def _decoded_audio_seconds(path: Path, sample_rate: int | None, timeout_s: float) -> float:
    """Decode the first audio stream to mono 16-bit PCM at its own rate and count the samples."""
    if not sample_rate:
        raise EncodeFailed(f"{path}: the audio stream's sample rate is not stated", code="unreadable_video")
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path),
               "-map", "0:a:0", "-ac", "1", "-ar", str(sample_rate), "-f", "s16le", "-"]
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise EncodeFailed(f"decoding the audio of {path} took longer than {timeout_s} s",
                           code="probe_timeout") from exc
    if done.returncode != 0:
        stderr = done.stderr.decode("utf-8", "replace")
        raise EncodeFailed(f"the audio track of {path} does not decode; ffmpeg said:\n{_tail(stderr)}",
                           code="unreadable_video", details={"stderr_tail": _tail(stderr)})
    return len(done.stdout) / 2 / sample_rate


def decode_frames(path: str | Path, width: int, height: int,
                  timeout_s: float = DEFAULT_PROBE_TIMEOUT_S) -> np.ndarray:
    """Decode every frame of the first video stream to uint8 RGB, shape (N, height, width, 3).

    Width and height come from ``probe_video``; they fix the size of the raw frames read back.
    """
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path),
               "-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-"]
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise EncodeFailed(f"decoding {path} took longer than {timeout_s} s", code="probe_timeout") from exc
    frame_bytes = width * height * 3
    if done.returncode != 0 or len(done.stdout) % frame_bytes:
        stderr = done.stderr.decode("utf-8", "replace")
        raise EncodeFailed(f"could not decode {path}; ffmpeg said:\n{_tail(stderr)}", code="unreadable_video")
    return np.frombuffer(done.stdout, dtype=np.uint8).reshape(-1, height, width, 3)
