"""Capacity model of an alive deployment: how many GPU and CPU workers hold a p95 latency target.

    .venv/bin/python -m benchmarks.capacity --rate 1000 10000 100000 --target-p95 120 [--markdown]
    .venv/bin/python -m benchmarks.capacity --keda        # the KEDA listLength numbers used in deploy/
    .venv/bin/python -m benchmarks.capacity --markdown --keda-check   # + KEDA-scaled pools (minutes)

A discrete-event simulation (SimPy) of the job chain as workers/tasks.py runs it: every job is seven
Celery tasks, each queued on its own at the tail of its queue (FIFO, prefetch 1, acks late):

    cpu queue:  intake -> moderate_image
    gpu queue:  generate                                   (one clip at a time per GPU worker, -c 1)
    cpu queue:  moderate_video -> encode (finish + encode) -> label -> finalize

Jobs arrive as a Poisson process at ``rate`` clips per hour. Service times are lognormal with the
given mean and coefficient of variation (cv). A pool of G gpu workers (one slot each) and C cpu
workers of ``cpu_concurrency`` child processes each (C x concurrency slots) serve the two queues
(simpy.Resource, FIFO). A fixed number of jobs is simulated per run (default 10,000), the first 10 %
(by arrival) are discarded as warm-up, and every figure is measured on the rest; queue lengths and
busy workers are sampled at arrival instants (Poisson arrivals see time averages), which is the
queue a KEDA poll at a random moment sees.

Where the numbers come from:
- CPU stage seconds: benchmarks/RESULTS.md, section "stages: CPU cost of one story per stage
  (2026-11-23, commit d899c5a)", measured on 2 cores (so one cpu slot = 2 vCPUs here; see
  ``VCPUS_PER_SLOT``). ``finalize`` is not in that table: its value is an estimate.
- per-task broker overhead: RESULTS.md, "queue: Celery overhead and batch throughput (2026-11-23,
  commit 8c08b64)": median 12 ms per task.
- GPU seconds per clip: NO GPU MEASUREMENT EXISTS YET. ``GPU_PRESETS`` holds estimates from the
  anchors in shared/NOTES.md (marked est); replace them with generate_bench.py --device cuda figures.

Sizing (``size_pool``): the smallest G that holds the target with unlimited CPU, then the smallest C
for that G; G+1 (``explore``) is also tried in case it allows a cheaper C. Common random numbers
(the same seed draws the same arrivals and service times whatever the pool sizes) keep the
comparisons between pool sizes monotone in practice. A pool run near 100 % utilisation settles
over hours, far longer than a run of 10,000 jobs at 100k clips/h (6 minutes), and such a run would
pass it; so a size is accepted only when the run is long enough to show its steady state
(``relaxation_time``), which makes the large-rate answers slightly conservative (more --jobs: tighter).

KEDA (``keda_targets``): see the docstring there for the derivation of listLength.
``simulate_keda`` (``--keda-check``) runs the same jobs with both pools scaled the way KEDA + the HPA
would scale them on those listLength values, to see whether the target then holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import simpy

REPO = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------------
# Inputs

#: Seconds per clip of each CPU task, on a 2-core machine. Source: benchmarks/RESULTS.md, "stages: CPU
#: cost of one story per stage (2026-11-23, commit d899c5a)", median of 3, story defaults (1080x1920,
#: 30 fps, 4 s pingpong, flow, Lanczos, label), encoder preset medium, input a 25-frame 576x1024 clip.
CPU_STAGE_SECONDS: dict[str, float] = {
    "intake": 0.003,            # intake (decode, checks, sanitise)
    "moderate_image": 0.013,    # moderate photo (open-nsfw ONNX)
    "moderate_video": 0.054,    # moderate clip (4 sampled frames)
    "encode": 4.538 + 5.754,    # alive.encode = finish (4.538) + encode tiktok (5.754), one task
    "label": 0.016,             # label: C2PA sign + verify
    "finalize": 0.05,           # est: not measured (record + report write, deletes); small either way
}
PRE_GPU_STAGES = ("intake", "moderate_image")
POST_GPU_STAGES = ("moderate_video", "encode", "label", "finalize")
#: Per-task overhead (broker round trips, job-record updates), RESULTS.md "queue ... commit 8c08b64":
#: median 12 ms. Added to every task's service time. Object-store transfers of frames (S3) are NOT
#: measured and not included.
TASK_OVERHEAD_S = 0.012
#: vCPUs one cpu slot (one worker child process) was measured with: the stages bench ran on 2 cores and
#: finish/encode use every core, so one slot = 2 vCPUs at these stage times.
VCPUS_PER_SLOT = 2


@dataclass(frozen=True)
class GpuPreset:
    seconds: float
    note: str


#: Seconds the alive.generate task holds one GPU per clip. ALL ESTIMATES (est): no GPU run exists yet.
GPU_PRESETS: dict[str, GpuPreset] = {
    "svd-xt-h100": GpuPreset(30.0, "est: SVD-XT 25 frames 576x1024 25 steps CFG fp16, PyTorch (+compile) on an "
                                   "H100; between the anchors TensorRT H100 PCIe 22.6 s and plain A100 50.9 s"),
    "svd-xt-a100": GpuPreset(51.0, "est: anchor plain PyTorch A100 50.9 s (NOTES.md, read)"),
    "svd-xt-h100-trt": GpuPreset(22.6, "est: anchor TensorRT H100 PCIe 22.6 s (UNet 19.1 + VAE 3.4; read)"),
    "svd-xt-deepcache-h100": GpuPreset(22.0, "est: svd-xt-h100 with cache_interval 2 (1.37x fewer FLOPs)"),
    "animatelcm-4-h100": GpuPreset(6.0, "est: few-step consistency sampler, 4 steps no CFG (12.5x fewer UNet "
                                        "passes), VAE decode unchanged, on an H100"),
}
DEFAULT_PRESET = "svd-xt-h100"

#: Prices (assumptions, USD): an H100 at list-ish on-demand cloud price per GPU-hour (host included),
#: and a vCPU-hour of general-purpose compute.
GPU_HOUR_PRICE = 2.50
CPU_HOUR_PRICE = 0.04  # per vCPU-hour


@dataclass(frozen=True)
class Workload:
    """What one job costs: GPU seconds, CPU seconds per task, variability, per-task overhead."""

    gpu_seconds: float = GPU_PRESETS[DEFAULT_PRESET].seconds
    cpu_seconds: Mapping[str, float] = field(default_factory=lambda: dict(CPU_STAGE_SECONDS))
    gpu_cv: float = 0.10  # GPU work per clip is nearly fixed (same shape, same steps)
    cpu_cv: float = 0.30  # encode time varies with content and co-tenants
    overhead_s: float = TASK_OVERHEAD_S

    @property
    def gpu_task_s(self) -> float:
        return self.gpu_seconds + self.overhead_s

    @property
    def cpu_task_s(self) -> float:
        """Mean CPU-slot seconds per job (every cpu task, overhead included)."""
        return sum(self.cpu_seconds[s] + self.overhead_s for s in PRE_GPU_STAGES + POST_GPU_STAGES)

    @property
    def cpu_visits(self) -> int:
        return len(PRE_GPU_STAGES) + len(POST_GPU_STAGES)


#: The inputs the KEDA listLength values in deploy/k8s/keda.yaml come from (tests/test_deploy.py checks
#: that the manifests hold exactly ``keda_targets(**DEPLOY_KEDA_INPUTS)``).
DEPLOY_KEDA_INPUTS: dict = {"target_p95_s": 120.0, "workload": Workload(), "cpu_concurrency": 2,
                            "gpu_concurrency": 1}


# --------------------------------------------------------------------------------------------------
# Simulation


def _lognormal(rng: np.random.Generator, mean: float, cv: float, n: int) -> np.ndarray:
    if mean <= 0:
        return np.zeros(n)
    if cv <= 0:
        return np.full(n, float(mean))
    sigma2 = math.log1p(cv * cv)
    return rng.lognormal(math.log(mean) - sigma2 / 2, math.sqrt(sigma2), n)


@dataclass
class SimResult:
    rate_per_hour: float
    gpu_workers: int
    cpu_workers: int
    cpu_concurrency: int
    jobs: int                # measured jobs (after warm-up)
    horizon_s: float         # simulated seconds until the last job finished
    latency_p50_s: float
    latency_p95_s: float
    latency_p99_s: float
    latency_mean_s: float
    gpu_utilisation: float   # mean busy GPU workers / G, seen at arrivals
    cpu_utilisation: float
    gpu_wait_mean_s: float   # time in the gpu queue per job
    cpu_wait_mean_s: float   # time in the cpu queue per job (all six visits)
    queue_gpu: dict          # waiting tasks (Redis LLEN of the gpu list): p50, p95, max
    queue_cpu: dict
    mean_in_system: float    # jobs between arrival and finalize, seen at arrivals (Little: = rate x mean latency)
    window_s: float          # simulated seconds of measured arrivals
    gpu_relax_s: float       # relaxation time of each pool's queue (``relaxation_time``)
    cpu_relax_s: float
    wall_s: float            # host seconds this simulation took

    @property
    def steady(self) -> bool:
        """The measured window is long enough for both queues to show their steady state."""
        return self.window_s >= STEADY_FACTOR * max(self.gpu_relax_s, self.cpu_relax_s)

    @property
    def gpu_idle_fraction(self) -> float:
        return 1.0 - self.gpu_utilisation


def _percentiles(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"p50": 0.0, "p95": 0.0, "max": 0.0}
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
            "max": float(values.max())}


#: A run shows a pool's steady state when its measured window is at least this many relaxation times.
STEADY_FACTOR = 3.0


def relaxation_time(rate_per_hour: float, slots: int, workload: Workload, queue: str) -> float:
    """Seconds a queue needs to forget its start (heavy-traffic estimate), inf when it is overloaded.

    Near saturation the unfinished work of a pool behaves like a reflected Brownian motion with drift
    -(slots - a) (a = busy slots on average = task rate x E[S]) and variance rate task rate x E[S^2];
    it settles on a time scale tau = variance / drift^2. A pool of 834 GPUs at 833.7 busy (100k clips/h,
    30 s) has tau of days: a run of 10,000 jobs (6 minutes) would show it half-empty and pass it,
    though in steady state its queue never drains. ``size_pool`` accepts a pool only when the run's
    window is >= STEADY_FACTOR x tau, i.e. when the simulation can actually show its steady state.
    """
    lam = rate_per_hour / 3600.0
    if queue == "gpu":
        m, cv, visits = [workload.gpu_task_s], [workload.gpu_cv], 1
        m2 = [workload.gpu_seconds ** 2 * (1 + workload.gpu_cv ** 2)]
    else:
        stages = PRE_GPU_STAGES + POST_GPU_STAGES
        m = [workload.cpu_seconds[s] + workload.overhead_s for s in stages]
        m2 = [workload.cpu_seconds[s] ** 2 * (1 + workload.cpu_cv ** 2) for s in stages]
        visits = len(stages)
    task_rate = lam * visits
    mean_s = sum(m) / len(m)
    second = sum(m2) / len(m2)
    busy = task_rate * mean_s
    if busy >= slots:
        return math.inf
    return task_rate * second / (slots - busy) ** 2


def _draw_jobs(w: "Workload", rate_per_hour: float, jobs: int, seed: int):
    """Arrival gaps and per-stage service times of ``jobs`` jobs. Every random number is drawn up
    front, in a fixed order: the same seed gives the same jobs to every pool size (common random
    numbers)."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(3600.0 / rate_per_hour, jobs)
    gpu_s = _lognormal(rng, w.gpu_seconds, w.gpu_cv, jobs) + w.overhead_s
    cpu_s = {s: _lognormal(rng, w.cpu_seconds[s], w.cpu_cv, jobs) + w.overhead_s
             for s in PRE_GPU_STAGES + POST_GPU_STAGES}
    return gaps, gpu_s, [cpu_s[s] for s in PRE_GPU_STAGES], [cpu_s[s] for s in POST_GPU_STAGES]


