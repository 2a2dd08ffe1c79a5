"""Stable Video Diffusion with diffusers' ``StableVideoDiffusionPipeline`` components.

The model (hub id or local directory), revision, dtype and variant come from settings. Weights are
loaded once per process with ``from_pretrained(..., local_files_only=True)``: alive never downloads
at run time. ``alive models pull`` is the one explicit command that fetches weights.

Sampling runs our own loop over the pipeline's components rather than ``pipe.__call__``. With every
performance switch off it draws the same noise in the same order and calls the same modules, so it
gives the frames ``pipe.__call__`` gives (tests/test_accel.py checks that); owning the loop is what
makes the switches possible: per-stage timings, CFG dropped on the last steps, DeepCache feature
reuse, the CFG halves run one after the other in ``low-vram``, compiled UNet/VAE calls, and a clean
retry one memory preset lower after running out of memory (see pipeline/engines/accel.py).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.engines import accel
from pipeline.engines.base import Clip, Engine, GenerationOptions, ProgressFn, pick_seed
from pipeline.errors import ConfigError, GenerationFailed, ModelUnavailable, TransientError
from pipeline.settings import PerformanceSettings

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


def svd_xt_scheduler():
    """SVD-XT's own scheduler (its scheduler_config.json), for pipelines built in code (tiny, benchmarks)."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
        num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
        steps_offset=1, timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True,
    )


