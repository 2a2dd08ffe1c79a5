"""Generation speed: the plain diffusers call against our svd engine, each performance switch on and off.

    .venv/bin/python benchmarks/generate_bench.py [--device auto|cpu|cuda] [--quick] [--write]

Full-size SVD-XT with random weights (benchmarks/svd_full.py: compute identical to the real model).
CUDA: 25 frames, 576x1024 (portrait, the engine's size; same pixels as 1024x576), 25 steps, CFG on,
fp16. CPU: a reduced shape (128x256, 4 frames, 2 steps, fp32) so it finishes in minutes; the UNet,
VAE and CLIP are still full size, so per-step cost is real but the shape is not the production one.

Baseline, in the same process on the same weights: ``StableVideoDiffusionPipeline.__call__`` with
diffusers' defaults (modules as ``from_pretrained`` leaves them, decode_chunk_size=8 as diffusers'
docs use), its stages timed with forward hooks (encode = start to the first UNet call, UNet loop =
first to last UNet call, decode = the rest). Ours: ``SvdEngine.from_pipeline`` with default
performance settings, then one switch changed per row. FLOPs: counted with
``torch.utils.flop_counter.FlopCounterMode`` on a meta-device copy for the exact shapes of each run.
Peak memory: ``torch.cuda.max_memory_allocated`` (CUDA) or the process's peak RSS (VmHWM, reset
before each run through /proc/self/clear_refs; it includes the ~9 GiB of fp32 weights).
Quality guard: PSNR/SSIM of each row's frames against ours with default settings (same seed and
weights). With random weights the frames are structured noise, so these figures show how far a
switch moves the output, not how good a real video looks.

Two further kinds of rows:
- few-step: ``PerformanceSettings(sampler="consistency")`` (the multistep consistency sampler that
  AnimateLCM-SVD-xt's UNet is distilled for) with 4 steps and no CFG, i.e. 4 UNet samples where the
  25-step CFG baseline takes 50. Random weights are not AnimateLCM's, so its frames say nothing about
  quality. On CPU the reduced shape has only 2 steps (4 samples with CFG), so the speed-up a 25-step
  run would see is estimated from the baseline's measured per-sample UNet time, and labelled so.
- several clips: 2 clips (astronaut, seed s; chelsea, seed s+1) made one after the other with two
  engine calls, against the same 2 in one ``generate_batch`` call (one UNet batch); seconds per clip
  and clips per hour for each. The batch row's guard compares its first clip with the sequential
  row's first clip (same image and seed: the same clip up to float rounding of batched kernels).

Prints a Markdown section; ``--write`` appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.engines.accel import DeepCacheUNet  # noqa: E402
from pipeline.engines.base import GenerationOptions  # noqa: E402
from pipeline.engines.svd import SvdEngine  # noqa: E402
from pipeline.frame import fit_to_size  # noqa: E402
from pipeline.quality import psnr, ssim  # noqa: E402
from pipeline.settings import PerformanceSettings  # noqa: E402
from svd_full import EXPECTED_PARAMS, build_svd_xt, param_counts  # noqa: E402

SHAPES = {  # device -> (width, height, frames, steps)
    "cuda": (576, 1024, 25, 25),
    "cpu": (128, 256, 4, 2),
}
QUICK_SHAPES = {"cuda": (576, 1024, 25, 25), "cpu": (64, 128, 2, 1)}
DOCS_DECODE_CHUNK = 8  # diffusers' SVD docs: pipe(image, decode_chunk_size=8)
# The modules exactly as from_pretrained leaves them (SDPA processors, contiguous weights, resident):
DIFFUSERS_STATE = PerformanceSettings(attention="sdpa", channels_last=False, memory="balanced", warmup=False)


@dataclass
class Row:
    name: str
    settings: str
    encode_s: float
    unet_s: float
    decode_s: float
    total_s: float
    peak_bytes: int
    flops: float
    unet_flops: float
    samples: str
    frames: np.ndarray = field(repr=False)
    notes: str = ""
    clips: int = 1  # clips this row made (its times and FLOPs are for all of them)
    kind: str = ""  # "few-step", "sequential", "batch": rows the report explains below the table
    all_frames: list = field(default_factory=list, repr=False)  # every clip's frames (frames = the first)
    reference: "Row | None" = field(default=None, repr=False)  # guard against this row instead of ours default
    guard_note: str = ""

    @property
    def per_clip_s(self) -> float:
        return self.total_s / self.clips


# -- measuring ----------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def peak(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class StageClock:
    """Forward hooks on the UNet: the first call ends the encode stage, the last call ends the loop."""

    def __init__(self, unet, device: str):
        self.device, self.first, self.last = device, None, None
        self._handles = [unet.register_forward_pre_hook(self._pre), unet.register_forward_hook(self._post)]

    def _pre(self, module, args):
        if self.first is None:
            sync(self.device)
            self.first = time.perf_counter()

    def _post(self, module, args, output):
        sync(self.device)
        self.last = time.perf_counter()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


class FlopTable:
    """FLOPs of each stage for one shape, counted once on the meta device (2 FLOPs per MAC)."""

    def __init__(self, width: int, height: int, frames: int):
        from torch.utils.flop_counter import FlopCounterMode

        meta = build_svd_xt(meta=True)
        self._meta, self._frames, self._latent = meta, frames, (height // 8, width // 8)

        def count(fn) -> float:
            with FlopCounterMode(display=False) as fc, torch.no_grad():
                fn()
            return float(fc.get_total_flops())

        m = "meta"
        h, w = self._latent
        self.encode = count(lambda: meta.image_encoder(torch.empty(1, 3, 224, 224, device=m))) + count(
            lambda: meta.vae.encode(torch.empty(1, 3, height, width, device=m)))
        x = torch.empty(1, frames, 8, h, w, device=m)
        t, ehs, ids = torch.tensor(1.0, device=m), torch.empty(1, 1, 1024, device=m), torch.empty(1, 3, device=m)
        self.unet_sample = count(lambda: meta.unet(x, t, encoder_hidden_states=ehs, added_time_ids=ids))
        dc = DeepCacheUNet(meta.unet)
        with torch.no_grad():
            _, deep = dc.full(x, t, ehs, ids)
        self.cached_sample = count(lambda: dc.partial(x, t, ehs, ids, deep))
        self._count = count

    def decode(self, chunk: int) -> float:
        h, w = self._latent
        total, left = 0.0, self._frames
        while left > 0:
            n = min(chunk, left)
            total += self._count(lambda: self._meta.vae.decode(torch.empty(n, 4, h, w, device="meta"), num_frames=n))
            left -= n
        return total


# -- runs ---------------------------------------------------------------------------------------
def load_note(loads: list[float]) -> str:
    """Other processes on the machine inflate wall times: say so when the load average was above
    what this process's own threads account for."""
    busiest, own = max(loads), torch.get_num_threads()
    return f"load average up to {busiest:.1f} during the row (this process: ~{own})" if busiest > own + 0.5 else ""


