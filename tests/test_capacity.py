"""The capacity model (benchmarks/capacity.py): small, fast checks that the simulation is a queue
simulation (Little's law, the M/G/1 mean wait), that sizing finds the minimum, and that the KEDA
numbers follow their documented derivation."""

from __future__ import annotations

import math

import pytest

from benchmarks import capacity
from benchmarks.capacity import (Infeasible, Workload, keda_targets, relaxation_time, simulate, simulate_keda,
                                 size_pool)

ZERO_CPU = {stage: 0.0 for stage in capacity.CPU_STAGE_SECONDS}


def test_littles_law_holds():
    r = simulate(1000, 10, 3, jobs=4000, seed=3)
    assert r.jobs == 3600
    # jobs in the system seen at arrivals (PASTA: the time average) = arrival rate x mean time in system
    assert r.mean_in_system == pytest.approx(1000 / 3600 * r.latency_mean_s, rel=0.08)
    assert r.latency_p50_s <= r.latency_p95_s <= r.latency_p99_s
    # utilisation = offered load / servers
    w = Workload()
    assert r.gpu_utilisation == pytest.approx(1000 / 3600 * w.gpu_task_s / 10, rel=0.06)


def test_single_gpu_matches_pollaczek_khinchine():
    """M/G/1: mean wait = lambda E[S^2] / (2 (1 - rho)); the CPU stages are made free."""
    w = Workload(gpu_seconds=10.0, cpu_seconds=ZERO_CPU, gpu_cv=0.5, cpu_cv=0.0, overhead_s=0.0)
    lam = 0.05  # per second: rho = 0.5
    r = simulate(lam * 3600, 1, 1, cpu_concurrency=1, workload=w, jobs=8000, seed=11)
    expected_wait = lam * 10.0 ** 2 * (1 + 0.5 ** 2) / (2 * (1 - 0.5))  # 6.25 s
    assert r.gpu_wait_mean_s == pytest.approx(expected_wait, rel=0.15)
    assert r.latency_mean_s == pytest.approx(10.0 + expected_wait, rel=0.08)
    assert r.cpu_wait_mean_s == 0.0


def test_more_gpus_never_worse():
    p95 = [simulate(1000, g, 50, jobs=3000, seed=5).latency_p95_s for g in range(9, 14)]
    assert all(later <= earlier + 1e-9 for earlier, later in zip(p95, p95[1:])), p95
    assert p95[0] > p95[-1]


def test_deterministic_by_seed():
    a, b = simulate(2000, 20, 6, jobs=1500, seed=42), simulate(2000, 20, 6, jobs=1500, seed=42)
    c = simulate(2000, 20, 6, jobs=1500, seed=43)
    assert (a.latency_p95_s, a.queue_gpu, a.gpu_utilisation) == (b.latency_p95_s, b.queue_gpu, b.gpu_utilisation)
    assert a.latency_p95_s != c.latency_p95_s


def test_size_pool_finds_the_minimum():
    target, jobs = 100.0, 2500
    s = size_pool(1000, target, jobs=jobs, seed=2, explore=0)
    assert s.result.latency_p95_s <= target and s.result.steady
    unlimited_cpu = jobs
    # one GPU fewer (CPU never queuing) misses the target, is overloaded, or cannot show a steady state
    if s.gpu_workers - 1 >= 1 and s.gpu_bound == "latency":
        assert simulate(1000, s.gpu_workers - 1, 0, cpu_slots=unlimited_cpu, jobs=jobs, seed=2).latency_p95_s > target
    else:
        assert s.gpu_bound in ("load", "steady-state")
    # one CPU worker fewer misses it too
    if s.cpu_bound == "latency":
        assert simulate(1000, s.gpu_workers, s.cpu_workers - 1, jobs=jobs, seed=2).latency_p95_s > target
    else:
        assert s.cpu_bound in ("load", "steady-state")
    assert s.cost_per_1k_clips == pytest.approx(
        (s.gpu_workers * s.gpu_hour_price + s.cpu_vcpus * s.cpu_hour_price) / (1000 / 1000))


def test_size_pool_raises_when_service_alone_misses_the_target():
    with pytest.raises(Infeasible):
        size_pool(1000, 20.0, jobs=500)  # one job's own service time is ~40 s


def test_relaxation_time():
    w = Workload()
    assert relaxation_time(1000, 8, w, "gpu") == math.inf  # 8.34 GPUs busy on average
    taus = [relaxation_time(1000, g, w, "gpu") for g in (9, 10, 12, 20)]
    assert taus == sorted(taus, reverse=True)
    assert relaxation_time(100_000, 834, w, "gpu") > 24 * 3600  # the trap the steady-state check avoids


def test_keda_targets_follow_the_derivation():
    cpu = dict(ZERO_CPU, encode=5.0)
    w = Workload(gpu_seconds=10.0, cpu_seconds=cpu, gpu_cv=0.0, cpu_cv=0.0, overhead_s=0.0)
    k = keda_targets(75.0, w, cpu_concurrency=2)
    assert k["service_p95_s"] == pytest.approx(15.0)
    assert k["slack_s"] == pytest.approx(60.0)
    assert k["gpu_share"] == pytest.approx(10 / 15, abs=1e-4)
    assert (k["gpu_list_length"], k["cpu_list_length"]) == (4, 8)  # floor(40/10), floor(2 x 20/5)
    assert not k["tight"]
    tight = keda_targets(16.0, w, cpu_concurrency=2)
    assert (tight["gpu_list_length"], tight["cpu_list_length"], tight["tight"]) == (1, 1, True)
    # a longer target never lowers the per-replica targets
    lengths = [keda_targets(t)["gpu_list_length"] for t in (90, 120, 200, 400)]
    assert lengths == sorted(lengths)


def test_deploy_inputs_give_positive_targets():
    k = keda_targets(**capacity.DEPLOY_KEDA_INPUTS)
    assert k["gpu_list_length"] >= 1 and k["cpu_list_length"] >= 1
    assert k["slack_s"] > 0


def test_cli_keda_prints_the_deploy_numbers(capsys):
    assert capacity.main(["--keda"]) == 0
    k = keda_targets(**capacity.DEPLOY_KEDA_INPUTS)
    out = capsys.readouterr().out
    assert f"gpu {k['gpu_list_length']}, cpu {k['cpu_list_length']}" in out


def test_cli_markdown_table(capsys):
    assert capacity.main(["--rate", "500", "--jobs", "600", "--markdown", "--target-p95", "150"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| clips/h | GPU workers |")
    assert "| 500 |" in out


def test_keda_simulation_runs_every_job():
    k = simulate_keda(600, 1, 3, jobs=800, gpu_start_s=0.0, cpu_start_s=0.0, seed=4)
    assert k.jobs == 720
    assert 0 < k.latency_p50_s <= k.latency_p95_s < math.inf
    assert k.gpu_pods_mean > 0 and k.cpu_pods_mean >= 1
    again = simulate_keda(600, 1, 3, jobs=800, gpu_start_s=0.0, cpu_start_s=0.0, seed=4)
    assert again.latency_p95_s == k.latency_p95_s
