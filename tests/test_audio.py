"""The sound track: procedural ambiences and render_track (silence, ambience, the user's file).

Real numpy synthesis and the real bundled ffmpeg; short lengths keep it fast.
"""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from pipeline import audio as audio_module
from pipeline.audio import AMBIENCES, AMBIENCE_RMS_DBFS, make_ambience, render_track
from pipeline.errors import ConfigError, EncodeFailed, InputRejected
from pipeline.probe import ffmpeg_exe
from pipeline.settings import AudioSettings

SR = 48000
EXAMPLE_PHOTO = Path(__file__).resolve().parent.parent / "examples" / "astronaut.jpg"


def read_wav(path: Path) -> tuple[np.ndarray, int, int, int]:
    """(samples as float (N, channels), sample rate, channels, sample width) of a 16-bit WAV."""
    with wave.open(str(path), "rb") as wav:
        rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return data.reshape(-1, channels) / 32768.0, rate, channels, width


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """A 16-bit WAV from float samples (N,) mono or (N, 2)."""
    pcm = np.clip(np.rint(samples * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1 if pcm.ndim == 1 else pcm.shape[1])
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.tobytes())
    return path


def tone(seconds: float, rate: int, amplitude: float = 0.5, hz: float = 440.0) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * hz * np.arange(int(round(seconds * rate))) / rate)


def db(x: float) -> float:
    return 20 * np.log10(x)


def band_fraction(samples: np.ndarray, lo: float, hi: float) -> float:
    power = np.abs(np.fft.rfft(samples.mean(axis=1))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / SR)
    return float(power[(freqs >= lo) & (freqs < hi)].sum() / power.sum())


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".part." in p.name)


# --- ambiences --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def beds() -> dict[str, np.ndarray]:
    return {name: make_ambience(name, 3.0, SR, seed=7) for name in AMBIENCES}


@pytest.mark.parametrize("name", AMBIENCES)
def test_ambience_shape_range_and_determinism(beds, name):
    bed = beds[name]
    assert bed.dtype == np.float32 and bed.shape == (3 * SR, 2)
    assert np.isfinite(bed).all()
    assert np.array_equal(bed, make_ambience(name, 3.0, SR, seed=7))  # same seed: same samples
    assert not np.array_equal(bed, make_ambience(name, 3.0, SR, seed=8))
    assert not np.allclose(bed[:, 0], bed[:, 1])  # stereo, not two copies of one channel
    assert make_ambience(name, 0.5, 44100).shape == (22050, 2)


@pytest.mark.parametrize("name", AMBIENCES)
def test_ambience_loudness(beds, name):
    bed = beds[name]
    peak = float(np.abs(bed).max())
    rms = float(np.sqrt(np.mean(bed.astype(np.float64) ** 2)))
    assert db(peak) < -3.0
    # at the target RMS, or a little under it where the peak ceiling pulled the level down
    assert AMBIENCE_RMS_DBFS[name] - 3.0 < db(rms) <= AMBIENCE_RMS_DBFS[name] + 0.1
    assert rms > 1e-4  # not silence


def test_room_tone_is_much_quieter_than_the_other_beds(beds):
    def rms(x):
        return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))

    loudest_room = rms(beds["room"])
    for name in ("waves", "wind", "rain"):
        assert db(rms(beds[name])) - db(loudest_room) > 25


def test_ambiences_have_their_own_spectral_character(beds):
    # waves: a low rumble; rain: hiss and pings above 2 kHz; wind: in between, mostly 100 Hz..2 kHz
    assert band_fraction(beds["waves"], 0, 1000) > 0.9
    assert band_fraction(beds["rain"], 2000, SR / 2) > 0.8
    assert band_fraction(beds["wind"], 100, 2000) > 0.8
    centroids = {}
    for name, bed in beds.items():
        power = np.abs(np.fft.rfft(bed.mean(axis=1))) ** 2
        centroids[name] = float((np.fft.rfftfreq(len(bed), 1 / SR) * power).sum() / power.sum())
    assert centroids["waves"] < centroids["wind"] < centroids["rain"]


def test_waves_swell_slowly(beds):
    # 100 ms loudness over 3 s of waves moves by more than 6 dB (a swell), unlike steady noise
    windows = beds["waves"][: 30 * 4800].reshape(30, 4800, 2)
    loudness = db(np.sqrt((windows.astype(np.float64) ** 2).mean(axis=(1, 2))))
    assert loudness.max() - loudness.min() > 6


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"name": "thunder"}, "bad_ambience"),
        ({"seconds": 0}, "bad_duration"),
        ({"seconds": float("nan")}, "bad_duration"),
        ({"seconds": 10_000}, "bad_duration"),
        ({"seed": -1}, "bad_seed"),
        ({"sample_rate": 100}, "bad_sample_rate"),
    ],
)
def test_ambience_arguments_are_checked(kwargs, code):
    args = {"name": "rain", "seconds": 1.0, **kwargs}
    with pytest.raises(ConfigError) as info:
        make_ambience(**args)
    assert info.value.code == code