def run_baseline(pipe, image, shape, seed: int, device: str, flops: FlopTable, cfg: bool, repeats: int) -> Row:
    width, height, frames, steps = shape
    best, loads = None, []
    for _ in range(repeats):
        reset_peak(device)
        clock = StageClock(pipe.unet, device)
        try:
            sync(device)
            t0 = time.perf_counter()
            out = pipe(image, height=height, width=width, num_frames=frames, num_inference_steps=steps,
                       decode_chunk_size=DOCS_DECODE_CHUNK, generator=torch.Generator("cpu").manual_seed(seed),
                       output_type="np").frames[0]
            sync(device)
            t3 = time.perf_counter()
        finally:
            clock.remove()
        loads.append(os.getloadavg()[0])
        if best is None or t3 - t0 < best[3]:
            best = (clock.first - t0, clock.last - clock.first, t3 - clock.last, t3 - t0, peak(device), out)
    samples = steps * (2 if cfg else 1)
    unet_flops = flops.unet_sample * samples
    return Row("baseline: `StableVideoDiffusionPipeline.__call__`", f"diffusers defaults, decode_chunk_size={DOCS_DECODE_CHUNK}",
               *best[:5], flops.encode + unet_flops + flops.decode(DOCS_DECODE_CHUNK), unet_flops, f"{samples} / 0",
               (np.clip(best[5], 0, 1) * 255 + 0.5).astype(np.uint8), load_note(loads))


