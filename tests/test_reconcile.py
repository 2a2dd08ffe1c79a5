"""Attempt tokens, heartbeats, fencing and the reconciler's judgement, on real job stores.

The broker is replaced by what the reconciler reads from it (queue depths) and what it does to it
(send a stage): both are arguments of ``Reconciler``; the worker-process tests are in
tests/test_reliability.py.
"""

from __future__ import annotations

import time

import pytest

from pipeline.errors import WorkerLost
from pipeline.jobs import FileJobStore, JobRecord, new_job_id
from pipeline.settings import load_settings
from pipeline.storage import LocalStorage
from workers import attempts
from workers.reconcile import Reconciler, judge


@pytest.fixture
def cfg(tmp_path):
    return load_settings(data_dir=tmp_path)


@pytest.fixture
def store(tmp_path):
    return FileJobStore(LocalStorage(tmp_path / "store"))


def new_job(store, **fields) -> str:
    job_id = new_job_id()
    store.create(JobRecord(job_id=job_id, **fields))
    return job_id


def claim(store, job_id, stage, message_id, cfg, now=None) -> str:
    taken = []
    store.mutate(job_id, lambda r: taken.append(attempts.claim(r, stage, message_id, cfg, now)))
    return taken[0]


def test_a_new_job_waits_for_intake_and_the_first_delivery_claims_it(store, cfg):
    job_id = new_job(store)
    assert attempts.current(store.load(job_id))["stage"] == "intake"
    token = claim(store, job_id, "intake", "m1", cfg)
    record = store.load(job_id)
    assert record.status == "running" and record.stage == "intake"
    assert record.attempt["token"] == token and record.attempt["message_id"] == "m1"
    assert record.attempt["queue"] == cfg.worker.cpu_queue


def test_a_second_delivery_of_a_live_stage_is_a_duplicate_and_changes_nothing(store, cfg):
    job_id = new_job(store)
    token = claim(store, job_id, "intake", "m1", cfg)
    with pytest.raises(attempts.Duplicate, match="another attempt"):
        claim(store, job_id, "intake", "m2", cfg)
    assert store.load(job_id).attempt["token"] == token


def test_a_delivery_for_another_stage_or_a_finished_job_is_a_duplicate(store, cfg):
    job_id = new_job(store)
    claim(store, job_id, "intake", "m1", cfg)
    with pytest.raises(attempts.Duplicate, match="at stage intake"):
        claim(store, job_id, "generate", "m9", cfg)
    store.update(job_id, status="succeeded")
    with pytest.raises(attempts.Duplicate, match="already ended"):
        claim(store, job_id, "intake", "m1", cfg)


def test_the_redelivery_of_a_crashed_attempt_takes_over_and_is_counted(store, cfg):
    job_id = new_job(store)
    first = claim(store, job_id, "intake", "m1", cfg)
    second = claim(store, job_id, "intake", "m1", cfg)  # same message again: its worker died
    assert second != first
    assert store.load(job_id).lost_attempts == {"intake": 1}
    with pytest.raises(attempts.Superseded):  # the old attempt, if it still ran, is fenced off
        store.mutate(job_id, lambda r: attempts.beat(r, first))


def test_a_stage_that_kills_its_worker_every_time_fails_worker_lost_after_max_attempts(store, cfg):
    job_id = new_job(store)
    claim(store, job_id, "intake", "m1", cfg)
    for _ in range(cfg.worker.max_stage_attempts - 1):
        claim(store, job_id, "intake", "m1", cfg)
    with pytest.raises(WorkerLost, match="started 3 times") as caught:
        claim(store, job_id, "intake", "m1", cfg)
    assert caught.value.code == "worker_lost"


def test_heartbeats_and_hand_on_are_fenced_by_the_token(store, cfg):
    job_id = new_job(store)
    token = claim(store, job_id, "intake", "m1", cfg, now=100.0)
    store.mutate(job_id, lambda r: attempts.beat(r, token, now=105.0))
    assert store.load(job_id).attempt["heartbeat_at"] == 105.0
    with pytest.raises(attempts.Superseded):
        store.mutate(job_id, lambda r: attempts.hand_on(r, "not-the-token", cfg))
    store.mutate(job_id, lambda r: attempts.hand_on(r, token, cfg, now=110.0))
    after = store.load(job_id).attempt
    assert after["stage"] == "moderate_image" and after["state"] == "pending" and after["since"] == 110.0
    with pytest.raises(attempts.Superseded):  # the finished attempt can no longer beat
        store.mutate(job_id, lambda r: attempts.beat(r, token))


