"""A tiny, randomly initialised SVD for tests and smoke runs.

It is built in code from the component configs of diffusers' own fast SVD test (with a CLIP vision
tower that takes 224 px input, since the pipeline resizes PIL images to 224 for CLIP), saved once
with ``save_pretrained`` and then loaded through the normal ``from_pretrained`` path by ``SvdEngine``.
Its output is noise: the report says so.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from pipeline.engines.svd import SvdEngine, svd_xt_scheduler
from pipeline.settings import PerformanceSettings

TINY_VERSION = "tiny-svd-v2"
TINY_NOTE = "tiny randomly initialised SVD (tests and smoke runs): the frames are noise, not a real animation"


def build_tiny_svd(directory: Path) -> Path:
    """Build the tiny SVD and save it to ``directory`` (atomically); return the folder."""
    import torch
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32,
        num_attention_heads=8,
        projection_class_embeddings_input_dim=96,  # 3 x addition_time_embed_dim
        addition_time_embed_dim=32,
        num_frames=8,
    )
    scheduler = svd_xt_scheduler()
    torch.manual_seed(0)
    # Four blocks, so the VAE downsamples 8x like the real one (diffusers' test VAE has two, i.e. 2x,
    # which puts the UNet's full self-attention on 16x more latent pixels: minutes per clip on a CPU).
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=[32, 32, 64, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        latent_channels=4,
        layers_per_block=1,
    )
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            projection_dim=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=224,
            intermediate_size=37,
            patch_size=32,
        )
    )
    feature_extractor = CLIPImageProcessor(crop_size=224, size=224)
    pipe = StableVideoDiffusionPipeline(
        vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler, feature_extractor=feature_extractor
    )
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        pipe.save_pretrained(staging)
        try:
            os.rename(staging, directory)
        except OSError:
            if not (directory / "model_index.json").is_file():  # lost a race with nobody: real error
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return directory


def ensure_tiny_svd(cache_dir: Path) -> Path:
    """The tiny model folder under ``cache_dir``, built on first use."""
    folder = cache_dir / TINY_VERSION
    if not (folder / "model_index.json").is_file():
        build_tiny_svd(folder)
    return folder


class TinyEngine(SvdEngine):
    """``SvdEngine`` on the tiny random model: exercises the real loading and sampling code.

    Its default size is 144x256 (still 9:16): plenty to exercise every code path, and seconds on a CPU.
    """

    default_size = (144, 256)

    def __init__(self, cache_dir: Path, device: str = "cpu", performance: PerformanceSettings | None = None):
        super().__init__(
            str(cache_dir / TINY_VERSION), dtype="float32", device=device, name="tiny", note=TINY_NOTE,
            performance=performance,
        )
        self._cache_dir = cache_dir

    def load(self) -> None:
        ensure_tiny_svd(self._cache_dir)
        super().load()