def simulate(rate_per_hour: float, gpu_workers: int, cpu_workers: int, *, cpu_concurrency: int = 2,
             workload: Workload | None = None, jobs: int = 10_000, warmup: float = 0.1, seed: int = 1,
             cpu_slots: int | None = None) -> SimResult:
    """Simulate ``jobs`` jobs through fixed pools; figures are over the jobs after the warm-up share.

    ``cpu_slots`` overrides ``cpu_workers * cpu_concurrency`` (e.g. an unlimited CPU pool)."""
    if rate_per_hour <= 0 or gpu_workers < 1 or jobs < 10:
        raise ValueError(f"need rate > 0, gpu_workers >= 1, jobs >= 10 (got {rate_per_hour}, {gpu_workers}, {jobs})")
    w = workload or Workload()
    slots = cpu_slots if cpu_slots is not None else cpu_workers * cpu_concurrency
    if slots < 1:
        raise ValueError(f"need at least one cpu slot (got {slots})")
    started = time.perf_counter()
    gaps, gpu_s, pre, post = _draw_jobs(w, rate_per_hour, jobs, seed)

    env = simpy.Environment()
    gpu = simpy.Resource(env, capacity=gpu_workers)
    cpu = simpy.Resource(env, capacity=slots)
    warm = int(jobs * warmup)
    arrived = np.zeros(jobs)
    done = np.zeros(jobs)
    gpu_wait = np.zeros(jobs)
    cpu_wait = np.zeros(jobs)
    n_samples = jobs - warm
    q_gpu = np.zeros(n_samples)
    q_cpu = np.zeros(n_samples)
    busy_gpu = np.zeros(n_samples)
    busy_cpu = np.zeros(n_samples)
    in_system = np.zeros(n_samples)
    live = [0]

    def cpu_stages(i: int, stages):
        """Run stages one after another on the cpu pool; returns the time spent queueing."""
        waited = 0.0
        for times in stages:
            t0 = env.now
            with cpu.request() as req:
                yield req
                waited += env.now - t0
                yield env.timeout(times[i])
        return waited

    def job(i: int):
        waited = yield from cpu_stages(i, pre)
        t0 = env.now
        with gpu.request() as req:
            yield req
            gpu_wait[i] = env.now - t0
            yield env.timeout(gpu_s[i])
        waited += yield from cpu_stages(i, post)
        cpu_wait[i] = waited
        done[i] = env.now
        live[0] -= 1

    def arrivals():
        for i in range(jobs):
            yield env.timeout(gaps[i])
            arrived[i] = env.now
            if i >= warm:  # what an arrival (and a KEDA poll) sees
                k = i - warm
                q_gpu[k], q_cpu[k] = len(gpu.queue), len(cpu.queue)
                busy_gpu[k], busy_cpu[k] = gpu.count, cpu.count
                in_system[k] = live[0]
            live[0] += 1
            env.process(job(i))

    env.process(arrivals())
    env.run()
    latency = (done - arrived)[warm:]
    return SimResult(
        rate_per_hour=rate_per_hour, gpu_workers=gpu_workers, cpu_workers=cpu_workers,
        cpu_concurrency=cpu_concurrency, jobs=n_samples, horizon_s=float(env.now),
        latency_p50_s=float(np.percentile(latency, 50)), latency_p95_s=float(np.percentile(latency, 95)),
        latency_p99_s=float(np.percentile(latency, 99)), latency_mean_s=float(latency.mean()),
        gpu_utilisation=float(busy_gpu.mean() / gpu_workers), cpu_utilisation=float(busy_cpu.mean() / slots),
        gpu_wait_mean_s=float(gpu_wait[warm:].mean()), cpu_wait_mean_s=float(cpu_wait[warm:].mean()),
        queue_gpu=_percentiles(q_gpu), queue_cpu=_percentiles(q_cpu), mean_in_system=float(in_system.mean()),
        window_s=float(arrived[-1] - arrived[warm]),
        gpu_relax_s=relaxation_time(rate_per_hour, gpu_workers, w, "gpu"),
        cpu_relax_s=relaxation_time(rate_per_hour, slots, w, "cpu"),
        wall_s=time.perf_counter() - started,
    )


