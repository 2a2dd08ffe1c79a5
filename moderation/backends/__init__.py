"""Image backends and the per-process list of them built from settings.

``get_image_backends`` returns the configured backends followed by the "unchecked" backend, which
is always present so that every image and video verdict names the categories nobody checked.
Backend objects are cheap and cached per settings key; the models behind them are cached per
process by each backend module (see ``opennsfw.load_classifier``) and loaded on first check.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable

from moderation.backends import opennsfw, unchecked
from moderation.backends.base import ImageBackend, decide
from moderation.backends.opennsfw import OpenNSFWBackend
from moderation.backends.unchecked import UncheckedBackend
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.settings import ModerationSettings

__all__ = [
    "ImageBackend",
    "OpenNSFWBackend",
    "UncheckedBackend",
    "BASE_CATEGORIES",
    "available_image_backends",
    "decide",
    "get_image_backends",
]

_FACTORIES: dict[str, Callable[["ModerationSettings"], ImageBackend]] = {
    opennsfw.NAME: lambda s: OpenNSFWBackend(s.nsfw_review_threshold, s.nsfw_block_threshold, s.onnx_threads),
}

# Categories an image verdict always accounts for: if no configured backend checks one, the
# verdict lists it as unchecked (an empty image_backends list must not look like a pass).
BASE_CATEGORIES: tuple[str, ...] = opennsfw.CATEGORIES

_lock = threading.Lock()
_cache: dict[tuple, list[ImageBackend]] = {}


def available_image_backends() -> list[str]:
    """Names accepted in ``moderation.image_backends``."""
    return sorted(_FACTORIES)


def _settings_key(settings: "ModerationSettings") -> tuple:
    return (
        tuple(settings.image_backends),
        tuple(settings.unchecked_categories),
        settings.nsfw_review_threshold,
        settings.nsfw_block_threshold,
        settings.onnx_threads,
    )


def _unknown(name: str) -> ConfigError:
    available = ", ".join(available_image_backends())
    if name == "nudenet":
        # NudeNet is AGPL-3.0: it may only ever be an optional extra, and no backend for it exists yet.
        return ConfigError(
            "moderation backend 'nudenet' is not available in this version of alive (it is AGPL-3.0 "
            f"licensed and would be an optional extra); use one of: {available}",
            code="backend_unavailable",
            details={"available": available_image_backends()},
        )
    return ConfigError(
        f"unknown moderation backend {name!r} in moderation.image_backends; available: {available}",
        code="unknown_backend",
        details={"available": available_image_backends()},
    )


def _build(settings: "ModerationSettings") -> list[ImageBackend]:
    backends: list[ImageBackend] = []
    for name in dict.fromkeys(settings.image_backends):
        if name == unchecked.NAME:
            continue  # always appended below
        factory = _FACTORIES.get(name)
        if factory is None:
            raise _unknown(name)
        backends.append(factory(settings))
    checked = {category: backend.name for backend in backends for category in backend.categories}
    overlap = [c for c in settings.unchecked_categories if c in checked]
    if overlap:
        raise ConfigError(
            f"moderation.unchecked_categories lists {overlap} but backend "
            f"{checked[overlap[0]]!r} checks it; a category is either checked or unchecked, "
            "remove it from one of the two lists",
            code="category_conflict",
        )
    backends.append(UncheckedBackend(settings.unchecked_categories))
    return backends


def get_image_backends(settings: "ModerationSettings") -> list[ImageBackend]:
    """The image backends for ``settings``, built once per distinct configuration per process.

    Raises ``ConfigError`` (code ``unknown_backend`` or ``backend_unavailable``) for a name that
    is not available. Models are not loaded here; each backend loads its model on first check.
    """
    settings = getattr(settings, "moderation", settings)  # also accept the whole Settings
    key = _settings_key(settings)
    with _lock:
        backends = _cache.get(key)
        if backends is None:
            backends = _build(settings)
            _cache[key] = backends
        return list(backends)
