"""An invisible watermark in every published frame, carrying the credential id (a soft binding).

The embedded C2PA manifest is gone after the first re-encode; this watermark is in the pixels, so
a copy that went through a platform still says which credential it came from. The design is a
classical tiled spread-spectrum mark in luma, chosen over RivaGAN and DWT-DCT by measurement
(benchmarks/watermark_bench.py, table in benchmarks/RESULTS.md): it is ~100x faster than RivaGAN
on this CPU and survives the same attacks.

Embedding
    A keyed pseudo-random tile of ``CELLS`` x ``CELLS`` cells, each +1 or -1, repeats over the whole
    frame; a cell is ``short side / CELL_DIVISOR`` pixels (4 px on a 1080x1920 story). A quarter of
    the cells are a fixed sync pattern; the rest carry the 96 coded bits, each on ``CELLS_PER_BIT``
    cells spread over the tile, XORed with a keyed sequence. The tile is scaled up smoothly and
    added to the luma of every frame, stronger where the picture is busy (texture masking) and weak
    on flat areas, at a strength that keeps PSNR above 40 dB.

Payload
    credential id (6 bytes) + CRC-16 (2 bytes), Reed-Solomon coded with 4 parity bytes (corrects 2
    wrong bytes): 12 bytes = 96 bits. A random video passes the code *and* the check value with a
    probability of about 1e-8 per try, and detection further demands a clear sync peak.

Detection
    Frames are brought to a working size, whitened (a local high-pass, normalised by the local
    contrast: brightness, contrast and gamma changes fall out), and summed:
    1. the tile period is measured from the autocorrelation (a crop that was scaled back, or a
       downscale, changes it), 2. every frame is resampled to the nominal period and folded onto one
       tile (a crop only shifts the tile), 3. the shift is found by correlating with the sync
       pattern, 4. each bit is the sign of its cells' sum over every frame: votes across frames, so a
       frame-rate change or lost frames only cost a little signal. ``confidence`` is 0..1 from the
       sync peak's height over the noise and the bits' agreement with the decoded codeword.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass
from typing import Iterable

import cv2
import numpy as np

from pipeline.frame import distinct_frames

ALGORITHM = "com.alive.watermark.1"
"""The soft-binding algorithm name written in the ``c2pa.soft-binding`` assertion (not yet in the
C2PA soft-binding algorithm list: a reverse-domain name, as the list's guidelines ask for private
algorithms)."""

KEY = b"alive watermark v1"
"""The pattern's key. Public and shared by every alive install on purpose: any alive resolver can
read any alive video's id (the id is not a secret; the manifest it finds is signed)."""

CELLS = 32  # tile side in cells
CELL_DIVISOR = 108  # a cell is short side / 108 px: 10 px on a 1080-wide story (measured: 8 px cells lost more bits at 540p crf 28, 12 px cells left too few tiles)
ID_BYTES = 6
CHECK_BYTES = 2
PARITY_BYTES = 4
CODE_BITS = (ID_BYTES + CHECK_BYTES + PARITY_BYTES) * 8  # 96
SYNC_CELLS = CELLS * CELLS // 4  # 256 (measured: 128 made the scale search miss after a re-encode)
CELLS_PER_BIT = (CELLS * CELLS - SYNC_CELLS) // CODE_BITS  # 8
STRENGTH = 2.65  # luma levels (0..255) at average texture: PSNR ~40.5 dB on a default story (measured)
ISS_GAIN = 1.25  # informed embedding: how much of the picture's push against a bit is made up (measured)
ISS_RANGE = (0.5, 2.0)  # a bit's amplitude stays within 0.5x..2x the plain one
MAX_OFFSET = 3.5  # per unit of mask: no pixel moves more than 3.5 levels x its texture (a mottle showed on coffee crema above)
MASK_EVERY = 3  # frames that share one texture mask (the story moves a few px per frame)
MASK_RANGE = (0.3, 1.8)  # texture masking: flat areas get 0.3x the strength, busy ones up to 1.8x (measured at equal PSNR 40.5 dB: a 0.15 floor lost crf 35, 540p and a second re-encode; 0.45 showed as a mottle on a plain wall)
MASK_ERODE = 0  # px (at quarter size) of the minimum filter on the texture before it is blurred
DECODE_CELL_PX = 2  # working resolution of the detector: 2 px per cell
DECODE_SHORT_SIDE = CELL_DIVISOR * DECODE_CELL_PX  # 540
PERIOD = CELLS * DECODE_CELL_PX  # 64 px at the working resolution
SCALE_RANGE = (0.8, 1.25)  # tile period search: crops up to 20 % scaled back, or a copy cut at another size
MIN_SYNC_SCORE = 6.0  # sync peak over noise (standard deviations) below which nothing is found
MAX_FRAMES = 60  # frames a detector reads at most (spread over the video)