def run_ours(engine: SvdEngine, name: str, perf: PerformanceSettings, changed: str, image, options, device: str,
             flops: FlopTable, repeats: int, *, images: list | None = None, seeds: list[int] | None = None,
             together: bool = False, kind: str = "") -> Row:
    """One clip with ``engine(image, options)``; or, with ``images``/``seeds``, several clips: one
    engine call each (``together=False``) or one ``generate_batch`` call (one UNet batch)."""
    engine.configure(perf)
    images, seeds = images or [image], seeds or [options.seed]
    notes = []
    if perf.compile:
        warm = engine.warm_up((options.width, options.height))
        notes.append(f"compile + warm-up {warm:.0f} s before timing")
    best, loads = None, []
    for _ in range(repeats):
        reset_peak(device)
        sync(device)
        t0 = time.perf_counter()
        if together:
            clips = engine.generate_batch(images, options, seeds)
            parts = [dict(engine.last_timings)]
        else:
            clips, parts = [], []
            for img, seed in zip(images, seeds):
                clips.append(engine(img, options.model_copy(update={"seed": seed})))
                parts.append(dict(engine.last_timings))
        total = time.perf_counter() - t0
        mem = peak(device)
        loads.append(os.getloadavg()[0])
        if best is None or total < best[0]:
            best = (total, mem, parts, [c.frames for c in clips])
    total, mem, parts, frames = best
    t = {k: sum(p[k] for p in parts) for k in ("encode_s", "unet_s", "unet_samples", "cached_samples")}
    first = parts[0]
    notes.append(load_note(loads))
    n = len(images)
    unet_flops = flops.unet_sample * t["unet_samples"] + flops.cached_sample * t["cached_samples"]
    all_flops = n * (flops.encode + flops.decode(first["decode_chunk"])) + unet_flops
    return Row(name, changed + f" (preset {first['preset']}, decode chunk {first['decode_chunk']})", t["encode_s"],
               t["unet_s"], total - t["encode_s"] - t["unet_s"], total, mem, all_flops, unet_flops,
               f"{t['unet_samples']} / {t['cached_samples']}", frames[0], "; ".join(x for x in notes if x),
               clips=n, kind=kind, all_frames=frames)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="smallest shape, fewer rows (a smoke run)")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile on CPU (slow to compile)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per row, the fastest kept")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--write", action="store_true", help="append the section to benchmarks/RESULTS.md")
    args = ap.parse_args()

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cuda = device == "cuda"
    width, height, frames, steps = (QUICK_SHAPES if args.quick else SHAPES)[device]
    repeats = args.repeats
    dtype = torch.float16 if cuda else torch.float32

    t = time.perf_counter()
    pipe = build_svd_xt()
    counts = param_counts(pipe)
    assert counts == EXPECTED_PARAMS, counts
    pipe.to(device) if dtype == torch.float32 else pipe.to(device, dtype)
    build_s = time.perf_counter() - t
    flops = FlopTable(width, height, frames)
    photo = Image.open(REPO / "examples" / "astronaut.jpg").convert("RGB")
    image, _ = fit_to_size(photo, width, height, "crop")
    options = GenerationOptions.build(seed=args.seed, num_frames=frames, num_inference_steps=steps, width=width,
                                      height=height, decode_chunk_size=DOCS_DECODE_CHUNK)
    cfg = options.max_guidance_scale > 1.0

    engine = SvdEngine.from_pipeline(pipe, performance=DIFFUSERS_STATE, model="svd-xt-random-full-size")
    # One small clip first so neither side pays for first-call start-up (oneDNN/cuBLAS handles, allocator).
    engine.configure(DIFFUSERS_STATE.model_copy(update={"warmup": True}))
    warm_small = engine.warm_up()
    print(f"built in {build_s:.0f} s; warm-up {warm_small:.1f} s", flush=True)

    engine.configure(DIFFUSERS_STATE)
    rows = [run_baseline(pipe, image, (width, height, frames, steps), args.seed, device, flops, cfg, repeats)]
    print(rows[-1].name, f"{rows[-1].total_s:.1f} s", flush=True)
    default = PerformanceSettings()
    variants: list[tuple[str, dict]] = [("ours, default settings", {})]
    if not args.quick:
        variants += [
            ("ours, attention default (classic AttnProcessor)", {"attention": "default"}),
            ("ours, channels_last off", {"channels_last": False}),
        ]
    if cuda and not args.quick:  # on CPU auto is balanced, and max-speed equals it when frames <= the chunk
        variants += [("ours, memory max-speed", {"memory": "max-speed"}), ("ours, memory balanced", {"memory": "balanced"})]
    variants.append(("ours, memory low-vram", {"memory": "low-vram"}))
    if not args.quick:
        variants += [
            ("ours, cfg_last_fraction 0.5" if not cuda else "ours, cfg_last_fraction 0.2",
             {"cfg_last_fraction": 0.5 if not cuda else 0.2}),
            ("ours, cache_interval 2 (DeepCache)", {"cache_interval": 2}),
        ]
        if cuda:
            variants += [("ours, cache_interval 3 (DeepCache)", {"cache_interval": 3})]
        if cuda or args.compile:
            variants += [("ours, compile", {"compile": True}),
                         ("ours, compile + cfg_last_fraction 0.2 + cache_interval 2",
                          {"compile": True, "cfg_last_fraction": 0.2, "cache_interval": 2})]
    for name, changes in variants:
        changed = ", ".join(f"{k}={v}" for k, v in changes.items()) or "PerformanceSettings() defaults"
        rows.append(run_ours(engine, name, default.model_copy(update=changes), changed, image, options, device,
                             flops, repeats))
        print(name, f"{rows[-1].total_s:.1f} s", flush=True)
    # Few-step: the consistency sampler, 4 steps, no CFG (set explicitly, as engine.resolve would fill them).
    few = GenerationOptions.build(seed=args.seed, num_frames=frames, num_inference_steps=4, width=width,
                                  height=height, decode_chunk_size=DOCS_DECODE_CHUNK, max_guidance_scale=1.0)
    rows.append(run_ours(engine, "ours, few-step consistency sampler (4 steps, no CFG)",
                         default.model_copy(update={"sampler": "consistency"}),
                         "sampler=consistency, num_inference_steps=4, max_guidance_scale=1.0", image, few, device,
                         flops, repeats, kind="few-step"))
    rows[-1].guard_note = "other sampler, random weights: not a quality figure"
    print(rows[-1].name, f"{rows[-1].total_s:.1f} s", flush=True)
    # Several clips: the same two images and seeds one after the other, then in one UNet batch.
    second, _ = fit_to_size(Image.open(REPO / "examples" / "chelsea.jpg").convert("RGB"), width, height, "crop")
    pair, seeds = [image, second], [args.seed, args.seed + 1]
    rows.append(run_ours(engine, "ours, 2 clips one after the other", default,
                         f"two engine calls (astronaut seed {seeds[0]}, chelsea seed {seeds[1]})", image, options,
                         device, flops, repeats, images=pair, seeds=seeds, kind="sequential"))
    sequential = rows[-1]
    print(rows[-1].name, f"{rows[-1].total_s:.1f} s", flush=True)
    rows.append(run_ours(engine, "ours, 2 clips in one UNet batch (batch_clips=2)", default,
                         f"one generate_batch call, same images and seeds {seeds}", image, options, device, flops,
                         repeats, images=pair, seeds=seeds, together=True, kind="batch"))
    rows[-1].reference, rows[-1].guard_note = sequential, "clip 1 vs the sequential row's clip 1"
    print(rows[-1].name, f"{rows[-1].total_s:.1f} s", flush=True)
    # The baseline once more at the end: if the machine got busier or quieter during the run, the two
    # baseline rows disagree and every ratio should be read with that spread in mind.
    engine.configure(DIFFUSERS_STATE)
    rows.append(run_baseline(pipe, image, (width, height, frames, steps), args.seed, device, flops, cfg, repeats))
    rows[-1].name = "baseline again (end of run)"
    if cuda and not args.quick:
        pipe.to(dtype=torch.bfloat16)
        rows.append(run_ours(engine, "ours, default settings, bf16 weights", default, "dtype=bfloat16", image,
                             options, device, flops, repeats))

    text = report(rows, args, device, (width, height, frames, steps), repeats, build_s, warm_small, flops)
    print(text)
    if args.write:
        with open(REPO / "benchmarks" / "RESULTS.md", "a") as f:
            f.write(text)


