"""Speed and memory switches for the svd engine (``performance`` settings), kept apart from the
sampling code so that each can be applied, reverted and measured on its own.

- Attention: ``sdpa`` puts diffusers' ``AttnProcessor2_0`` (PyTorch scaled-dot-product attention,
  flash / memory-efficient kernels on CUDA) on the UNet and VAE; ``default`` puts diffusers'
  classic ``AttnProcessor`` (explicit softmax(QK^T)V) there, which is what
  ``set_default_attn_processor`` means in diffusers.
- ``channels_last`` memory format for the UNet and VAE (conv kernels prefer NHWC on tensor cores).
- Memory presets (``PRESETS``, highest first): what stays resident, how the CFG batch runs, how
  many frames the VAE decodes at once. ``choose_preset`` picks one from free GPU memory.
- ``torch.compile`` with shape buckets (``Bucketed``): compiled once per input shape, with
  ``dynamic=False`` so no symbolic-shape graph is ever attempted. The UNet never sees the photo's
  size: pipeline/frame.py fits every photo to the generation size first, so its input is
  (CFG batch, frames, 8, height/8, width/8) for one of a handful of generation sizes. A new photo
  therefore reuses the compiled graph; only a new generation size or frame count compiles (once
  per process), and past ``limit`` shapes calls fall back to eager instead of recompiling forever.
- DeepCache-style feature reuse (``DeepCacheUNet``): on cached steps only the shallowest down and
  up blocks run, fed with the deep features of the last full step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger(__name__)

PRESETS = ("max-speed", "balanced", "low-vram")

GIB = 1024**3
# Activation headroom each preset needs beyond the resident weights, for SVD-XT in fp16 at its full
# workload (25 frames, 576x1024, CFG batch 2, SDPA). These are estimates, not yet measured on a GPU;
# they scale with frames x pixels for other shapes (see ``workload_scale``).
_HEADROOM = {"max-speed": 40 * GIB, "balanced": 16 * GIB}
_FULL_WORKLOAD = 25 * 576 * 1024


@dataclass(frozen=True)
class Preset:
    """What one memory preset does. ``decode_chunk`` maps (frames, requested chunk) to the chunk used.

    The temporal VAE decoder mixes frames within a chunk, so a different chunk gives slightly
    different frames (the reason ``max-speed`` decodes all frames at once). ``AutoencoderKLTemporalDecoder``
    has no VAE slicing in diffusers 0.42; the decode chunk is its equivalent. With ``cfg_split``
    (``low-vram``) feature caching (``cache_interval``) is not used.
    """

    name: str
    offload: bool  # diffusers' enable_model_cpu_offload (CUDA only): one model on the GPU at a time
    forward_chunking: bool  # feed-forward layers one frame at a time (set_forward_chunking)
    cfg_split: bool  # the unconditional and conditional halves run one after the other
    decode_chunk: Callable[[int, int], int]


PRESET_PLANS = {
    "max-speed": Preset("max-speed", False, False, False, lambda frames, requested: frames),
    "balanced": Preset("balanced", False, False, False, lambda frames, requested: min(requested, frames)),
    "low-vram": Preset("low-vram", True, True, True, lambda frames, requested: min(requested, 2, frames)),
}


def workload_scale(width: int, height: int, frames: int) -> float:
    """Frames x pixels relative to SVD-XT's full 25 x 576 x 1024 (activation memory scales with it)."""
    return width * height * frames / _FULL_WORKLOAD


def choose_preset(free_bytes: int, weight_bytes: int, scale: float = 1.0) -> str:
    """The fastest preset whose resident weights plus (scaled) activation headroom fit in
    ``free_bytes`` (free GPU memory before the weights were moved there); ``low-vram`` otherwise."""
    for name in ("max-speed", "balanced"):
        if weight_bytes + _HEADROOM[name] * scale <= free_bytes:
            return name
    return "low-vram"