# --------------------------------------------------------------------------------------------------
# Sizing


@dataclass
class Sizing:
    rate_per_hour: float
    target_p95_s: float
    gpu_workers: int
    cpu_workers: int
    cpu_concurrency: int
    result: SimResult
    gpu_hour_price: float
    cpu_hour_price: float
    simulations: int
    gpu_bound: str = ""  # what made G-1 too few: load (utilisation >= 1), steady-state, latency
    cpu_bound: str = ""

    @property
    def cpu_vcpus(self) -> int:
        return self.cpu_workers * self.cpu_concurrency * VCPUS_PER_SLOT

    @property
    def cost_per_hour(self) -> float:
        return self.gpu_workers * self.gpu_hour_price + self.cpu_vcpus * self.cpu_hour_price

    @property
    def cost_per_1k_clips(self) -> float:
        return self.cost_per_hour / (self.rate_per_hour / 1000.0)


class Infeasible(ValueError):
    """No pool holds the target: the service times alone exceed it."""


def _smallest(ok, lo: int) -> tuple[int, int]:
    """The smallest n >= lo with ok(n), ok being monotone (False ... False True ... True); also the
    number of calls made. Doubles the step from lo, then bisects."""
    calls = 0
    step, hi = 1, lo
    while True:
        calls += 1
        if ok(hi):
            break
        lo = hi + 1
        hi, step = hi + step, step * 2
    while lo < hi:
        mid = (lo + hi) // 2
        calls += 1
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi, calls


