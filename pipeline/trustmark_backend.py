"""Adobe TrustMark (MIT) as an optional watermark backend, with weights that alive fetches only on request.

The ``trustmark`` package (0.9.2) downloads its model files from Adobe's CDN into its own package
folder the first time a ``TrustMark`` object is made, and when a download fails it prints the error
and carries on with ``None`` models. Neither is acceptable at job time, so:

- ``pull`` is the only code that touches the network: ``alive models pull trustmark`` calls it. It
  streams each file into a temporary file beside its final place, checks the md5 Adobe's own package
  pins, and only then renames it into place (``os.replace``): a final name never holds a partial or
  wrong file.
- ``TrustMarkBackend`` loads the networks from *our* model cache (``settings.model_cache_dir /
  "trustmark"``) through a subclass of ``trustmark.TrustMark`` whose ``check_and_download`` raises
  instead of downloading and whose ``load_model`` reads our files, verifies their md5 first (a
  checkpoint is a pickle: only the exact file Adobe published is ever unpickled), and fails loudly
  when a network's weights do not match the architecture (upstream loads with ``strict=False`` and
  ignores what is missing).

Payload: the credential id (12 hex digits = 48 bits) in TrustMark's ``BCH_5`` schema (61 data bits,
5 bit errors corrected); the 13 unused data bits are zero and detection requires them to be zero (a
check value on top of the code). The soft binding value follows Adobe's C2PA example:
``"<schema>*<61 data bits>"`` (``"1*0110..."``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import numpy as np

from pipeline.errors import ModelUnavailable
from pipeline.frame import distinct_frames

#: C2PA soft-binding algorithm name. "com.adobe.trustmark.Q" is the entry of the C2PA Soft Binding
#: Algorithm List (github.com/c2pa-org/softbinding-algorithm-list; c2pa-rs copies it as
#: SOFT_BINDING_ALGS) and what Adobe's TrustMark C2PA examples write in ``alg``.
ALGORITHM = "com.adobe.trustmark.Q"

#: Adobe's CDN, the ``MODEL_REMOTE_HOST`` of trustmark 0.9.2 (trustmark/trustmark.py).
BASE_URL = "https://cai-watermark.adobe.net/watermarking/trustmark-models/"

#: The files TrustMark reads to encode and decode, with the md5 values copied from
#: ``MODEL_CHECKSUMS`` in trustmark 0.9.2's trustmark/trustmark.py. ``TrustMark.__init__`` loads
#: ``trustmark_<V>.yaml`` twice (one config for both networks) with ``decoder_<V>.ckpt`` and
#: ``encoder_<V>.ckpt``; the remover (``trustmark_rm_*``) and the box detector (``trustmark_bbox_*``)
#: are not used (we construct it with ``loadRemover=False, loadBBoxDetector=False``).
WEIGHTS: dict[str, dict[str, str]] = {
    "Q": {
        "trustmark_Q.yaml": "fe40df84a7feeebfceb7a7678d7e6ec6",
        "encoder_Q.ckpt": "700328b8754db934b2f6cb5e5185d81f",
        "decoder_Q.ckpt": "4ced90e9cfe13e3295ad082887fe9187",
    },
}

PULL_COMMAND = "alive models pull trustmark"
PIP_EXTRA = "pip install 'alive-pipeline[trustmark]'"
TIMEOUT_S = 60.0  # per socket operation (connect, each read); the files are tens of MB
CHUNK = 1 << 20

ID_BITS = 48
SCHEMA = 1  # TrustMark.Encoding.BCH_5: 61 data bits, corrects 5 flipped bits
SCHEMA_DATA_BITS = 61
MAX_FRAMES = 24  # frames the detector reads at most (spread over the video): ~0.1-0.3 s each on a CPU (est)
WM_STRENGTH = 1.0  # TrustMark's own default


def weights_dir(cache_dir: Path) -> Path:
    """Where the TrustMark files live inside alive's model cache."""
    return Path(cache_dir) / "trustmark"