def next_preset(name: str) -> str | None:
    """The preset one step lower in memory use, or None at the bottom."""
    i = PRESETS.index(name)
    return PRESETS[i + 1] if i + 1 < len(PRESETS) else None


def set_attention(pipe, attention: str) -> None:
    """Put the requested attention processor on every attention layer of the UNet and VAE."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    for model in (pipe.unet, pipe.vae):
        model.set_attn_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())


def set_memory_format(pipe, channels_last: bool) -> None:
    """channels_last for every 4-D weight (2-D convs) of the UNet and VAE.

    ``module.to(memory_format=...)`` refuses these models: the temporal VAE decoder has a Conv3d
    (5-D weight). Activations follow the weights' layout through cuDNN/oneDNN convolutions.
    """
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.no_grad():
        for model in (pipe.unet, pipe.vae):
            for p in model.parameters():
                if p.ndim == 4:
                    p.data = p.data.contiguous(memory_format=fmt)


def is_channels_last(module) -> bool:
    import torch

    weights = [p for p in module.parameters() if p.ndim == 4]
    return bool(weights) and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


def set_residency(pipe, preset: Preset, device: str) -> None:
    """Model CPU offload on for a preset that wants it on CUDA; otherwise everything on ``device``.

    Called on every preset change so that stepping down (or a benchmark flipping presets on the
    same weights) never leaves stale accelerate hooks behind.
    """
    offloaded = bool(getattr(pipe, "_all_hooks", None))
    if preset.offload and device.startswith("cuda"):
        if not offloaded:
            pipe.enable_model_cpu_offload(device=device)
        return
    if offloaded:
        pipe.remove_all_hooks()
    pipe.to(device)


def set_forward_chunking(unet, on: bool) -> None:
    """Feed-forward layers run one frame at a time: less activation memory, same maths.

    Spatial blocks see (batch x frames, tokens, channels) and chunk over dim 0; the temporal blocks
    see (batch x tokens, frames, channels) and always chunk over dim 1 in diffusers 0.42 (the fix
    for diffusers #6258, where they were chunked wrongly and the video came out noisy). Chunking the
    spatial blocks over dim 1 would run the feed-forward one token at a time, far slower.
    The UNet has no public "disable" in diffusers 0.42, so off means chunk size None on every block.
    """
    for module in unet.modules():
        if hasattr(module, "set_chunk_feed_forward"):
            module.set_chunk_feed_forward(chunk_size=1 if on else None, dim=0)


class Bucketed:
    """Call ``compiled`` for up to ``limit`` distinct input shapes, ``eager`` beyond that.

    ``torch.compile(dynamic=False)`` specialises a graph to each input shape; this wrapper makes the
    set of shapes explicit (``shapes``) and bounded, so an unexpected size costs eager speed once,
    never a recompile storm (diffusers issue #10317: SVD recompiling on every new image).
    """

    def __init__(self, eager: Callable, compiled: Callable, limit: int = 8):
        self.eager, self.compiled, self.limit = eager, compiled, limit
        self.shapes: set[tuple] = set()

    @staticmethod
    def _key(args: tuple, kwargs: dict[str, Any]) -> tuple:
        import torch

        values = list(args) + [kwargs[k] for k in sorted(kwargs)]
        return tuple((tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else v
                     for v in values if isinstance(v, (torch.Tensor, int, bool)))

    def __call__(self, *args, **kwargs):
        key = self._key(args, kwargs)
        if key not in self.shapes:
            if len(self.shapes) >= self.limit:
                log.warning("compile bucket limit (%d shapes) reached; running eager for %s", self.limit, key)
                return self.eager(*args, **kwargs)
            self.shapes.add(key)
        return self.compiled(*args, **kwargs)


def compile_bucketed(fn: Callable, backend: str = "inductor", limit: int = 8) -> Bucketed:
    import torch

    return Bucketed(fn, torch.compile(fn, dynamic=False, backend=backend), limit)


class DeepCacheUNet:
    """DeepCache for ``UNetSpatioTemporalConditionModel``: reuse the deep features between steps.

    A full step runs the whole UNet and keeps the input of the last (shallowest) up block. A cached
    step runs only the time embedding, ``conv_in``, the first down block and the last up block,
    feeding that up block with the kept deep features and the fresh shallow skips. Adjacent
    denoising steps change the deep features little (Ma et al., DeepCache, CVPR 2024), and the
    shallow blocks are a fraction of the compute, so every cached step saves most of a UNet pass.
    ``full`` reproduces the diffusers forward exactly (same modules in the same order).
    """

    def __init__(self, unet):
        self.unet = unet

    def _prologue(self, sample, timestep, encoder_hidden_states, added_time_ids):
        """Embeddings and the first down block: what both kinds of step need."""
        import torch

        u = self.unet
        batch, frames = sample.shape[:2]
        t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep], device=sample.device)
        t = t.reshape(-1).to(sample.device).expand(batch)
        emb = u.time_embedding(u.time_proj(t).to(dtype=sample.dtype))
        time_embeds = u.add_time_proj(added_time_ids.flatten()).reshape((batch, -1)).to(emb.dtype)
        emb = (emb + u.add_embedding(time_embeds)).repeat_interleave(frames, dim=0, output_size=batch * frames)
        ehs = encoder_hidden_states.repeat_interleave(frames, dim=0, output_size=batch * frames)
        indicator = torch.zeros(batch, frames, dtype=sample.dtype, device=sample.device)
        h = u.conv_in(sample.flatten(0, 1))
        skips = (h,)
        h, res = self._down(u.down_blocks[0], h, emb, ehs, indicator)
        return (batch, frames), emb, ehs, indicator, h, skips + res

    @staticmethod
    def _down(block, h, emb, ehs, indicator):
        if getattr(block, "has_cross_attention", False):
            return block(hidden_states=h, temb=emb, encoder_hidden_states=ehs, image_only_indicator=indicator)
        return block(hidden_states=h, temb=emb, image_only_indicator=indicator)

    @staticmethod
    def _up(block, h, res, emb, ehs, indicator, upsample_size):
        kw = dict(hidden_states=h, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size,
                  image_only_indicator=indicator)
        if getattr(block, "has_cross_attention", False):
            kw["encoder_hidden_states"] = ehs
        return block(**kw)

    def _epilogue(self, shape, emb, ehs, indicator, deep, skips):
        u = self.unet
        last = u.up_blocks[-1]
        h = self._up(last, deep, skips[-len(last.resnets):], emb, ehs, indicator, None)
        h = u.conv_out(u.conv_act(u.conv_norm_out(h)))
        return h.reshape(*shape, *h.shape[1:])

    def full(self, sample, timestep, encoder_hidden_states, added_time_ids):
        """One whole UNet pass; returns (noise prediction, deep features for later cached steps)."""
        u = self.unet
        shape, emb, ehs, indicator, h, skips = self._prologue(sample, timestep, encoder_hidden_states, added_time_ids)
        for block in u.down_blocks[1:]:
            h, res = self._down(block, h, emb, ehs, indicator)
            skips = skips + res
        h = u.mid_block(hidden_states=h, temb=emb, encoder_hidden_states=ehs, image_only_indicator=indicator)
        factor = 2**u.num_upsamplers
        odd = any(s % factor != 0 for s in sample.shape[-2:])
        for block in u.up_blocks[:-1]:
            res, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
            h = self._up(block, h, res, emb, ehs, indicator, skips[-1].shape[2:] if odd else None)
        return self._epilogue(shape, emb, ehs, indicator, h, skips), h

    def partial(self, sample, timestep, encoder_hidden_states, added_time_ids, deep):
        """A cached step: shallow blocks only, deep features from the last full step."""
        shape, emb, ehs, indicator, _, skips = self._prologue(sample, timestep, encoder_hidden_states, added_time_ids)
        last = self.unet.up_blocks[-1]
        return self._epilogue(shape, emb, ehs, indicator, deep, skips[: len(last.resnets)])