def _is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator giving up."""
    import torch

    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "can't allocate memory" in str(exc)


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
        performance: PerformanceSettings | None = None,
    ):
        self.model = model
        self.revision = revision
        self.variant = variant
        self.dtype_name = dtype
        self.device_name = device
        self.cache_dir = cache_dir
        self.name = name
        self.note = note
        self.performance = performance or PerformanceSettings()
        self._pipe = None
        self._device: str | None = None
        self._dtype = None
        self._lock = threading.Lock()  # loading
        self._run_lock = threading.Lock()  # one generation at a time: the scheduler and hooks are stateful
        self._preset: str | None = None
        self._compiled: dict[str, accel.Bucketed] = {}
        self._deepcache: accel.DeepCacheUNet | None = None
        self.load_seconds: float | None = None
        self.last_timings: dict[str, Any] = {}

    @classmethod
    def from_pipeline(cls, pipe, *, performance: PerformanceSettings | None = None, name: str = "svd",
                      note: str | None = None, model: str = "in-memory") -> "SvdEngine":
        """An engine over a pipeline already in memory (benchmarks build full-size random weights in code)."""
        engine = cls(model, device=str(pipe.device), name=name, note=note, performance=performance)
        with engine._lock:
            engine._adopt(pipe, str(pipe.device), pipe.unet.dtype)
        return engine

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
            self._adopt(pipe, device, dtype)
            self.load_seconds = time.perf_counter() - t0
            log.info("loaded %s on %s (%s, preset %s) in %.1f s", self.model, device, dtype, self._preset,
                     self.load_seconds)

    def _adopt(self, pipe, device: str, dtype) -> None:
        pipe.set_progress_bar_config(disable=True)
        self._pipe, self._device, self._dtype = pipe, device, dtype
        self._apply(self._resolve_preset())

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
    def preset(self) -> str | None:
        """The memory preset in use (``auto`` resolved; lower after an out-of-memory step-down)."""
        return self._preset

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
            "preset": self._preset,
        }
        if self.note:
            d["note"] = self.note
        return d

    # -- performance switches --------------------------------------------------------------------
    def configure(self, performance: PerformanceSettings) -> None:
        """Apply new performance settings to the loaded weights (every switch is set explicitly, so
        switching back and forth on the same weights is exact: benchmarks measure each on and off)."""
        self.load()
        with self._run_lock:
            self.performance = performance
            self._apply(self._resolve_preset())

    def _resolve_preset(self) -> str:
        """``memory: auto`` -> the fastest preset the free GPU memory allows (``balanced`` on CPU)."""
        wanted = self.performance.memory
        if wanted != "auto":
            return wanted
        if not self._device.startswith("cuda"):
            return "balanced"
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(self._device))
        weights = resident = 0
        for module in (self._pipe.unet, self._pipe.vae, self._pipe.image_encoder):
            for p in module.parameters():
                weights += p.numel() * p.element_size()
                resident += p.numel() * p.element_size() if p.device.type == "cuda" else 0
        w, h = self.default_size
        scale = accel.workload_scale(w, h, self._pipe.unet.config.num_frames)
        chosen = accel.choose_preset(free + resident, weights, scale)
        log.info("memory preset auto -> %s (%.1f GiB free, %.1f GiB weights)", chosen, (free + resident) / accel.GIB,
                 weights / accel.GIB)
        return chosen

    def _apply(self, preset: str) -> None:
        perf, pipe, plan = self.performance, self._pipe, accel.PRESET_PLANS[preset]
        accel.set_residency(pipe, plan, self._device)
        accel.set_attention(pipe, perf.attention)
        accel.set_memory_format(pipe, perf.channels_last)
        accel.set_forward_chunking(pipe.unet, plan.forward_chunking)
        # Offload moves weights in and out around each model call: feature caching (which calls UNet
        # submodules directly, past accelerate's hook) and compiled graphs do not survive that.
        resident = not (plan.offload and self._device.startswith("cuda"))
        self._deepcache = accel.DeepCacheUNet(pipe.unet) if perf.cache_interval > 1 and not plan.cfg_split else None
        if perf.compile and resident and not self._compiled:
            self._compiled = {
                "unet": accel.compile_bucketed(pipe.unet),
                "decoder": accel.compile_bucketed(pipe.vae.decoder),
            }
            dc = accel.DeepCacheUNet(pipe.unet)
            self._compiled.update(dc_full=accel.compile_bucketed(dc.full), dc_partial=accel.compile_bucketed(dc.partial))
        elif not (perf.compile and resident):
            self._compiled = {}
        self._preset = preset

    # -- generation ------------------------------------------------------------------------------
    def generate(self, image: Image.Image, options: GenerationOptions, progress: ProgressFn | None = None) -> Clip:
        self.load()
        if image.size != (options.width, options.height):
            raise ValueError(f"image is {image.size}, expected the framed size {(options.width, options.height)}")
        seed = pick_seed(options.seed)
        fps = options.fps or 7
        num_frames = options.num_frames or self._pipe.unet.config.num_frames
        with self._run_lock:
            try:
                frames = self._sample(image, options, num_frames, fps, seed, progress)
            except (RuntimeError, MemoryError) as exc:
                lower = accel.next_preset(self._preset)
                if not _is_out_of_memory(exc):
                    raise GenerationFailed(f"the SVD pipeline failed: {exc}") from exc
                if lower is None:
                    raise self._out_of_memory(exc, num_frames, options) from exc
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            else:
                return self._clip(frames, fps, seed)
            # Out of the except block, the failed attempt's frames (and the tensors they hold) are gone.
            self._step_down(lower, reason)
            try:
                frames = self._sample(image, options, num_frames, fps, seed, progress)
            except (RuntimeError, MemoryError) as exc:
                if _is_out_of_memory(exc):
                    raise self._out_of_memory(exc, num_frames, options) from exc
                raise GenerationFailed(f"the SVD pipeline failed: {exc}") from exc
        return self._clip(frames, fps, seed, [f"ran out of memory ({reason}); retried with the {lower} preset"])

    def _clip(self, frames: np.ndarray, fps: int, seed: int, extra: list[str] | None = None) -> Clip:
        notes = ([self.note] if self.note else []) + (extra or [])
        return Clip(frames=frames, fps=float(fps), seed=seed, notes=notes)

    def _out_of_memory(self, exc: BaseException, num_frames: int, options: GenerationOptions) -> TransientError:
        where = "GPU memory" if self._device.startswith("cuda") else "memory"
        return TransientError(
            f"out of {where} generating {num_frames} frames at {options.width}x{options.height} even with the "
            f"{self._preset} memory preset; lower decode_chunk_size (now {options.decode_chunk_size}) or the frame "
            f"count, or free memory, and retry",
            code="out_of_memory",
        )

    def _step_down(self, lower: str, reason: str) -> None:
        """Release what the failed attempt held and continue one preset lower (kept for later jobs:
        the memory that ran out is likely to run out again)."""
        import gc

        import torch

        log.warning("out of memory with the %s preset (%s); stepping down to %s", self._preset, reason, lower)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self._apply(lower)

    def warm_up(self, size: tuple[int, int] | None = None) -> float | None:
        """Run one generation so the first real job does not pay for CUDA/cuDNN start-up (and, with
        ``compile``, for compiling): with compile, a full default job at ``size`` (default: the
        engine's size) so every shape a real job uses is compiled; without, a 64x64, 2-frame,
        2-step clip. Returns the seconds spent, or None when ``performance.warmup`` is off."""
        if not self.performance.warmup:
            return None
        self.load()
        t0 = time.perf_counter()
        if self._compiled:
            width, height = size or self.default_size
            options = GenerationOptions.build(seed=0, width=width, height=height)
        else:
            options = GenerationOptions.build(seed=0, num_frames=2, num_inference_steps=2, width=64, height=64)
        self.generate(Image.new("RGB", (options.width, options.height), (128, 128, 128)), options)
        seconds = time.perf_counter() - t0
        log.info("warm-up (%s) took %.1f s", "compile" if self._compiled else "small clip", seconds)
        return seconds

    # -- the sampling loop -----------------------------------------------------------------------
    def _sync(self) -> None:
        if self._device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(torch.device(self._device))

    def _sample(self, image: Image.Image, options: GenerationOptions, num_frames: int, fps: int, seed: int,
                progress: ProgressFn | None) -> np.ndarray:
        """Encode, denoise, decode; same random draws in the same order as ``pipe.__call__``."""
        import torch
        from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import retrieve_timesteps
        from diffusers.utils.torch_utils import randn_tensor

        pipe = self._pipe
        plan = accel.PRESET_PLANS[self._preset]
        width, height, steps = options.width, options.height, options.num_inference_steps
        cfg = options.max_guidance_scale > 1.0
        # A CPU generator gives the same noise on every device for a given seed.
        generator = torch.Generator(device="cpu").manual_seed(seed)
        timings: dict[str, Any] = {"preset": self._preset}
        upcast = pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast
        try:
            with torch.no_grad():
                t0 = time.perf_counter()
                device = pipe._execution_device
                embeddings = pipe._encode_image(image, device, 1, cfg)
                pixels = pipe.video_processor.preprocess(image, height=height, width=width).to(device)
                pixels = pixels + options.noise_aug_strength * randn_tensor(
                    pixels.shape, generator=generator, device=device, dtype=pixels.dtype)
                if upcast:
                    pipe.vae.to(dtype=torch.float32)
                image_latents = pipe._encode_vae_image(pixels, device, 1, cfg).to(embeddings.dtype)
                if upcast:
                    pipe.vae.to(dtype=torch.float16)
                image_latents = image_latents.unsqueeze(1).repeat(1, num_frames, 1, 1, 1)
                # SVD was conditioned on fps - 1 (as the pipeline does)
                time_ids = pipe._get_add_time_ids(fps - 1, options.motion_bucket_id, options.noise_aug_strength,
                                                  embeddings.dtype, 1, 1, cfg).to(device)
                timesteps, _ = retrieve_timesteps(pipe.scheduler, steps, device, None, None)
                latents = pipe.prepare_latents(1, num_frames, pipe.unet.config.in_channels, height, width,
                                               embeddings.dtype, device, generator, None)
                guidance = torch.linspace(options.min_guidance_scale, options.max_guidance_scale, num_frames)
                guidance = guidance.unsqueeze(0).to(device, latents.dtype)[:, :, None, None, None]
                self._sync()
                t1 = time.perf_counter()
                latents, passes = self._denoise(latents, timesteps, embeddings, image_latents, time_ids, guidance,
                                                cfg, plan, progress)
                self._sync()
                t2 = time.perf_counter()
                chunk = plan.decode_chunk(num_frames, options.decode_chunk_size)
                frames = self._decode(latents, num_frames, chunk)
                self._sync()
                t3 = time.perf_counter()
        finally:
            if upcast:
                pipe.vae.to(dtype=torch.float16)  # an OOM mid-encode must not leave the VAE in fp32
            pipe.maybe_free_model_hooks()  # offload: models back to the CPU, hooks re-armed
        timings.update(encode_s=t1 - t0, unet_s=t2 - t1, decode_s=t3 - t2, total_s=t3 - t0, decode_chunk=chunk,
                       **passes)
        self.last_timings = timings
        frames = np.asarray(frames[0])
        return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    def _denoise(self, latents, timesteps, embeddings, image_latents, time_ids, guidance, cfg: bool,
                 plan: accel.Preset, progress: ProgressFn | None):
        """The Euler loop. With CFG the batch is [unconditional, conditional]; from step
        ``cfg_from`` on (``cfg_last_fraction``) only the conditional half runs, i.e. guidance 1.0."""
        import torch

        perf, scheduler = self.performance, self._pipe.scheduler
        steps = len(timesteps)
        cfg_from = steps - round(steps * perf.cfg_last_fraction) if cfg else 0
        deep = None
        passes = {"unet_samples": 0, "cached_samples": 0}
        for i, t in enumerate(timesteps):
            guided = cfg and i < cfg_from
            if cfg and not guided:  # keep the conditional half of each conditioning tensor
                embeddings, image_latents, time_ids = (v.chunk(2)[1] for v in (embeddings, image_latents, time_ids))
                cfg = False
                deep = None  # cached features were computed for the doubled batch
            x = torch.cat([latents] * 2) if guided else latents
            x = torch.cat([scheduler.scale_model_input(x, t), image_latents], dim=2)
            reuse = deep is not None and i % perf.cache_interval != 0
            if reuse:
                noise = self._call("dc_partial", x, t, embeddings, time_ids, deep)
            elif self._deepcache is not None:
                noise, deep = self._call("dc_full", x, t, embeddings, time_ids)
            elif plan.cfg_split and guided:
                noise = torch.cat([self._call("unet", x[k:k + 1], t, embeddings[k:k + 1], time_ids[k:k + 1])
                                   for k in range(2)])
            else:
                noise = self._call("unet", x, t, embeddings, time_ids)
            passes["cached_samples" if reuse else "unet_samples"] += x.shape[0]
            if guided:
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance * (cond - uncond)
            latents = scheduler.step(noise, t, latents).prev_sample
            if progress is not None:
                progress(i + 1, steps)
        return latents, passes

    def _call(self, what: str, x, t, embeddings, time_ids, *extra):
        """One UNet evaluation: compiled (shape-bucketed) when compile is on, eager otherwise."""
        fn = self._compiled.get(what)
        if what == "unet":
            fn = fn or self._pipe.unet
            return fn(x, t, encoder_hidden_states=embeddings, added_time_ids=time_ids, return_dict=False)[0]
        fn = fn or getattr(self._deepcache, what.removeprefix("dc_"))
        return fn(x, t, embeddings, time_ids, *extra)

    def _decode(self, latents, num_frames: int, chunk: int):
        """VAE-decode ``chunk`` frames at a time (what ``pipe.decode_latents`` does), compiled when on."""
        import torch

        pipe = self._pipe
        z = 1 / pipe.vae.config.scaling_factor * latents.flatten(0, 1)
        decoder = self._compiled.get("decoder")
        parts = []
        for i in range(0, z.shape[0], chunk):
            part = z[i:i + chunk]
            if decoder is not None:
                indicator = torch.zeros(1, part.shape[0], dtype=part.dtype, device=part.device)
                parts.append(decoder(part, num_frames=part.shape[0], image_only_indicator=indicator))
            else:
                parts.append(pipe.vae.decode(part, num_frames=part.shape[0]).sample)
        frames = torch.cat(parts)
        frames = frames.reshape(-1, num_frames, *frames.shape[1:]).permute(0, 2, 1, 3, 4).float()
        return pipe.video_processor.postprocess_video(video=frames, output_type="np")

