"""Invisible-watermark candidates behind one interface, for benchmarks/watermark_bench.py.

Install the third-party candidates (they are benchmark-only, not dependencies of alive):

    .venv/bin/pip install --no-deps invisible-watermark==0.2.0 PyWavelets

``--no-deps`` matters: the invisible-watermark 0.2.0 wheel (MIT) declares ``opencv-python`` and
``torch`` as dependencies, and a second OpenCV build beside our opencv-contrib-python-headless
overwrites ``cv2/`` and breaks it. Nothing here imports torch: the package's modules are loaded
from their files (its ``__init__`` would import torch through ``rivaGan.py``), and RivaGAN's ONNX
encoder / decoder that ship in the wheel are driven with onnxruntime directly. A candidate whose
package is missing is skipped with a message saying so (``load_candidates``).

The interface (``Candidate``):
- ``name``; ``payload_bits(credential_id)`` -> the bits it embeds for that id (uint8 0/1);
- ``embed(frames, credential_id)`` -> watermarked frames, (N, H, W, 3) uint8 RGB;
- ``detect(frames)`` -> ``Decoded``: the bits voted over all frames (or None), the id it reports
  (alive: only with a valid check value; the others have no check, so the bench compares bits),
  a confidence 0..1 and the frame count;
- ``frame_bits(frame)`` -> one frame's hard bits (per-frame bit accuracy), None if not exposed.

Candidates:
- ``alive``: ``pipeline.watermark`` (ours; 48-bit credential id, error-correcting code + check).
- ``rivagan``: RivaGAN (32 bits: the first 8 hex digits of the id). Its encoder costs ~18.7 s per
  1080x1920 frame on this CPU, so it embeds on a ``RIVA_SIZE`` (272x480) copy and adds the
  upsampled residual to the full frame; it decodes a copy resized to that size; bits are voted
  over frames by averaging the decoder's soft outputs.
- ``dwtDct`` / ``dwtDctSvd``: the package's weight-free methods with its default settings (the U
  channel of YUV, 4x4 blocks of the Haar approximation band, scale 36), all 48 bits of the id.
  They have no resynchronisation, so a frame is resized back to the embedding size (1080x1920)
  before decoding; a crop shifts the block grid (expected failure). Soft scores (the share of
  blocks voting 1 per bit) are averaged over frames.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Iterable, Protocol, Sequence

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

INSTALL = ".venv/bin/pip install --no-deps invisible-watermark==0.2.0 PyWavelets"
RIVA_SIZE = (272, 480)  # (width, height) of the copy RivaGAN works on: ~1/4 of 1080x1920, multiples of 16
EMBED_SIZE = (1080, 1920)  # dwt candidates decode at the size they embedded at


@dataclass
class Decoded:
    bits: np.ndarray | None  # voted hard bits (uint8 0/1), None when the candidate does not expose them
    credential_id: str | None  # the id the candidate itself reports (alive: only with a valid check)
    confidence: float  # 0..1
    frames: int
    bit_accuracy: float | None = None  # the candidate's own figure (alive: vs its decoded codeword)
    frame_bits: list[np.ndarray] | None = None  # each frame's hard bits, when detection made them anyway


class Candidate(Protocol):
    name: str
    payload_size: int  # bits

    def payload_bits(self, credential_id: str) -> np.ndarray: ...

    def embed(self, frames: np.ndarray, credential_id: str) -> np.ndarray: ...

    def detect(self, frames: Iterable[np.ndarray]) -> Decoded: ...

    def frame_bits(self, frame: np.ndarray) -> np.ndarray | None: ...


def id_bits(credential_id: str, count: int) -> np.ndarray:
    """The first ``count`` bits of a hex credential id (MSB first)."""
    raw = np.unpackbits(np.frombuffer(bytes.fromhex(credential_id), dtype=np.uint8))
    if count > len(raw):
        raise ValueError(f"id {credential_id!r} has {len(raw)} bits, {count} asked")
    return raw[:count].copy()


def bits_to_id(bits: np.ndarray) -> str:
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex()


# -- alive -----------------------------------------------------------------------------------------
class AliveCandidate:
    name = "alive"

    def __init__(self) -> None:
        from pipeline import watermark  # noqa: PLC0415 (optional: the module may not exist yet)

        self.module = watermark
        self.algorithm = watermark.ALGORITHM
        self.payload_size = int(len(watermark.payload_bits(watermark.new_credential_id())))

    def payload_bits(self, credential_id: str) -> np.ndarray:
        return np.asarray(self.module.payload_bits(credential_id), dtype=np.uint8)

    def embed(self, frames: np.ndarray, credential_id: str) -> np.ndarray:
        return self.module.embed(np.array(frames, copy=True), credential_id)

    def detect(self, frames: Iterable[np.ndarray]) -> Decoded:
        found = self.module.detect(frames)
        bits = None
        if found.found and found.credential_id:
            bits = self.payload_bits(found.credential_id)
        return Decoded(bits, found.credential_id if found.found else None, float(found.confidence), int(found.frames),
                       found.bit_accuracy)

    def frame_bits(self, frame: np.ndarray) -> np.ndarray | None:
        """One frame's raw coded bits (before error correction), for the per-frame bit accuracy.

        The public API has no such call, so this repeats ``detect``'s steps on one frame with the
        module's helpers; None if they changed (the bench then reports no per-frame figure)."""
        m = self.module
        try:
            white = m._whiten(frame)
            scale_y, scale_x, _ = m._find_scale(white)
            folded = m._fold(white, scale_y, scale_x)
            _, dy, dx = m._sync_peak(folded)
            lay = m._layout()
            soft = (m._cells(folded, dy, dx)[lay.bit_cells] * lay.chips).sum(axis=1)
        except (AttributeError, TypeError, ValueError):
            return None
        bits = (np.asarray(soft) < 0).astype(np.uint8)
        return bits if bits.size == self.payload_size else None


