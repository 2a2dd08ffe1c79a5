"""A default motion-engine story beside ffmpeg's zoompan, side by side in one run.

(a) alive: the whole default chain (``pipeline.run.animate``: intake, photo check, generate,
    video check, finish, encode, label) of one photo into a 1080x1920, 30 fps, 4 s story, in a
    child process of its own;
(b) ffmpeg: ``ffmpeg -loop 1 -i PHOTO -vf scale,crop,zoompan ... -t 4 -c:v libx264`` at the same
    size, frame rate, duration, CRF, preset, profile and pixel format (alive's ``EncodeSettings``),
    with the ffmpeg alive bundles (``pipeline.probe.ffmpeg_exe``).

Each run is a child process; its CPU seconds (user + system, of it and everything it waited for,
so alive's own ffmpeg is counted) come from ``os.wait4``, its peak memory both as ``ru_maxrss``
(the largest single process) and as the peak of the process tree's summed RSS, sampled every
20 ms (alive's Python and its ffmpeg encoder run at the same time). Runs alternate a then b.
``--alive-src DIR`` adds the alive code found in DIR (e.g. the previous commit, unpacked with
``git archive``) as a third contender, for before/after figures from the same run.

    .venv/bin/python benchmarks/motion_bench.py examples/astronaut.jpg --repeat 2 \\
        --json benchmarks/motion_bench.json --markdown /tmp/motion_bench.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ALIVE_CHILD = """
import json, resource, sys
from pipeline.engines import GenerationOptions
from pipeline.run import animate
from pipeline.settings import load_settings

def cpu():
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

marks = []  # (stage, CPU seconds when it started)
def progress(stage, done, total):
    if not marks or marks[-1][0] != stage:
        marks.append((stage, cpu()))

photo, out, data = sys.argv[1:4]
result = animate(photo, out, load_settings(data_dir=data), GenerationOptions.build(seed=1), progress=progress)
marks.append(("end", cpu()))
stage_cpu = {a[0]: round(b[1] - a[1], 2) for a, b in zip(marks, marks[1:])}
report = result.report
print(json.dumps({"timings_s": report["timings_s"], "stage_cpu_s": stage_cpu,
                  "finish": {k: report["finish"].get(k) for k in ("loop", "retime", "fit")},
                  "engine_method": report["engine"].get("method")}))
"""


def _tree_rss_mb(pid: int) -> float:
    """Summed resident memory of a process and its descendants (Linux /proc), in MiB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024