def size_pool(rate_per_hour: float, target_p95_s: float, *, workload: Workload | None = None,
              cpu_concurrency: int = 2, jobs: int = 10_000, warmup: float = 0.1, seed: int = 1,
              gpu_hour_price: float = GPU_HOUR_PRICE, cpu_hour_price: float = CPU_HOUR_PRICE,
              explore: int = 1) -> Sizing:
    """The cheapest (G, C) found that holds p95 end-to-end latency <= target at this rate.

    A pool size is accepted when the run can show its steady state (``relaxation_time``; checked
    before simulating) and the simulated p95 is <= the target. G: the smallest accepted GPU pool
    when the CPU never queues (cpu slots = jobs); then for G .. G + explore, the smallest accepted C;
    the cheapest pair wins. Raises Infeasible when even unlimited pools miss the target."""
    w = workload or Workload()
    sims = [0]
    cache: dict[tuple[int, int | None], SimResult] = {}
    window = (jobs - int(jobs * warmup)) * 3600.0 / rate_per_hour  # expected measured window

    def run(g: int, c: int | None) -> SimResult:
        if (g, c) not in cache:
            sims[0] += 1
            cache[(g, c)] = simulate(rate_per_hour, g, c or 0, cpu_concurrency=cpu_concurrency, workload=w,
                                     jobs=jobs, warmup=warmup, seed=seed,
                                     cpu_slots=jobs if c is None else None)
        return cache[(g, c)]

    def steady(slots: int, queue: str) -> bool:
        return window >= STEADY_FACTOR * relaxation_time(rate_per_hour, slots, w, queue)

    def gpu_ok(g: int) -> bool:
        return steady(g, "gpu") and run(g, None).latency_p95_s <= target_p95_s

    gpu_load = rate_per_hour * w.gpu_task_s / 3600.0
    cpu_load = rate_per_hour * w.cpu_task_s / 3600.0 / cpu_concurrency  # in cpu workers
    g_lo = math.floor(gpu_load) + 1  # utilisation < 1
    c_lo = math.floor(cpu_load) + 1
    unlimited = run(jobs, None)  # nothing ever queues: the service times alone
    if unlimited.latency_p95_s > target_p95_s:
        raise Infeasible(f"p95 {unlimited.latency_p95_s:.1f} s with unlimited workers is above the target "
                         f"{target_p95_s:.1f} s: the service times alone miss it")
    g_min, _ = _smallest(gpu_ok, g_lo)
    best: Sizing | None = None
    for g in range(g_min, g_min + explore + 1):
        def cpu_ok(c: int, g: int = g) -> bool:
            return steady(c * cpu_concurrency, "cpu") and run(g, c).latency_p95_s <= target_p95_s

        c_min, _ = _smallest(cpu_ok, c_lo)
        candidate = Sizing(rate_per_hour, target_p95_s, g, c_min, cpu_concurrency, run(g, c_min),
                           gpu_hour_price, cpu_hour_price, 0)
        # what stopped one fewer: the load itself, the steady-state check, or the latency target
        candidate.gpu_bound = ("load" if g - 1 < g_lo else "steady-state" if not steady(g - 1, "gpu")
                               else "latency")
        candidate.cpu_bound = ("load" if c_min - 1 < c_lo else
                               "steady-state" if not steady((c_min - 1) * cpu_concurrency, "cpu") else "latency")
        if best is None or candidate.cost_per_hour < best.cost_per_hour:
            best = candidate
    assert best is not None
    best.simulations = sims[0]
    return best


# --------------------------------------------------------------------------------------------------
# KEDA


def service_p95(workload: Workload, samples: int = 200_000, seed: int = 7) -> float:
    """p95 of one job's end-to-end time when nothing queues (sum of its seven service times)."""
    rng = np.random.default_rng(seed)
    total = _lognormal(rng, workload.gpu_seconds, workload.gpu_cv, samples) + workload.overhead_s
    for s in PRE_GPU_STAGES + POST_GPU_STAGES:
        total = total + _lognormal(rng, workload.cpu_seconds[s], workload.cpu_cv, samples) + workload.overhead_s
    return float(np.percentile(total, 95))


