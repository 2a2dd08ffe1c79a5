"""Nothing lost, nothing done twice, with real worker processes on the machine's own brokers.

The job record is the source of truth (workers/attempts.py, workers/reconcile.py): a gpu worker
killed whole (parent and pool child, kill -9) mid-generate leaves a stage whose heartbeat stops;
the reconciler (``alive worker --beat``) dispatches it again with a new token, with default
settings (heartbeat timeout 60 s, a pass every 10 s), long before Redis would give the message
back (visibility timeout 900 s). On RabbitMQ the broker requeues the message at once and the
redelivery takes the stage over. A stage that kills its worker every time fails ``worker_lost``.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

from tests.test_faults import (SLOW_TINY, SMALL, _port_open, make_cluster, assert_delivered_once, children, finish, generating,
                               jobs_of, logs_tail, task_events, wait_until)
from tests.worker_fixtures import machine_redis_db
from workers.client import submit

__all__ = ["make_cluster"]  # the fixture, imported to be used here

pytestmark = pytest.mark.slow

REDIS_DB = 12  # not test_faults' 13; flushed before and after


@pytest.fixture
def machine_redis():
    with machine_redis_db(REDIS_DB) as url:
        yield url


@pytest.fixture
def machine_rabbitmq():
    if not _port_open(5672):
        pytest.skip("no RabbitMQ listens on 127.0.0.1:5672")
    url = "amqp://guest:guest@127.0.0.1:5672//"
    names: list[str] = []
    yield url, names
    from kombu import Connection

    with Connection(url, connect_timeout=2) as conn:  # our quorum queues and exchanges, gone again
        channel = conn.default_channel
        for name in names:
            for drop in (lambda: channel.queue_delete(name), lambda: channel.exchange_delete(name)):
                try:
                    drop()
                except Exception:  # noqa: BLE001 - a name that was never declared
                    channel = conn.channel()


def own_queues(tag: str) -> dict[str, str]:
    return {"ALIVE_WORKER__CPU_QUEUE": f"rel-cpu-{tag}", "ALIVE_WORKER__GPU_QUEUE": f"rel-gpu-{tag}",
            "ALIVE_WORKER__WEBHOOK_QUEUE": f"rel-hooks-{tag}", "ALIVE_WORKER__DEAD_LETTER_QUEUE": f"rel-dead-{tag}"}


def kill_whole_worker_mid_generate(env, job_id: str, gpu) -> float:
    jobs = jobs_of(env)
    wait_until(generating(jobs, job_id), 90, "the job to start denoising")
    os.killpg(gpu.pid, signal.SIGKILL)  # parent and pool child: the host is gone
    gpu.wait(10)
    killed = time.monotonic()
    assert jobs.load(job_id).stage == "generate"
    env.start_worker("gpu", name="gpu2")
    return killed


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_gpu_worker_killed_whole_mid_generate_job_done_once_within_heartbeat_timeout(
        broker, request, make_cluster, sample_photo):
    tag = uuid.uuid4().hex[:8]
    queues = own_queues(tag)
    if broker == "redis":
        url = request.getfixturevalue("machine_redis")
    else:
        url, names = request.getfixturevalue("machine_rabbitmq")
        names += list(queues.values())
    env = make_cluster(url, **queues)  # default heartbeat, reconcile and visibility settings
    w = env.settings.worker
    assert (w.heartbeat_timeout_s, w.visibility_timeout_s) == (60, 900)
    gpu = env.start_worker("gpu", name="gpu")
    env.start_worker("cpu", name="cpu", beat=True)  # the reconciler runs here
    job_id = submit(sample_photo, env.settings, SLOW_TINY, engine="tiny")
    killed = kill_whole_worker_mid_generate(env, job_id, gpu)
    record = finish(env, [job_id], timeout=w.heartbeat_timeout_s + 30)[job_id]
    took = time.monotonic() - killed
    assert_delivered_once(env, job_id, record)
    assert record.lost_attempts == {"generate": 1}, record.lost_attempts
    finals = [e for name in ("cpu",) for e in task_events(env, name, "alive.finalize", "succeeded")]
    assert len(finals) == 1, (finals, logs_tail(env))
    first = task_events(env, "gpu", "alive.generate")
    again = task_events(env, "gpu2", "alive.generate")
    if broker == "redis":  # the reconciler sent it again with a new message id
        assert "dispatched again" in (env.data_dir / "cpu.log").read_text(errors="replace")
        assert [i for i, _ in again] != [i for i, _ in first]
    else:  # RabbitMQ gave the killed consumer's message back at once: the same id took over
        assert [i for i, _ in again][:1] == [i for i, _ in first]
    print(f"{broker}: job done once, {took:.1f} s after the whole gpu worker was killed "
          f"(limit heartbeat_timeout_s + 30 = {w.heartbeat_timeout_s + 30:.0f} s)")


def test_a_stage_that_kills_its_worker_every_time_fails_worker_lost_after_3_attempts(make_cluster, sample_photo):
    """Each time generate starts, its pool child is killed (as a photo that crashes the engine
    would). Before: the message came back at once, 6 deliveries in 10 s and no end."""
    env = make_cluster()
    jobs = jobs_of(env)
    gpu = env.start_worker("gpu", name="gpu")
    env.start_worker("cpu", name="cpu")
    job_id = submit(sample_photo, env.settings, SLOW_TINY, engine="tiny")
    killed_tokens: list[str] = []

    def kill_each_new_attempt() -> bool:
        record = jobs.load(job_id)
        if record.finished:
            return True
        attempt = record.attempt or {}
        token = attempt.get("token")
        if attempt.get("stage") == "generate" and attempt.get("state") == "running" and token not in killed_tokens:
            for child in children(gpu.pid):
                os.kill(child, signal.SIGKILL)
                killed_tokens.append(token)
        return False

    wait_until(kill_each_new_attempt, 180, "the job to end", poll=0.02)
    record = jobs.load(job_id)
    assert record.status == "failed", (record.status, logs_tail(env))
    assert record.error["code"] == "worker_lost", record.error
    assert "3 times" in record.error["message"]
    assert len(killed_tokens) == 3, killed_tokens
    deliveries = task_events(env, "gpu", "alive.generate")
    assert len(deliveries) == 4, deliveries  # three killed, the fourth fails the job at once
    storage_files = sorted(p.name for p in (env.settings.store_root / "jobs" / job_id).iterdir()
                           if not p.name.startswith("."))
    assert storage_files == ["job.json", "report.json"], storage_files  # nothing of the photo kept
    print(f"worker_lost after {len(deliveries)} deliveries, {len(killed_tokens)} killed attempts")


def test_sigterm_lets_the_running_task_finish_and_the_worker_exit(make_cluster, sample_photo):
    env = make_cluster()
    jobs = jobs_of(env)
    gpu = env.start_worker("gpu", name="gpu")
    env.start_worker("cpu", name="cpu")
    job_id = submit(sample_photo, env.settings, SLOW_TINY, engine="tiny")
    wait_until(generating(jobs, job_id), 90, "the job to start denoising")
    os.kill(gpu.pid, signal.SIGTERM)  # the parent only, as an orchestrator does
    record = finish(env, [job_id], timeout=120)[job_id]
    assert_delivered_once(env, job_id, record)
    assert gpu.wait(60) == 0
    assert record.lost_attempts == {}
    assert len(task_events(env, "gpu", "alive.generate", "succeeded")) == 1


def test_grace_over_the_running_task_goes_back_to_the_queue_and_another_worker_ends_it(
        make_cluster, sample_photo, machine_rabbitmq):
    url, names = machine_rabbitmq
    tag = uuid.uuid4().hex[:8]
    queues = own_queues(tag)
    names += list(queues.values())
    env = make_cluster(url, ALIVE_WORKER__SHUTDOWN_GRACE_S=1, **queues)
    jobs = jobs_of(env)
    gpu = env.start_worker("gpu", name="gpu")
    env.start_worker("cpu", name="cpu")
    job_id = submit(sample_photo, env.settings, SLOW_TINY.model_copy(update={"num_inference_steps": 100}),
                    engine="tiny")
    wait_until(generating(jobs, job_id), 90, "the job to start denoising")
    os.kill(gpu.pid, signal.SIGTERM)
    gpu.wait(60)  # after 1 s of grace: cold shutdown
    assert not jobs.load(job_id).finished
    env.start_worker("gpu", name="gpu2")
    record = finish(env, [job_id], timeout=180)[job_id]
    assert_delivered_once(env, job_id, record)
    assert "finishing the running task for up to 1 s" in (env.data_dir / "gpu.log").read_text(errors="replace")


def test_a_message_past_the_quorum_delivery_limit_fails_its_job_dead_lettered(
        make_cluster, sample_photo, machine_rabbitmq):
    """RabbitMQ quorum queues count deliveries; past ``worker.rabbitmq_delivery_limit`` the message
    goes to the dead-letter queue and the reconciler fails its job with the reason."""
    from kombu import Connection

    from workers.app import app, declare_queues
    from workers.reconcile import Reconciler

    url, names = machine_rabbitmq
    queues = own_queues(uuid.uuid4().hex[:8])
    names += list(queues.values())
    env = make_cluster(url, **queues)
    declare_queues(app)
    cpu_queue = next(q for q in app.conf.task_queues if q.name == env.settings.worker.cpu_queue)
    assert cpu_queue.queue_arguments["x-queue-type"] == "quorum"
    job_id = submit(sample_photo, env.settings, SMALL, engine="tiny")  # no worker: intake waits in the queue
    returned = 0
    with Connection(url) as conn:
        channel = conn.channel()
        for _ in range(env.settings.worker.rabbitmq_delivery_limit + 3):
            message = channel.basic_get(cpu_queue.name, no_ack=False)
            if message is None:
                break
            channel.basic_reject(message.delivery_tag, requeue=True)  # as a worker that crashed on it
            returned += 1
        assert channel.basic_get(cpu_queue.name, no_ack=True) is None  # gone from the work queue
    assert returned == env.settings.worker.rabbitmq_delivery_limit + 1, returned
    counts = Reconciler(env.settings).drain_dead_letters()
    assert counts == {"dead_lettered": 1}, counts
    record = jobs_of(env).load(job_id)
    assert record.status == "failed" and record.error["code"] == "dead_lettered", record.error
    assert "alive.intake" in record.error["message"]


def test_a_full_store_makes_jobs_wait_as_disk_full_then_succeed_when_space_is_freed(
        make_cluster, sample_photo, tmp_path):
    """The store on a real 2 MiB tmpfs, filled up after the photo was taken: generate cannot store
    its frames, the job waits (``disk_full``, retried with backoff, shown by `alive status`), and
    succeeds once the filler is deleted; nothing partial, no empty folder, no scratch left."""
    from typer.testing import CliRunner

    from pipeline.cli import app as cli
    from tests.test_disk_full import _fill

    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size=2m tmpfs {mount} 2>/dev/null") != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        env = make_cluster(ALIVE_STORAGE__ROOT=str(mount), ALIVE_JOBS__STORE="database")
        jobs = jobs_of(env)
        job_id = submit(sample_photo, env.settings, SMALL, engine="tiny")
        filler = _fill(mount)  # now nothing more fits in the store
        env.start_worker("gpu", name="gpu")
        env.start_worker("cpu", name="cpu")

        def waiting_for_space():
            attempt = jobs.load(job_id).attempt or {}
            return (attempt.get("waiting_for") or {}).get("code") == "disk_full"

        wait_until(waiting_for_space, 120, "the job to wait for space (disk_full)")
        shown = CliRunner().invoke(cli, ["status", job_id], env={**env.env})
        assert "disk_full" in shown.output and "waiting" in shown.output, shown.output
        assert not jobs.load(job_id).finished
        filler.unlink()
        record = finish_db(env, job_id)
        assert record.status == "succeeded", (record.error, logs_tail(env))
        left = sorted(str(p.relative_to(mount)) for p in mount.rglob("*"))
        assert left == [f"jobs", f"jobs/{job_id}", *(f"jobs/{job_id}/{n}" for n in
                                                     ("poster.jpg", "preview.webp", "report.json", "story.mp4"))], left
        assert [p for p in env.settings.scratch_root.rglob("*")] == []
        retries = task_events(env, "gpu", "alive.generate", "retry")
        print(f"disk_full: generate retried {len(retries)} times, then succeeded once space was freed")
    finally:
        os.system(f"umount {mount} 2>/dev/null || umount -l {mount}")


def finish_db(env, job_id: str):
    from workers.client import wait

    record = wait([job_id], env.settings, timeout=scaled_timeout(180), poll=0.3)[job_id]
    assert record.finished, (record.status, record.stage, logs_tail(env))
    return record


def scaled_timeout(seconds: float) -> float:
    from tests.deadlines import scaled

    return scaled(seconds)


def test_status_shows_a_stage_whose_host_died_as_stalled_until_a_reconciler_sends_it_again(
        make_cluster, sample_photo):
    """Before: `alive status` read "running (stage generate)" for ~900 s after the gpu host died."""
    from typer.testing import CliRunner

    from pipeline.cli import app as cli

    env = make_cluster(ALIVE_WORKER__HEARTBEAT_INTERVAL_S=2, ALIVE_WORKER__HEARTBEAT_TIMEOUT_S=12)
    jobs = jobs_of(env)
    gpu = env.start_worker("gpu", name="gpu")
    env.start_worker("cpu", name="cpu")  # no --beat: nothing reconciles yet
    job_id = submit(sample_photo, env.settings, SLOW_TINY, engine="tiny")
    kill_whole_worker_mid_generate(env, job_id, gpu)

    def status_text() -> str:
        return CliRunner().invoke(cli, ["status", job_id], env=env.env).output

    shown = wait_until(lambda: (lambda out: out if "stalled" in out else None)(status_text()), 60,
                       "alive status to say stalled")
    assert "status    stalled (stage generate)" in shown and "heartbeat " in shown, shown
    assert "s ago" in shown
    env.start_worker("cpu", name="cpu-beat", beat=True)  # a reconciler appears
    record = finish(env, [job_id], timeout=120)[job_id]
    assert_delivered_once(env, job_id, record)
    assert record.lost_attempts == {"generate": 1}
