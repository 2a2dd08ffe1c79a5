"""Turn a day-one output folder into the Markdown rows for benchmarks/RESULTS.md.

    python benchmarks/gpu/parse_results.py OUT_DIR        (OUT_DIR holds results.json from day_one.sh)

Prints one section: device, commit, date, versions, the steps (done / timed out / failed), the SVD-XT
rows (plain diffusers call vs ours; speed-up = the baseline's seconds per clip / the row's), the
compile rows with their compile time apart, the CPU stages table and the GPU-marked tests. Missing
steps or rows are said to be missing, never filled in.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _f(value: Any, digits: int = 2, unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}{unit}"


def _guard(row: dict) -> str:
    g = row.get("guard")
    if not g:
        return "reference" if row.get("key") == "ours" else "n/a"
    text = "inf" if g.get("identical") else _f(g.get("psnr_db"), 1)
    text += f" / {g.get('ssim', 0):.4f}"
    return text + (f" ({g['note']})" if g.get("note") else "")


def _device_line(results: dict) -> str:
    env = results.get("env") or {}
    gpu = env.get("gpu") or {}
    torch_info = env.get("torch") or {}
    versions = env.get("versions") or {}
    parts = []
    if gpu:
        parts.append(f"{gpu.get('name')} ({gpu.get('memory_gib')} GiB, {gpu.get('multiprocessors')} SMs, "
                     f"compute {gpu.get('capability')}; nvidia-smi: {env.get('nvidia_smi')})")
    else:
        parts.append("no CUDA device (CPU only)")
    parts.append(f"CPU {env.get('cpu_model', '?')}, {env.get('affinity_cpus', env.get('cpu_count'))} cores, "
                 f"{env.get('mem_total_gib', '?')} GiB")
    parts.append(f"Python {env.get('python')}, torch {torch_info.get('version')} (CUDA {torch_info.get('cuda')}), "
                 + ", ".join(f"{k} {v}" for k, v in versions.items() if v and k != "torch"))
    return "; ".join(parts)


SVD_HEADER = ("| row | settings | encode s | UNet loop s | decode s | total s | s per clip (clips/h) | "
              "speed-up vs baseline | {mem} | UNet samples full / cached | TFLOP/s (all / UNet) | "
              "PSNR dB / SSIM vs ours default |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def svd_rows(rows: list[dict], baseline: dict | None) -> list[str]:
    out = []
    for r in rows:
        speed = "1.00x" if r.get("key") == "baseline" else (
            f"{baseline['per_clip_s'] / r['per_clip_s']:.2f}x" if baseline else "n/a (no baseline row)")
        settings = r.get("settings", "")
        if r.get("notes"):
            settings += f"; {r['notes']}"
        if r.get("compile_warmup_s") is not None:
            settings += (f"; compile warm-up {r['compile_warmup_s']:.1f} s (compile ~{r['compile_s_est']:.1f} s est. = "
                         "warm-up minus one timed clip), not in the timed figures")
        settings += f"; best of {r.get('repeats')}"
        out.append(
            f"| {r['name']} | {settings} | {_f(r.get('encode_s'))} | {_f(r.get('unet_s'))} | {_f(r.get('decode_s'))} | "
            f"{_f(r.get('total_s'))} | {_f(r.get('per_clip_s'))} ({r.get('clips_per_hour', 0):.0f}) | {speed} | "
            f"{_f(r.get('peak_gib'))} GiB | {r.get('samples')} | {_f(r.get('tflops_all'))} / {_f(r.get('tflops_unet'))} | "
            f"{_guard(r)} |")
    return out


def section(results: dict) -> str:
    env = results.get("env") or {}
    dry = results.get("dry_run")
    lines = [
        f"## GPU day one{' (DRY RUN on CPU: tiny model, tiny shapes, NOT figures to keep)' if dry else ''} "
        f"({str(env.get('date', '?'))[:10]}, commit {env.get('commit', 'unknown')}"
        + (" + uncommitted working tree" if env.get("dirty") else "") + ")",
        "",
        f"Command: `bash benchmarks/gpu/day_one.sh{' --dry-run' if dry else ''}` "
        f"(budget {results.get('budget_total_s')} s; see benchmarks/gpu/README.md)",
        f"Device: {_device_line(results)}.",
    ]
    install = results.get("install") or {}
    if install:
        lines.append(f"Install: {install.get('method')}; imports "
                     + ("all ok" if install.get("ok") else f"FAILED: {install.get('failed_imports')}")
                     + (f"; ffmpeg {install.get('imports', {}).get('ffmpeg')}" if install.get("imports") else "") + ".")
    steps = results.get("steps", {})
    lines += ["", "Steps: " + "; ".join(
        f"{name} {s['status']}" + (f" ({_f(s.get('wall_s'), 0)} s of {_f(s.get('budget_s'), 0)} s)"
                                   if s.get("wall_s") is not None else f" ({s.get('reason', '')})")
        for name, s in ((n, steps[n]) for n in results.get("order", steps))) + "."]

    main, comp = results.get("svd") or {}, results.get("compile") or {}
    rows = list(main.get("rows", [])) + list(comp.get("rows", []))
    baseline = next((r for r in rows if r.get("key") == "baseline"), None)
    if rows:
        doc = main or comp
        shape = doc.get("shape", {})
        mem = "peak GPU memory" if str(doc.get("device", "")).startswith("cuda") else "peak RSS (incl. weights)"
        lines += [
            "",
            f"### generate: {doc.get('model')}, {shape.get('width')}x{shape.get('height')}, {shape.get('frames')} frames, "
            f"{shape.get('steps')} steps, CFG on (1.0 -> 3.0), {doc.get('dtype')}, seed {doc.get('seed')}",
            "",
            f"Built in {_f(doc.get('build_s'), 0)} s; small warm-up {_f(doc.get('small_warmup_s'), 1)} s before any row. "
            "Baseline = `StableVideoDiffusionPipeline.__call__` with diffusers' defaults (SDPA processors) and "
            f"decode_chunk_size={doc.get('decode_chunk_baseline', 8)}; speed-up = baseline s per clip / row s per clip. "
            "Rows: benchmarks/generate_bench.py's run_baseline / run_ours (compile rows in a second process, same "
            "shape and dtype).",
            "",
            SVD_HEADER.format(mem=mem),
            *svd_rows(rows, baseline),
        ]
        planned = list(main.get("rows_planned", [])) + list(comp.get("rows_planned", []))
        have = {r.get("key") for r in rows}
        errors = list(main.get("errors", [])) + list(comp.get("errors", []))
        failed = {e.get("row") for e in errors if isinstance(e, dict)}
        missing = [k for k in planned if k not in have and k not in failed]
        for e in errors:
            lines.append(f"\nRow {e.get('row')} FAILED after {_f(e.get('after_s'), 0)} s: {e.get('error')}"
                         if isinstance(e, dict) else f"\nError: {e}")
        if missing:
            lines.append(f"\nNot measured (the step's time ran out first): {', '.join(missing)}.")
        by = {r.get("key"): r for r in rows}
        notes = []
        if "few-step" in by and baseline:
            f = by["few-step"]
            notes.append(f"few-step (4 steps, no CFG) {f['total_s']:.2f} s against the baseline's {baseline['total_s']:.2f} s "
                         f"({baseline['total_s'] / f['total_s']:.2f}x; UNet loop {baseline['unet_s'] / f['unet_s']:.2f}x); "
                         "random weights, so not a quality figure")
        if "batch" in by and ("sequential" in by or "ours" in by):
            b = by["batch"]
            s = by.get("sequential") or by["ours"]
            what = "2 clips one after the other" if "sequential" in by else "ours default's one clip"
            notes.append(f"2 clips in one UNet batch: {b['per_clip_s']:.2f} s per clip against {s['per_clip_s']:.2f} s "
                         f"for {what} ({s['per_clip_s'] / b['per_clip_s']:.2f}x the clips per hour)")
        if "low-vram" in by and "ours" in by:
            lv, o = by["low-vram"], by["ours"]
            notes.append(f"low-vram peak {lv['peak_gib']:.2f} GiB against {o['peak_gib']:.2f} GiB for ours default "
                         f"({lv['per_clip_s'] / o['per_clip_s']:.2f}x the time)")
        if "attention-default" in by and "ours" in by:
            notes.append(f"SDPA against the classic AttnProcessor: {by['attention-default']['per_clip_s'] / by['ours']['per_clip_s']:.2f}x")
        if "alt-dtype" in by and "ours" in by:
            notes.append(f"{by['alt-dtype']['name']}: {by['alt-dtype']['per_clip_s']:.2f} s per clip against "
                         f"{by['ours']['per_clip_s']:.2f} s ({doc.get('dtype')})")
        for key in ("compile", "compile-fast"):
            if key in by and by[key].get("compile_warmup_s") is not None:
                notes.append(f"{by[key]['name']}: compile warm-up {by[key]['compile_warmup_s']:.1f} s "
                             f"(~{by[key]['compile_s_est']:.1f} s of compiling, est.) before its timed clips")
        if notes:
            lines += ["", "Reading: " + "; ".join(notes) + "."]
    else:
        lines += ["", "### generate: no SVD row was measured."]

    stages = results.get("stages") or {}
    if stages.get("rows"):
        lines += ["", f"### stages: CPU side of one story on {stages.get('cpu_count')} cores "
                      f"(benchmarks/stages_bench.py --repeat {stages.get('repeat')}; ffmpeg {stages.get('ffmpeg')}, "
                      f"imageio-ffmpeg {stages.get('imageio_ffmpeg')}; story {stages.get('story')})", "",
                  "| stage | s per clip | s per second of video |", "| --- | ---: | ---: |"]
        lines += [f"| {r['stage']} | {r['s_per_clip']:.3f} | {r['s_per_second']:.3f} |" for r in stages["rows"]]
        if stages.get("moderation_note"):
            lines += ["", f"Moderation: {stages['moderation_note']}."]
    else:
        lines += ["", "### stages: not measured."]

    tests = results.get("gpu_tests") or {}
    if tests:
        if tests.get("status") == "skipped":
            lines += ["", f"GPU-marked tests: none run ({tests.get('reason')})."]
        else:
            lines += ["", f"GPU-marked tests ({', '.join(tests.get('files', []))}): {tests.get('passed', '?')} passed, "
                          f"{tests.get('failures', 0) + tests.get('errors', 0)} failed, {tests.get('skipped', 0)} skipped"
                          + (f"; failed: {'; '.join(tests['failed_tests'])}" if tests.get("failed_tests") else "") + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(argv[0])
    path = path / "results.json" if path.is_dir() else path
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"cannot read {path}: {exc}", file=sys.stderr)
        return 1
    print(section(results), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