def measure(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> dict:
    """Run ``argv`` as a child; its CPU seconds, wall seconds, peak memory and output."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=cwd)
        peak = [0.0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss_mb(child.pid))
                done.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            done.set()
            sampler.join()
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if child.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv[:6])} ... failed ({child.returncode}): {stderr[-2000:]}")
    return {"cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "user_s": round(usage.ru_utime, 2),
            "system_s": round(usage.ru_stime, 2), "wall_s": round(wall, 2),
            "peak_process_mb": round(usage.ru_maxrss / 1024, 1), "peak_tree_mb": round(peak[0], 1),
            "stdout": stdout}


def zoompan_argv(photo: Path, out: Path, settings) -> list[str]:
    from pipeline.probe import ffmpeg_exe

    story, enc = settings.story, settings.encode
    w, h, fps, seconds = story.width, story.height, story.fps, story.duration_s
    frames = round(seconds * fps)
    vf = (f"scale={w}:{h}:force_original_aspect_ratio=increase,crop={w}:{h},"
          f"zoompan=z='min(zoom+0.0008,1.1)':x='iw/2-(iw/zoom/2)':y='ih/2-(ih/zoom/2)':d={frames}:s={w}x{h}:fps={fps}")
    return [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-loop", "1", "-i", str(photo), "-vf", vf,
            "-t", f"{seconds:g}", "-c:v", "libx264", "-crf", str(enc.crf), "-preset", enc.preset,
            "-profile:v", enc.profile, "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(out)]


def alive_argv(photo: Path, out: Path, data: Path) -> list[str]:
    return [sys.executable, "-c", ALIVE_CHILD, str(photo), str(out), str(data)]


def _ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photo", type=Path)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each, alternating")
    parser.add_argument("--alive-src", type=Path, help="another alive source tree to run as well (before/after)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--markdown", type=Path, help="write a RESULTS.md section here")
    args = parser.parse_args(argv)

    from pipeline.settings import load_settings

    settings = load_settings()
    photo = args.photo.resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIVE_STORY") and not k.startswith("ALIVE_ENCODE")}
    runs: dict[str, list[dict]] = {"alive": [], "zoompan": []}
    if args.alive_src:
        runs["alive (--alive-src)"] = []
    with tempfile.TemporaryDirectory(prefix="motion-bench-") as work:
        work_dir = Path(work)
        data = work_dir / "data"
        # the dev C2PA chain and the moderation model's first load are set-up, not story work: warm once
        measure(alive_argv(photo, work_dir / "warm.mp4", data), env=env)
        for k in range(args.repeat):
            runs["alive"].append(measure(alive_argv(photo, work_dir / f"a{k}.mp4", data), env=env))
            runs["zoompan"].append(measure(zoompan_argv(photo, work_dir / f"z{k}.mp4", settings), env=env))
            if args.alive_src:
                other = {**env, "PYTHONPATH": str(args.alive_src.resolve())}
                runs["alive (--alive-src)"].append(measure(alive_argv(photo, work_dir / f"o{k}.mp4", data), env=other,
                                                           cwd=args.alive_src))
    summary = {}
    for name, rows in runs.items():
        best = {key: min(r[key] for r in rows) for key in ("cpu_s", "wall_s", "peak_process_mb", "peak_tree_mb")}
        extra = json.loads(rows[0]["stdout"].strip().splitlines()[-1]) if name.startswith("alive") else {}
        summary[name] = {**best, "runs": [{k: v for k, v in r.items() if k != "stdout"} for r in rows], **extra}
    a, z = summary["alive"], summary["zoompan"]
    ratios = {"cpu": _ratio(a["cpu_s"], z["cpu_s"]), "wall": _ratio(a["wall_s"], z["wall_s"]),
              "peak_process": _ratio(a["peak_process_mb"], z["peak_process_mb"]),
              "peak_tree": _ratio(a["peak_tree_mb"], z["peak_tree_mb"])}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "pipeline"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip())
    load = os.getloadavg()
    doc = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
           "working_tree_changed": dirty, "device": f"CPU, {os.cpu_count()} cores ({platform.machine()}), "
           f"Python {platform.python_version()}", "load_average_1min_at_end": round(load[0], 2),
           "photo": str(args.photo), "story": {"size": [settings.story.width, settings.story.height],
                                                "fps": settings.story.fps, "duration_s": settings.story.duration_s},
           "encode": {"crf": settings.encode.crf, "preset": settings.encode.preset, "profile": settings.encode.profile},
           "zoompan_command": shlex.join(["ffmpeg", *zoompan_argv(args.photo, Path("zoompan.mp4"), settings)[1:]]),
           "results": summary, "ratios_alive_over_zoompan": ratios, "repeat": args.repeat}
    if "alive (--alive-src)" in summary:
        o = summary["alive (--alive-src)"]
        doc["ratios_before_over_zoompan"] = {"cpu": _ratio(o["cpu_s"], z["cpu_s"]),
                                             "wall": _ratio(o["wall_s"], z["wall_s"]),
                                             "peak_process": _ratio(o["peak_process_mb"], z["peak_process_mb"])}
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    text = markdown(doc)
    if args.markdown:
        args.markdown.write_text(text)
    print(text)
    return 0


def markdown(doc: dict) -> str:
    lines = [f"### Motion story vs ffmpeg zoompan ({doc['date'][:10]})", "",
             f"Device: {doc['device']}; load average (1 min) at the end {doc['load_average_1min_at_end']}. "
             f"Commit {doc['commit']}{' + working-tree changes' if doc['working_tree_changed'] else ''}. "
             f"Photo `{doc['photo']}`; story {doc['story']['size'][0]}x{doc['story']['size'][1]}, "
             f"{doc['story']['fps']} fps, {doc['story']['duration_s']:g} s; x264 crf {doc['encode']['crf']}, "
             f"preset {doc['encode']['preset']}, profile {doc['encode']['profile']}. Best of {doc['repeat']} "
             "alternating runs, each in its own process (CPU = user + system of it and its children).", "",
             "| contender | CPU s | wall s | peak RSS, largest process (MiB) | peak RSS, process tree (MiB) |",
             "| --- | --- | --- | --- | --- |"]
    for name, r in doc["results"].items():
        lines.append(f"| {name} | {r['cpu_s']} | {r['wall_s']} | {r['peak_process_mb']} | {r['peak_tree_mb']} |")
    ratio = doc["ratios_alive_over_zoompan"]
    lines += ["", f"alive / zoompan: CPU {ratio['cpu']}x, wall {ratio['wall']}x, peak (largest process) "
                  f"{ratio['peak_process']}x, peak (tree) {ratio['peak_tree']}x."]
    if "ratios_before_over_zoompan" in doc:
        before = doc["ratios_before_over_zoompan"]
        lines.append(f"Before (--alive-src) / zoompan: CPU {before['cpu']}x, wall {before['wall']}x, "
                     f"peak {before['peak_process']}x.")
    for name, r in doc["results"].items():
        if r.get("stage_cpu_s"):
            lines.append(f"{name}, CPU s per stage (first run): " +
                         ", ".join(f"{k} {v}" for k, v in r["stage_cpu_s"].items()))
    lines += ["", "zoompan command:", "", f"    {doc['zoompan_command']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