# --- render_track -----------------------------------------------------------------------------


def test_default_track_is_exact_silence(tmp_path):
    out = tmp_path / "track.wav"
    record = render_track(1.37, AudioSettings(), out)
    samples, rate, channels, width = read_wav(out)
    assert (rate, channels, width) == (48000, 2, 2)
    assert len(samples) == round(1.37 * 48000)
    assert not samples.any()
    assert record["kind"] == "silent" and record["procedural"] is False
    assert record["duration_s"] == pytest.approx(1.37)
    assert leftovers(tmp_path) == []


def test_default_none_writes_nothing(tmp_path):
    out = tmp_path / "track.wav"
    assert render_track(2.0, AudioSettings(default="none"), out) is None
    assert not out.exists()
    # ...but an asked-for sound is still rendered
    assert render_track(0.5, AudioSettings(default="none"), out, ambience="room")["kind"] == "ambience"


def test_ambience_track_is_faded_scaled_and_at_the_settings_rate(tmp_path):
    settings = AudioSettings(ambience="waves", fade_s=0.25, volume=0.5, sample_rate=44100)
    out = tmp_path / "track.wav"
    record = render_track(2.0, settings, out)
    samples, rate, _, _ = read_wav(out)
    assert rate == 44100 and len(samples) == 88200
    assert record == {"kind": "ambience", "name": "waves", "procedural": True, "seed": 0, "duration_s": 2.0,
                      "sample_rate": 44100, "channels": 2, "source_duration_s": 2.0, "padded_s": 0.0,
                      "fade_s": 0.25, "volume": 0.5, "clipped_samples": 0}
    bed = make_ambience("waves", 2.0, 44100, seed=0)
    middle = slice(22050, 66150)
    assert np.allclose(samples[middle], 0.5 * bed[middle], atol=2 / 32768)  # the gain
    assert np.abs(samples[:20]).max() < 0.01 and np.abs(samples[-20:]).max() < 0.01  # faded both ends


def test_file_shorter_than_the_story_is_faded_and_padded_with_silence(tmp_path):
    source = write_wav(tmp_path / "tune.wav", tone(1.0, 44100), 44100)  # mono, 44.1 kHz, 1 s
    out = tmp_path / "track.wav"
    record = render_track(2.5, AudioSettings(fade_s=0.1, volume=0.5), out, file=source)
    samples, rate, channels, _ = read_wav(out)
    assert (rate, channels, len(samples)) == (48000, 2, 120000)
    assert record["kind"] == "file" and record["name"] == "tune.wav" and record["procedural"] is False
    assert record["source_duration_s"] == pytest.approx(1.0, abs=0.01)
    assert record["padded_s"] == pytest.approx(1.5, abs=0.001) and record["fade_s"] == pytest.approx(0.1)
    assert np.array_equal(samples[:, 0], samples[:, 1])  # mono spread to both channels
    body = samples[12000:36000, 0]  # 0.25..0.75 s: past the fade-in, before the fade-out
    assert np.abs(body).max() == pytest.approx(0.25, abs=0.01)  # 0.5 amplitude x 0.5 volume
    assert np.abs(samples[:48, 0]).max() < 0.01  # fade in
    assert np.abs(samples[47950:48000, 0]).max() < 0.01  # faded out at the end of the sound...
    assert not samples[48100:].any()  # ...then silence to the story's end


def test_file_longer_than_the_story_is_trimmed_exactly(tmp_path):
    source = write_wav(tmp_path / "long.wav", np.stack([tone(3.0, SR), tone(3.0, SR, hz=220)], axis=1), SR)
    out = tmp_path / "track.wav"
    record = render_track(1.0, AudioSettings(fade_s=0.0), out, file=source)
    samples, _, _, _ = read_wav(out)
    assert len(samples) == SR and record["padded_s"] == 0.0 and record["fade_s"] == 0.0
    assert record["source_duration_s"] == pytest.approx(3.0, abs=0.01)
    assert np.allclose(samples[:, 0], tone(1.0, SR), atol=2 / 32768)  # left and right kept apart
    assert np.allclose(samples[:, 1], tone(1.0, SR, hz=220), atol=2 / 32768)


