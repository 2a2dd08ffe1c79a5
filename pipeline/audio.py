"""The story's sound track: silence, a procedural ambience, or the user's own audio file, rendered
to a 16-bit stereo WAV of exactly the story's length, which ``pipeline.encode`` then muxes.

Why it looks like this:
- A story gets a silent track by default (``audio.default: silent``), so every output has the same
  streams whatever was asked; ``audio.default: none`` leaves the track out. Silence costs ~1 kB/s.
- Ambiences are synthesised in numpy from seeded noise, so nothing is shipped and there is no
  sample licence to track: noise shaped in the frequency domain (circular FFT filtering, so a bed
  has no start-up transient and loops without a seam) and moved by slow random control curves.
  The same name and seed always give the same samples.
- A user's file is untrusted input for the bundled ffmpeg: only a local file (protocol whitelist
  ``file``) in one of a few audio containers (format whitelist: no playlists that pull in other
  files or URLs); its size and stated length are capped before decoding, and only as much as the
  story needs is decoded.
- The WAV is written beside its target and moved into place: never a partial file.
"""

from __future__ import annotations

import math
import subprocess
import wave
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.errors import ConfigError, EncodeFailed, InputRejected
from pipeline.probe import ffmpeg_exe, parse_ffmpeg_info
from pipeline.settings import AudioSettings
from pipeline.storage import create_temp_beside, publish

AMBIENCES = ("waves", "wind", "rain", "room")
MAX_TRACK_SECONDS = 600.0  # TikTok's 10 minutes, the longest story a preset allows
MAX_SOURCE_BYTES = 256 * 1024 * 1024
MAX_SOURCE_SECONDS = 2 * 3600.0
DECODE_TIMEOUT_S = 60.0
# ffmpeg demuxers a user's sound may come in: WAV/W64, MP3, ADTS AAC, Ogg (Vorbis, Opus, FLAC), FLAC,
# MP4/M4A/MOV, Matroska/WebM, AIFF, CAF. Names match ffmpeg's ("mov" stands for "mov,mp4,m4a,...").
SOURCE_FORMATS = "wav,w64,mp3,aac,ogg,flac,mov,matroska,aiff,caf"
SOURCE_FORMAT_NAMES = "WAV, MP3, AAC/M4A, Ogg/Opus, FLAC, AIFF, CAF, MP4/MOV or WebM/MKV with sound"

# Loudness of each bed: RMS in dBFS, then never a peak above CEILING_DBFS. Room tone sits ~30 dB
# under the others: it should only be noticed when it is missing.
AMBIENCE_RMS_DBFS = {"waves": -20.0, "wind": -22.0, "rain": -24.0, "room": -52.0}
CEILING_DBFS = -4.0

Synth = Callable[[np.random.Generator, int, int], np.ndarray]


# ---------------------------------------------------------------------------------------------
# building blocks: shaped noise and slow control curves


def _freqs(n: int, sample_rate: float) -> np.ndarray:
    return np.fft.rfftfreq(n, 1.0 / sample_rate).astype(np.float32)


