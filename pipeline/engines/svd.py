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
from pipeline.engines.samplers import ConsistencySampler
from pipeline.errors import ConfigError, GenerationFailed, ModelUnavailable, TransientError
from pipeline.provenance import TRAINED_ALGORITHMIC_MEDIA
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
    # a trained diffusion model makes every frame (also ``tiny``: the same code on random weights)
    digital_source_type = TRAINED_ALGORITHMIC_MEDIA

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
        unet_weights: Path | None = None,
    ):
        self.model = model
        self.unet_weights = Path(unet_weights).expanduser() if unet_weights else None
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
        self._scheduler = None  # the sampler the loop uses: the pipeline's own Euler, or ConsistencySampler
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
            if self.unet_weights:
                self._load_unet_weights(pipe.unet)
            self._adopt(pipe, device, dtype)
            self.load_seconds = time.perf_counter() - t0
            log.info("loaded %s on %s (%s, preset %s) in %.1f s", self.model, device, dtype, self._preset,
                     self.load_seconds)

    def _load_unet_weights(self, unet) -> None:
        """Replace the UNet's weights with a state dict file (AnimateLCM-SVD-xt ships its distilled
        UNet this way); every key must match, or the file is for another architecture."""
        from safetensors.torch import load_file

        path = self.unet_weights
        if not path.is_file():
            raise ModelUnavailable(f"engine.unet_weights {path} does not exist; pass the .safetensors file of "
                                   "a UNet for this model (e.g. AnimateLCM-SVD-xt-1.1.safetensors)",
                                   details={"unet_weights": path.name})
        try:
            state = load_file(str(path))
            missing, unexpected = unet.load_state_dict(state, strict=False)
        except Exception as exc:  # a truncated file, wrong format, or tensors of other shapes
            raise ModelUnavailable(f"engine.unet_weights {path.name} could not be loaded into the model's UNet: "
                                   f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                                   details={"unet_weights": path.name}) from exc
        if missing or unexpected:
            raise ModelUnavailable(
                f"engine.unet_weights {path.name} does not fit the model's UNet ({len(missing)} weights missing, "
                f"{len(unexpected)} unknown, e.g. {(missing or unexpected)[0]}); it belongs to another architecture",
                details={"unet_weights": path.name})
        log.info("loaded UNet weights from %s (%d tensors)", path.name, len(state))

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
        if self.unet_weights:
            d["unet_weights"] = self.unet_weights.name
        if self.performance.sampler != "euler":
            d["sampler"] = self.performance.sampler
        if self.note:
            d["note"] = self.note
        return d

    def resolve(self, options: GenerationOptions) -> GenerationOptions:
        """The engine's size; with the few-step consistency sampler also its step count and no CFG,
        where the job did not set them."""
        options = super().resolve(options)
        if self.performance.sampler != "consistency":
            return options
        update: dict[str, Any] = {}
        if "num_inference_steps" not in options.model_fields_set:
            update["num_inference_steps"] = self.performance.few_steps
        if "max_guidance_scale" not in options.model_fields_set:
            update["max_guidance_scale"] = max(1.0, options.min_guidance_scale)
        resolved = options.model_copy(update=update)
        if resolved.num_inference_steps > ConsistencySampler.train_steps:
            raise ConfigError(f"the consistency sampler takes at most {ConsistencySampler.train_steps} steps, "
                              f"got {resolved.num_inference_steps}", code="bad_option")
        return resolved

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
        self._scheduler = ConsistencySampler() if perf.sampler == "consistency" else pipe.scheduler
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
        return self.generate_batch([image], options, [options.seed], progress)[0]

    def generate_batch(self, images: list[Image.Image], options: GenerationOptions, seeds: list[int | None],
                       progress: ProgressFn | None = None) -> list[Clip]:
        """Animate several framed images of one size in one UNet batch: each clip draws its noise from
        its own seed, so it is the clip ``generate`` makes alone (up to float rounding of batched
        kernels). Out of memory with more than one clip: they are made one at a time instead."""
        self.load()
        for image in images:
            if image.size != (options.width, options.height):
                raise ValueError(f"image is {image.size}, expected the framed size {(options.width, options.height)}")
        seeds = [pick_seed(s) for s in seeds]
        fps = options.fps or 7
        num_frames = options.num_frames or self._pipe.unet.config.num_frames
        with self._run_lock:
            try:
                videos = self._sample(images, options, num_frames, fps, seeds, progress)
            except (RuntimeError, MemoryError) as exc:
                if not _is_out_of_memory(exc):
                    raise GenerationFailed(f"the SVD pipeline failed: {exc}") from exc
                lower = accel.next_preset(self._preset)
                if len(images) == 1 and lower is None:
                    raise self._out_of_memory(exc, num_frames, options) from exc
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            else:
                return [self._clip(frames, fps, seed) for frames, seed in zip(videos, seeds)]
            # Out of the except block, the failed attempt's frames (and the tensors they hold) are gone.
            if len(images) > 1:
                log.warning("out of memory with %d clips in one batch (%s); making them one at a time",
                            len(images), reason)
                self._release()
        if len(images) > 1:
            note = f"a batch of {len(images)} clips ran out of memory ({reason}); this clip was made alone"
            clips = [self.generate(image, options.model_copy(update={"seed": seed}), progress)
                     for image, seed in zip(images, seeds)]
            return [Clip(frames=c.frames, fps=c.fps, seed=c.seed, notes=c.notes + [note]) for c in clips]
        with self._run_lock:
            self._step_down(lower, reason)
            try:
                videos = self._sample(images, options, num_frames, fps, seeds, progress)
            except (RuntimeError, MemoryError) as exc:
                if _is_out_of_memory(exc):
                    raise self._out_of_memory(exc, num_frames, options) from exc
                raise GenerationFailed(f"the SVD pipeline failed: {exc}") from exc
        return [self._clip(videos[0], fps, seeds[0], [f"ran out of memory ({reason}); retried with the {lower} preset"])]

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
        log.warning("out of memory with the %s preset (%s); stepping down to %s", self._preset, reason, lower)
        self._release()
        self._apply(lower)

    @staticmethod
    def _release() -> None:
        """Give back what a failed attempt held (its tensors are unreferenced by now)."""
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

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

    def _sample(self, images: list[Image.Image], options: GenerationOptions, num_frames: int, fps: int,
                seeds: list[int], progress: ProgressFn | None) -> list[np.ndarray]:
        """Encode, denoise, decode; for one image the same random draws in the same order as
        ``pipe.__call__``. A batch lays its clips out as the pipeline would (``[unconditional...,
        conditional...]`` with CFG); each clip draws from its own generator."""
        import torch
        from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import retrieve_timesteps
        from diffusers.utils.torch_utils import randn_tensor

        pipe = self._pipe
        plan = accel.PRESET_PLANS[self._preset]
        width, height, steps = options.width, options.height, options.num_inference_steps
        cfg = options.max_guidance_scale > 1.0
        # CPU generators give the same noise on every device for a given seed.
        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        batch = len(images)
        timings: dict[str, Any] = {"preset": self._preset, "batch": batch}
        upcast = pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast
        try:
            with torch.no_grad():
                t0 = time.perf_counter()
                device = pipe._execution_device
                embeddings, image_latents = [], []
                for image, generator in zip(images, generators):
                    embeddings.append(pipe._encode_image(image, device, 1, False))
                    pixels = pipe.video_processor.preprocess(image, height=height, width=width).to(device)
                    pixels = pixels + options.noise_aug_strength * randn_tensor(
                        pixels.shape, generator=generator, device=device, dtype=pixels.dtype)
                    if upcast:
                        pipe.vae.to(dtype=torch.float32)
                    image_latents.append(pipe._encode_vae_image(pixels, device, 1, False))
                    if upcast:
                        pipe.vae.to(dtype=torch.float16)
                embeddings, image_latents = torch.cat(embeddings), torch.cat(image_latents)
                if cfg:  # the unconditional half is zeros, as in the pipeline
                    embeddings = torch.cat([torch.zeros_like(embeddings), embeddings])
                    image_latents = torch.cat([torch.zeros_like(image_latents), image_latents])
                image_latents = image_latents.to(embeddings.dtype).unsqueeze(1).repeat(1, num_frames, 1, 1, 1)
                # SVD was conditioned on fps - 1 (as the pipeline does)
                time_ids = pipe._get_add_time_ids(fps - 1, options.motion_bucket_id, options.noise_aug_strength,
                                                  embeddings.dtype, batch, 1, cfg).to(device)
                timesteps, _ = retrieve_timesteps(self._scheduler, steps, device, None, None)
                scale = pipe.vae_scale_factor
                shape = (batch, num_frames, pipe.unet.config.in_channels // 2, height // scale, width // scale)
                noise_from = generators[0] if batch == 1 else generators
                latents = randn_tensor(shape, generator=noise_from, device=device, dtype=embeddings.dtype)
                latents = latents * self._scheduler.init_noise_sigma
                guidance = torch.linspace(options.min_guidance_scale, options.max_guidance_scale, num_frames)
                guidance = guidance.unsqueeze(0).to(device, latents.dtype)[:, :, None, None, None]
                self._sync()
                t1 = time.perf_counter()
                latents, passes = self._denoise(latents, timesteps, embeddings, image_latents, time_ids, guidance,
                                                cfg, plan, progress, noise_from)
                self._sync()
                t2 = time.perf_counter()
                chunk = plan.decode_chunk(num_frames, options.decode_chunk_size)
                # clip by clip: the temporal decoder must never see two clips' frames as one sequence
                videos = [self._decode(latents[k:k + 1], num_frames, chunk)[0] for k in range(batch)]
                self._sync()
                t3 = time.perf_counter()
        finally:
            if upcast:
                pipe.vae.to(dtype=torch.float16)  # an OOM mid-encode must not leave the VAE in fp32
            pipe.maybe_free_model_hooks()  # offload: models back to the CPU, hooks re-armed
        timings.update(encode_s=t1 - t0, unet_s=t2 - t1, decode_s=t3 - t2, total_s=t3 - t0, decode_chunk=chunk,
                       **passes)
        self.last_timings = timings
        return [(np.clip(np.asarray(v), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8) for v in videos]

    def _denoise(self, latents, timesteps, embeddings, image_latents, time_ids, guidance, cfg: bool,
                 plan: accel.Preset, progress: ProgressFn | None, generator=None):
        """The Euler loop. With CFG the batch is [unconditional, conditional]; from step
        ``cfg_from`` on (``cfg_last_fraction``) only the conditional half runs, i.e. guidance 1.0."""
        import torch

        perf, scheduler = self.performance, self._scheduler
        fresh_noise = {"generator": generator} if getattr(scheduler, "needs_generator", False) else {}
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
            elif plan.cfg_split and guided:  # the unconditional half, then the conditional one
                noise = torch.cat([self._call("unet", xh, t, eh, th)
                                   for xh, eh, th in zip(x.chunk(2), embeddings.chunk(2), time_ids.chunk(2))])
            else:
                noise = self._call("unet", x, t, embeddings, time_ids)
            passes["cached_samples" if reuse else "unet_samples"] += x.shape[0]
            if guided:
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance * (cond - uncond)
            latents = scheduler.step(noise, t, latents, **fresh_noise).prev_sample
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

