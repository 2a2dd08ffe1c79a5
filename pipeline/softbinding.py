"""Soft bindings: what ties a story to its Content Credentials once the embedded manifest is gone.

Two of them, written into the manifest as ``c2pa.soft-binding`` assertions and kept in the
manifest repository (pipeline/manifests.py):

- the **watermark** (pipeline/watermark.py): the credential id, invisible in every published frame;
- the **fingerprint** (pipeline/fingerprint.py): perceptual hashes of a few frames, computed, not
  embedded. A recovered id counts only when the copy's fingerprint matches the stored one, so a
  wrongly decoded id (or a forged watermark on other pictures) never finds a manifest alone.

``bind`` marks the story frames before encoding; ``inspect_file`` reads both bindings back from a
video or image file; ``lookup`` asks a repository with them. The CLI (`alive verify`), the HTTP
lookups and the web page's "check a video" form all go through ``inspect_file`` and ``lookup``.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from functools import lru_cache
from typing import Any, Sequence

import cv2
import numpy as np
from PIL import Image, ImageSequence

from pipeline import fingerprint as fp
from pipeline import watermark
from pipeline.errors import InputRejected
from pipeline.manifests import ManifestRepository, Match

SOFT_BINDING_LABEL = "c2pa.soft-binding"
READ_FRAMES = 120  # frames read from a video to inspect: the first 4 s of a story (the mark is in every frame)
READ_TIMEOUT_S = 120


@dataclass(frozen=True)
class SoftBinding:
    """The bindings of one story, as embedded and as stored."""

    credential_id: str
    watermarked: bool
    fingerprint: list[str]
    watermark_alg: str = watermark.ALGORITHM
    fingerprint_alg: str = fp.ALGORITHM
    strength: float | None = None
    seconds: float = 0.0

    @property
    def watermark_value(self) -> str:
        return binding_value(self.watermark_alg, self.credential_id)

    def to_dict(self) -> dict[str, Any]:
        """For the job record (and so the report)."""
        return {"id": self.credential_id, "watermark": {"algorithm": self.watermark_alg, "embedded": self.watermarked,
                                                        "value": self.watermark_value, "strength": self.strength},
                "fingerprint": {"algorithm": self.fingerprint_alg, "hashes": list(self.fingerprint)},
                "seconds": round(self.seconds, 4)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SoftBinding":
        mark, print_ = data["watermark"], data["fingerprint"]
        return cls(credential_id=data["id"], watermarked=bool(mark.get("embedded")), fingerprint=list(print_["hashes"]),
                   watermark_alg=mark.get("algorithm", watermark.ALGORITHM),
                   fingerprint_alg=print_.get("algorithm", fp.ALGORITHM), strength=mark.get("strength"))

    def assertions(self) -> list[dict[str, Any]]:
        """``c2pa.soft-binding`` assertions (C2PA 2.x: alg, blocks of scope + value, pad), one per
        binding: a reader of the intact file sees both and can check they agree with the pixels."""
        hashes = bytes.fromhex("".join(self.fingerprint)) if self.fingerprint else b""
        out = []
        if self.watermarked:
            out.append(_assertion(self.watermark_alg, self.watermark_value, "alive invisible watermark (credential id)"))
        out.append(_assertion(self.fingerprint_alg, _b64(hashes), "alive perceptual fingerprint (frame hashes)"))
        return out


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def _assertion(alg: str, value: str, name: str) -> dict[str, Any]:
    return {"label": SOFT_BINDING_LABEL,
            "data": {"alg": alg, "name": name, "pad": [], "blocks": [{"scope": {}, "value": value}]}}


def binding_value(alg: str, credential_id: str) -> str:
    """The soft-binding value of ``credential_id`` in algorithm ``alg``'s own form."""
    if alg == watermark.ALGORITHM:
        return watermark.binding_value(credential_id)
    from pipeline import trustmark_backend

    if alg == trustmark_backend.ALGORITHM:
        return trustmark_backend.binding_value(credential_id)
    raise ValueError(f"unknown watermark algorithm {alg!r}")