def test_a_running_stage_without_a_heartbeat_reads_stalled(store, cfg):
    job_id = new_job(store)
    claim(store, job_id, "intake", "m1", cfg, now=1000.0)
    record = store.load(job_id)
    assert attempts.display_status(record, cfg, now=1000.0 + cfg.worker.heartbeat_timeout_s - 1) == "running"
    view = attempts.liveness(record, cfg, now=1000.0 + cfg.worker.heartbeat_timeout_s + 5)
    assert view["status"] == "stalled" and view["heartbeat_age_s"] == cfg.worker.heartbeat_timeout_s + 5
    assert view["heartbeat_at"].startswith("1970-01-01T00:16:40")


# -- the reconciler's judgement -------------------------------------------------------------------


def pending_record(cfg, stage="generate", since=0.0) -> JobRecord:
    record = JobRecord(job_id=new_job_id())
    record.attempt = attempts.pending(stage, cfg, since)
    return record


def test_judge_pending_message_lost_only_when_the_queue_shows_it_cannot_be_waiting(cfg):
    timeout = cfg.worker.heartbeat_timeout_s
    gpu = cfg.worker.gpu_queue
    old = pending_record(cfg, since=1000.0)
    now = 1000.0 + timeout + 1
    assert judge(old, cfg, {gpu: 0}, {}, now) == "lost"  # nothing queued: its message is gone
    assert judge(old, cfg, {gpu: 50}, {}, now) is None  # a backlog: it may be waiting in it
    assert judge(old, cfg, {gpu: None}, {}, now) is None  # broker unknown: decide nothing
    margin = 2 * cfg.worker.heartbeat_interval_s
    assert judge(old, cfg, {gpu: 50}, {gpu: 1000.5 + margin}, now) == "lost"  # a later message already started
    assert judge(old, cfg, {gpu: 50}, {gpu: 1000.5}, now) is None  # sent at about the same time: may be behind
    assert judge(old, cfg, {gpu: 50}, {gpu: 999.0}, now) is None  # only earlier ones started
    assert judge(old, cfg, {gpu: 0}, {}, 1000.0 + timeout - 1) is None  # not yet waited long enough
    retry = pending_record(cfg, since=now + 30)  # a retry due in 30 s
    assert judge(retry, cfg, {gpu: 0}, {}, now) is None


def test_judge_running_stage_stalled_after_the_heartbeat_timeout(cfg):
    record = JobRecord(job_id=new_job_id())
    attempts.claim(record, "intake", "m1", cfg, now=1000.0)
    assert judge(record, cfg, {}, {}, 1000.0 + cfg.worker.heartbeat_timeout_s - 1) is None
    assert judge(record, cfg, {}, {}, 1000.0 + cfg.worker.heartbeat_timeout_s + 1) == "stalled"
    record.status = "succeeded"
    assert judge(record, cfg, {}, {}, 1e12) is None


def reconciler(cfg, store, depth=0):
    sent = []
    worker = Reconciler(cfg, store, send=lambda job_id, stage, mid: sent.append((job_id, stage, mid)),
                        depths=lambda names: {n: depth for n in names})
    return worker, sent


def test_reconciler_redispatches_a_stalled_stage_once_with_a_new_message_id(store, cfg):
    job_id = new_job(store)
    old = claim(store, job_id, "intake", "m1", cfg, now=time.time() - cfg.worker.heartbeat_timeout_s - 5)
    worker, sent = reconciler(cfg, store, depth=3)
    assert worker.run_once()["redispatched_stalled"] == 1
    assert worker.run_once()["redispatched_stalled"] == 0  # a second pass (or reconciler) leaves it
    (sent_job, stage, message_id), = sent
    record = store.load(job_id)
    assert (sent_job, stage) == (job_id, "intake")
    assert record.attempt["state"] == "pending" and record.attempt["message_id"] == message_id
    assert record.lost_attempts == {"intake": 1}
    with pytest.raises(attempts.Superseded):  # the stalled attempt, if it wakes up, writes nothing
        store.mutate(job_id, lambda r: attempts.hand_on(r, old, cfg))
    # the re-sent message claims without counting another loss; the old one is now a duplicate
    claim(store, job_id, "intake", message_id, cfg)
    with pytest.raises(attempts.Duplicate):
        claim(store, job_id, "intake", "m1", cfg)
    assert store.load(job_id).lost_attempts == {"intake": 1}