@dataclass(frozen=True)
class Detection:
    found: bool
    credential_id: str | None
    confidence: float  # 0..1
    frames: int  # frames read
    bit_accuracy: float | None = None  # share of the 96 raw bits that agree with the decoded codeword
    sync_score: float = 0.0  # sync peak height over the noise, in standard deviations
    scale: float | None = None  # measured tile scale (1.0 = the size it was embedded at)

    def to_dict(self) -> dict:
        return {"found": self.found, "id": self.credential_id, "confidence": round(self.confidence, 3),
                "frames": self.frames, "algorithm": ALGORITHM,
                "bit_accuracy": None if self.bit_accuracy is None else round(self.bit_accuracy, 3)}


# -- the payload ---------------------------------------------------------------------------------
def new_credential_id() -> str:
    return secrets.token_hex(ID_BYTES)


def credential_id_for(job_id: str) -> str:
    """The credential id of a job: derived from the job id, so a retried encode embeds the same one."""
    return hashlib.sha256(b"alive credential " + job_id.encode()).hexdigest()[: 2 * ID_BYTES]


def _check_id(credential_id: str) -> bytes:
    try:
        raw = bytes.fromhex(credential_id)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != ID_BYTES:
        raise ValueError(f"a credential id is {2 * ID_BYTES} hex digits, got {credential_id!r}")
    return raw


def binding_value(credential_id: str) -> str:
    """The soft binding's value as written in the manifest and queried by resolvers: base64 of the id."""
    return base64.b64encode(_check_id(credential_id)).decode()


def credential_id_from_value(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"not a base64 watermark value: {value!r}") from None
    return _check_id(raw.hex()).hex()


def _crc16(data: bytes) -> bytes:
    return binascii.crc_hqx(data, 0xA11E).to_bytes(2, "big")


def _codec():
    from reedsolo import RSCodec

    return RSCodec(PARITY_BYTES)


def payload_bits(credential_id: str) -> np.ndarray:
    """The 96 coded bits (0/1) embedded for this id, before the keyed XOR."""
    raw = _check_id(credential_id)
    coded = bytes(_codec().encode(raw + _crc16(raw)))
    return np.unpackbits(np.frombuffer(coded, dtype=np.uint8))


def _decode_bits(soft: np.ndarray) -> str | None:
    """The id from the 96 soft bit values (sign = bit, size = reliability), or None.

    Reed-Solomon first corrects up to 2 wrong bytes; failing that, the least reliable bytes are
    declared erasures (4 parity bytes fix 2 errors, or 1 error + 2 erasures, or 4 erasures). The
    CRC-16 then has to agree, so a random input passes with a probability near 1e-5 per try at most."""
    from reedsolo import ReedSolomonError

    bits = (soft < 0).astype(np.uint8)
    coded = np.packbits(bits).tobytes()
    weakest = np.argsort(np.abs(soft).reshape(-1, 8).min(axis=1))
    codec = _codec()
    for erasures in ([], *(list(weakest[:k]) for k in (1, 2, 3, 4))):
        try:
            message = bytes(codec.decode(coded, erase_pos=[int(i) for i in erasures] or None)[0])
        except ReedSolomonError:
            continue
        raw, check = message[:ID_BYTES], message[ID_BYTES:]
        if _crc16(raw) == check:
            return raw.hex()
    return None


# -- the keyed tile -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Layout:
    sync_index: np.ndarray  # flat cell indices of the sync pattern
    sync_sign: np.ndarray  # their +1/-1
    bit_cells: np.ndarray  # (CODE_BITS, CELLS_PER_BIT) flat cell indices of each bit
    chips: np.ndarray  # (CODE_BITS, CELLS_PER_BIT) keyed +1/-1 per bit cell


_LAYOUT: _Layout | None = None