def keda_targets(target_p95_s: float, workload: Workload | None = None, *, cpu_concurrency: int = 2,
                 gpu_concurrency: int = 1, gpu_share: float | None = None) -> dict:
    """KEDA redis-trigger ``listLength`` (per-replica target of waiting tasks) for the gpu and cpu queues.

    What KEDA does: the redis scaler reads LLEN of the queue's list, i.e. tasks WAITING (with acks
    late and prefetch 1 a running task's message sits in kombu's ``unacked`` hash, not in the list),
    and the HPA it drives sets replicas = ceil(LLEN / listLength). So busy workers are not counted:
    replicas only stay up while about listLength tasks per replica wait. In equilibrium a pool of R
    replicas (c slots each) holds q ~= listLength x R waiting tasks, and a task that joins the queue
    waits ~= q x s / (R x c) = listLength x s / c, where s is the queue's mean service time.

    Budget: slack = target_p95 - p95 of the service times alone (``service_p95``). It is split between
    the queues in proportion to their service time per job (``gpu_share``; default
    T_gpu / (T_gpu + T_cpu)), so each queue may add the same relative wait. A job visits the gpu queue
    once and the cpu queue ``cpu_visits`` (6) times; each cpu visit waits listLength x t_task / c, and
    the six sum to listLength x T_cpu / c. Hence

        listLength_gpu = floor(c_gpu x slack_gpu / T_gpu)
        listLength_cpu = floor(c_cpu x slack_cpu / T_cpu)      (T_cpu = all six cpu tasks of a job)

    i.e. the jobs one worker clears within its share of the slack. The floor is 1 (KEDA needs a
    positive target); ``tight`` is True when 1 is already more than the slack allows, and the
    latency target then depends on minReplicaCount headroom, not on the scaler.
    """
    w = workload or Workload()
    base = service_p95(w)
    slack = target_p95_s - base
    t_gpu, t_cpu = w.gpu_task_s, w.cpu_task_s
    share = t_gpu / (t_gpu + t_cpu) if gpu_share is None else gpu_share
    slack_gpu, slack_cpu = slack * share, slack * (1 - share)
    raw_gpu = gpu_concurrency * slack_gpu / t_gpu
    raw_cpu = cpu_concurrency * slack_cpu / t_cpu
    gpu_len, cpu_len = max(1, math.floor(raw_gpu)), max(1, math.floor(raw_cpu))
    return {
        "target_p95_s": target_p95_s, "service_p95_s": round(base, 2), "slack_s": round(slack, 2),
        "gpu_share": round(share, 4), "gpu_slack_s": round(slack_gpu, 2), "cpu_slack_s": round(slack_cpu, 2),
        "gpu_task_s": round(t_gpu, 3), "cpu_task_s_per_job": round(t_cpu, 3), "cpu_visits": w.cpu_visits,
        "gpu_concurrency": gpu_concurrency, "cpu_concurrency": cpu_concurrency,
        "gpu_list_length": gpu_len, "cpu_list_length": cpu_len,
        "gpu_wait_at_target_s": round(gpu_len * t_gpu / gpu_concurrency, 2),
        "cpu_wait_at_target_s": round(cpu_len * t_cpu / cpu_concurrency, 2),
        "tight": raw_gpu < 1 or raw_cpu < 1,
    }


# --------------------------------------------------------------------------------------------------
# KEDA-driven pools (a check of keda_targets, not a model of Kubernetes)


class _Pod:
    __slots__ = ("slots", "retiring", "live")

    def __init__(self) -> None:
        self.slots: list = []
        self.retiring = False
        self.live = 0


class _ScaledPool:
    """Replicas of ``slots`` worker slots pulling from one FIFO queue; a new replica serves after
    ``start_s``; a retired one finishes its running tasks first (Celery's warm shutdown)."""

    def __init__(self, env: simpy.Environment, slots: int, start_s: float) -> None:
        self.env, self.c, self.start_s = env, slots, start_s
        self.queue = simpy.Store(env)
        self.pods: list[_Pod] = []
        self.alive_pods = 0   # billed: from creation until the last slot exits
        self.busy = 0
        self.pod_area = 0.0   # pod-seconds
        self.busy_area = 0.0  # busy slot-seconds
        self._last = 0.0

    def _account(self) -> None:
        dt = self.env.now - self._last
        self.pod_area += self.alive_pods * dt
        self.busy_area += self.busy * dt
        self._last = self.env.now

    @property
    def replicas(self) -> int:
        return sum(1 for p in self.pods if not p.retiring)

    def scale_to(self, n: int, ready: bool = False) -> None:
        self._account()
        while self.replicas < n:
            pod = _Pod()
            self.pods.append(pod)
            self.alive_pods += 1
            pod.live = self.c
            for _ in range(self.c):
                state = {"waiting": True}
                state["proc"] = self.env.process(self._slot(pod, state, 0.0 if ready else self.start_s))
                pod.slots.append(state)
        while self.replicas > n:  # the newest first (a starting pod before a serving one)
            pod = next(p for p in reversed(self.pods) if not p.retiring)
            pod.retiring = True
            for state in pod.slots:
                if state["waiting"] and state["proc"].is_alive:
                    state["proc"].interrupt()

    def _slot(self, pod: _Pod, state: dict, start_s: float):
        try:
            if start_s:
                yield self.env.timeout(start_s)
            while not pod.retiring:
                get = self.queue.get()
                try:
                    item = yield get
                except simpy.Interrupt:
                    if not get.triggered:
                        get.cancel()
                        break
                    item = get.value
                state["waiting"] = False
                self._account()
                self.busy += 1
                yield self.env.timeout(item[0])
                self._account()
                self.busy -= 1
                item[1].succeed()
                state["waiting"] = True
        except simpy.Interrupt:  # retired while starting
            pass
        state["waiting"] = False
        pod.live -= 1
        if pod.live == 0:
            self._account()
            self.alive_pods -= 1
            self.pods.remove(pod)

    def task(self, seconds: float):
        done = self.env.event()
        self.queue.put((seconds, done))
        return done


