"""A perceptual fingerprint of a video (or an image): finds a story again by its content.

The watermark (``pipeline/watermark.py``) carries the credential id; this fingerprint, stored with
the manifest, confirms a recovered id by content (and finds a manifest when the watermark is gone).

How it works:
- ``SAMPLES`` frames are taken at fixed *fractions of the duration* (the middles of ``SAMPLES``
  equal slices), so a copy at another frame rate (30 -> 24 or 15 fps) samples the same moments.
- Each sampled frame gives three 64-bit DCT pHashes of its luma: of the whole frame and of its
  middle 95 % and 90 % (``SCALES``), 16 hex digits each. The fingerprint is the flat list, frame
  by frame (8 frames -> 24 hashes: frame 0 whole, 95 %, 90 %, frame 1 whole, ...), so every string
  is one 64-bit hash and the bytes of the list split back into it 8 bytes at a time. A pHash: the
  region shrunk (area average) to 32x32, DCT-transformed, the 8x8 lowest frequencies compared with
  their median. Low
  frequencies survive re-encoding, downscaling, brightness / contrast / gamma; the median split
  makes the bits independent of overall brightness and contrast.
- ``similarity`` is 1 - the mean Hamming distance / 64 over the aligned samples (1.0 identical,
  ~0.5 unrelated), for the best of the pairings whole-vs-whole and whole-vs-95 % / 90 % (either
  way round): a copy cropped by 5 or 10 % (and scaled back, or not: the hash does not care about
  size) shows in its whole frame what the original shows in its middle 95 % or 90 %.
  ``MATCH_THRESHOLD`` comes from measurements (benchmarks/watermark_bench.py, RESULTS.md).

Why not one hash of the middle 80 %: measured on 7 stories (benchmarks/RESULTS.md, "fingerprint
variants"), a single-region hash loses 10-40 % of its bits under a 10 % crop (the content's
position and scale in the hashed region change); the three-region hashes keep crops at >= 0.94
while unrelated videos stay <= ~0.70. A 256-bit hash (16x16 of a 64x64 DCT) separated worse (its
higher frequencies move under a crop). Only numpy and OpenCV are used; 8 sampled 1080x1920 frames
take ~10 ms (the luma of each, one area shrink by a whole factor, then three 32x32 regions of it).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

__all__ = ["ALGORITHM", "HASH_SIZE", "MATCH_THRESHOLD", "SAMPLES", "SCALES", "fingerprint", "frame_hashes",
           "sample_indices", "similarity"]

ALGORITHM = "com.alive.fingerprint.1"
SAMPLES = 8  # frames hashed per video
SCALES = (1.0, 0.95, 0.9)  # regions hashed per frame: the whole frame, its middle 95 % and 90 %
HASH_SIZE = 8  # 8x8 DCT coefficients -> 64 bits (8 bytes, 16 hex digits) per hash
DCT_SIZE = 32  # a region is shrunk to 32x32 before the DCT
WORK_SHORT_SIDE = 128  # a frame's luma is first area-shrunk by a whole factor to a short side of >= 128
HASH_BITS = HASH_SIZE * HASH_SIZE
# Measured (benchmarks/watermark_bench.py; RESULTS.md "watermark"): the 17 ffmpeg attacks on the
# default story scored >= 0.98 against it (contrast 1.2 the lowest); over 7 stories, crops of 5-12 %,
# halving, JPEG q30 and gamma 1.3 >= 0.94. 62 different videos (ffmpeg test sources, generated
# pictures, flipped / negative / rotated photos, alive stories of other photos) scored <= 0.69, and
# 413 story-vs-other pairs <= 0.70 (two radial-gradient pictures). 0.83 leaves ~0.11 on either side.
MATCH_THRESHOLD = 0.83


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


def _phash(luma: np.ndarray, hash_size: int = HASH_SIZE, dct_size: int = DCT_SIZE) -> np.ndarray:
    small = cv2.resize(np.ascontiguousarray(luma), (dct_size, dct_size), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:hash_size, :hash_size].ravel()
    return low > np.median(low)


def _check(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 and frame.dtype != np.float32:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    if frame.ndim not in (2, 3) or frame.shape[0] < 4 or frame.shape[1] < 4:
        raise ValueError(f"cannot fingerprint a frame of shape {frame.shape}: (H, W) or (H, W, 3), at least 4x4")
    return frame


def _bits(frame: np.ndarray, hash_size: int = HASH_SIZE, dct_size: int = DCT_SIZE, centre: float = 1.0) -> np.ndarray:
    """One pHash of one region (``centre`` of each side) of a frame, cut from the frame itself."""
    return _phash(_luma(_centre(_check(frame), centre)), hash_size, dct_size)


def _entry_bits(frame: np.ndarray) -> np.ndarray:
    """The ``SCALES`` pHashes of one frame, concatenated (len(SCALES) * 64 bits)."""
    luma = _luma(_check(frame))
    h, w = luma.shape
    factor = max(1, min(h, w) // WORK_SHORT_SIDE)
    if factor > 1:  # one area shrink by a whole factor (OpenCV's fast path); the regions are cut from it
        dy, dx = h % factor, w % factor
        luma = luma[dy // 2:h - (dy - dy // 2), dx // 2:w - (dx - dx // 2)]
        luma = cv2.resize(luma, (luma.shape[1] // factor, luma.shape[0] // factor), interpolation=cv2.INTER_AREA)
    return np.concatenate([_phash(_centre(luma, scale)) for scale in SCALES])


def _hex(bits: np.ndarray) -> str:
    return np.packbits(bits.astype(np.uint8)).tobytes().hex()


def frame_hashes(frame: np.ndarray) -> list[str]:
    """One frame's ``SCALES`` 64-bit pHashes (whole frame, middle 95 %, middle 90 %), 16 hex digits each."""
    return [_hex(bits) for bits in _entry_bits(frame).reshape(len(SCALES), HASH_BITS)]


