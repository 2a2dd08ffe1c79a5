import numpy as np
import pytest
from PIL import Image

from pipeline.engines import GenerationOptions, get_engine
from pipeline.engines.motion import MotionEngine
from pipeline.engines.svd import SvdEngine
from pipeline.engines.tiny import TINY_VERSION, TinyEngine
from pipeline.errors import ConfigError, ModelUnavailable

W, H = 64, 112


def _image(w=W, h=H):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tiny(data_dir):
    engine = TinyEngine(data_dir / "models")
    engine.load()
    return engine


def test_tiny_loads_through_from_pretrained_and_is_deterministic(tiny, data_dir):
    assert (data_dir / "models" / TINY_VERSION / "model_index.json").is_file()
    assert tiny.describe()["pipeline"] == "diffusers.StableVideoDiffusionPipeline"
    assert tiny.describe()["model"] == f"local:{TINY_VERSION}"  # no local path leaks into reports
    opts = GenerationOptions.build(seed=7, num_frames=2, num_inference_steps=2, width=W, height=H)
    steps = []
    a = tiny(_image(), opts, lambda done, total: steps.append((done, total)))
    b = tiny(_image(), opts)
    c = tiny(_image(), opts.model_copy(update={"seed": 8}))
    assert a.frames.shape == (2, H, W, 3) and a.frames.dtype == np.uint8
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)
    assert steps == [(1, 2), (2, 2)]
    assert a.seed == 7 and a.fps == 7.0
    assert any("noise" in n for n in a.notes)


def test_tiny_uses_the_unet_frame_count_by_default(tiny):
    clip = tiny(_image(), GenerationOptions.build(seed=1, num_inference_steps=1, width=W, height=H))
    assert clip.frames.shape[0] == tiny.pipe.unet.config.num_frames


def test_missing_hub_model_says_how_to_get_it(tmp_path):
    engine = SvdEngine("stabilityai/stable-video-diffusion-img2vid-xt", cache_dir=tmp_path, device="cpu")
    with pytest.raises(ModelUnavailable) as info:
        engine.load()
    msg = str(info.value)
    assert "alive models pull stabilityai/stable-video-diffusion-img2vid-xt" in msg
    assert "--model" in msg and "never downloads" in msg
    assert info.value.exit_code == 5


def test_local_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelUnavailable, match="model_index.json"):
        SvdEngine(str(tmp_path), device="cpu").load()


def test_cuda_requested_without_gpu_is_a_config_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        SvdEngine("x", device="cuda").load()


def test_motion_engine_is_deterministic_and_moves():
    opts = GenerationOptions.build(seed=3, num_frames=12, width=W, height=H)
    a = MotionEngine()(_image(), opts)
    b = MotionEngine()(_image(), opts)
    assert a.frames.shape == (12, H, W, 3) and a.fps == 24.0
    assert np.array_equal(a.frames, b.frames)
    assert np.abs(a.frames[0].astype(int) - a.frames[-1].astype(int)).mean() > 1.0  # it does move
    still = MotionEngine()(_image(), opts.model_copy(update={"motion_bucket_id": 0}))
    assert np.abs(still.frames[0].astype(int) - still.frames[-1].astype(int)).mean() < 0.5


def test_engines_refuse_an_unframed_image():
    opts = GenerationOptions.build(seed=1, num_frames=2, width=W, height=H)
    with pytest.raises(ValueError, match="framed size"):
        MotionEngine()(_image(W + 8, H), opts)


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"width": 100}, "width"),
        ({"height": 8}, "height"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"motion_bucket_id": 5000}, "motion_bucket_id"),
        ({"min_guidance_scale": 4.0, "max_guidance_scale": 2.0}, "must not exceed"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_options_are_bounded(values, fragment):
    with pytest.raises(ConfigError) as info:
        GenerationOptions.build(**values)
    assert fragment in str(info.value)


def test_engine_is_created_once_per_process(settings):
    s = settings.model_copy(update={"engine": settings.engine.model_copy(update={"name": "tiny"})})
    assert get_engine(s) is get_engine(s)