@dataclass
class KedaResult:
    rate_per_hour: float
    gpu_list_length: int
    cpu_list_length: int
    jobs: int
    latency_p50_s: float
    latency_p95_s: float
    gpu_pods_mean: float     # time-average pods billed (starting and draining ones included)
    cpu_pods_mean: float
    gpu_pods_max: int
    cpu_pods_max: int
    gpu_idle_fraction: float  # 1 - busy GPU-seconds / billed GPU-seconds
    queue_gpu: dict
    queue_cpu: dict
    cost_per_1k_clips: float
    wall_s: float


def simulate_keda(rate_per_hour: float, gpu_list_length: int, cpu_list_length: int, *,
                  workload: Workload | None = None, cpu_concurrency: int = 2, jobs: int = 10_000,
                  warmup: float = 0.1, seed: int = 1, hpa_sync_s: float = 15.0, polling_s: float = 30.0,
                  scale_down_window_s: float = 300.0, cooldown_s: float = 300.0, tolerance: float = 0.1,
                  scale_up_percent: float = 100.0, scale_up_pods: int = 4, gpu_scale_up_period_s: float = 15.0,
                  cpu_scale_up_period_s: float = 15.0,
                  gpu_start_s: float = 180.0, cpu_start_s: float = 20.0, gpu_min: int = 0, cpu_min: int = 1,
                  gpu_max: int = 10_000, cpu_max: int = 10_000, gpu_activation: int = 0, cpu_activation: int = 1,
                  gpu_hour_price: float = GPU_HOUR_PRICE, cpu_hour_price: float = CPU_HOUR_PRICE) -> KedaResult:
    """The same jobs as ``simulate``, with both pools sized by KEDA-style scaling on queue length.

    Modelled: replicas = ceil(LLEN / listLength) every ``hpa_sync_s`` (HPA AverageValue), skipped within
    the HPA ``tolerance``; scale-up at most max(2x, +4) per sync (HPA default policy); scale-down to the
    highest recommendation of the last ``scale_down_window_s`` (HPA stabilisation); 0 <-> 1 by KEDA
    every ``polling_s`` (active while LLEN > activationListLength; to 0 after ``cooldown_s`` inactive,
    only when min is 0). New pods serve after ``*_start_s`` (est: GPU model load + warm-up, CPU
    start); retired pods finish their running task first. Both pools start at their load x 1.1, ready.
    """
    w = workload or Workload()
    started = time.perf_counter()
    gaps, gpu_s, pre, post = _draw_jobs(w, rate_per_hour, jobs, seed)
    env = simpy.Environment()
    gpu = _ScaledPool(env, 1, gpu_start_s)
    cpu = _ScaledPool(env, cpu_concurrency, cpu_start_s)
    lam = rate_per_hour / 3600.0
    gpu.scale_to(max(gpu_min, math.ceil(lam * w.gpu_task_s * 1.1)), ready=True)
    cpu.scale_to(max(cpu_min, math.ceil(lam * w.cpu_task_s / cpu_concurrency * 1.1)), ready=True)
    warm = int(jobs * warmup)
    arrived, done = np.zeros(jobs), np.zeros(jobs)
    q_gpu, q_cpu = np.zeros(jobs - warm), np.zeros(jobs - warm)
    pods_max = [0, 0]
    finished = [0]
    snapshots: dict[str, tuple] = {}

    def job(i: int):
        for times in pre:
            yield cpu.task(times[i])
        yield gpu.task(gpu_s[i])
        for times in post:
            yield cpu.task(times[i])
        done[i] = env.now
        finished[0] += 1

    def arrivals():
        for i in range(jobs):
            yield env.timeout(gaps[i])
            arrived[i] = env.now
            if i == warm or i == jobs - 1:
                gpu._account()
                cpu._account()
                snapshots["start" if i == warm else "end"] = (env.now, gpu.pod_area, gpu.busy_area, cpu.pod_area)
            if i >= warm:
                q_gpu[i - warm], q_cpu[i - warm] = len(gpu.queue.items), len(cpu.queue.items)
                pods_max[0] = max(pods_max[0], gpu.alive_pods)
                pods_max[1] = max(pods_max[1], cpu.alive_pods)
            env.process(job(i))

    def controller(pool: _ScaledPool, target: int, low: int, high: int, activation: int, up_period: float):
        history: list[tuple[float, int]] = [(0.0, pool.replicas)]  # recommendations (scale-down stabilisation)
        counts: list[tuple[float, int]] = [(0.0, pool.replicas)]   # replica counts (scale-up policy base)
        last_active = 0.0
        while finished[0] < jobs:
            yield env.timeout(hpa_sync_s)
            waiting = len(pool.queue.items)
            current = pool.replicas
            if waiting > activation:
                last_active = env.now
            if current == 0:  # KEDA's own 0 -> 1, on its polling interval
                if waiting > activation and env.now % polling_s < hpa_sync_s:
                    pool.scale_to(1)
                continue
            if low == 0 and waiting <= activation and env.now - last_active >= cooldown_s:
                pool.scale_to(0)
                history.clear()
                continue
            desired = math.ceil(waiting / target)
            if current and abs(waiting / (target * current) - 1.0) <= tolerance:
                desired = current
            counts.append((env.now, current))
            counts[:] = [(t, n) for t, n in counts if env.now - t <= up_period]
            base = min(n for _, n in counts)  # replicas at the start of the scale-up period
            limit = max(math.floor(base * (1 + scale_up_percent / 100.0)), base + scale_up_pods)
            desired = min(max(desired, max(low, 1)), high, max(limit, current))
            history.append((env.now, desired))
            history[:] = [(t, d) for t, d in history if env.now - t <= scale_down_window_s]
            if desired < current:
                desired = min(current, max(d for _, d in history))
            pool.scale_to(desired)

    env.process(arrivals())
    env.process(controller(gpu, gpu_list_length, gpu_min, gpu_max, gpu_activation, gpu_scale_up_period_s))
    env.process(controller(cpu, cpu_list_length, cpu_min, cpu_max, cpu_activation, cpu_scale_up_period_s))
    env.run()
    latency = (done - arrived)[warm:]
    (t0, gp0, gb0, cp0), (t1, gp1, gb1, cp1) = snapshots["start"], snapshots["end"]
    span = max(t1 - t0, 1e-9)
    gpu_pods, cpu_pods = (gp1 - gp0) / span, (cp1 - cp0) / span
    cost_h = gpu_pods * gpu_hour_price + cpu_pods * cpu_concurrency * VCPUS_PER_SLOT * cpu_hour_price
    return KedaResult(
        rate_per_hour=rate_per_hour, gpu_list_length=gpu_list_length, cpu_list_length=cpu_list_length,
        jobs=jobs - warm, latency_p50_s=float(np.percentile(latency, 50)),
        latency_p95_s=float(np.percentile(latency, 95)), gpu_pods_mean=gpu_pods, cpu_pods_mean=cpu_pods,
        gpu_pods_max=pods_max[0], cpu_pods_max=pods_max[1],
        gpu_idle_fraction=1.0 - (gb1 - gb0) / max(gp1 - gp0, 1e-9),
        queue_gpu=_percentiles(q_gpu), queue_cpu=_percentiles(q_cpu),
        cost_per_1k_clips=cost_h / (rate_per_hour / 1000.0), wall_s=time.perf_counter() - started,
    )