def _files(variant: str) -> dict[str, str]:
    try:
        return WEIGHTS[variant]
    except KeyError:
        raise ValueError(f"TrustMark variant {variant!r} is not supported; choose one of {sorted(WEIGHTS)}") from None


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _copy_by_hand(folder: Path, files: dict[str, str], base_url: str) -> str:
    return (f"On a machine without that access, download {', '.join(base_url + n for n in files)} elsewhere and "
            f"copy them, under exactly these names ({', '.join(files)}), into {folder}; "
            f"then `{PULL_COMMAND}` (or the first job) checks their md5.")


def pull(cache_dir: Path, variant: str = "Q", base_url: str = BASE_URL) -> Path:
    """Download the TrustMark ``variant`` files into ``weights_dir(cache_dir)``; returns that folder.

    A file already there with the right md5 is kept. Each download streams into a temporary file in
    the same folder and is renamed into place only after its md5 matched; on any failure the
    temporary file is removed and ``ModelUnavailable`` says what happened and how to copy the files
    by hand."""
    files = _files(variant)
    folder = weights_dir(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    host = urllib.parse.urlsplit(base_url).hostname or base_url
    for name, expected in files.items():
        final = folder / name
        if final.is_file():
            if _md5(final) == expected:
                continue
            final.unlink()  # a stale or damaged copy: never leave a wrong file under the final name
        url = base_url + name
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.md5(usedforsecurity=False)
            received = 0
            with os.fdopen(fd, "wb") as out:
                try:
                    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                        declared = response.headers.get("Content-Length")
                        for block in iter(lambda: response.read(CHUNK), b""):
                            out.write(block)
                            digest.update(block)
                            received += len(block)
                except urllib.error.HTTPError as exc:
                    raise ModelUnavailable(
                        f"could not download {url}: HTTP {exc.code} {exc.reason}. "
                        + _copy_by_hand(folder, files, base_url),
                        details={"url": url, "status": exc.code}) from exc
                except (urllib.error.URLError, OSError) as exc:  # DNS, refused, timeout, reset
                    reason = getattr(exc, "reason", None) or exc
                    raise ModelUnavailable(
                        f"could not download {url}: {reason}. `{PULL_COMMAND}` needs network access to {host}. "
                        + _copy_by_hand(folder, files, base_url),
                        details={"url": url, "host": host}) from exc
                out.flush()
                os.fsync(out.fileno())
            if declared is not None and declared.isdigit() and int(declared) != received:
                raise ModelUnavailable(
                    f"download of {url} was cut short: got {received} of {declared} bytes; run `{PULL_COMMAND}` "
                    "again. " + _copy_by_hand(folder, files, base_url), details={"url": url})
            got = digest.hexdigest()
            if got != expected:
                raise ModelUnavailable(
                    f"{url} has md5 {got}, expected {expected} (the checksum trustmark 0.9.2 pins for {name}); "
                    f"the file was discarded and nothing was written to {final}. The server sent a different "
                    "file (a proxy's error page, a changed model?): check the URL, or copy the right file by hand. "
                    + _copy_by_hand(folder, files, base_url), details={"url": url, "md5": got, "expected": expected})
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
    return folder


def missing_files(cache_dir: Path, variant: str = "Q") -> list[str]:
    folder = weights_dir(cache_dir)
    return [n for n in _files(variant) if not (folder / n).is_file() or (folder / n).stat().st_size == 0]


def _import_trustmark():
    """The ``trustmark`` module, or ModelUnavailable naming the extra to install."""
    try:
        import trustmark.trustmark as tm_module
    except (ImportError, RuntimeError, OSError) as exc:  # RuntimeError: a torchvision built for another torch
        raise ModelUnavailable(
            f"the TrustMark watermark backend needs the `trustmark` package, which failed to import ({exc}); "
            f"install it with `{PIP_EXTRA}` (torchvision must match the installed torch: see pyproject.toml), "
            "or set label.watermark_backend: alive",
            details={"backend": "trustmark"}) from exc
    return tm_module


# -- payload -------------------------------------------------------------------------------------
def _id_bits(credential_id: str) -> str:
    try:
        raw = bytes.fromhex(credential_id)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) * 8 != ID_BITS:
        raise ValueError(f"a credential id is {ID_BITS // 4} hex digits, got {credential_id!r}")
    return format(int.from_bytes(raw, "big"), f"0{ID_BITS}b")


