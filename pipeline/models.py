"""The one place that downloads model weights, and only when a person runs `alive models pull`."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import ModelUnavailable


def pull(model: str, *, revision: str | None = None, variant: str | None = "fp16",
         cache_dir: Path | None = None) -> Path:
    """Download a diffusers SVD checkpoint into the hub cache and return its local folder."""
    from diffusers import StableVideoDiffusionPipeline

    try:
        folder = StableVideoDiffusionPipeline.download(
            model, revision=revision, variant=variant, cache_dir=str(cache_dir) if cache_dir else None
        )
    except Exception as exc:  # noqa: BLE001 - any hub/network failure means the same thing to the user
        raise ModelUnavailable(
            f"could not download {model!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. "
            "This command needs access to the model hub (and, for gated models, a token in HF_TOKEN). "
            "On an offline machine copy a downloaded model folder here and pass --model /path/to/it.",
            details={"model": model},
        ) from exc
    return Path(folder)