# --------------------------------------------------------------------------------------------------
# Command line


def _git_head() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
        return head + (" + uncommitted working tree" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown_table(rows: Sequence[Sizing]) -> str:
    head = ("| clips/h | GPU workers | CPU workers (x conc = vCPUs) | p50 s | p95 s | GPU util | GPU idle | "
            "queue gpu p50/p95/max | queue cpu p50/p95/max | $/h | $ per 1k clips | G-1 / C-1 fail on | sims |")
    lines = [head, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for s in rows:
        r = s.result
        qg, qc = r.queue_gpu, r.queue_cpu
        lines.append(
            f"| {s.rate_per_hour:,.0f} | {s.gpu_workers} | {s.cpu_workers} (x{s.cpu_concurrency} = {s.cpu_vcpus}) | "
            f"{r.latency_p50_s:.1f} | {r.latency_p95_s:.1f} | {r.gpu_utilisation:.1%} | {r.gpu_idle_fraction:.1%} | "
            f"{qg['p50']:.0f}/{qg['p95']:.0f}/{qg['max']:.0f} | {qc['p50']:.0f}/{qc['p95']:.0f}/{qc['max']:.0f} | "
            f"{s.cost_per_hour:,.2f} | {s.cost_per_1k_clips:.2f} | {s.gpu_bound} / {s.cpu_bound} | {s.simulations} |")
    return "\n".join(lines)


def keda_text(k: dict) -> str:
    return (f"KEDA listLength: gpu {k['gpu_list_length']}, cpu {k['cpu_list_length']}  "
            f"(target p95 {k['target_p95_s']:.0f} s; service-only p95 {k['service_p95_s']} s; slack {k['slack_s']} s "
            f"split {k['gpu_share']:.0%} gpu / {1 - k['gpu_share']:.0%} cpu = {k['gpu_slack_s']} s / {k['cpu_slack_s']} s; "
            f"gpu task {k['gpu_task_s']} s x1 slot, cpu {k['cpu_task_s_per_job']} s per job over {k['cpu_visits']} "
            f"tasks x{k['cpu_concurrency']} slots; standing wait at target: gpu {k['gpu_wait_at_target_s']} s, "
            f"cpu {k['cpu_wait_at_target_s']} s{'; TIGHT: listLength 1 exceeds the slack' if k['tight'] else ''})")


def keda_check_table(rows: Sequence[tuple[str, KedaResult]]) -> str:
    lines = ["| clips/h | pools | listLength gpu/cpu | p50 s | p95 s | GPU pods mean/max | CPU pods mean/max | "
             "GPU idle (billed) | queue gpu p95 | $ per 1k clips |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, k in rows:
        lines.append(f"| {k.rate_per_hour:,.0f} | {label} | {k.gpu_list_length}/{k.cpu_list_length} | "
                     f"{k.latency_p50_s:.1f} | {k.latency_p95_s:.1f} | {k.gpu_pods_mean:.1f}/{k.gpu_pods_max} | "
                     f"{k.cpu_pods_mean:.1f}/{k.cpu_pods_max} | {k.gpu_idle_fraction:.1%} | {k.queue_gpu['p95']:.0f} | "
                     f"{k.cost_per_1k_clips:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.capacity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, nargs="+", default=[1000, 10000, 100000], help="clips per hour")
    parser.add_argument("--target-p95", type=float, default=120.0, help="p95 end-to-end latency target, s")
    parser.add_argument("--preset", choices=sorted(GPU_PRESETS), default=DEFAULT_PRESET,
                        help="GPU seconds per clip (estimates; see GPU_PRESETS)")
    parser.add_argument("--gpu-seconds", type=float, help="GPU seconds per clip (overrides --preset)")
    parser.add_argument("--gpu-cv", type=float, default=Workload.gpu_cv)
    parser.add_argument("--cpu-cv", type=float, default=Workload.cpu_cv)
    parser.add_argument("--cpu-concurrency", type=int, default=2, help="child processes per cpu worker (-c)")
    parser.add_argument("--gpu-hour-price", type=float, default=GPU_HOUR_PRICE, help="USD per GPU-hour")
    parser.add_argument("--cpu-hour-price", type=float, default=CPU_HOUR_PRICE, help="USD per vCPU-hour")
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs simulated per run")
    parser.add_argument("--warmup", type=float, default=0.1, help="share of jobs discarded as warm-up")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--explore", type=int, default=1, help="also try G+1 .. G+explore GPU workers")
    parser.add_argument("--markdown", action="store_true", help="print the Markdown table")
    parser.add_argument("--keda", action="store_true", help="print only the KEDA targets used in deploy/")
    parser.add_argument("--keda-check", action="store_true",
                        help="also simulate KEDA-scaled pools at the derived listLength (min 0 / min = sized)")
    parser.add_argument("--keda-hours", type=float, default=1.0,
                        help="--keda-check: simulate at least this many hours of arrivals (scaling reacts over minutes)")
    parser.add_argument("--gpu-start", type=float, default=180.0, help="--keda-check: s until a new GPU pod serves (est)")
    parser.add_argument("--cpu-start", type=float, default=20.0, help="--keda-check: s until a new CPU pod serves (est)")
    args = parser.parse_args(argv)

    if args.keda:
        print(keda_text(keda_targets(**DEPLOY_KEDA_INPUTS)))
        return 0
    gpu_seconds = args.gpu_seconds if args.gpu_seconds is not None else GPU_PRESETS[args.preset].seconds
    workload = Workload(gpu_seconds=gpu_seconds, gpu_cv=args.gpu_cv, cpu_cv=args.cpu_cv)
    started = time.perf_counter()
    rows = []
    for rate in args.rate:
        try:
            rows.append(size_pool(rate, args.target_p95, workload=workload, cpu_concurrency=args.cpu_concurrency,
                                  jobs=args.jobs, warmup=args.warmup, seed=args.seed,
                                  gpu_hour_price=args.gpu_hour_price, cpu_hour_price=args.cpu_hour_price,
                                  explore=args.explore))
        except Infeasible as exc:
            print(f"rate {rate:,.0f}/h: {exc}", file=sys.stderr)
    keda = keda_targets(args.target_p95, workload, cpu_concurrency=args.cpu_concurrency)
    source = (f"GPU {gpu_seconds:g} s/clip ({'--gpu-seconds' if args.gpu_seconds is not None else args.preset}: "
              f"{'given' if args.gpu_seconds is not None else GPU_PRESETS[args.preset].note}); "
              f"CPU {workload.cpu_task_s:.2f} s/job on {VCPUS_PER_SLOT}-vCPU slots (RESULTS.md stages, d899c5a); "
              f"cv gpu {args.gpu_cv:g} / cpu {args.cpu_cv:g}; ${args.gpu_hour_price:g}/GPU-h, "
              f"${args.cpu_hour_price:g}/vCPU-h; seed {args.seed}; {args.jobs:,} jobs per run, "
              f"{args.warmup:.0%} warm-up")
    checks: list[tuple[str, KedaResult]] = []
    if args.keda_check:
        for sized in rows:
            keda_jobs = max(args.jobs, math.ceil(sized.rate_per_hour * args.keda_hours))
            common = dict(workload=workload, cpu_concurrency=args.cpu_concurrency, jobs=keda_jobs, warmup=args.warmup,
                          seed=args.seed, gpu_start_s=args.gpu_start, cpu_start_s=args.cpu_start,
                          gpu_hour_price=args.gpu_hour_price, cpu_hour_price=args.cpu_hour_price)
            lg, lc = keda["gpu_list_length"], keda["cpu_list_length"]
            checks.append(("KEDA, pods ready at once, min 0/1",
                           simulate_keda(sized.rate_per_hour, lg, lc, **{**common, "gpu_start_s": 0.0, "cpu_start_s": 0.0})))
            checks.append((f"KEDA, starts {args.gpu_start:g}/{args.cpu_start:g} s, min 0/1",
                           simulate_keda(sized.rate_per_hour, lg, lc, **common)))
            checks.append((f"KEDA, starts {args.gpu_start:g}/{args.cpu_start:g} s, min = sized "
                           f"{sized.gpu_workers}/{sized.cpu_workers}",
                           simulate_keda(sized.rate_per_hour, lg, lc, gpu_min=sized.gpu_workers,
                                         cpu_min=sized.cpu_workers, **common)))
    if args.markdown:
        print(markdown_table(rows))
        print()
        print(source)
        print(keda_text(keda))
        if checks:
            print()
            print(keda_check_table(checks))
    else:
        for s in rows:
            r = s.result
            print(f"{s.rate_per_hour:>9,.0f}/h  G={s.gpu_workers:<4} C={s.cpu_workers:<4} (x{s.cpu_concurrency})  "
                  f"p50 {r.latency_p50_s:6.1f} s  p95 {r.latency_p95_s:6.1f} s  GPU idle {r.gpu_idle_fraction:5.1%}  "
                  f"queue gpu p95 {r.queue_gpu['p95']:.0f} cpu p95 {r.queue_cpu['p95']:.0f}  "
                  f"${s.cost_per_1k_clips:.2f}/1k clips  (G-1/C-1 fail on {s.gpu_bound}/{s.cpu_bound}; "
                  f"{s.simulations} sims)")
        print(source)
        print(keda_text(keda))
        for label, k in checks:
            print(f"{k.rate_per_hour:>9,.0f}/h  {label}: p95 {k.latency_p95_s:.1f} s, GPU pods {k.gpu_pods_mean:.1f} "
                  f"(max {k.gpu_pods_max}), ${k.cost_per_1k_clips:.2f}/1k clips")
    sys.stdout.flush()
    print(f"commit {_git_head()}; {platform.machine()}, {platform.python_version()}, simpy {simpy.__version__}; "
          f"wall {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