def _layout() -> _Layout:
    global _LAYOUT
    if _LAYOUT is None:
        rng = np.random.default_rng(np.frombuffer(hashlib.sha256(KEY).digest(), dtype=np.uint32))
        order = rng.permutation(CELLS * CELLS)
        sync = order[:SYNC_CELLS]
        bits = order[SYNC_CELLS:SYNC_CELLS + CODE_BITS * CELLS_PER_BIT].reshape(CELLS_PER_BIT, CODE_BITS).T
        _LAYOUT = _Layout(sync, rng.choice([-1.0, 1.0], SYNC_CELLS), bits,
                          rng.choice([-1.0, 1.0], (CODE_BITS, CELLS_PER_BIT)))
    return _LAYOUT


def tile(credential_id: str, bit_gain: np.ndarray | None = None) -> np.ndarray:
    """The CELLS x CELLS tile for this id: sync cells +/-1, bit cells +/-``bit_gain[bit]`` (1 when
    None); cells the layout leaves over are 0."""
    lay = _layout()
    cells = np.zeros(CELLS * CELLS, dtype=np.float32)
    cells[lay.sync_index] = lay.sync_sign
    signs = _signs(credential_id)
    if bit_gain is not None:
        signs = signs * bit_gain.astype(np.float32)
    cells[lay.bit_cells] = signs[:, None] * lay.chips
    return cells.reshape(CELLS, CELLS)


def _signs(credential_id: str) -> np.ndarray:
    return 1.0 - 2.0 * payload_bits(credential_id).astype(np.float32)  # bit 0 -> +1, 1 -> -1


