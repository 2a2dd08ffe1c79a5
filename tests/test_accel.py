"""Performance switches of the svd engine, on the tiny random SVD (CPU, seconds).

What runs for real here: our sampling loop against diffusers' own ``pipe.__call__``, every switch
applied to and removed from the same loaded weights, DeepCache, CFG dropped on late steps,
torch.compile (``backend="eager"``: dynamo's tracing and guards, no C++ build) and the preset
step-down after running out of memory. A real CUDA out-of-memory cannot happen on a CPU machine,
so those tests raise ``torch.OutOfMemoryError`` from a forward pre-hook on the UNet: the same
exception type at the same place a GPU would raise it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.engines import accel
from pipeline.engines.base import GenerationOptions
from pipeline.engines.svd import SvdEngine
from pipeline.engines.tiny import ensure_tiny_svd
from pipeline.errors import ConfigError, GenerationFailed, ModelUnavailable, TransientError
from pipeline.quality import psnr
from pipeline.settings import PerformanceSettings

SIZE = 64
PLAIN = PerformanceSettings(attention="sdpa", channels_last=False, memory="balanced", warmup=False)
OPTS = GenerationOptions.build(seed=11, num_frames=4, num_inference_steps=4, width=SIZE, height=SIZE,
                               decode_chunk_size=4)


def _image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def engine(data_dir):
    e = SvdEngine(str(ensure_tiny_svd(data_dir / "models")), dtype="float32", device="cpu", performance=PLAIN)
    e.load()
    return e


@pytest.fixture(autouse=True)
def _plain(engine):
    engine.configure(PLAIN)
    yield
    engine.configure(PLAIN)


def _with(engine, **changes) -> None:
    engine.configure(PLAIN.model_copy(update=changes))


def test_our_loop_gives_the_frames_of_the_diffusers_call(engine):
    ours = engine(_image(), OPTS).frames
    out = engine.pipe(_image(), height=SIZE, width=SIZE, num_frames=4, num_inference_steps=4, decode_chunk_size=4,
                      generator=torch.Generator("cpu").manual_seed(11), output_type="np").frames[0]
    assert np.array_equal(ours, (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8))
    t = engine.last_timings
    assert t["preset"] == "balanced" and t["unet_samples"] == 8 and t["cached_samples"] == 0
    assert min(t["encode_s"], t["unet_s"], t["decode_s"]) > 0


def test_switches_are_applied_and_removed(engine):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    def processors():
        return {type(p) for m in (engine.pipe.unet, engine.pipe.vae) for p in m.attn_processors.values()}

    def chunk_sizes():
        return {m._chunk_size for m in engine.pipe.unet.modules() if hasattr(m, "set_chunk_feed_forward")}

    assert processors() == {AttnProcessor2_0} and not accel.is_channels_last(engine.pipe.unet)
    _with(engine, attention="default", channels_last=True, memory="low-vram")
    assert processors() == {AttnProcessor}
    assert accel.is_channels_last(engine.pipe.unet) and accel.is_channels_last(engine.pipe.vae)
    assert engine.preset == "low-vram" and chunk_sizes() == {1}
    engine(_image(), OPTS)
    assert engine.last_timings["decode_chunk"] == 2  # low-vram decodes two frames at a time
    engine.configure(PLAIN)
    assert processors() == {AttnProcessor2_0} and not accel.is_channels_last(engine.pipe.unet)
    assert engine.preset == "balanced" and chunk_sizes() == {None}
    _with(engine, memory="max-speed")
    engine(_image(), OPTS.model_copy(update={"decode_chunk_size": 2}))
    assert engine.last_timings["decode_chunk"] == 4  # all frames at once
    _with(engine, memory="auto")
    assert engine.preset == "balanced"  # no GPU memory to go by on a CPU


@pytest.mark.parametrize(
    "free_gib, weights_gib, scale, expected",
    [(80, 4.6, 1.0, "max-speed"), (40, 4.6, 1.0, "balanced"), (20, 4.6, 1.0, "low-vram"),
     (16, 4.6, 0.25, "max-speed"), (9, 4.6, 0.25, "balanced"), (4, 4.6, 0.01, "low-vram")],
)
def test_preset_is_chosen_from_free_memory(free_gib, weights_gib, scale, expected):
    gib = accel.GIB
    assert accel.choose_preset(int(free_gib * gib), int(weights_gib * gib), scale) == expected


def test_switches_that_keep_the_maths_keep_the_frames(engine):
    """Same seed -> same frames under each switch; forward chunking and running the CFG halves one
    after the other (low-vram) change nothing beyond float rounding; warm-up changes nothing."""
    reference = engine(_image(), OPTS.model_copy(update={"decode_chunk_size": 2})).frames
    _with(engine, memory="low-vram")
    low = engine(_image(), OPTS).frames
    assert np.abs(low.astype(int) - reference).max() <= 1
    for changes in ({"attention": "default"}, {"channels_last": True}, {"cache_interval": 2},
                    {"cfg_last_fraction": 0.5}):
        _with(engine, **changes)
        assert np.array_equal(engine(_image(), OPTS).frames, engine(_image(), OPTS).frames), changes
    _with(engine, warmup=True)
    before = engine(_image(), OPTS).frames
    assert engine.warm_up() > 0
    assert np.array_equal(engine(_image(), OPTS).frames, before)


def test_fewer_unet_evaluations_with_a_quality_figure(engine):
    full = engine(_image(), OPTS).frames
    _with(engine, cache_interval=2)
    cached = engine(_image(), OPTS).frames
    assert (engine.last_timings["unet_samples"], engine.last_timings["cached_samples"]) == (4, 4)
    _with(engine, cfg_last_fraction=0.5)
    late = engine(_image(), OPTS).frames
    assert engine.last_timings["unet_samples"] == 6  # 2 guided steps x 2 + 2 unguided x 1
    # Random weights: the figures only show the guard is computable and finite, not image quality.
    assert np.isfinite(psnr(full, cached)) and np.isfinite(psnr(full, late))


def test_deepcache_full_step_is_the_unet_forward(engine):
    unet = engine.pipe.unet
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 9, 10, generator=g)  # odd latent size: exercises the upsample-size path
    e, ids, t = torch.randn(2, 1, 32, generator=g), torch.randn(2, 3, generator=g), torch.tensor(5.0)
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=e, added_time_ids=ids, return_dict=False)[0]
        out, _deep = accel.DeepCacheUNet(unet).full(x, t, e, ids)
    assert torch.equal(ref, out)


def test_compile_buckets_do_not_recompile_for_new_inputs_of_a_known_shape():
    import torch._dynamo

    torch._dynamo.reset()
    conv = torch.nn.Conv2d(3, 4, 3)
    calls = []

    def backend(gm, example_inputs):
        calls.append(tuple(tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)))
        return gm.forward

    bucketed = accel.compile_bucketed(conv, backend=backend, limit=2)
    with torch.no_grad():
        for seed in range(3):  # three different "photos", one framed size: one graph
            bucketed(torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed)))
        assert len(calls) == 1
        bucketed(torch.randn(1, 3, 24, 16))  # a second generation size: compiled once
        assert len(calls) == 2 and len(bucketed.shapes) == 2
        out = bucketed(torch.randn(1, 3, 32, 16))  # past the limit: eager, no third graph
        assert len(calls) == 2 and out.shape == (1, 4, 30, 14)


class _OutOfMemoryOnce:
    """Forward pre-hook that raises what CUDA raises, on the first ``times`` UNet calls."""

    def __init__(self, times: int = 1, exc: type[Exception] = torch.OutOfMemoryError):
        self.left, self.exc = times, exc

    def __call__(self, module, args):
        if self.left:
            self.left -= 1
            raise self.exc("CUDA out of memory. Tried to allocate 20.00 GiB (injected by the test)")


def test_out_of_memory_steps_down_one_preset_and_retries(engine):
    _with(engine, memory="low-vram")
    expected = engine(_image(), OPTS).frames
    engine.configure(PLAIN)
    handle = engine.pipe.unet.register_forward_pre_hook(_OutOfMemoryOnce())
    try:
        clip = engine(_image(), OPTS)
    finally:
        handle.remove()
    assert engine.preset == "low-vram"
    assert any("retried with the low-vram preset" in n for n in clip.notes)
    assert np.array_equal(clip.frames, expected)
    assert engine.pipe.vae.dtype == torch.float32 and engine.pipe.unet.dtype == torch.float32
    again = engine(_image(), OPTS)  # the pipeline is intact: a second call works, same frames
    assert np.array_equal(again.frames, expected) and not any("retried" in n for n in again.notes)


def test_out_of_memory_at_the_lowest_preset_is_a_transient_error(engine):
    _with(engine, memory="low-vram")
    handle = engine.pipe.unet.register_forward_pre_hook(_OutOfMemoryOnce(times=2))
    try:
        with pytest.raises(TransientError) as info:
            engine(_image(), OPTS)
    finally:
        handle.remove()
    assert info.value.code == "out_of_memory" and "low-vram" in str(info.value)
    assert engine(_image(), OPTS).frames.shape == (4, SIZE, SIZE, 3)


def test_other_failures_do_not_step_down(engine):
    handle = engine.pipe.unet.register_forward_pre_hook(_OutOfMemoryOnce(exc=RuntimeError))
    try:
        with pytest.raises(GenerationFailed):
            engine(_image(), OPTS)
    finally:
        handle.remove()
    assert engine.preset == "balanced"


# -- several clips per UNet batch -------------------------------------------------------------------


def test_a_batch_gives_each_clip_the_frames_its_seed_gives_alone(engine):
    alone = [engine(_image(k), OPTS.model_copy(update={"seed": 20 + k})).frames for k in range(3)]
    clips = engine.generate_batch([_image(k) for k in range(3)], OPTS, [20, 21, 22])
    t = engine.last_timings
    assert t["batch"] == 3 and t["unet_samples"] == 3 * 2 * 4  # 3 clips, CFG doubles, 4 steps
    for k, clip in enumerate(clips):
        assert clip.seed == 20 + k and clip.frames.shape == alone[k].shape
        # batched kernels may round differently in the last bit of a float, never more than 1/255
        assert np.abs(clip.frames.astype(int) - alone[k]).max() <= 1, k
    assert not np.array_equal(clips[0].frames, clips[1].frames)


def test_a_batch_runs_its_cfg_halves_apart_in_low_vram(engine):
    alone = engine(_image(1), OPTS.model_copy(update={"seed": 5, "decode_chunk_size": 2})).frames
    _with(engine, memory="low-vram")  # decodes two frames at a time
    clips = engine.generate_batch([_image(0), _image(1)], OPTS, [4, 5])
    assert engine.last_timings["batch"] == 2
    assert np.abs(clips[1].frames.astype(int) - alone).max() <= 1


def test_a_batch_that_runs_out_of_memory_is_made_one_clip_at_a_time(engine):
    alone = [engine(_image(k), OPTS.model_copy(update={"seed": 30 + k})).frames for k in range(2)]

    def batch_too_big(module, args):
        if args[0].shape[0] > 2:  # a lone clip with CFG is 2 samples: only the batch fails
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB (injected by the test)")

    handle = engine.pipe.unet.register_forward_pre_hook(batch_too_big)
    try:
        clips = engine.generate_batch([_image(0), _image(1)], OPTS, [30, 31])
    finally:
        handle.remove()
    assert engine.preset == "balanced"  # the batch was split, the preset kept
    for k, clip in enumerate(clips):
        assert np.array_equal(clip.frames, alone[k])
        assert any("batch of 2 clips ran out of memory" in n for n in clip.notes)


def test_engines_without_a_model_batch_make_the_clips_one_by_one():
    from pipeline.engines.motion import MotionEngine

    engine = MotionEngine()
    opts = GenerationOptions.build(width=64, height=64, num_frames=4, fps=8)
    clips = engine.generate_batch([_image(0), _image(1)], opts, [1, 2])
    assert [c.seed for c in clips] == [1, 2]
    assert np.array_equal(clips[1].frames, engine(_image(1), opts.model_copy(update={"seed": 2})).frames)


# -- few-step consistency sampling (AnimateLCM-SVD) -------------------------------------------------


def test_consistency_schedule_is_every_tenth_point_of_the_karras_ramp():
    from pipeline.engines.samplers import ConsistencySampler

    sampler = ConsistencySampler()
    sampler.set_timesteps(4)
    ramp = np.array([0, 10, 20, 30]) / 39
    expected = (700 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 700 ** (1 / 7))) ** 7
    assert np.allclose(sampler.sigmas.numpy(), np.append(expected, 0), rtol=1e-6)
    assert np.allclose(sampler.timesteps.numpy(), 0.25 * np.log(expected))
    assert sampler.sigmas[0] == pytest.approx(700) and sampler.init_noise_sigma == pytest.approx((700 ** 2 + 1) ** 0.5)
    with pytest.raises(ValueError, match="1 to 40 steps"):
        sampler.set_timesteps(41)


def test_consistency_steps_land_on_the_models_clean_estimate():
    """A model whose v-prediction points exactly at a known clean sample x0: every step re-noises x0
    to the next sigma (fresh noise), and the last step returns x0 itself."""
    from pipeline.engines.samplers import ConsistencySampler

    sampler = ConsistencySampler()
    sampler.set_timesteps(3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 2, 4, 3, 3, generator=g, dtype=torch.float64)
    x = torch.randn(x0.shape, generator=g, dtype=torch.float64) * sampler.init_noise_sigma
    for i, t in enumerate(sampler.timesteps):
        sigma, following = float(sampler.sigmas[i]), float(sampler.sigmas[i + 1])
        scaled = sampler.scale_model_input(x, t)
        assert torch.allclose(scaled, x / (sigma ** 2 + 1) ** 0.5)
        v = (x / (sigma ** 2 + 1) - x0) * (sigma ** 2 + 1) ** 0.5 / sigma
        x = sampler.step(v, t, x, generator=g).prev_sample
        if following:
            assert 0.5 < float((x - x0).std() / following) < 1.5  # x0 plus noise of the next sigma
    assert torch.allclose(x, x0)


def test_consistency_sampler_runs_few_steps_without_cfg_unless_the_job_says(engine):
    _with(engine, sampler="consistency")
    unset = GenerationOptions.build(seed=3, num_frames=4, width=SIZE, height=SIZE, decode_chunk_size=4)
    resolved = engine.resolve(unset)
    assert resolved.num_inference_steps == 4 and resolved.max_guidance_scale == 1.0
    first = engine(_image(), resolved).frames
    assert engine.last_timings["unet_samples"] == 4  # 4 steps x 1 sample: no CFG
    assert np.array_equal(engine(_image(), resolved).frames, first)  # the seed decides the fresh noise too
    assert not np.array_equal(engine(_image(), resolved.model_copy(update={"seed": 4})).frames, first)
    chosen = engine.resolve(unset.model_copy(update={"num_inference_steps": 6, "max_guidance_scale": 1.5}))
    assert (chosen.num_inference_steps, chosen.max_guidance_scale) == (6, 1.5)
    engine(_image(), chosen)
    assert engine.last_timings["unet_samples"] == 6 * 2
    assert engine.describe()["sampler"] == "consistency"
    with pytest.raises(ConfigError, match="at most 40 steps"):
        engine.resolve(unset.model_copy(update={"num_inference_steps": 50}))
    batch = engine.generate_batch([_image(0), _image()], resolved, [2, 3])
    assert np.abs(batch[1].frames.astype(int) - first).max() <= 1
    _with(engine)
    assert engine.resolve(unset).num_inference_steps == 25  # euler: the options' own default


def test_unet_weights_file_replaces_the_unet_and_a_wrong_file_is_refused(data_dir, tmp_path):
    from safetensors.torch import save_file

    model = ensure_tiny_svd(data_dir / "models")
    base = SvdEngine(str(model), dtype="float32", device="cpu", performance=PLAIN)
    state = {k: v.clone() * 1.5 for k, v in base.pipe.unet.state_dict().items()}
    save_file(state, tmp_path / "distilled.safetensors")
    swapped = SvdEngine(str(model), dtype="float32", device="cpu", performance=PLAIN,
                        unet_weights=tmp_path / "distilled.safetensors")
    for key, value in swapped.pipe.unet.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert swapped.describe()["unet_weights"] == "distilled.safetensors"
    assert not np.array_equal(swapped(_image(), OPTS).frames, base(_image(), OPTS).frames)

    save_file({k: v.contiguous() for k, v in base.pipe.vae.state_dict().items()}, tmp_path / "vae.safetensors")
    for name, message in (("vae.safetensors", "does not fit the model's UNet"), ("absent.safetensors", "does not exist")):
        with pytest.raises(ModelUnavailable, match=message):
            SvdEngine(str(model), dtype="float32", device="cpu", performance=PLAIN,
                      unet_weights=tmp_path / name).load()
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "distilled.safetensors").read_bytes()[:1000])
    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        SvdEngine(str(model), dtype="float32", device="cpu", performance=PLAIN,
                  unet_weights=tmp_path / "cut.safetensors").load()
