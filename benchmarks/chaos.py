"""Chaos run: many jobs through real workers while the gpu worker is killed whole and the broker
restarts; counts what succeeded and whether anything was done twice.

    python -m benchmarks.chaos --broker redis --jobs 100 --kills 3 --broker-restarts 1
    python -m benchmarks.chaos --broker rabbitmq --jobs 100 --kills 3 --broker-restarts 1

Default reliability settings (heartbeat timeout 60 s, a reconciler pass every 5 s, Redis
visibility timeout 900 s); the tiny random SVD model (built in code, no download) on small frames,
so the run measures the job machinery, not generation. The gpu worker is killed with SIGKILL to its
process group (parent and pool child: a host lost) while a job is generating, and a new one is
started at once; the broker restarts once (embedded Redis: the server process; RabbitMQ:
``rabbitmqctl stop_app`` / ``start_app`` on this machine, quorum queues kept on disk).

"Done twice" is read from the workers' logs: for each job, the number of ``alive.finalize``
tasks that *succeeded* (one publishes the report and marks the job) and of ``alive.label`` tasks
that succeeded (each would write a video). Both must be exactly 1. Deliveries that the job record
refused (duplicates, fenced attempts) are counted apart: that is the redundant work a kill costs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SUCCEEDED = re.compile(r"Task (alive\.\w+)\[[0-9a-f-]+\] succeeded in [0-9.e-]+s: '([0-9a-f]{32})'")
IGNORED = re.compile(r"Task (alive\.\w+)\[[0-9a-f-]+\] ignored")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(broker: str, n_jobs: int, kills: int, restarts: int, root: Path) -> dict:
    from pipeline.engines import GenerationOptions
    from pipeline.engines.tiny import ensure_tiny_svd
    from service.stores import open_job_store
    from tests.worker_fixtures import WorkerEnv
    from workers.client import connect, submit

    models = root / "models-shared"
    url = None
    overrides: dict[str, str] = {}
    tag = uuid.uuid4().hex[:8]
    if broker == "rabbitmq":
        url = "amqp://guest:guest@127.0.0.1:5672//"
        overrides = {"ALIVE_WORKER__CPU_QUEUE": f"chaos-cpu-{tag}", "ALIVE_WORKER__GPU_QUEUE": f"chaos-gpu-{tag}",
                     "ALIVE_WORKER__WEBHOOK_QUEUE": f"chaos-hooks-{tag}",
                     "ALIVE_WORKER__DEAD_LETTER_QUEUE": f"chaos-dead-{tag}"}
    # a small story (360x640, 1 s): the run measures the job machinery, not x264
    overrides.update({"ALIVE_STORY__WIDTH": "360", "ALIVE_STORY__HEIGHT": "640", "ALIVE_STORY__DURATION_S": "1"})
    env = WorkerEnv(root / "data", models, broker_url=url, **overrides)
    env.env["OMP_NUM_THREADS"] = "1"
    ensure_tiny_svd(env.settings.model_cache_dir)
    connect(env.settings)
    jobs = open_job_store(env.settings)
    options = GenerationOptions.build(seed=1, num_frames=4, num_inference_steps=30, width=72, height=128)
    started = time.monotonic()
    events: list[str] = []
    try:
        gpu = env.start_worker("gpu", name="gpu0")
        env.start_worker("cpu", concurrency=2, name="cpu", beat=True)
        photo = REPO / "examples" / "chelsea.jpg"
        ids = [submit(photo, env.settings, options, engine="tiny") for _ in range(n_jobs)]
        _log(f"{n_jobs} jobs submitted on {broker}")
        kill_at = [int(n_jobs * f) for f in (0.15, 0.4, 0.65, 0.8, 0.9)[:kills]]
        restart_at = [int(n_jobs * f) for f in (0.5, 0.75)[:restarts]]
        gpu_index = 0
        while True:
            records = {j: jobs.load(j) for j in ids}
            done = sum(r.finished for r in records.values())
            if done == n_jobs:
                break
            if kill_at and done >= kill_at[0]:
                victim = next((j for j, r in records.items() if _generating_now(r)), None)
                if victim is not None:
                    os.killpg(gpu.pid, signal.SIGKILL)
                    gpu.wait(10)
                    gpu_index += 1
                    events.append(f"kill -9 gpu worker at {done} done (job {victim[:8]} generating)")
                    _log(events[-1])
                    kill_at.pop(0)
                    gpu = env.start_worker("gpu", name=f"gpu{gpu_index}")
            if restart_at and done >= restart_at[0]:
                restart_at.pop(0)
                events.append(f"broker restart at {done} done")
                _log(events[-1])
                _restart_broker(env, broker)
            if time.monotonic() - started > 3600:
                raise RuntimeError(f"not finished after an hour: {Counter(r.status for r in records.values())}")
            time.sleep(0.2)
        took = time.monotonic() - started
        records = {j: jobs.load(j) for j in ids}
    finally:
        env.close()
        if broker == "rabbitmq":
            _drop_queues(url, overrides.values())
    succeeded_tasks: dict[str, Counter] = {}
    ignored = Counter()
    redispatched = Counter()
    for log in env.data_dir.glob("*.log"):
        text = log.read_text(errors="replace")
        redispatched["stalled"] += text.count("stalled (no heartbeat); dispatched again")
        redispatched["lost_before_start"] += text.count("never started (message lost); dispatched again")
        for task, job in SUCCEEDED.findall(text):
            succeeded_tasks.setdefault(task, Counter())[job] += 1
        ignored.update(IGNORED.findall(text))
    finals, labels = succeeded_tasks.get("alive.finalize", Counter()), succeeded_tasks.get("alive.label", Counter())
    statuses = Counter(r.status for r in records.values())
    lost = Counter(stage for r in records.values() for stage, n in r.lost_attempts.items() for _ in range(n))
    store = env.settings.store_root
    videos = sum(1 for j in ids if (store / "jobs" / j / "story.mp4").is_file())
    return {
        "broker": broker, "jobs": n_jobs, "statuses": dict(statuses), "seconds": round(took, 1),
        "events": events, "videos": videos,
        "finalize_succeeded_per_job": dict(Counter(finals[j] for j in ids)),
        "label_succeeded_per_job": dict(Counter(labels[j] for j in ids)),
        "duplicates": sum(max(0, finals[j] - 1) + max(0, labels[j] - 1) for j in ids),
        "ignored_deliveries": dict(ignored), "lost_attempts": dict(lost), "redispatched": dict(redispatched),
        "errors": [r.error for r in records.values() if r.error][:5],
    }


def _generating_now(record) -> bool:
    """A generate attempt that runs right now (claimed, heartbeat fresh): not one waiting to be sent again."""
    attempt = record.attempt or {}
    return (attempt.get("stage") == "generate" and attempt.get("state") == "running"
            and time.time() - float(attempt.get("heartbeat_at") or 0) < 10)


def _restart_broker(env, broker: str) -> None:
    if broker == "redis":
        env.broker.restart()
        return
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True)
    time.sleep(1)
    subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True)


def _drop_queues(url: str, names) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=5) as conn:
        channel = conn.channel()
        for name in names:
            for drop in (channel.queue_delete, channel.exchange_delete):
                try:
                    drop(name)
                except Exception:  # noqa: BLE001
                    channel = conn.channel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=["redis", "rabbitmq"], default="redis")
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--broker-restarts", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (the workers' logs)")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        summary = run(args.broker, args.jobs, args.kills, args.broker_restarts, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="alive-chaos-") as tmp:
            summary = run(args.broker, args.jobs, args.kills, args.broker_restarts, Path(tmp))
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    ok = summary["statuses"] == {"succeeded": args.jobs} and summary["duplicates"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