def embedder(settings) -> Any | None:
    """The configured watermark backend: None for alive's own (``label.watermark_backend: alive``),
    or TrustMark, checked now: its package and its pulled weights must be here (ModelUnavailable
    says how to get them), so a job never starts that would fail at encoding."""
    if not settings.label.watermark or settings.label.watermark_backend == "alive":
        return None
    backend = _trustmark(Path(settings.model_cache_dir))
    backend.require()
    return backend


@lru_cache(maxsize=4)
def _trustmark(cache_dir: Path):
    """One TrustMark per model folder and process: its networks load once, on first use."""
    from pipeline.trustmark_backend import TrustMarkBackend

    return TrustMarkBackend(cache_dir)


def detectors(settings) -> list[Any]:
    """Watermark readers beside alive's own that a check also runs: TrustMark, when its package and
    weights are on this machine (nothing is downloaded to read a file)."""
    backend = _trustmark(Path(settings.model_cache_dir))
    return [backend] if backend.available() else []


def bind(frames: np.ndarray, credential_id: str, *, watermark_on: bool = True,
         strength: float = watermark.STRENGTH, backend: Any | None = None) -> SoftBinding:
    """Watermark the story frames in place (when ``watermark_on``) and fingerprint them.

    ``backend``: None for alive's own watermark, or another embedder (``embedder(settings)``).
    Runs after the visible label is drawn and before encoding, so the video, its poster and its
    preview (all made from these frames) carry the mark."""
    started = time.perf_counter()
    alg = watermark.ALGORITHM
    if watermark_on and backend is not None:
        backend.embed(frames, credential_id)
        alg = backend.ALGORITHM
    elif watermark_on:
        watermark.embed(frames, credential_id, strength)
    hashes = fp.fingerprint(frames)
    return SoftBinding(credential_id, watermark_on, hashes, watermark_alg=alg,
                       strength=strength if watermark_on and backend is None else None,
                       seconds=time.perf_counter() - started)


# -- reading a file back ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Bindings:
    """What a file's pixels say: the watermark detection and the fingerprint."""

    watermark: watermark.Detection
    fingerprint: list[str]
    fingerprint_alg: str = fp.ALGORITHM
    frames: int = 0
    seconds: float = 0.0
    content: str | None = None  # what the file is (mp4, jpeg, png, webp ...)
    others: tuple[Any, ...] = ()  # detections of the other readers (``detectors``), e.g. TrustMark

    def to_dict(self) -> dict[str, Any]:
        out = {"watermark": self.watermark.to_dict(), "fingerprint": {"algorithm": self.fingerprint_alg,
                                                                      "hashes": list(self.fingerprint)},
               "frames": self.frames, "seconds": round(self.seconds, 3)}
        if self.others:
            out["other_watermarks"] = [other.to_dict() for other in self.others]
        return out

    def found_ids(self) -> list[tuple[str, str]]:
        """(algorithm, credential id) of every watermark found, alive's own first."""
        found = [(watermark.ALGORITHM, self.watermark.credential_id)] if self.watermark.found else []
        return found + [(other.to_dict()["algorithm"], other.credential_id) for other in self.others if other.found]


def inspect_file(path: Path, *, max_frames: int | None = None, readers: Sequence[Any] = ()) -> Bindings:
    """Decode ``path`` (a video, or a JPEG/PNG/WebP/GIF image) and read its soft bindings
    (alive's watermark, the fingerprint, and the watermark of each of ``readers``).

    Frames come at the detector's working size (short side ``watermark.DECODE_SHORT_SIDE``), the
    first ``READ_FRAMES`` of a video. Anything that is no video or
    image raises InputRejected (not_a_video)."""
    from pipeline.provenance import sniff_media

    started = time.perf_counter()
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
        size = path.stat().st_size
    except OSError as exc:
        raise InputRejected(f"cannot read {path}: {exc.strerror or exc}", code="unreadable") from exc
    content, _ = sniff_media(head, size)
    if content in ("jpeg", "png", "webp", "gif", "tiff"):
        frames = _image_frames(path)
    elif content in ("mp4", "avi", "binary"):  # binary: webm, mkv ... ffmpeg says whether it is a video
        frames = _video_frames(path)
    else:
        raise InputRejected(f"{path.name} is not a video or image ({content}, {size} bytes)", code="not_a_video")
    if max_frames is not None:
        frames = frames[:max_frames]
    detection = watermark.detect(frames)
    others = tuple(reader.detect(frames) for reader in readers)
    return Bindings(detection, fp.fingerprint(frames), frames=len(frames), seconds=time.perf_counter() - started,
                    content=content, others=others)


