"""Full-size SVD-XT built in code with random weights, for benchmarks.

Compute and memory equal the real ``stabilityai/stable-video-diffusion-img2vid-xt`` (same
architecture, same parameter counts, see ../shared/NOTES.md "Stable Video Diffusion"); only the
values of the weights are random, so the frames are noise. No hub access is needed, which is the
point: the benchmark runs on machines that cannot (or must not) download the 9 GB checkpoint.

Configs (the published component configs of SVD-XT, as diffusers reads them):
- UNet: ``UNetSpatioTemporalConditionModel`` with diffusers' defaults (which are SVD's) and
  ``num_frames=25`` (XT), ``sample_size=96``: 1,524,623,082 parameters.
- VAE: ``AutoencoderKLTemporalDecoder`` with block_out_channels (128, 256, 512, 512), four
  DownEncoderBlock2D, layers_per_block 2 (Stability's ch 128, ch_mult [1, 2, 4, 4],
  num_res_blocks 2): 97,742,847 parameters.
- Image encoder: CLIP ViT-H/14 vision tower with projection to 1024: 632,076,800 parameters.

``meta=True`` builds the same modules on PyTorch's meta device (no memory, instant): used to count
FLOPs for an exact shape with ``torch.utils.flop_counter.FlopCounterMode``.
"""

from __future__ import annotations

from typing import Any

EXPECTED_PARAMS = {"unet": 1_524_623_082, "vae": 97_742_847, "image_encoder": 632_076_800}


def build_svd_xt(dtype: Any = None, *, meta: bool = False, seed: int = 0):
    """A ``StableVideoDiffusionPipeline`` with full-size SVD-XT components and random weights.

    ``dtype`` casts the weights after the (fp32) random init; ``meta=True`` builds without memory.
    """
    import torch
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from pipeline.engines.svd import svd_xt_scheduler

    torch.manual_seed(seed)
    device = torch.device("meta") if meta else torch.device("cpu")
    with device:
        unet = UNetSpatioTemporalConditionModel(num_frames=25, sample_size=96)
        vae = AutoencoderKLTemporalDecoder(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            sample_size=768,
        )
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=1280,
                intermediate_size=5120,
                num_attention_heads=16,
                num_hidden_layers=32,
                patch_size=14,
                image_size=224,
                projection_dim=1024,
                hidden_act="gelu",
            )
        )
    if meta:
        # A few tensors (e.g. the temporal mix factors) are made with torch.Tensor(...), which
        # ignores the device context: move everything explicitly.
        unet, vae, image_encoder = unet.to("meta"), vae.to("meta"), image_encoder.to("meta")
    scheduler = svd_xt_scheduler()
    feature_extractor = CLIPImageProcessor(crop_size=224, size=224)
    pipe = StableVideoDiffusionPipeline(
        vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler, feature_extractor=feature_extractor
    )
    if dtype is not None and not meta:
        pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def param_counts(pipe) -> dict[str, int]:
    """Parameters per component, to check the build against ``EXPECTED_PARAMS``."""
    return {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in EXPECTED_PARAMS}


if __name__ == "__main__":
    counts = param_counts(build_svd_xt(meta=True))
    for name, n in counts.items():
        print(f"{name}: {n:,} ({'ok' if n == EXPECTED_PARAMS[name] else 'MISMATCH, expected ' + format(EXPECTED_PARAMS[name], ',')})")
