"""A perceptual fingerprint of a video (or an image): finds a story again by its content.

The watermark (``pipeline/watermark.py``) carries the credential id; this fingerprint, stored with
the manifest, confirms a recovered id by content (and finds a manifest when the watermark is gone).

How it works:
- ``SAMPLES`` frames are taken at fixed *fractions of the duration* (the middles of ``SAMPLES``
  equal slices), so a copy at another frame rate (30 -> 24 or 15 fps) samples the same moments.
- Each sampled frame -> its luma (BT.601) on the centre region (``CENTRE`` of each side, the
  middle 80 %): a centre crop of up to ~10 % still covers nearly the same pixels, and the visible
  label in a corner stays outside. The region is shrunk (area average) to 32x32, DCT-transformed,
  and the 8x8 lowest frequencies are compared with their median: a 64-bit pHash, 16 hex digits.
  Low frequencies survive re-encoding, downscaling, brightness / contrast / gamma changes; the
  median split makes the bits independent of overall brightness and contrast.
- ``similarity`` is 1 - the mean Hamming distance / 64 over the aligned samples (1.0 identical,
  ~0.5 unrelated). ``MATCH_THRESHOLD`` comes from measurements (benchmarks/watermark_bench.py,
  benchmarks/RESULTS.md): every attacked copy of a story scored above it, every different video
  below it.

A 256-bit variant (16x16 of a 64x64 DCT) was measured too and separated worse: its higher
frequencies move under a 10 % crop (see RESULTS.md). Only numpy and OpenCV are used; 8 sampled
1080x1920 frames take a few milliseconds.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

__all__ = ["ALGORITHM", "MATCH_THRESHOLD", "SAMPLES", "fingerprint", "frame_hash", "sample_indices", "similarity"]

ALGORITHM = "com.alive.fingerprint.1"
SAMPLES = 8  # frames hashed per video
CENTRE = 0.8  # the middle 80 % of each side is hashed
HASH_SIZE = 8  # 8x8 DCT coefficients -> 64 bits
DCT_SIZE = 32  # the region is shrunk to 32x32 before the DCT
# Measured (benchmarks/RESULTS.md, "fingerprint"): attacked copies of a story scored >= 0.82 against
# it (10 % crop left at its size: the lowest), different videos <= 0.70.
MATCH_THRESHOLD = 0.76


def sample_indices(count: int, samples: int = SAMPLES) -> list[int]:
    """Frame indices at the middles of ``samples`` equal slices of ``count`` frames (all when fewer)."""
    if count <= 0:
        return []
    if count <= samples:
        return list(range(count))
    return [min(count - 1, int((i + 0.5) * count / samples)) for i in range(samples)]


def _luma(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return frame.astype(np.float32)
    if frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise ValueError(f"a frame must be (H, W), (H, W, 3) RGB or (H, W, 4) RGBA, got shape {frame.shape}")
    code = cv2.COLOR_RGB2GRAY if frame.shape[2] == 3 else cv2.COLOR_RGBA2GRAY
    return cv2.cvtColor(np.ascontiguousarray(frame), code).astype(np.float32)


def _centre(frame: np.ndarray, centre: float) -> np.ndarray:
    h, w = frame.shape[:2]
    dy, dx = round(h * (1 - centre) / 2), round(w * (1 - centre) / 2)
    return frame[dy:h - dy, dx:w - dx]


def _bits(frame: np.ndarray, hash_size: int = HASH_SIZE, dct_size: int = DCT_SIZE,
          centre: float = CENTRE) -> np.ndarray:
    if frame.dtype != np.uint8 and frame.dtype != np.float32:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    region = _centre(frame, centre)
    if region.shape[0] < 2 or region.shape[1] < 2:
        raise ValueError(f"a frame of {frame.shape[1]}x{frame.shape[0]} is too small to fingerprint")
    # Shrink first (area average: every pixel counts, nothing aliases), then take the luma of 32x32.
    small = cv2.resize(np.ascontiguousarray(region), (dct_size, dct_size), interpolation=cv2.INTER_AREA)
    low = cv2.dct(_luma(small))[:hash_size, :hash_size].ravel()
    return low > np.median(low)


def _hex(bits: np.ndarray) -> str:
    return np.packbits(bits.astype(np.uint8)).tobytes().hex()


def frame_hash(frame: np.ndarray) -> str:
    """The 64-bit pHash (16 hex digits) of one RGB (or grey) uint8 frame's centre region."""
    return _hex(_bits(np.asarray(frame)))