def _id_from_bits(bits: str) -> str | None:
    """The credential id from TrustMark's decoded data bits, or None when they cannot be ours."""
    if len(bits) != SCHEMA_DATA_BITS or set(bits) - {"0", "1"} or "1" in bits[ID_BITS:]:
        return None
    return format(int(bits[:ID_BITS], 2), f"0{ID_BITS // 4}x")


def binding_value(credential_id: str) -> str:
    """The soft binding's value in Adobe's convention: ``"<schema>*<61 data bits>"``."""
    return f"{SCHEMA}*" + _id_bits(credential_id).ljust(SCHEMA_DATA_BITS, "0")


def credential_id_from_value(value: str) -> str:
    schema, _, bits = value.partition("*")
    found = _id_from_bits(bits) if schema == str(SCHEMA) else None
    if found is None:
        raise ValueError(f"not a {ALGORITHM} value made by alive: {value!r}")
    return found


class TrustMarkDetection(NamedTuple):
    found: bool
    credential_id: str | None
    confidence: float  # share of the frames read that decoded to the winning id
    frames: int = 0

    def to_dict(self) -> dict:
        return {"found": self.found, "id": self.credential_id, "confidence": round(self.confidence, 3),
                "frames": self.frames, "algorithm": ALGORITHM}


def _frame_list(frames) -> list[np.ndarray]:
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        return [frames]
    return list(frames)


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError("TrustMark frames are (H, W, 3) uint8 RGB arrays, got "
                         f"{getattr(frame, 'shape', type(frame))} {getattr(frame, 'dtype', '')}")


class TrustMarkBackend:
    """TrustMark Q loaded from alive's model cache; never downloads. Load happens on first use."""

    ALGORITHM = ALGORITHM

    def __init__(self, cache_dir: Path, variant: str = "Q", *, device: str = "", strength: float = WM_STRENGTH):
        self.files = _files(variant)
        self.variant = variant
        self.folder = weights_dir(cache_dir)
        self.cache_dir = Path(cache_dir)
        self.device = device
        self.strength = strength
        self._tm: Any = None

    # -- readiness ---------------------------------------------------------------------------
    def available(self) -> bool:
        """True when the weights are in the cache and the ``trustmark`` package imports (md5 is
        checked at load)."""
        if missing_files(self.cache_dir, self.variant):
            return False
        try:
            _import_trustmark()
        except ModelUnavailable:
            return False
        return True

    def require(self) -> None:
        """Raise ModelUnavailable saying what to do when the weights or the package are missing."""
        missing = missing_files(self.cache_dir, self.variant)
        problems = []
        if missing:
            problems.append(f"the TrustMark {self.variant} weights are not in {self.folder} (missing: "
                            f"{', '.join(missing)}); run `{PULL_COMMAND}` once (it needs access to "
                            "cai-watermark.adobe.net; nothing is downloaded at job time)")
        try:
            _import_trustmark()
        except ModelUnavailable as exc:
            problems.append(exc.message)
        if problems:
            raise ModelUnavailable("; and ".join(problems), details={"backend": "trustmark", "missing": missing})

    # -- the model ---------------------------------------------------------------------------
    def _model(self):
        if self._tm is None:
            self.require()
            for name, expected in self.files.items():
                got = _md5(self.folder / name)
                if got != expected:
                    raise ModelUnavailable(
                        f"{self.folder / name} has md5 {got}, expected {expected}: a damaged or different file; "
                        f"delete it and run `{PULL_COMMAND}` again", details={"backend": "trustmark"})
            self._tm = _local_trustmark_class(_import_trustmark(), self.folder)(
                use_ECC=True, verbose=False, secret_len=100, device=self.device, model_type=self.variant,
                encoding_type=SCHEMA, loadRemover=False, loadBBoxDetector=False)
        return self._tm

    # -- embed / detect ----------------------------------------------------------------------
    def embed(self, frames, credential_id: str):
        """Watermark every frame in place ((N,H,W,3) / (H,W,3) uint8 RGB, or a list of such) and
        return ``frames``. Frames that are views of one buffer (a looped story) are marked once."""
        from PIL import Image

        bits = _id_bits(credential_id)
        stack = _frame_list(frames)
        for frame in stack:
            _check_frame(frame)
        tm = self._model()
        for frame in distinct_frames(stack):
            marked = tm.encode(Image.fromarray(np.ascontiguousarray(frame), "RGB"), bits, MODE="binary",
                               WM_STRENGTH=self.strength)
            frame[...] = np.asarray(marked.convert("RGB"), dtype=np.uint8)
        return frames

    def detect(self, frames: Iterable[np.ndarray], max_frames: int = MAX_FRAMES) -> TrustMarkDetection:
        """Decode up to ``max_frames`` distinct frames (spread over the sequence) and vote on the id.
        ``found`` needs the winning id in at least 2 frames (1 for a single image) and in most of
        the frames that decoded at all; ``confidence`` is its share of the frames read."""
        from PIL import Image

        stack = distinct_frames(_frame_list(frames))  # a buffer shown twice (a loop) is one vote, not two
        if not stack:
            return TrustMarkDetection(False, None, 0.0, 0)
        picks = np.unique(np.linspace(0, len(stack) - 1, min(max_frames, len(stack))).round().astype(int))
        tm = self._model()
        votes: Counter[str] = Counter()
        for i in picks:
            frame = stack[int(i)]
            _check_frame(frame)
            bits, detected, schema = tm.decode(Image.fromarray(np.ascontiguousarray(frame), "RGB"), MODE="binary")
            found = _id_from_bits(bits) if detected and schema == SCHEMA else None
            if found:
                votes[found] += 1
        read = len(picks)
        if not votes:
            return TrustMarkDetection(False, None, 0.0, read)
        winner, count = votes.most_common(1)[0]
        # one decoding frame is not enough in a video (BCH alone passes ~1 random word in 10^7 with the
        # zero check bits, est.); a single image decides alone; the winner must also hold the majority
        found = count >= min(2, read) and count * 2 > sum(votes.values())
        return TrustMarkDetection(found, winner if found else None, count / read, read)


