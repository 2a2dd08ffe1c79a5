"""The reconciler: finds stages that nobody runs any more and dispatches them again.

It runs beside ``alive worker --beat`` (a process of its own, started and stopped with the worker:
``python -m workers.reconcile``) and as a thread inside ``alive serve``; ``alive.reconcile`` is the
same pass as a task, for deployments that schedule it themselves. It is deliberately not a beat
task on the work queues: its own messages would keep the cpu queue from ever reading empty (the
evidence below), and a busy cpu worker would starve it. Several may run at once: every decision is
re-checked under the job's lock, so a stage is re-dispatched once.

Two kinds of lost work, told apart by the job record alone plus the broker's queue depth:

* **Stalled**: a running stage whose heartbeat is older than ``worker.heartbeat_timeout_s`` (its
  host died whole, its process hangs). The attempt counts as lost; the stage is sent again with a
  new message id, or the job fails ``worker_lost`` after ``worker.max_stage_attempts``.
* **Lost before it started**: a pending stage (sent, never claimed) is re-sent only when it has
  waited longer than the heartbeat timeout **and** the broker shows its message cannot be waiting
  in the queue: the queue is empty, or a stage sent clearly *later* (by more than two heartbeat
  intervals) to the same queue has already started (queues are FIFO, so the older message would
  have been delivered first). A long backlog keeps
  the queue non-empty with later messages not yet started, so a waiting job is never duplicated.
  A wrong guess costs a duplicate delivery, never a duplicate video: the claim lets only one run.

RabbitMQ: messages past the quorum queue's delivery limit land in ``worker.dead_letter_queue``;
each one ends its job as failed with the reason ``dead_lettered``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable

from pipeline.errors import AliveError, WorkerLost
from pipeline.jobs import JobRecord
from workers import attempts

log = logging.getLogger(__name__)


class DeadLettered(AliveError):
    """The broker gave up delivering a stage's message (RabbitMQ quorum queue delivery limit)."""

    default_code = "dead_lettered"


def queue_depths(app, names) -> dict[str, int | None]:
    """Ready messages per queue (Redis: list length; RabbitMQ: passive declare), None when unknown."""
    depths: dict[str, int | None] = {}
    try:
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            for name in names:
                try:
                    depths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
                except Exception:  # noqa: BLE001 - a queue not declared yet holds nothing we could lose
                    depths[name] = None
                    channel = conn.channel()  # AMQP closes a channel after a failed passive declare
    except Exception as exc:  # noqa: BLE001 - the broker is away: decide nothing on its evidence
        log.warning("reconciler: broker not reachable (%s); queue depths unknown", exc)
        return {name: None for name in names}
    return depths


def high_water(records: list[JobRecord]) -> dict[str, float]:
    """Per queue: the latest send time of a stage message that has already started."""
    marks: dict[str, float] = {}
    for record in records:
        attempt = record.attempt or {}
        if attempt.get("state") == "running" and attempt.get("dispatched_at") is not None:
            queue = attempt.get("queue")
            marks[queue] = max(marks.get(queue, 0.0), float(attempt["dispatched_at"]))
    return marks


def judge(record: JobRecord, settings, depths: dict[str, int | None], marks: dict[str, float],
          now: float) -> str | None:
    """``stalled``, ``lost`` (pending, its message gone) or None (leave it alone)."""
    if record.finished:
        return None
    attempt = attempts.current(record)
    timeout = settings.worker.heartbeat_timeout_s
    if attempt["state"] == "running":
        return "stalled" if now - float(attempt.get("heartbeat_at") or 0) > timeout else None
    since = float(attempt.get("since") or now)
    if now - since <= timeout:
        return None
    queue = attempt.get("queue") or attempts.queue_of(attempt["stage"], settings)
    # "Sent later" with a margin: two workers handing on at the same moment may publish in the
    # other order, and hosts' clocks differ a little; a message in a backlog is never overtaken
    # by one sent this much later.
    margin = 2 * settings.worker.heartbeat_interval_s
    if depths.get(queue) == 0 or marks.get(queue, 0.0) > since + margin:
        return "lost"
    return None