def fingerprint(frames: Sequence[np.ndarray] | np.ndarray) -> list[str]:
    """The hashes of ``SAMPLES`` frames sampled at fixed fractions of the duration, hex strings:
    ``len(SCALES)`` per frame (whole frame, middle 95 %, middle 90 %), frame after frame.

    ``frames``: (N, H, W, 3) uint8 RGB, a sequence of (H, W, 3) frames, or one image (H, W, 3) /
    (H, W) (one frame's hashes). Fewer than ``SAMPLES`` frames -> every frame.
    """
    if isinstance(frames, np.ndarray):
        if frames.ndim == 2 or (frames.ndim == 3 and frames.shape[-1] in (3, 4)):
            return frame_hashes(frames)  # one image (a grey video (N, H, W) has no colour axis)
        if frames.ndim not in (3, 4):
            raise ValueError(f"frames must be (N, H, W, 3), (H, W, 3) or (H, W), got shape {frames.shape}")
    count = len(frames)
    if count == 0:
        raise ValueError("cannot fingerprint an empty video (no frames)")
    return [h for i in sample_indices(count) for h in frame_hashes(frames[i])]


def _to_bits(hashes: Sequence[str]) -> np.ndarray:
    """(frames, regions, 64) booleans: groups of ``len(SCALES)`` hashes when the count allows,
    else one hash per frame (a plain pHash list)."""
    try:
        raw = [np.unpackbits(np.frombuffer(bytes.fromhex(h), dtype=np.uint8)) for h in hashes]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"a fingerprint is a list of hex strings, got {list(hashes)[:3]!r}") from exc
    lengths = {len(r) for r in raw}
    if len(lengths) > 1:
        raise ValueError(f"the entries of a fingerprint must all have the same length, got {sorted(lengths)} bits")
    bits = lengths.pop()
    if bits == 0 or bits % HASH_BITS:
        raise ValueError(f"a fingerprint hash is a multiple of {HASH_BITS} bits, got {bits}")
    flat = np.stack(raw).astype(bool).reshape(-1, HASH_BITS)
    regions = len(SCALES) if len(flat) % len(SCALES) == 0 else 1
    return flat.reshape(len(flat) // regions, regions, HASH_BITS)


def _resample(bits: np.ndarray, count: int) -> np.ndarray:
    """Pick ``count`` entries of ``bits`` at the same fractions of the duration."""
    n = len(bits)
    return bits[[min(n - 1, int((i + 0.5) * n / count)) for i in range(count)]]


def _pairings(regions: int) -> list[tuple[int, int]]:
    """Whole vs whole, and whole vs each smaller region either way round (a crop of either copy)."""
    return [(0, 0)] + [(0, k) for k in range(1, regions)] + [(k, 0) for k in range(1, regions)]


def similarity(a: Sequence[str], b: Sequence[str], max_shift: int = 0) -> float:
    """How alike two fingerprints are, 0..1: 1 - the mean Hamming distance / 64 over the aligned
    samples, for the best pairing of regions (whole frame with whole frame, or the whole frame of
    one with the middle 95 % / 90 % of the other: a cropped copy).

    Fingerprints of different lengths (a short clip, an image) are compared at the same fractions
    of the duration; a one-frame fingerprint (an image) takes its best match among the other's.
    ``max_shift`` > 0 also tries shifting one against the other by up to that many samples (for a
    trimmed copy) and keeps the best alignment that still overlaps in at least half the samples.
    A plain list of one hash per frame (its length no multiple of ``len(SCALES)``) compares on
    the whole-frame hashes.
    """
    if not a or not b:
        return 0.0
    bits_a, bits_b = _to_bits(a), _to_bits(b)
    regions = min(bits_a.shape[1], bits_b.shape[1])
    bits_a, bits_b = bits_a[:, :regions], bits_b[:, :regions]
    pairings = _pairings(regions)
    if len(bits_a) == 1 or len(bits_b) == 1:
        one, many = (bits_a, bits_b) if len(bits_a) == 1 else (bits_b, bits_a)
        return float(max(1.0 - (one[:, i] != many[:, j]).mean(axis=1).min() for i, j in pairings))
    if len(bits_a) != len(bits_b):
        count = min(len(bits_a), len(bits_b))
        bits_a, bits_b = _resample(bits_a, count), _resample(bits_b, count)
    count = len(bits_a)
    best = 0.0
    for shift in range(-max_shift, max_shift + 1):
        lo, hi = max(0, shift), min(count, count + shift)
        if hi - lo < max(1, (count + 1) // 2):
            continue
        x, y = bits_a[lo:hi], bits_b[lo - shift:hi - shift]
        for i, j in pairings:
            best = max(best, 1.0 - float((x[:, i] != y[:, j]).mean()))
    return best