def _working_size(width: int, height: int) -> tuple[int, int]:
    scale = watermark.DECODE_SHORT_SIDE / min(width, height)
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def _image_frames(path: Path, limit: int = 48) -> list[np.ndarray]:
    try:
        with Image.open(path) as image:
            frames = []
            for k, frame in enumerate(ImageSequence.Iterator(image)):
                if k >= limit:
                    break
                rgb = np.asarray(frame.convert("RGB"))
                size = _working_size(rgb.shape[1], rgb.shape[0])
                frames.append(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputRejected(f"cannot decode the image {path.name}: {exc}", code="not_a_video") from exc
    if not frames:
        raise InputRejected(f"{path.name} holds no picture", code="not_a_video")
    return frames


def _video_frames(path: Path) -> list[np.ndarray]:
    from pipeline.errors import EncodeFailed
    from pipeline.probe import ffmpeg_exe, probe_video

    try:
        info = probe_video(path)
        width, height = int(info["width"]), int(info["height"])
    except (EncodeFailed, KeyError, TypeError, ValueError) as exc:
        raise InputRejected(f"{path.name} is not a video alive can read: {exc}", code="not_a_video") from exc
    w, h = _working_size(width, height)
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path),
               "-map", "0:v:0", "-frames:v", str(READ_FRAMES), "-vf", f"scale={w}:{h}:flags=area", "-f", "rawvideo",
               "-pix_fmt", "rgb24", "-"]
    try:
        done = subprocess.run(command, capture_output=True, timeout=READ_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise InputRejected(f"reading {path.name} took longer than {READ_TIMEOUT_S} s", code="not_a_video") from exc
    frame_bytes = w * h * 3
    if done.returncode != 0 or not done.stdout or len(done.stdout) % frame_bytes:
        tail = done.stderr.decode("utf-8", "replace")[-400:]
        raise InputRejected(f"could not decode {path.name}: {tail.strip() or 'no frames'}", code="not_a_video")
    stack = np.frombuffer(done.stdout, dtype=np.uint8).reshape(-1, h, w, 3)
    return list(stack)


def inspect_bytes(data: bytes, suffix: str = "") -> Bindings:
    """``inspect_file`` for bytes in memory (an upload), through a temporary file for ffmpeg."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        tmp.write(data)
        tmp.flush()
        return inspect_file(Path(tmp.name))


# -- asking a repository ---------------------------------------------------------------------------
def lookup(bindings: Bindings, repository: ManifestRepository, limit: int = 5) -> list[Match]:
    """Manifests this content belongs to, best first.

    A watermark id counts only with a fingerprint that agrees (two independent checks: no false
    match from a mis-decoded id or a mark copied onto other pictures); without a usable watermark
    the fingerprint alone is asked."""
    matches: list[Match] = []
    seen: set[str] = set()
    for alg, credential_id in bindings.found_ids():
        for stored in repository.by_binding(alg, binding_value(alg, credential_id), limit):
            score = fp.similarity(bindings.fingerprint, stored.fingerprint)
            if score >= fp.MATCH_THRESHOLD and stored.manifest_id not in seen:
                matches.append(Match(stored, score, "watermark+fingerprint"))
                seen.add(stored.manifest_id)
    if not matches and bindings.fingerprint:
        for match in repository.by_fingerprint(bindings.fingerprint, limit):
            if match.manifest.manifest_id not in seen:
                matches.append(Match(match.manifest, match.similarity, "fingerprint"))
    return sorted(matches, key=lambda m: m.similarity, reverse=True)[:limit]

