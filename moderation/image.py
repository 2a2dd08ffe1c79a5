"""Check a still photo: run every configured image backend and combine their results."""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from moderation.backends import BASE_CATEGORIES, get_image_backends
from moderation.verdict import Verdict, combine, disabled_verdict
from pipeline.errors import InputRejected
from pipeline.settings import ModerationSettings


def resolve_settings(settings: object | None) -> ModerationSettings:
    """``ModerationSettings`` from None (defaults), the section itself, or a whole ``Settings``."""
    if settings is None:
        return ModerationSettings()
    return getattr(settings, "moderation", settings)  # type: ignore[return-value]


def expected_categories(settings: ModerationSettings) -> tuple[str, ...]:
    """Every category an image verdict must account for, as checked or as unchecked."""
    categories: dict[str, None] = dict.fromkeys(BASE_CATEGORIES)
    for backend in get_image_backends(settings):
        categories.update(dict.fromkeys(backend.categories))
    categories.update(dict.fromkeys(settings.unchecked_categories))
    return tuple(categories)


def as_rgb_array(image: object, what: str = "image") -> np.ndarray:
    """A uint8 height x width x 3 array from a PIL RGB image or such an array; anything else is refused.

    Intake already hands us clean RGB; refusing other modes (rather than converting) keeps alpha
    or palette tricks from changing what the classifier sees versus what gets animated.
    """
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            raise InputRejected(
                f"moderation needs an RGB {what}, got a PIL image in mode {image.mode!r}; "
                "pass it through intake (or .convert('RGB')) first",
                code="moderation_input",
            )
        array = np.asarray(image)
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise InputRejected(
            f"moderation needs a PIL RGB image or a uint8 array, got {type(image).__name__}",
            code="moderation_input",
        )
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise InputRejected(
            f"moderation needs a non-empty uint8 array of shape (height, width, 3) for the {what}, "
            f"got dtype {array.dtype} and shape {array.shape}",
            code="moderation_input",
        )
    return array


def warm_up(settings: object | None = None) -> None:
    """Load every configured model now (for worker start-up), so the first job pays no load time."""
    for backend in get_image_backends(resolve_settings(settings)):
        load = getattr(backend, "load", None)
        if load is not None:
            load()


def check_image(image: Image.Image | np.ndarray, settings: ModerationSettings | None = None) -> Verdict:
    """Run the image backends on one photo; the decision is the worst backend's decision."""
    section = resolve_settings(settings)
    rgb = as_rgb_array(image)
    if not section.enabled:
        return disabled_verdict("image", (*BASE_CATEGORIES, *section.unchecked_categories))
    start = time.perf_counter()
    backends = get_image_backends(section)
    results = [backend.check(rgb) for backend in backends]
    return combine("image", results, time.perf_counter() - start, expected=expected_categories(section))