# -- invisible-watermark helpers -------------------------------------------------------------------
def _imwatermark_dir() -> Path:
    spec = importlib.util.find_spec("imwatermark")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"invisible-watermark is not installed; install it with: {INSTALL}")
    return Path(list(spec.submodule_search_locations)[0])


def _load_module(name: str) -> ModuleType:
    if importlib.util.find_spec("pywt") is None:
        raise ImportError(f"PyWavelets is not installed; install it with: {INSTALL}")
    path = _imwatermark_dir() / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_imwatermark_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _vote(soft: list[np.ndarray]) -> tuple[np.ndarray, float]:
    mean = np.mean(np.stack(soft), axis=0)
    bits = (mean > 0.5).astype(np.uint8)
    confidence = float(np.mean(np.abs(mean - 0.5)) * 2)
    return bits, confidence


# -- RivaGAN ----------------------------------------------------------------------------------------
class RivaGanCandidate:
    name = "rivagan"
    payload_size = 32
    threshold = 0.52  # the package's decision threshold on the decoder output, a logit (rivaGan.py)

    def __init__(self, threads: int | None = None) -> None:
        import onnxruntime as ort  # noqa: PLC0415

        folder = _imwatermark_dir()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or min(2, os.cpu_count() or 1)
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(folder / "rivagan_encoder.onnx"), options, providers=providers)
        self.decoder = ort.InferenceSession(str(folder / "rivagan_decoder.onnx"), options, providers=providers)

    def payload_bits(self, credential_id: str) -> np.ndarray:
        return id_bits(credential_id, self.payload_size)

    @staticmethod
    def _tensor(bgr: np.ndarray) -> np.ndarray:
        # The package feeds cv2 (BGR) frames: (1, 3, 1, H, W) in -1..1
        return (bgr.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None, :, None]

    def embed(self, frames: np.ndarray, credential_id: str) -> np.ndarray:
        data = self.payload_bits(credential_id).astype(np.float32)[None]
        out = np.empty_like(frames)
        for i, frame in enumerate(frames):
            h, w = frame.shape[:2]
            bgr = np.ascontiguousarray(frame[..., ::-1])
            small = cv2.resize(bgr, RIVA_SIZE, interpolation=cv2.INTER_AREA)
            marked = self.encoder.run(None, {"frame": self._tensor(small), "data": data})[0]
            marked = np.clip(marked[0, :, 0].transpose(1, 2, 0), -1.0, 1.0)
            residual = (marked + 1.0) * 127.5 - small.astype(np.float32)
            residual = cv2.resize(residual, (w, h), interpolation=cv2.INTER_LINEAR)
            out[i] = np.clip(np.rint(bgr.astype(np.float32) + residual), 0, 255).astype(np.uint8)[..., ::-1]
        return out

    def _soft(self, frame: np.ndarray) -> np.ndarray:
        bgr = np.ascontiguousarray(frame[..., ::-1])
        small = cv2.resize(bgr, RIVA_SIZE, interpolation=cv2.INTER_AREA)
        return self.decoder.run(None, {"frame": self._tensor(small)})[0][0].astype(np.float64)

    def frame_bits(self, frame: np.ndarray) -> np.ndarray:
        return (self._soft(frame) > self.threshold).astype(np.uint8)

    def detect(self, frames: Iterable[np.ndarray]) -> Decoded:
        soft = [self._soft(frame) for frame in frames]
        if not soft:
            return Decoded(None, None, 0.0, 0)
        # The decoder gives logits; average them over frames, threshold as the package does, and
        # read the confidence as the mean |2 sigmoid - 1| of the averaged logits.
        mean = np.mean(np.stack(soft), axis=0)
        bits = (mean > self.threshold).astype(np.uint8)
        confidence = float(np.mean(np.abs(np.tanh((mean - self.threshold) / 2))))
        return Decoded(bits, None, confidence, len(soft), frame_bits=[(s > self.threshold).astype(np.uint8) for s in soft])