def report(rows: list[Row], args, device: str, shape, repeats: int, build_s: float, warm_small: float,
           flops: FlopTable) -> str:
    import diffusers

    width, height, frames, steps = shape
    cuda = device == "cuda"
    base, ours = rows[0], rows[1]
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True,
                           text=True).stdout.strip()
    if cuda:
        dev = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
        mem_label = "peak GPU memory"
    else:
        dev = f"CPU only, {platform.machine()}, {torch.get_num_threads()} threads"
        mem_label = "peak RSS (incl. weights)"
    flags = ([f"--device {args.device}"] + ["--quick"] * args.quick + ["--compile"] * args.compile
             + [f"--repeats {repeats}"] * (repeats != 2))
    cmd = f"`.venv/bin/python benchmarks/generate_bench.py {' '.join(flags)}`"
    label = ("full production shape" if cuda and not args.quick else
             "REDUCED SHAPE (CPU): full-size SVD-XT weights, but a small frame size, frame count and step count")
    lines = [
        f"\n## generate: SVD-XT generation, diffusers call vs ours ({dt.date.today()}, commit {commit}"
        + (" + uncommitted working tree" if dirty else "") + ")\n",
        f"Command: {cmd}",
        f"Device: {dev}; torch {torch.__version__}, diffusers {diffusers.__version__}; "
        f"{'fp16' if cuda else 'fp32'} weights, random init (UNet 1,524,623,082 / VAE 97,742,847 / CLIP 632,076,800 params, "
        f"checked), built in {build_s:.0f} s.",
        f"Shape: {label}: {width}x{height}, {frames} frames, {steps} steps, CFG on (guidance 1.0 -> 3.0), seed {args.seed}; "
        f"best of {repeats} timed run(s) per row after a {warm_small:.1f} s small warm-up clip.",
        f"FLOPs for this shape (meta-device count): UNet {flops.unet_sample / 1e12:.2f} TFLOP per sample-pass "
        f"(CFG step = 2 samples), cached DeepCache pass {flops.cached_sample / 1e12:.2f} TFLOP, "
        f"encode (CLIP + VAE) {flops.encode / 1e12:.2f} TFLOP, decode {flops.decode(frames) / 1e12:.2f} TFLOP.",
        "",
        "Rows that make 2 clips give stage and total seconds, samples and FLOPs for both clips together; "
        "`s per clip (clips/h)` divides by the clips made, and speed-up compares seconds per clip.",
        "",
        f"| row | settings | encode s | UNet loop s | decode s | total s | s per clip (clips/h) | speed-up vs baseline "
        f"| {mem_label} | UNet samples full / cached | TFLOP/s (all / UNet) | PSNR dB / SSIM vs ours default |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        guard = "reference" if r is ours else guard_text(r.reference or ours, r)
        if r.guard_note:
            guard += f" ({r.guard_note})"
        lines.append(
            f"| {r.name} | {r.settings}{'; ' + r.notes if r.notes else ''} | {r.encode_s:.2f} | {r.unet_s:.2f} | "
            f"{r.decode_s:.2f} | {r.total_s:.2f} | {r.per_clip_s:.2f} ({3600 / r.per_clip_s:.0f}) | "
            f"{base.per_clip_s / r.per_clip_s:.2f}x | {r.peak_bytes / 2**30:.2f} GiB | "
            f"{r.samples} | {r.flops / r.total_s / 1e12:.2f} / {r.unet_flops / r.unet_s / 1e12:.2f} | {guard} |")
    lines += explain_new_rows(rows, base, cuda, steps, args.seed)
    if not cuda:
        lines += [
            "",
            "GPU (full shape 576x1024, 25 frames, 25 steps, fp16; `.venv/bin/python benchmarks/generate_bench.py "
            "--device cuda`): no GPU was available for this run.",
            "",
            "| row | total s | speed-up vs baseline | peak GPU memory | TFLOP/s |",
            "| --- | --- | --- | --- | --- |",
        ] + [f"| {name} | not yet measured | not yet measured | not yet measured | not yet measured |" for name in (
            "baseline: `StableVideoDiffusionPipeline.__call__`", "ours, default settings", "ours, memory low-vram",
            "ours, compile", "ours, compile + cfg_last_fraction 0.2 + cache_interval 2",
            "ours, default settings, bf16 weights", "ours, few-step consistency sampler (4 steps, no CFG)",
            "ours, 2 clips one after the other", "ours, 2 clips in one UNet batch (batch_clips=2)")]
    return "\n".join(lines) + "\n"


def guard_text(ref: Row, r: Row, a: np.ndarray | None = None, b: np.ndarray | None = None) -> str:
    a, b = ref.frames if a is None else a, r.frames if b is None else b
    p = psnr(a, b)
    return f"{'inf' if p == float('inf') else f'{p:.1f}'} / {ssim(a, b):.4f}"


def explain_new_rows(rows: list[Row], base: Row, cuda: bool, steps: int, seed: int) -> list[str]:
    """The few-step and several-clips figures the table cannot show: what each compares with."""
    kinds = {r.kind: r for r in rows if r.kind}
    out: list[str] = []
    few = kinds.get("few-step")
    if few is not None:
        base_samples, few_samples = int(base.samples.split(" / ")[0]), int(few.samples.split(" / ")[0])
        per_base, per_few = base.unet_s / base_samples, few.unet_s / few_samples
        step_word = "step" if steps == 1 else "steps"
        out += ["", f"Few-step sampler: {few_samples} UNet samples (4 steps, no CFG) against the baseline's "
                    f"{base_samples} ({steps} {step_word} x 2 for CFG)."]
        if cuda and steps == 25:
            out[-1] += (f" Measured at the production shape: {few.total_s:.2f} s against {base.total_s:.2f} s "
                        f"({base.total_s / few.total_s:.2f}x), UNet loop {few.unet_s:.2f} s against "
                        f"{base.unet_s:.2f} s ({base.unet_s / few.unet_s:.2f}x).")
        else:
            full = 50  # 25 steps x 2 (CFG): the production step count
            est_loop = full * per_base
            est_total = base.encode_s + base.decode_s + est_loop
            out[-1] += (
                f" This reduced shape has only {steps} {step_word}, so the measured rows compare {few_samples} "
                f"samples with {base_samples}, not with a production run's 50 ({few.total_s:.2f} s against "
                f"{base.total_s:.2f} s). Measured per-sample UNet time: "
                f"{per_base:.2f} s in the baseline row (batch of 2 for CFG), {per_few:.2f} s in the few-step row "
                f"(batch of 1). **Estimated from per-sample time, not measured:** a 25-step CFG run at this shape "
                f"would take {full} samples x {per_base:.2f} s = {est_loop:.0f} s in the UNet loop and "
                f"~{est_total:.0f} s in all (the baseline row's measured encode + decode added); against the few-step row's measured "
                f"{few.unet_s:.2f} s loop and {few.total_s:.2f} s total that is ~{est_loop / few.unet_s:.1f}x "
                f"for the loop and ~{est_total / few.total_s:.1f}x for the clip ({full / few_samples:.1f}x fewer "
                f"UNet samples).")
        out.append("Its PSNR/SSIM against ours default compares two samplers on random weights (which are "
                   "not AnimateLCM's distilled UNet) and means nothing about quality; a real quality figure "
                   "needs the AnimateLCM-SVD-xt UNet weights (`engine.unet_weights`), which this run did not "
                   "have.")
    seq, bat = kinds.get("sequential"), kinds.get("batch")
    if seq is not None and bat is not None:
        out += ["", f"Several clips: 2 clips one after the other took {seq.total_s:.2f} s ({seq.per_clip_s:.2f} s "
                    f"per clip, {3600 / seq.per_clip_s:.0f} clips/h); the same 2 in one UNet batch "
                    f"{bat.total_s:.2f} s ({bat.per_clip_s:.2f} s per clip, {3600 / bat.per_clip_s:.0f} clips/h): "
                    f"{seq.total_s / bat.total_s:.2f}x the clips per hour (UNet loop {seq.unet_s:.2f} s -> "
                    f"{bat.unet_s:.2f} s, {seq.unet_s / bat.unet_s:.2f}x; encode and decode stay per clip)."]
        same = [guard_text(seq, bat, a, b) for a, b in zip(seq.all_frames, bat.all_frames)]
        out[-1] += (f" Batched against sequential, same image and seed, PSNR dB / SSIM: clip 1 (seed {seed}) "
                    f"{same[0]}" + (f", clip 2 (seed {seed + 1}) {same[1]}" if len(same) > 1 else "")
                    + " (each clip draws its own seed's noise, so these should be ~identical: any difference is "
                    "float rounding of batched kernels).")
    return out


if __name__ == "__main__":
    main()
