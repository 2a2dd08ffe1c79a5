"""The contract every image backend meets, and the shared threshold rule.

A backend is a small object holding its settings (thresholds) and a reference to a model that is
loaded once per process (see ``opennsfw.load_classifier``): building a backend is cheap, the model
is not, so thresholds can change between calls without reloading anything.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import numpy as np

from moderation.verdict import BackendResult, Decision


@runtime_checkable
class ImageBackend(Protocol):
    """Checks one RGB image (uint8, height x width x 3) and says allow / review / block."""

    name: str
    version: str
    categories: tuple[str, ...]  # what ``check`` looks at; never reported as unchecked

    def check(self, rgb: np.ndarray) -> BackendResult: ...


def decide(
    category: str, score: float, review_threshold: float, block_threshold: float
) -> tuple[Decision, str]:
    """Map a probability to a decision and a reason that states the score against the threshold.

    A score at or above a threshold triggers it (so a threshold of 0.0 always triggers). A score
    that is not a finite number means the model misbehaved: we block rather than pass an image
    nobody really looked at.
    """
    if not math.isfinite(score):
        return "block", f"{category} score is {score!r}, not a number; refusing to pass an unchecked image"
    if score >= block_threshold:
        return "block", (
            f"{category} score {score:.3f} is at or above the block threshold {block_threshold:.2f}"
        )
    if score >= review_threshold:
        return "review", (
            f"{category} score {score:.3f} is at or above the review threshold {review_threshold:.2f}"
        )
    return "allow", f"{category} score {score:.3f} is below the review threshold {review_threshold:.2f}"