# -- dwtDct / dwtDctSvd ------------------------------------------------------------------------------
class _DwtCandidate:
    name = ""
    payload_size = 48
    module_name = ""
    class_name = ""
    scales: list[int] = []

    def __init__(self) -> None:
        module = _load_module(self.module_name)
        self.cls = getattr(module, self.class_name)
        import pywt  # noqa: PLC0415

        self.pywt = pywt

    def payload_bits(self, credential_id: str) -> np.ndarray:
        return id_bits(credential_id, self.payload_size)

    def embed(self, frames: np.ndarray, credential_id: str) -> np.ndarray:
        bits = [int(b) for b in self.payload_bits(credential_id)]
        encoder = self.cls(bits, wmLen=self.payload_size, scales=list(self.scales), block=4)
        out = np.empty_like(frames)
        for i, frame in enumerate(frames):
            out[i] = encoder.encode(np.ascontiguousarray(frame[..., ::-1]))[..., ::-1]
        return out

    def _soft(self, frame: np.ndarray) -> np.ndarray:
        # The package's decode, keeping the per-bit averages (share of blocks reading 1) it thresholds.
        if (frame.shape[1], frame.shape[0]) != EMBED_SIZE:
            frame = cv2.resize(frame, EMBED_SIZE, interpolation=cv2.INTER_CUBIC)
        bgr = np.ascontiguousarray(frame[..., ::-1])
        row, col = bgr.shape[:2]
        yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
        decoder = self.cls([], wmLen=self.payload_size, scales=list(self.scales), block=4)
        scores: list[list[float]] = [[] for _ in range(self.payload_size)]
        for channel in range(2):
            if self.scales[channel] <= 0:
                continue
            ca1, _ = self.pywt.dwt2(yuv[:row // 4 * 4, :col // 4 * 4, channel], "haar")
            scores = decoder.decode_frame(ca1, self.scales[channel], scores)
        return np.array([np.mean(s) for s in scores], dtype=np.float64)

    def frame_bits(self, frame: np.ndarray) -> np.ndarray:
        return (self._soft(frame) > 0.5).astype(np.uint8)

    def detect(self, frames: Iterable[np.ndarray]) -> Decoded:
        soft = [self._soft(frame) for frame in frames]
        if not soft:
            return Decoded(None, None, 0.0, 0)
        bits, confidence = _vote(soft)
        return Decoded(bits, None, confidence, len(soft), frame_bits=[(s > 0.5).astype(np.uint8) for s in soft])


class DwtDctCandidate(_DwtCandidate):
    name = "dwtDct"
    module_name = "maxDct"
    class_name = "EmbedMaxDct"
    scales = [0, 36, 36]  # the package's defaults (only channels 0 and 1 are visited: U at 36)


class DwtDctSvdCandidate(_DwtCandidate):
    name = "dwtDctSvd"
    module_name = "dwtDctSvd"
    class_name = "EmbedDwtDctSvd"
    scales = [0, 36, 0]


FACTORIES = {
    "alive": AliveCandidate,
    "rivagan": RivaGanCandidate,
    "dwtDct": DwtDctCandidate,
    "dwtDctSvd": DwtDctSvdCandidate,
}


def load_candidates(names: Sequence[str]) -> tuple[list[Candidate], dict[str, str]]:
    """The candidates that can run here, and for each skipped one the reason (a missing package)."""
    loaded: list[Candidate] = []
    skipped: dict[str, str] = {}
    for name in names:
        if name not in FACTORIES:
            raise ValueError(f"unknown candidate {name!r}; known: {', '.join(FACTORIES)}")
        try:
            loaded.append(FACTORIES[name]())
        except ImportError as exc:
            if name == "alive":
                skipped[name] = f"pipeline/watermark.py is not importable here ({exc})"
            else:
                skipped[name] = f"{exc} (install: {INSTALL})"
    return loaded, skipped


def timed_ms_per_frame(work, frames: int) -> tuple[float, object]:
    start = time.perf_counter()
    result = work()
    return (time.perf_counter() - start) * 1000 / max(1, frames), result
