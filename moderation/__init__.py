"""Content checks for photos, prompts and generated clips.

``check_image``, ``check_prompt`` and ``check_frames`` return a ``Verdict``; ``enforce`` raises
``pipeline.errors.ModerationBlocked`` when a verdict must stop the job. Models load lazily, once
per process, on the first check (or at ``warm_up``), never at import.
"""

from moderation.backends import ImageBackend, available_image_backends, get_image_backends
from moderation.image import check_image, warm_up
from moderation.text import check_prompt
from moderation.verdict import BackendResult, Decision, Verdict, enforce
from moderation.video import check_frames, sample_indices

__all__ = [
    "BackendResult",
    "Decision",
    "ImageBackend",
    "Verdict",
    "available_image_backends",
    "check_frames",
    "check_image",
    "check_prompt",
    "enforce",
    "get_image_backends",
    "sample_indices",
    "warm_up",
]