class Reconciler:
    """One pass over the unfinished jobs (``run_once``), or a loop of passes (``run_forever``)."""

    def __init__(self, settings, jobs=None, send: Callable[[str, str, str], None] | None = None,
                 depths: Callable[[set[str]], dict[str, int | None]] | None = None):
        """``send(job_id, stage, message_id)`` dispatches a stage (default: the Celery chain from it);
        ``depths(queue names)`` reads the broker's queue depths (default: ``queue_depths``)."""
        from service.stores import open_job_store

        self.settings = settings
        self.jobs = jobs or open_job_store(settings)
        self._send = send or _send_chain
        self._depths = depths or _broker_depths

    def run_once(self, now: float | None = None) -> Counter:
        now = time.time() if now is None else now
        counts: Counter = Counter()
        records = []
        for job_id in self.jobs.active_ids():
            try:
                records.append(self.jobs.load(job_id))
            except (AliveError, ValueError, OSError):
                continue
        if not records:
            counts.update(self.drain_dead_letters())
            return counts
        w = self.settings.worker
        depths = self._depths({w.gpu_queue, w.cpu_queue})
        marks = high_water(records)
        for record in records:
            verdict = judge(record, self.settings, depths, marks, now)
            if verdict is not None:
                counts[self._act(record.job_id, verdict, depths, marks, now)] += 1
        counts.update(self.drain_dead_letters())
        return counts

    def _act(self, job_id: str, verdict: str, depths, marks, now: float) -> str:
        """Re-check under the lock, then re-dispatch (recording the new message id first) or fail."""
        chosen: dict[str, str] = {}

        def decide(record: JobRecord) -> None:
            if judge(record, self.settings, depths, marks, now) != verdict:
                raise _Changed()
            attempt = attempts.current(record)
            stage = attempt["stage"]
            if verdict == "stalled":
                lost = record.lost_attempts.get(stage, 0) + 1
                record.lost_attempts[stage] = lost
                if lost >= self.settings.worker.max_stage_attempts:
                    chosen["fail"] = stage
                    return
            message_id = new_message_id()
            first_sent = attempt.get("sent_at", attempt.get("since")) if verdict == "lost" else None
            record.attempt = attempts.pending(stage, self.settings, time.time(), message_id, sent_at=first_sent)
            chosen.update(stage=stage, message_id=message_id)

        try:
            record = self.jobs.mutate(job_id, decide)
        except _Changed:
            return "changed"
        if "fail" in chosen:
            stage = chosen["fail"]
            lost = record.lost_attempts[stage]
            log.warning("job %s: stage %s lost %d times; failing it (worker_lost)", job_id, stage, lost)
            _fail(job_id, WorkerLost(f"stage {stage} was started {lost} times and its worker died or went "
                                     "silent each time; the job is not tried again",
                                     details={"stage": stage, "attempts": lost}))
            return "worker_lost"
        log.warning("job %s: stage %s %s; dispatched again as %s", job_id, chosen["stage"],
                    "stalled (no heartbeat)" if verdict == "stalled" else "never started (message lost)",
                    chosen["message_id"])
        self._send(job_id, chosen["stage"], chosen["message_id"])
        return f"redispatched_{verdict}"

    def drain_dead_letters(self) -> Counter:
        """RabbitMQ only: fail the job of every message in the dead-letter queue, with the reason."""
        counts: Counter = Counter()
        from workers.app import app, broker_url

        dead = app.conf.get("alive_dead_letter_queue")
        if dead is None or not broker_url(self.settings).startswith(("amqp://", "amqps://", "pyamqp://")):
            return counts
        try:
            with app.connection_for_write() as conn:
                queue = conn.SimpleQueue(dead, no_ack=False)  # declared as configured (quorum)
                try:
                    while True:
                        try:
                            message = queue.get(block=False)
                        except queue.Empty:
                            break
                        counts[self._dead(message)] += 1
                        message.ack()
                finally:
                    queue.close()
        except Exception as exc:  # noqa: BLE001 - next pass tries again
            log.warning("reconciler: dead-letter queue not read (%s)", exc)
        return counts

    def _dead(self, message) -> str:
        headers = message.headers or {}
        body = message.decode() if message.body else None
        args = body[0] if isinstance(body, (list, tuple)) and body else []
        job_id = args[0] if args and isinstance(args[0], str) else None
        task = headers.get("task")
        if job_id is None:
            log.warning("reconciler: dead-lettered message of %s without a job id, dropped", task)
            return "dead_unknown"
        deaths = headers.get("x-death") or [{}]
        count = deaths[0].get("count") if isinstance(deaths[0], dict) else None
        _fail(job_id, DeadLettered(f"the broker gave up delivering {task} after its delivery limit "
                                   f"({self.settings.worker.rabbitmq_delivery_limit}); the job is not tried again",
                                   details={"task": task, "deaths": count}))
        return "dead_lettered"

    def run_forever(self, stop: threading.Event) -> None:
        interval = self.settings.worker.reconcile_interval_s
        while not stop.wait(interval):
            try:
                counts = self.run_once()
                if any(k != "changed" for k in counts):
                    log.info("reconciler: %s", dict(counts))
            except Exception:  # noqa: BLE001 - one failed pass must not stop the loop
                log.exception("reconciler pass failed")


class _Changed(Exception):
    """The record moved on between the judgement and the lock: nothing to do."""


def new_message_id() -> str:
    import uuid

    return str(uuid.uuid4())


def _broker_depths(names: set[str]) -> dict[str, int | None]:
    from workers.app import app

    return queue_depths(app, names)


def _send_chain(job_id: str, stage: str, message_id: str) -> None:
    from workers.tasks import job_chain

    job_chain(job_id, stage, task_id=message_id).apply_async(
        retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2})


def _fail(job_id: str, exc: AliveError) -> None:
    from workers.tasks import Context, record_failure

    record_failure(Context(), job_id, exc, "alive.reconcile")


def start_thread(settings) -> tuple[threading.Thread, threading.Event]:
    """The reconciler as a daemon thread (``alive serve``); set the event to stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=Reconciler(settings).run_forever, args=(stop,), name="reconciler",
                              daemon=True)
    thread.start()
    return thread, stop


def spawn_process(config_path=None):
    """``alive worker --beat``: the reconciler as a child process (no threads in a forking worker)."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "workers.reconcile"]
    if config_path is not None:
        argv += ["--config", str(config_path)]
    return subprocess.Popen(argv)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os
    import signal
    from pathlib import Path

    from pipeline.settings import load_settings
    from workers.client import connect

    parser = argparse.ArgumentParser(description="Run the reconciler until SIGTERM/SIGINT.")
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(args.config)
    connect(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.getppid()

    def orphaned() -> None:  # the worker that started us died without stopping us (kill -9)
        while not stop.wait(1.0):
            if os.getppid() != parent:
                log.warning("reconciler: its worker (pid %d) is gone; stopping", parent)
                stop.set()

    threading.Thread(target=orphaned, daemon=True).start()
    log.info("reconciler started: a pass every %.0f s, heartbeat timeout %.0f s",
             settings.worker.reconcile_interval_s, settings.worker.heartbeat_timeout_s)
    Reconciler(settings).run_forever(stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
