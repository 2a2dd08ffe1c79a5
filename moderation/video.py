"""Check a generated clip by running the image backends on a few evenly spaced frames.

The photo was checked before generation, but a generator can drift into content the photo did not
contain, so the output is checked again before it is published. Checking every frame would cost
~30 ms each; ``video_sample_frames`` evenly spaced frames, always including the first and the
last, catch drift that builds up over the clip at a fixed cost.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Sequence

import numpy as np

from moderation.backends import BASE_CATEGORIES, get_image_backends
from moderation.image import as_rgb_array, expected_categories, resolve_settings
from moderation.verdict import BackendResult, Verdict, combine, disabled_verdict, worst
from pipeline.errors import InputRejected

if TYPE_CHECKING:
    from pipeline.settings import ModerationSettings


def sample_indices(total: int, count: int) -> list[int]:
    """``count`` distinct frame indices spread evenly over ``total`` frames, first and last included.

    With more samples than frames every frame is used. A single sample is the last frame, the one
    that has drifted furthest from the (already checked) photo.
    """
    if total < 1:
        raise InputRejected("the clip has no frames to check", code="no_frames")
    count = max(1, min(count, total))
    if count == 1:
        return [total - 1]
    step = (total - 1) / (count - 1)  # >= 1, so rounding never maps two samples to one frame
    return [int(np.floor(i * step + 0.5)) for i in range(count)]


def _merge(backend_results: list[tuple[int, BackendResult]]) -> BackendResult:
    """One backend's results over the sampled frames: worst decision, max score per category."""
    first = backend_results[0][1]
    scores: dict[str, float] = {}
    for _, result in backend_results:
        for category, value in result.scores.items():
            scores[category] = max(scores.get(category, value), value)
    decision = worst(result.decision for _, result in backend_results)
    if first.scores:
        # Scored backends: say which frames drove the decision (all of them when it is "allow").
        reasons = tuple(
            f"frame {index}: {reason}"
            for index, result in backend_results
            if result.decision == decision
            for reason in result.reasons
        )
    else:
        reasons = first.reasons  # e.g. "unchecked": the same sentence for every frame
    checked: dict[str, None] = {}
    unchecked: dict[str, None] = {}
    for _, result in backend_results:
        checked.update(dict.fromkeys(result.checked))
        unchecked.update(dict.fromkeys(result.unchecked))
    return BackendResult(
        backend=first.backend,
        version=first.version,
        scores=scores,
        decision=decision,
        reasons=reasons,
        checked=tuple(checked),
        unchecked=tuple(unchecked),
    )


def check_frames(
    frames: Sequence[np.ndarray] | np.ndarray, settings: "ModerationSettings | None" = None
) -> Verdict:
    """Check ``settings.video_sample_frames`` sampled frames; the clip gets the worst frame's decision.

    ``frames`` is a sequence of uint8 height x width x 3 arrays (or PIL RGB images), or one uint8
    array shaped (frames, height, width, 3). Only the sampled frames are validated and read.
    """
    section = resolve_settings(settings)
    if isinstance(frames, np.ndarray) and frames.ndim != 4:
        raise InputRejected(
            f"a clip array must have shape (frames, height, width, 3), got shape {frames.shape}",
            code="moderation_input",
        )
    indices = sample_indices(len(frames), section.video_sample_frames)
    sampled = [(i, as_rgb_array(frames[i], what=f"frame {i}")) for i in indices]
    if not section.enabled:
        return disabled_verdict("video", (*BASE_CATEGORIES, *section.unchecked_categories))
    start = time.perf_counter()
    backends = get_image_backends(section)
    merged = [_merge([(i, backend.check(rgb)) for i, rgb in sampled]) for backend in backends]
    return combine(
        "video", merged, time.perf_counter() - start, expected=expected_categories(section), frames=indices
    )
