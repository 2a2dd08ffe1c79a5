"""Generation engines: ``svd`` (diffusers SVD/SVD-XT), ``tiny`` (random tiny SVD), ``motion`` (classical)."""

from __future__ import annotations

import threading

from pipeline.engines.base import Clip, Engine, GenerationOptions, ProgressFn
from pipeline.settings import EngineSettings, Settings

__all__ = ["Clip", "Engine", "GenerationOptions", "ProgressFn", "get_engine", "engine_class", "ENGINE_NAMES"]

ENGINE_NAMES = ("motion", "svd", "tiny")

_engines: dict[tuple, Engine] = {}
_lock = threading.Lock()


def get_engine(settings: Settings) -> Engine:
    """The engine named in settings, created once per process and kept (weights stay loaded)."""
    cfg: EngineSettings = settings.engine
    key = (cfg.name, cfg.model, cfg.revision, cfg.variant, cfg.dtype, cfg.device, str(cfg.cache_dir), str(cfg.unet_weights),
           str(settings.model_cache_dir), settings.performance.model_dump_json())
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = _create(cfg, settings)
    return engine


def engine_class(name: str) -> type[Engine]:
    """The class of the engine called ``name``, imported but not created (no weights, no torch)."""
    if name == "motion":
        from pipeline.engines.motion import MotionEngine

        return MotionEngine
    if name == "tiny":
        from pipeline.engines.tiny import TinyEngine

        return TinyEngine
    if name == "svd":
        from pipeline.engines.svd import SvdEngine

        return SvdEngine
    from pipeline.errors import ConfigError

    raise ConfigError(f"unknown engine {name!r}: choose one of {', '.join(ENGINE_NAMES)}", code="bad_option")


def _create(cfg: EngineSettings, settings: Settings) -> Engine:
    if cfg.name == "motion":
        from pipeline.engines.motion import MotionEngine

        return MotionEngine()
    if cfg.name == "tiny":
        from pipeline.engines.tiny import TinyEngine

        return TinyEngine(settings.model_cache_dir, device=cfg.device, performance=settings.performance)
    from pipeline.engines.svd import SvdEngine

    return SvdEngine(cfg.model, revision=cfg.revision, variant=cfg.variant, dtype=cfg.dtype,
                     device=cfg.device, cache_dir=cfg.cache_dir, performance=settings.performance,
                     unet_weights=cfg.unet_weights)