def test_compressed_file_decodes(tmp_path):
    wav = write_wav(tmp_path / "tune.wav", tone(1.0, SR), SR)
    mp3 = tmp_path / "tune.mp3"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(wav), "-c:a", "libmp3lame",
                    str(mp3)], check=True)
    record = render_track(0.5, AudioSettings(), tmp_path / "track.wav", file=mp3)
    samples, _, _, _ = read_wav(tmp_path / "track.wav")
    assert record["kind"] == "file" and len(samples) == SR // 2
    assert np.abs(samples[12000:13000]).max() == pytest.approx(0.5, abs=0.05)


def test_loud_volume_is_clipped_and_counted(tmp_path):
    source = write_wav(tmp_path / "tune.wav", tone(0.5, SR, amplitude=0.9), SR)
    record = render_track(0.5, AudioSettings(volume=4.0, fade_s=0.0), tmp_path / "t.wav", file=source)
    samples, _, _, _ = read_wav(tmp_path / "t.wav")
    assert record["clipped_samples"] > 0 and np.abs(samples).max() <= 1.0


def test_priority_file_then_ambience_then_settings(tmp_path):
    source = write_wav(tmp_path / "tune.wav", tone(0.5, SR), SR)
    both = AudioSettings(file=source, ambience="rain")
    out = tmp_path / "t.wav"
    assert render_track(0.5, AudioSettings(ambience="rain"), out, file=source, ambience="wind")["kind"] == "file"
    assert render_track(0.5, both, out, ambience="wind")["name"] == "wind"
    assert render_track(0.5, both, out)["kind"] == "file"
    assert render_track(0.5, AudioSettings(ambience="rain"), out)["name"] == "rain"


# --- the user's file is untrusted --------------------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _video_only(tmp_path: Path) -> Path:
    from pipeline.encode import encode_mp4
    from pipeline.settings import EncodeSettings

    out = tmp_path / "silent-film.mp4"
    encode_mp4(np.zeros((2, 64, 64, 3), np.uint8), out, 24, EncodeSettings(preset="veryfast"))
    return out


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda d: d / "missing.wav", "does not exist"),
        (lambda d: _write(d / "empty.wav", b""), "is empty"),
        (lambda d: _write(d / "notes.txt", b"just some text, no sound\n" * 20), "not a sound file"),
        (lambda d: _write(d / "fake.wav", b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40), "not a sound file"),
        (lambda d: _write(d / "photo.jpg", EXAMPLE_PHOTO.read_bytes()), "not a sound file"),
        (_video_only, "has no audio stream"),
        # ffmpeg would follow this script to other local files (it does without the format whitelist)
        (lambda d: _write(d / "script.wav", b"ffconcat version 1.0\nfile x.wav\n"), "not a sound file"),
    ],
    ids=["missing", "empty", "text", "broken-wav", "image", "video-only", "ffconcat"],
)
def test_unusable_files_are_rejected_precisely(tmp_path, make, words):
    write_wav(tmp_path / "x.wav", tone(0.2, SR), SR)
    source = make(tmp_path)
    out = tmp_path / "track.wav"
    with pytest.raises(InputRejected, match=words) as info:
        render_track(1.0, AudioSettings(), out, file=source)
    assert info.value.code == "bad_audio"
    assert str(tmp_path) not in info.value.message  # names the file, never the server's paths
    assert not out.exists() and leftovers(tmp_path) == []


def test_oversized_and_overlong_files_are_rejected(tmp_path, monkeypatch):
    source = write_wav(tmp_path / "tune.wav", tone(2.0, SR), SR)
    monkeypatch.setattr(audio_module, "MAX_SOURCE_BYTES", 1000)
    with pytest.raises(InputRejected, match="limit") as info:
        render_track(1.0, AudioSettings(), tmp_path / "t.wav", file=source)
    assert info.value.code == "bad_audio"
    monkeypatch.setattr(audio_module, "MAX_SOURCE_BYTES", 10**9)
    monkeypatch.setattr(audio_module, "MAX_SOURCE_SECONDS", 1.0)
    with pytest.raises(InputRejected, match="lasts") as info:
        render_track(1.0, AudioSettings(), tmp_path / "t.wav", file=source)
    assert info.value.code == "bad_audio"


def test_track_arguments_and_output_errors(tmp_path):
    with pytest.raises(ConfigError) as info:
        render_track(-1, AudioSettings(), tmp_path / "t.wav")
    assert info.value.code == "bad_duration"
    with pytest.raises(ConfigError) as info:
        render_track(1.0, AudioSettings(), tmp_path / "t.wav", ambience="thunder")
    assert info.value.code == "bad_ambience"
    with pytest.raises(EncodeFailed) as info:
        render_track(1.0, AudioSettings(), tmp_path / "no" / "dir" / "t.wav")
    assert info.value.code == "output_unwritable"
    assert list(tmp_path.iterdir()) == []
