"""Stable Video Diffusion through diffusers' ``StableVideoDiffusionPipeline``.

The model (hub id or local directory), revision, dtype and variant come from settings. Weights are
loaded once per process with ``from_pretrained(..., local_files_only=True)``: alive never downloads
at run time. ``alive models pull`` is the one explicit command that fetches weights.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.engines.base import Clip, Engine, GenerationOptions, ProgressFn, pick_seed
from pipeline.errors import ConfigError, GenerationFailed, ModelUnavailable, TransientError

log = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def resolve_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA GPU is visible, else ``cpu``; explicit values are checked."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"engine.device is {requested!r} but no CUDA GPU is visible; use 'auto' or 'cpu'",
                          code="no_gpu")
    if requested != "cpu" and not requested.startswith("cuda"):
        raise ConfigError(f"engine.device must be auto, cpu or cuda[:N], got {requested!r}", code="bad_device")
    return requested


def resolve_dtype(requested: str, device: str):
    """float32 on CPU (bf16/fp16 matmuls are ~200x slower on this AVX2 CPU), float16 on CUDA."""
    import torch

    if requested == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if device == "cpu" and requested != "float32":
        log.warning("engine.dtype=%s on CPU is very slow on most CPUs; float32 is recommended", requested)
    return getattr(torch, _DTYPES[requested])


def _has_variant(path: Path, variant: str) -> bool:
    return any(path.rglob(f"*.{variant}.safetensors")) or any(path.rglob(f"*.{variant}.bin"))


class SvdEngine(Engine):
    """Any SVD / SVD-XT checkpoint in diffusers format (hub cache or local directory)."""

    name = "svd"

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        variant: str | None = None,
        dtype: str = "auto",
        device: str = "auto",
        cache_dir: Path | None = None,
        name: str = "svd",
        note: str | None = None,
    ):
        self.model = model
        self.revision = revision
        self.variant = variant
        self.dtype_name = dtype
        self.device_name = device
        self.cache_dir = cache_dir
        self.name = name
        self.note = note
        self._pipe = None
        self._device: str | None = None
        self._dtype = None
        self._lock = threading.Lock()
        self.load_seconds: float | None = None

    # -- loading ---------------------------------------------------------------------------------
    def load(self) -> None:
        with self._lock:
            if self._pipe is not None:
                return
            import torch
            from diffusers import StableVideoDiffusionPipeline

            device = resolve_device(self.device_name)
            dtype = resolve_dtype(self.dtype_name, device)
            variant = self.variant if dtype != torch.float32 else None
            local = Path(self.model).expanduser()
            if local.exists():
                if not (local / "model_index.json").is_file():
                    raise ModelUnavailable(
                        f"{local} is not a diffusers model folder (no model_index.json). "
                        "Pass the folder written by save_pretrained or `alive models pull`.",
                        details={"model": str(local)},
                    )
                if variant and not _has_variant(local, variant):
                    variant = None
            t0 = time.perf_counter()
            from diffusers.utils import logging as diffusers_logging

            diffusers_logging.disable_progress_bar()  # our own progress display owns the terminal
            try:
                pipe = StableVideoDiffusionPipeline.from_pretrained(
                    str(local) if local.exists() else self.model,
                    revision=self.revision,
                    dtype=dtype,  # diffusers 0.42 renamed torch_dtype; loads in this dtype directly
                    variant=variant,
                    cache_dir=str(self.cache_dir) if self.cache_dir else None,
                    local_files_only=True,
                )
            except (OSError, ValueError) as exc:
                raise ModelUnavailable(self._missing_message(exc), details={"model": self.model}) from exc
            pipe.set_progress_bar_config(disable=True)
            pipe.to(device)
            self._pipe, self._device, self._dtype = pipe, device, dtype
            self.load_seconds = time.perf_counter() - t0
            log.info("loaded %s on %s (%s) in %.1f s", self.model, device, dtype, self.load_seconds)

    def _missing_message(self, exc: Exception) -> str:
        return (
            f"the weights of model {self.model!r}"
            + (f" (revision {self.revision})" if self.revision else "")
            + " are not on this machine, and alive never downloads weights while running. "
            f"Either run `alive models pull {self.model}` on a machine with internet access (then copy "
            "the model folder here), or pass --model /path/to/a/local/diffusers/folder. "
            f"Loader said: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        )

    @property
    def pipe(self):
        self.load()
        return self._pipe

    @property
    def model_label(self) -> str:
        """The model as published in reports and labels: a hub id, or a local folder's name only
        (a full path can reveal user names and directory layout)."""
        local = Path(self.model).expanduser()
        return f"local:{local.name}" if local.exists() or self.model.startswith(("/", ".", "~")) else self.model

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "engine": self.name,
            "model": self.model_label,
            "revision": self.revision,
            "pipeline": "diffusers.StableVideoDiffusionPipeline",
            "device": self._device,
            "dtype": str(self._dtype).replace("torch.", "") if self._dtype is not None else None,
        }
        if self.note:
            d["note"] = self.note
        return d

    # -- generation ------------------------------------------------------------------------------
    def generate(self, image: Image.Image, options: GenerationOptions, progress: ProgressFn | None = None) -> Clip:
        import torch

        pipe = self.pipe
        if image.size != (options.width, options.height):
            raise ValueError(f"image is {image.size}, expected the framed size {(options.width, options.height)}")
        seed = pick_seed(options.seed)
        fps = options.fps or 7
        num_frames = options.num_frames or pipe.unet.config.num_frames
        steps = options.num_inference_steps

        def on_step_end(_pipe, step: int, _timestep, callback_kwargs):
            if progress is not None:
                progress(step + 1, steps)
            return callback_kwargs

        # A CPU generator gives the same noise on every device for a given seed.
        generator = torch.Generator(device="cpu").manual_seed(seed)
        try:
            out = pipe(
                image,
                height=options.height,
                width=options.width,
                num_frames=num_frames,
                num_inference_steps=steps,
                min_guidance_scale=options.min_guidance_scale,
                max_guidance_scale=options.max_guidance_scale,
                fps=fps,
                motion_bucket_id=options.motion_bucket_id,
                noise_aug_strength=options.noise_aug_strength,
                decode_chunk_size=min(options.decode_chunk_size, num_frames),
                generator=generator,
                output_type="np",
                callback_on_step_end=on_step_end,
            )
        except torch.OutOfMemoryError as exc:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise TransientError(
                f"out of GPU memory generating {num_frames} frames at {options.width}x{options.height}; "
                f"lower decode_chunk_size (now {options.decode_chunk_size}) or the frame count and retry",
                code="out_of_memory",
            ) from exc
        except (RuntimeError, MemoryError) as exc:
            if isinstance(exc, MemoryError) or "can't allocate memory" in str(exc):  # CPU out of memory
                raise TransientError(f"out of memory generating {num_frames} frames at {options.width}x"
                                     f"{options.height}: {str(exc).splitlines()[0]}", code="out_of_memory") from exc
            raise GenerationFailed(f"the SVD pipeline failed: {exc}") from exc
        frames = np.asarray(out.frames[0])
        frames = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        notes = [self.note] if self.note else []
        return Clip(frames=frames, fps=float(fps), seed=seed, notes=notes)