def test_reconciler_leaves_a_backlog_alone_and_resends_a_lost_message(store, cfg):
    long_ago = time.time() - cfg.worker.heartbeat_timeout_s - 5
    waiting = new_job(store)
    store.update(waiting, attempt=attempts.pending("generate", cfg, long_ago))
    worker, sent = reconciler(cfg, store, depth=40)
    worker.run_once()
    assert sent == []
    worker, sent = reconciler(cfg, store, depth=0)
    worker.run_once()
    assert [(j, s) for j, s, _ in sent] == [(waiting, "generate")]


def test_reconciler_fails_a_job_whose_stage_kept_stalling(store, cfg, monkeypatch):
    job_id = new_job(store)
    failed = []
    monkeypatch.setattr("workers.reconcile._fail", lambda j, exc: failed.append((j, exc.code)))
    stale = time.time() - cfg.worker.heartbeat_timeout_s - 5
    store.update(job_id, lost_attempts={"generate": cfg.worker.max_stage_attempts - 1})
    record = store.load(job_id)
    record.attempt = {"stage": "generate", "state": "running", "token": "t", "message_id": "m",
                      "queue": "gpu", "since": stale, "heartbeat_at": stale, "dispatched_at": stale}
    store.save(record)
    worker, sent = reconciler(cfg, store)
    assert worker.run_once()["worker_lost"] == 1
    assert failed == [(job_id, "worker_lost")] and sent == []


def test_a_job_claimed_by_its_first_message_after_a_resend_does_not_look_like_a_late_one(store, cfg):
    """The high-water mark takes the send time of the message that was claimed: the first one
    (sent long ago) is not taken for the re-sent one, else every job queued in between would look
    overtaken and be sent again (seen: 192 needless re-sends in a 100-job run)."""
    job_id = new_job(store)
    long_ago = time.time() - 500
    store.update(job_id, attempt=attempts.pending("generate", cfg, long_ago))
    worker, sent = reconciler(cfg, store, depth=0)
    worker.run_once()
    (_, _, resent_id), = sent
    claim(store, job_id, "generate", "the-first-message", cfg)
    assert store.load(job_id).attempt["dispatched_at"] == pytest.approx(long_ago)
    other = new_job(store)
    store.update(other, attempt=attempts.pending("generate", cfg, long_ago + 100))
    worker, sent = reconciler(cfg, store, depth=5)  # a backlog; the only mark is older than it
    worker.run_once()
    assert sent == []
    claim(store, other, "generate", "m-late", cfg)
    assert store.load(other).attempt["dispatched_at"] == pytest.approx(long_ago + 100)


def test_a_redelivery_after_a_kill_keeps_the_send_time_not_the_claim_time(store, cfg):
    """RabbitMQ hands a killed worker's message straight back: the new claim of that message must
    carry the time it was sent, not the time the dead attempt claimed it. Else the high-water mark
    jumps to the kill and every job queued a little earlier looks overtaken (seen: 146 needless
    re-sends after one kill in a 100-job RabbitMQ run)."""
    sent_at = time.time() - 300
    job_id = new_job(store)
    store.update(job_id, attempt=attempts.pending("generate", cfg, sent_at))
    claim(store, job_id, "generate", "m1", cfg, now=sent_at + 200)  # started late: a backlog
    claim(store, job_id, "generate", "m1", cfg, now=sent_at + 290)  # its worker was killed; m1 again
    assert store.load(job_id).attempt["dispatched_at"] == pytest.approx(sent_at)
    waiting = new_job(store)  # queued after the first one, before its claim
    store.update(waiting, attempt=attempts.pending("generate", cfg, sent_at + 100))
    worker, sent = reconciler(cfg, store, depth=50)
    worker.run_once()
    assert sent == []