def fingerprint(frames: Sequence[np.ndarray] | np.ndarray) -> list[str]:
    """Hashes of ``SAMPLES`` frames sampled at fixed fractions of the duration, hex strings.

    ``frames``: (N, H, W, 3) uint8 RGB, a sequence of (H, W, 3) frames, or one image (H, W, 3) /
    (H, W) (one hash). Fewer than ``SAMPLES`` frames -> one hash per frame.
    """
    if isinstance(frames, np.ndarray):
        if frames.ndim == 2 or (frames.ndim == 3 and frames.shape[-1] in (3, 4)):
            return [frame_hash(frames)]  # one image (a grey video (N, H, W) has no colour axis)
        if frames.ndim not in (3, 4):
            raise ValueError(f"frames must be (N, H, W, 3), (H, W, 3) or (H, W), got shape {frames.shape}")
    count = len(frames)
    if count == 0:
        raise ValueError("cannot fingerprint an empty video (no frames)")
    return [frame_hash(frames[i]) for i in sample_indices(count)]


def _to_bits(hashes: Sequence[str]) -> np.ndarray:
    try:
        raw = [np.unpackbits(np.frombuffer(bytes.fromhex(h), dtype=np.uint8)) for h in hashes]
    except ValueError as exc:
        raise ValueError(f"a fingerprint is a list of hex strings, got {list(hashes)[:3]!r}...") from exc
    if len({len(r) for r in raw}) > 1:
        raise ValueError("the hashes of a fingerprint must all have the same length")
    return np.stack(raw)


def _resample(bits: np.ndarray, count: int) -> np.ndarray:
    """Pick ``count`` rows of ``bits`` at the same fractions of the duration."""
    n = len(bits)
    return bits[[min(n - 1, int((i + 0.5) * n / count)) for i in range(count)]]


def similarity(a: Sequence[str], b: Sequence[str], max_shift: int = 0) -> float:
    """How alike two fingerprints are: 1 - mean Hamming distance / bits over aligned samples (0..1).

    Fingerprints of different lengths (a short clip, an image) are compared at the same fractions
    of the duration; a one-hash fingerprint (an image) takes its best match among the other's.
    ``max_shift`` > 0 also tries shifting one against the other by up to that many samples (for a
    trimmed copy) and keeps the best alignment that still overlaps in at least half the samples.
    """
    if not a or not b:
        return 0.0
    bits_a, bits_b = _to_bits(a), _to_bits(b)
    if bits_a.shape[1] != bits_b.shape[1]:
        raise ValueError(f"fingerprints of {bits_a.shape[1]} and {bits_b.shape[1]} bits cannot be compared")
    if len(bits_a) == 1 or len(bits_b) == 1:
        one, many = (bits_a, bits_b) if len(bits_a) == 1 else (bits_b, bits_a)
        return float(1.0 - (one != many).mean(axis=1).min())
    if len(bits_a) != len(bits_b):
        count = min(len(bits_a), len(bits_b))
        bits_a, bits_b = _resample(bits_a, count), _resample(bits_b, count)
    count = len(bits_a)
    best = 0.0
    for shift in range(-max_shift, max_shift + 1):
        lo, hi = max(0, shift), min(count, count + shift)
        if hi - lo < max(1, (count + 1) // 2):
            continue
        distance = (bits_a[lo:hi] != bits_b[lo - shift:hi - shift]).mean()
        best = max(best, 1.0 - float(distance))
    return best