def _pattern(credential_id: str, height: int, width: int, bit_gain: np.ndarray | None = None) -> np.ndarray:
    """The tile repeated over a height x width frame, smoothly scaled to the cell size."""
    cell = min(height, width) / CELL_DIVISOR
    side = max(2, int(round(CELLS * cell)))
    scaled = cv2.resize(tile(credential_id, bit_gain), (side, side), interpolation=cv2.INTER_LINEAR)
    reps = (height // side + 1, width // side + 1)
    return np.tile(scaled, reps)[:height, :width]


# -- embedding ------------------------------------------------------------------------------------
def _luma(frame: np.ndarray) -> np.ndarray:
    rgb = frame.astype(np.float32)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def _mask(frame: np.ndarray) -> np.ndarray:
    """How much mark each place hides: local activity over the frame's median activity, clipped.

    Worked out on a quarter-size grey copy (the activity is smooth anyway), scaled back up."""
    h, w = frame.shape[:2]
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (max(8, w // 4), max(8, h // 4)), interpolation=cv2.INTER_AREA).astype(np.float32)
    detail = np.abs(small - cv2.GaussianBlur(small, (0, 0), 1.5))
    if MASK_ERODE:  # keep an edge's activity from spilling into the flat area beside it
        detail = cv2.erode(detail, np.ones((MASK_ERODE, MASK_ERODE), np.uint8))
    activity = cv2.GaussianBlur(detail, (0, 0), 3)
    ref = float(np.median(activity)) + 1e-3
    mask = np.clip(activity / ref, *MASK_RANGE)
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)


def embed(frames, credential_id: str, strength: float = STRENGTH):
    """Watermark every frame in place: an (N,H,W,3) or (H,W,3) uint8 RGB array, or a list of
    (H,W,3) arrays of one size (the story's frames). Returns ``frames``.

    Informed embedding (improved spread spectrum, Malvar & Florencio 2003): the picture itself
    pushes each bit's detector sum one way or the other, and that, not the encoder, was the larger
    noise. So per frame the detector is run on the frame and on the frame with the plain mark; each
    bit's amplitude is then raised where the picture works against it and lowered where it helps
    (``ISS_GAIN``, within ``ISS_RANGE``), at the same average strength. The same luma offset goes
    to R, G and B (brightness only, no colour cast)."""
    stack = [frames] if isinstance(frames, np.ndarray) and frames.ndim == 3 else frames
    if not len(stack):
        return frames
    first = stack[0]
    if first.ndim != 3 or first.shape[-1] != 3 or first.dtype != np.uint8:
        raise ValueError(f"frames must be (H,W,3) uint8 RGB, got {first.shape} {first.dtype}")
    height, width = first.shape[:2]
    plain = _pattern(credential_id, height, width) * np.float32(strength)
    signs = _signs(credential_id)
    # a looped story repeats views of one buffer (pingpong shows frame k again as frame N-k): marking a
    # buffer twice doubles the mark there (measured: 36.9 dB instead of 40.9 dB on a default story)
    for k, frame in enumerate(distinct_frames(stack)):
        if k % MASK_EVERY == 0:  # the mask is blurred over ~12 px: neighbouring frames share it
            mask = _mask(frame)
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
        host = _bit_response(grey) * signs  # > 0: the picture already pushes the bit the right way
        marked = _bit_response(np.clip(grey + plain * mask, 0, 255)) * signs
        gain = np.maximum(marked - host, 1e-3)  # what the mark adds, per bit
        bit_gain = np.clip(1.0 + ISS_GAIN * (np.median(gain) - host - gain) / gain, *ISS_RANGE)
        delta = cv2.multiply(_pattern(credential_id, height, width, bit_gain) * np.float32(strength), mask)
        cap = mask * np.float32(MAX_OFFSET)
        np.clip(delta, -cap, cap, out=delta)
        frame[...] = cv2.add(frame, cv2.merge([delta, delta, delta]), dtype=cv2.CV_8U)
    return frames


def _bit_response(grey: np.ndarray) -> np.ndarray:
    """What the detector reads for each bit from one frame at its embedded size (scale 1, no shift)."""
    lay = _layout()
    cells = _cells(_fold(_whiten(grey), 1.0, 1.0), 0, 0)
    return (cells[lay.bit_cells] * lay.chips).sum(axis=1)


# -- detection ------------------------------------------------------------------------------------
def _whiten(frame: np.ndarray) -> np.ndarray:
    """The frame's luma at the working size, high-passed and normalised by local contrast."""
    luma = _luma(frame) if frame.ndim == 3 else frame.astype(np.float32)
    h, w = luma.shape
    scale = DECODE_SHORT_SIDE / min(h, w)
    size = (max(PERIOD, int(round(w * scale))), max(PERIOD, int(round(h * scale))))
    luma = cv2.resize(luma, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    # a 3x3 Laplacian: of the high-passes measured (Gaussian 1.5/2/3, difference of Gaussians,
    # median) it kept the most mark against the picture (sync SNR +25 % over Gaussian 2 after crf 28)
    high = -cv2.Laplacian(luma, cv2.CV_32F, ksize=3)
    spread = np.sqrt(cv2.GaussianBlur(high * high, (0, 0), 6.0)) + 0.5
    return np.clip(high / spread, -2.5, 2.5)


def _fold(white: np.ndarray, scale_y: float, scale_x: float) -> np.ndarray:
    """Resample by 1/scale so the tile is PERIOD px again, then sum every whole tile onto one."""
    h, w = white.shape
    size = (int(w / scale_x), int(h / scale_y))
    # an exact affine map, not resize(): resize's whole-pixel output size would quantise the scale
    # to 1/width (0.5 % here), and 0.5 % off drifts the far tiles by a cell
    matrix = np.float32([[1 / scale_x, 0, 0], [0, 1 / scale_y, 0]])
    resampled = cv2.warpAffine(white, matrix, size, flags=cv2.INTER_LINEAR)
    h2, w2 = (size[1] // PERIOD) * PERIOD, (size[0] // PERIOD) * PERIOD
    if not h2 or not w2:
        return np.zeros((PERIOD, PERIOD), np.float32)
    cut = resampled[:h2, :w2]
    return cut.reshape(h2 // PERIOD, PERIOD, w2 // PERIOD, PERIOD).sum(axis=(0, 2))


def _sync_peak(folded: np.ndarray) -> tuple[float, int, int]:
    """The sync pattern's circular correlation peak in a folded tile: (height in sigmas, dy, dx)."""
    corr = np.fft.ifft2(np.fft.fft2(folded) * _SYNC_SPECTRUM_CONJ()).real
    flat = int(np.argmax(corr))
    peak = corr.flat[flat]
    rest = np.delete(corr.ravel(), flat)
    return float((peak - rest.mean()) / (rest.std() + 1e-9)), flat // PERIOD, flat % PERIOD


def _centre(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape
    y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return image[y0:y0 + side, x0:x0 + side]


def _find_scale(summed: np.ndarray) -> tuple[float, float, float]:
    """The tile's scale (y, x) in the copy and the sync height there.

    Coarse: isotropic scales in 1 % steps on a centre patch of ~2.5 tiles (a 1 % error moves its
    far edge by under a cell). Fine: 0.2 % steps, then y and x apart, on the whole frame, where
    every tile must line up."""
    patch = _centre(summed, int(PERIOD * 2.5 * SCALE_RANGE[1]))
    coarse = max(np.arange(SCALE_RANGE[0], SCALE_RANGE[1] + 1e-9, 0.01),
                 key=lambda s: _sync_peak(_fold(patch, s, s))[0])
    fine = max(np.arange(coarse - 0.012, coarse + 0.0121, 0.002),
               key=lambda s: _sync_peak(_fold(summed, s, s))[0])
    steps = np.arange(-0.006, 0.0061, 0.002)
    sy = max(fine + steps, key=lambda s: _sync_peak(_fold(summed, s, fine))[0])
    sx = max(fine + steps, key=lambda s: _sync_peak(_fold(summed, sy, s))[0])
    return float(sy), float(sx), _sync_peak(_fold(summed, sy, sx))[0]


def _sync_template() -> np.ndarray:
    lay = _layout()
    cells = np.zeros(CELLS * CELLS, np.float32)
    cells[lay.sync_index] = lay.sync_sign
    return np.kron(cells.reshape(CELLS, CELLS), np.ones((DECODE_CELL_PX, DECODE_CELL_PX), np.float32))


_SYNC_CONJ: np.ndarray | None = None


def _SYNC_SPECTRUM_CONJ() -> np.ndarray:
    global _SYNC_CONJ
    if _SYNC_CONJ is None:
        _SYNC_CONJ = np.fft.fft2(_sync_template()).conj()
    return _SYNC_CONJ


def _cells(folded: np.ndarray, dy: int, dx: int) -> np.ndarray:
    aligned = np.roll(folded, (-dy, -dx), axis=(0, 1))
    return aligned.reshape(CELLS, DECODE_CELL_PX, CELLS, DECODE_CELL_PX).sum(axis=(1, 3)).ravel()


def _sample(frames: Iterable[np.ndarray], limit: int) -> list[np.ndarray]:
    """Up to ``limit`` frames spread over the sequence (all of a list; a stream is thinned as it comes)."""
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        return [frames]
    items = list(frames)
    if len(items) <= limit:
        return items
    picks = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in picks]


def detect(frames: Iterable[np.ndarray], max_frames: int = MAX_FRAMES) -> Detection:
    """Find the watermark in RGB (or grey) uint8 frames of any size; votes across all of them."""
    whites = [_whiten(f) for f in _sample(frames, max_frames)]
    if not whites:
        return Detection(False, None, 0.0, 0)
    shape = whites[0].shape
    whites = [w for w in whites if w.shape == shape]
    summed = np.sum(whites, axis=0, dtype=np.float32)  # the mark adds up; moving content averages out
    scale_y, scale_x, sync_score = _find_scale(summed)
    folded = _fold(summed, scale_y, scale_x)
    _, dy, dx = _sync_peak(folded)
    lay = _layout()
    cells = _cells(folded, dy, dx)
    soft = (cells[lay.bit_cells] * lay.chips).sum(axis=1)
    bits = (soft < 0).astype(np.uint8)
    scale = float(np.sqrt(scale_x * scale_y))
    credential_id = _decode_bits(soft) if sync_score >= MIN_SYNC_SCORE else None
    if credential_id is None:
        return Detection(False, None, _confidence(sync_score, None), len(whites), None, sync_score, scale)
    agree = float(np.mean(payload_bits(credential_id) == bits))
    return Detection(True, credential_id, _confidence(sync_score, agree), len(whites), agree, sync_score, scale)


def _confidence(sync_score: float, bit_accuracy: float | None) -> float:
    """0..1: how sure the detection is. The sync peak (~6 sigma at the threshold, 40+ on a clean
    copy) saturates at 20 sigma; a decoded id then counts with its raw bits' agreement."""
    sync = min(1.0, max(0.0, (sync_score - 3.0) / 17.0))
    if bit_accuracy is None:
        return round(0.5 * sync, 3)
    return round(min(1.0, sync * (0.5 + 0.5 * (2 * bit_accuracy - 1))), 3) if bit_accuracy > 0.5 else 0.0