def _local_trustmark_class(tm_module, folder: Path):
    """A ``TrustMark`` subclass that reads its files from ``folder`` and can never download."""
    import torch
    from omegaconf import OmegaConf

    class LocalTrustMark(tm_module.TrustMark):
        def check_and_download(self, filename):  # upstream would fetch from MODEL_REMOTE_HOST
            raise ModelUnavailable(f"TrustMark asked to download {Path(filename).name}; alive never downloads at "
                                   f"run time: run `{PULL_COMMAND}`")

        def load_model(self, config_path, weight_path, device, secret_len, part="all"):
            if part not in ("encoder", "decoder"):
                raise ModelUnavailable(f"TrustMark part {part!r} is not used by alive")
            config_file = folder / Path(config_path).name
            weight_file = folder / Path(weight_path).name
            for path in (config_file, weight_file):
                if not path.is_file():
                    self.check_and_download(path)  # raises: never fetches
            config = OmegaConf.load(config_file).model
            # as upstream: keep only the part asked for, every training-only component an Identity
            other = "secret_decoder_config" if part == "encoder" else "secret_encoder_config"
            for key in (other, "discriminator_config", "loss_config", "noise_config"):
                config.params[key].target = "trustmark.model.Identity"
            model = tm_module.instantiate_from_config(config)
            try:
                state = torch.load(weight_file, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - a Lightning checkpoint may hold non-tensor objects
                # safe here only because the md5 of this exact file was checked against Adobe's pin
                state = torch.load(weight_file, map_location="cpu", weights_only=False)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            missing, _unexpected = model.load_state_dict(state, strict=False)
            lost = [k for k in missing if k.startswith(part + ".")]
            if lost:
                raise ModelUnavailable(f"{weight_file.name} does not fit the TrustMark {part} network "
                                       f"({len(lost)} weights missing, e.g. {lost[0]}): a wrong file or version")
            return model.to(device).eval()

    return LocalTrustMark