def _spectrum(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.fft.rfft(rng.standard_normal(n, dtype=np.float32))


def _shape(spectrum: np.ndarray, gain: np.ndarray, n: int) -> np.ndarray:
    """White noise (given as its spectrum) filtered by a magnitude response, at unit RMS."""
    out = np.fft.irfft(spectrum * gain, n).astype(np.float32)
    return out / (float(out.std()) or 1.0)


def _lowpass(f: np.ndarray, corner: float, order: int = 2) -> np.ndarray:
    return 1.0 / np.sqrt(1.0 + (f / corner) ** (2 * order))


def _highpass(f: np.ndarray, corner: float, order: int = 2) -> np.ndarray:
    ratio = (f / corner) ** order
    return ratio / np.sqrt(1.0 + ratio**2)


def _bandpass(f: np.ndarray, centre: float, q: float) -> np.ndarray:
    """Magnitude of a second-order band-pass (1 at ``centre``, bandwidth centre / q)."""
    x = q * (f / centre - centre / np.maximum(f, 1e-3))
    return 1.0 / np.sqrt(1.0 + x * x)


def _control(rng: np.random.Generator, n: int, sample_rate: int, cutoff_hz: float, rate: int = 100) -> np.ndarray:
    """A slow random curve at audio rate: zero mean, unit RMS, nothing faster than ``cutoff_hz``.
    Drawn at ``rate`` Hz and interpolated, which is cheap and smooth enough for envelopes."""
    m = max(int(math.ceil(n / sample_rate * rate)) + 2, 8)
    slow = np.fft.irfft(_spectrum(rng, m) * _lowpass(_freqs(m, rate), cutoff_hz, 2), m)
    slow = (slow - slow.mean()) / (float(slow.std()) or 1.0)
    return np.interp(np.arange(n) * (rate / sample_rate), np.arange(m), slow).astype(np.float32)


def _stereo(mid: np.ndarray, side: np.ndarray, width: float) -> np.ndarray:
    return np.stack([mid + width * side, mid - width * side], axis=1)


# ---------------------------------------------------------------------------------------------
# the four beds (unnormalised; make_ambience sets the level)


def _waves(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Low rumble that swells and falls every 6-9 s, with a little foam hiss on each crest."""
    f = _freqs(n, sr)
    body_gain = _lowpass(f, 350.0, 2) * _highpass(f, 30.0, 1)
    foam_gain = _bandpass(f, 1500.0, 0.7)
    period = rng.uniform(6.0, 9.0)
    speed = np.clip(1.0 + 0.25 * _control(rng, n, sr, 0.05), 0.3, None) / period  # swells per second
    phase = 2.0 * np.pi * np.cumsum(speed, dtype=np.float64) / sr + rng.uniform(0.0, 2.0 * np.pi)
    swell = ((0.5 - 0.5 * np.cos(phase)) ** 2).astype(np.float32)
    channels = []
    for delay_s in (0.0, 0.35):  # the swell reaches one ear a moment later: a wave running along the shore
        crest = np.roll(swell, int(delay_s * sr))
        body = _shape(_spectrum(rng, n), body_gain, n)
        foam = _shape(_spectrum(rng, n), foam_gain, n)
        channels.append(body * (0.12 + 0.88 * crest) + 0.12 * foam * crest**2)
    return np.stack(channels, axis=1)


def _wind(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Band-passed noise whose centre wanders between ~150 Hz and ~1.6 kHz, under gusts."""
    f = _freqs(n, sr)
    centres = np.geomspace(150.0, 1600.0, 7)
    wander = np.clip(np.log2(400.0) + 0.9 * _control(rng, n, sr, 0.08), np.log2(150.0), np.log2(1600.0))
    weights = [np.exp(-0.5 * ((np.log2(c) - wander) / 0.45) ** 2).astype(np.float32) for c in centres]
    norm = np.sqrt(sum(w * w for w in weights))
    gust = 0.25 + 0.75 / (1.0 + np.exp(-1.6 * _control(rng, n, sr, 0.25)))
    rumble_gain = _lowpass(f, 80.0, 2) * _highpass(f, 20.0, 1)
    channels = []
    for _ in range(2):
        spectrum = _spectrum(rng, n)
        howl = sum(w * _shape(spectrum, _bandpass(f, c, 4.0), n) for w, c in zip(weights, centres)) / norm
        channels.append(gust * (howl + 0.3 * gust * _shape(spectrum, rumble_gain, n)))
    return np.stack(channels, axis=1).astype(np.float32)


def _rain(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A bright steady shower (noise mostly above ~2.5 kHz) and ~35 droplets a second, each a short ping."""
    f = _freqs(n, sr)
    # mostly hiss above 2.5 kHz, with a quieter patter band around 800 Hz for body
    shower_gain = _highpass(f, 2500.0, 2) * _lowpass(f, 12000.0, 1) + 0.6 * _bandpass(f, 800.0, 0.8)
    level = 0.85 + 0.15 * _control(rng, n, sr, 0.1)
    out = _stereo(_shape(_spectrum(rng, n), shower_gain, n) * level,
                  _shape(_spectrum(rng, n), shower_gain, n) * level, 0.8)
    count = int(rng.poisson(35.0 * n / sr))
    starts = rng.integers(0, n, count)
    pitches = rng.uniform(2500.0, min(7000.0, 0.45 * sr), count)
    decays = rng.uniform(0.002, 0.006, count)
    amps = 2.5 * np.exp(np.clip(rng.normal(0.0, 0.5, count), -1.0, 1.0))
    pans = rng.uniform(0.15, 0.85, count)
    for start, pitch, decay, amp, pan in zip(starts, pitches, decays, amps, pans):
        t = np.arange(min(int(6 * decay * sr), n - start)) / sr
        ping = (amp * np.exp(-t / decay) * np.sin(2.0 * np.pi * pitch * t)).astype(np.float32)
        out[start:start + len(ping), 0] += ping * math.sqrt(1.0 - pan)
        out[start:start + len(ping), 1] += ping * math.sqrt(pan)
    return out


def _room(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Room tone: pink noise rolled off above ~3 kHz and below ~25 Hz, drifting by a dB or so."""
    f = _freqs(n, sr)
    gain = np.sqrt(20.0 / np.maximum(f, 20.0)) * _lowpass(f, 3000.0, 1) * _highpass(f, 25.0, 2)
    drift = 1.0 + 0.1 * _control(rng, n, sr, 0.05)
    return _stereo(_shape(_spectrum(rng, n), gain, n) * drift, _shape(_spectrum(rng, n), gain, n) * drift, 0.8)


_SYNTHS: dict[str, Synth] = {"waves": _waves, "wind": _wind, "rain": _rain, "room": _room}


def _sample_count(seconds: float, sample_rate: int) -> int:
    return int(round(seconds * sample_rate))


def _check_duration(seconds: float, what: str) -> float:
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number of seconds, got {seconds!r}", code="bad_duration") from None
    if not 0 < value <= MAX_TRACK_SECONDS:  # also rejects NaN
        raise ConfigError(f"{what} must be in (0, {MAX_TRACK_SECONDS:g}] seconds, got {seconds!r}",
                          code="bad_duration")
    return value


def make_ambience(name: str, seconds: float, sample_rate: int = 48000, seed: int = 0) -> np.ndarray:
    """A procedural ambience bed: float32, shape (round(seconds * sample_rate), 2), in [-1, 1].

    ``name`` is one of ``AMBIENCES``. Levels: RMS ``AMBIENCE_RMS_DBFS[name]``, peaks never above
    ``CEILING_DBFS``. Deterministic: the same name, length, rate and seed give identical samples.
    """
    if name not in AMBIENCES:
        raise ConfigError(f"unknown ambience {name!r}; choose one of: {', '.join(AMBIENCES)}", code="bad_ambience")
    seconds = _check_duration(seconds, "the ambience length")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"the ambience seed must be a whole number >= 0, got {seed!r}", code="bad_seed")
    if not 8000 <= int(sample_rate) <= 192000:
        raise ConfigError(f"sample_rate must be 8000..192000 Hz, got {sample_rate!r}", code="bad_sample_rate")
    n = max(_sample_count(seconds, int(sample_rate)), 1)
    rng = np.random.default_rng([int(seed), AMBIENCES.index(name)])  # each bed its own stream per seed
    bed = _SYNTHS[name](rng, n, int(sample_rate)).astype(np.float64)
    bed *= 10 ** (AMBIENCE_RMS_DBFS[name] / 20) / (math.sqrt(float(np.mean(bed**2))) or 1.0)
    ceiling = 10 ** (CEILING_DBFS / 20)
    peak = float(np.abs(bed).max())
    if peak > ceiling:
        bed *= ceiling / peak
    return bed.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the user's file


def _ffmpeg_input(path: Path) -> list[str]:
    """Input options that keep ffmpeg on this one local file and on audio containers."""
    return ["-protocol_whitelist", "file", "-format_whitelist", SOURCE_FORMATS, "-i", f"file:{path.resolve()}"]


def _rejected(path: Path, why: str) -> InputRejected:
    return InputRejected(f"the audio file {path.name!r} {why}", code="bad_audio", details={"file": path.name})


def _ffmpeg_reason(stderr: str) -> str:
    """ffmpeg's own reason, without the paths it names (client messages carry no server paths)."""
    for line in reversed(stderr.splitlines()):
        if "Error opening input:" in line:
            return line.split("Error opening input:", 1)[1].strip()
    lines = [line.split("]", 1)[-1].strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"


def _run(command: list[str], path: Path) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(command, capture_output=True, timeout=DECODE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise _rejected(path, f"took longer than {DECODE_TIMEOUT_S:g} s to read; send a plain audio file") from exc


def _decode_file(path: Path, seconds: float, sample_rate: int) -> tuple[np.ndarray, float]:
    """The first ``seconds`` of the file's first audio stream as float32 stereo at ``sample_rate``,
    and the length of the whole source in seconds. Anything unusable -> InputRejected(bad_audio)."""
    if not path.is_file():
        raise _rejected(path, "does not exist or is not a file")
    size = path.stat().st_size
    if size == 0:
        raise _rejected(path, "is empty")
    if size > MAX_SOURCE_BYTES:
        raise _rejected(path, f"is {size / 1e6:.0f} MB; the limit is {MAX_SOURCE_BYTES / 1e6:.0f} MB "
                              "(a story's sound track needs a few MB: cut or compress it)")
    header = _run([ffmpeg_exe(), "-hide_banner", "-nostdin", *_ffmpeg_input(path)], path)
    stderr = header.stderr.decode("utf-8", "replace")
    if "Input #0" not in stderr:
        raise _rejected(path, f"is not a sound file this service reads (ffmpeg: {_ffmpeg_reason(stderr)}); "
                              f"send {SOURCE_FORMAT_NAMES}")
    info = parse_ffmpeg_info(stderr)
    if info["audio"] is None:
        found = "a video stream only" if info["video"] else "no streams at all"
        raise _rejected(path, f"has no audio stream (ffmpeg found {found})")
    if info["duration"] is not None and info["duration"] > MAX_SOURCE_SECONDS:
        raise _rejected(path, f"says it lasts {info['duration'] / 3600:.1f} hours; the limit is "
                              f"{MAX_SOURCE_SECONDS / 3600:g} hours")
    # Mono is decoded as mono and copied to both sides (ffmpeg's own upmix lowers it by 3 dB);
    # more than two channels are mixed down by ffmpeg.
    channels = 1 if info["audio"]["channels"] == 1 else 2
    decode = _run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-t", f"{seconds:.6f}",
                   *_ffmpeg_input(path), "-map", "0:a:0", "-ac", str(channels), "-ar", str(sample_rate),
                   "-f", "f32le", "pipe:1"], path)
    usable = len(decode.stdout) // (4 * channels) * (4 * channels)
    samples = np.frombuffer(decode.stdout[:usable], dtype="<f4").reshape(-1, channels)
    samples = np.repeat(samples, 2 // channels, axis=1)
    if decode.returncode != 0 or len(samples) == 0:
        reason = _ffmpeg_reason(decode.stderr.decode("utf-8", "replace"))
        raise _rejected(path, f"has an audio stream that does not decode (ffmpeg: {reason})")
    samples = np.clip(np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
    source_seconds = info["duration"] if info["duration"] is not None else len(samples) / sample_rate
    return samples, float(source_seconds)


def check_audio_bytes(data: bytes, settings: AudioSettings) -> None:
    """Refuse (InputRejected, bad_audio) a sound file that would fail the encode stage: called when
    a job is submitted, so a bad file never waits behind a generation. The bytes go to a private
    temp file that is removed at once."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="alive-audio-") as folder:
        path = Path(folder) / "sound"
        path.write_bytes(data)
        try:
            _decode_file(path, 1.0, settings.sample_rate)
        except InputRejected as exc:  # the temp name means nothing to the sender
            raise InputRejected(exc.message.replace("the audio file 'sound'", "the sound file"), code=exc.code) from None


# ---------------------------------------------------------------------------------------------
# the track


def _fit(content: np.ndarray, n: int, fade_s: float, volume: float, sample_rate: int) -> tuple[np.ndarray, float, int]:
    """Trim or pad ``content`` to ``n`` frames: raised-cosine fades at its start and at the end of
    the sound (not of the padding), gain, clipping. Returns (samples, fade used, samples clipped)."""
    content = content[:n].astype(np.float64)
    m = len(content)
    fade = min(fade_s, m / sample_rate / 2)
    k = int(round(fade * sample_rate))
    if k > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(k) + 0.5) / k)
        content[:k] *= ramp[:, None]
        content[m - k:] *= ramp[::-1, None]
    content *= volume
    clipped = int(np.count_nonzero(np.abs(content) > 1.0))
    out = np.zeros((n, 2), dtype=np.float32)
    out[:m] = np.clip(content, -1.0, 1.0)
    return out, k / sample_rate, clipped


def _write_wav(samples: np.ndarray, sample_rate: int, out_wav: Path) -> None:
    pcm = np.clip(np.rint(samples * 32767.0), -32768, 32767).astype("<i2")
    try:
        temp = create_temp_beside(out_wav, ".part.wav")
    except OSError as exc:
        raise EncodeFailed(f"cannot write the sound track {out_wav}: {exc.strerror} "
                           "(check the directory exists and is writable)", code="output_unwritable") from exc
    try:
        with wave.open(str(temp), "wb") as wav:
            wav.setnchannels(2)
            wav.setsampwidth(2)
            wav.setframerate(sample_rate)
            wav.writeframes(pcm.tobytes())
        publish(temp, out_wav)
    except OSError as exc:
        raise EncodeFailed(f"cannot write the sound track {out_wav}: {exc.strerror or exc}",
                           code="output_unwritable") from exc
    finally:
        temp.unlink(missing_ok=True)


def render_track(duration_s: float, settings: AudioSettings, out_wav: Path, *, file: Path | None = None,
                 ambience: str | None = None) -> dict[str, Any] | None:
    """Write the story's sound track to ``out_wav``: a 16-bit stereo WAV at ``settings.sample_rate``
    of exactly ``round(duration_s * sample_rate)`` frames. Returns what was done (JSON-able), or
    None, writing nothing, when nothing was asked and ``settings.default`` is "none".

    The sound is, first match wins: ``file``, ``ambience``, ``settings.file``, ``settings.ambience``,
    else silence. A file is trimmed to the story, faded in and out over ``settings.fade_s`` and
    padded with silence when shorter; an ambience is faded likewise; both get ``settings.volume``.
    """
    seconds = _check_duration(duration_s, "the track length")
    sample_rate = settings.sample_rate
    n = _sample_count(seconds, sample_rate)
    out_wav = Path(out_wav)
    source_file = file if file is not None else (None if ambience is not None else settings.file)
    bed = ambience if ambience is not None else (None if file is not None else settings.ambience)
    record: dict[str, Any] = {"duration_s": n / sample_rate, "sample_rate": sample_rate, "channels": 2}

    if source_file is not None:
        path = Path(source_file)
        content, source_seconds = _decode_file(path, seconds, sample_rate)
        samples, fade, clipped = _fit(content, n, settings.fade_s, settings.volume, sample_rate)
        record |= {"kind": "file", "name": path.name, "procedural": False, "source_duration_s": source_seconds,
                   "padded_s": round((n - min(len(content), n)) / sample_rate, 6)}
    elif bed is not None:
        content = make_ambience(bed, seconds, sample_rate, seed=0)
        samples, fade, clipped = _fit(content, n, settings.fade_s, settings.volume, sample_rate)
        record |= {"kind": "ambience", "name": bed, "procedural": True, "seed": 0, "source_duration_s": seconds,
                   "padded_s": 0.0}
    elif settings.default == "none":
        return None
    else:
        samples, fade, clipped = np.zeros((n, 2), dtype=np.float32), 0.0, 0
        record |= {"kind": "silent", "name": None, "procedural": False, "source_duration_s": None, "padded_s": 0.0}
    if record["kind"] != "silent":
        record |= {"fade_s": fade, "volume": settings.volume, "clipped_samples": clipped}
    else:
        record |= {"fade_s": 0.0, "volume": None, "clipped_samples": 0}
    _write_wav(samples, sample_rate, out_wav)
    return record
