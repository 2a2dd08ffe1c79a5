"""Who runs a job's stage now: attempt tokens, heartbeats and the fencing rule.

The job record, not the broker, says which stage of a job should run and which attempt runs it
(``JobRecord.attempt``). A broker may lose a message (a task received but not started when the
connection drops), deliver one twice (a Redis visibility timeout, a redelivery after a crash) or
hold one for minutes (a host that died whole, on Redis). These rules make the outcome one video:

* A stage task **claims** the stage when it starts, under the job's lock: it gets a fresh token
  and records its message id and a heartbeat. It may claim only the stage the record is at, and
  only when no other attempt is alive (a running attempt whose heartbeat is fresh). Everything else
  is a duplicate and stops at once without writing (``Duplicate``).
* While it runs, a thread of the task writes ``heartbeat_at`` every ``worker.heartbeat_interval_s``,
  only while the record still holds its token (``beat``). When the token changed (the reconciler
  gave the stage to another attempt) the task is **fenced**: it stops without writing
  (``Superseded``), at its next progress report or, at the latest, before it publishes its output.
* A running attempt that stopped beating (kill -9 of a whole host, a broker that kept its message)
  or that is found running again by a redelivery of its own message (a crash) counts as **lost**.
  After ``worker.max_stage_attempts`` lost attempts of one stage the job fails ``worker_lost``: a
  photo that kills its worker every time does not loop forever.

All functions here change a ``JobRecord`` in memory; callers run them inside ``JobStore.mutate``.
Times are UNIX seconds (``time.time()``), comparable across hosts with synced clocks.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from typing import Any

from pipeline.errors import WorkerLost
from pipeline.jobs import JobRecord

STAGES = ("intake", "moderate_image", "generate", "moderate_video", "encode", "label", "finalize")


class Duplicate(Exception):
    """This delivery is not the one that should run the stage: stop without writing."""


class Superseded(Exception):
    """This attempt's token is no longer the record's: another attempt owns the stage now."""


def queue_of(stage: str, settings) -> str:
    return settings.worker.gpu_queue if stage == "generate" else settings.worker.cpu_queue


def next_stage(stage: str) -> str | None:
    index = STAGES.index(stage)
    return STAGES[index + 1] if index + 1 < len(STAGES) else None


def current(record: JobRecord) -> dict[str, Any]:
    """The record's attempt; a job that no stage has touched yet waits for intake since it was made."""
    if record.attempt:
        return record.attempt
    created = dt.datetime.fromisoformat(record.created_at).timestamp()
    return {"stage": "intake", "state": "pending", "since": created, "message_id": None}


def pending(stage: str, settings, since: float, message_id: str | None = None,
            waiting_for: dict[str, Any] | None = None, sent_at: float | None = None) -> dict[str, Any]:
    """A stage waiting for its message since ``since``; ``message_id`` is set when the reconciler
    sent it again (then ``sent_at`` keeps when the first message was sent: it may still arrive);
    ``waiting_for`` says why a retry waits (e.g. disk_full)."""
    return {"stage": stage, "state": "pending", "since": since, "message_id": message_id,
            "sent_at": since if sent_at is None else sent_at,
            "queue": queue_of(stage, settings), "token": None, "heartbeat_at": None, "waiting_for": waiting_for}


def claim(record: JobRecord, stage: str, message_id: str, settings, now: float | None = None) -> str:
    """Give ``stage`` to the task delivered as ``message_id``; returns its token.

    Raises ``Duplicate`` when the job ended, is at another stage, or another attempt is alive, and
    ``WorkerLost`` when this would be one attempt more than ``worker.max_stage_attempts`` allows."""
    now = time.time() if now is None else now
    if record.finished:
        raise Duplicate(f"job {record.job_id} already ended ({record.status})")
    attempt = current(record)
    if attempt["stage"] != stage:
        raise Duplicate(f"job {record.job_id} is at stage {attempt['stage']}, not {stage}")
    if attempt["state"] == "running":
        alive = now - float(attempt.get("heartbeat_at") or 0) < settings.worker.heartbeat_timeout_s
        if alive and attempt.get("message_id") != message_id:
            raise Duplicate(f"job {record.job_id}: another attempt runs {stage} (heartbeat {now - attempt['heartbeat_at']:.0f} s ago)")
        # The attempt before this one died running: a redelivery of its own message after a crash,
        # or a stale heartbeat. Count it.
        lost = record.lost_attempts.get(stage, 0) + 1
        record.lost_attempts[stage] = lost
        if lost >= settings.worker.max_stage_attempts:
            raise WorkerLost(f"stage {stage} was started {lost} times and its worker died each time "
                             "(killed, out of memory or host lost); the job is not tried again",
                             details={"stage": stage, "attempts": lost})
    token = secrets.token_hex(8)
    record.attempt = {"stage": stage, "state": "running", "token": token, "message_id": message_id,
                      "queue": queue_of(stage, settings), "since": now, "heartbeat_at": now,
                      "dispatched_at": _sent_at(attempt, message_id, now)}
    record.status, record.stage = "running", stage
    return token


def _sent_at(attempt: dict[str, Any], message_id: str, now: float) -> float:
    """When the message now claimed was sent: the reconciler's evidence that a queue has moved past
    an older message that never arrived, so never a later time than the real send.

    - The attempt before died running and this is its own message again (RabbitMQ gives a killed
      consumer's messages back at once): the send time that attempt recorded, not when it was
      claimed (seen: a kill made every job queued in the 20 s before it look overtaken, 146
      needless re-sends in a 100-job run).
    - The reconciler's re-sent message: sent at the pending attempt's ``since``.
    - Any other delivery is the first message, sent at ``sent_at`` (taking the re-send time for
      it would make every job queued in between look overtaken)."""
    if attempt["state"] == "running":
        sent = attempt.get("dispatched_at", attempt.get("since"))
    elif message_id == attempt.get("message_id"):
        sent = attempt.get("since")
    else:
        sent = attempt.get("sent_at", attempt.get("since"))
    return float(sent or now)


def check(record: JobRecord, token: str) -> dict[str, Any]:
    """The attempt, if ``token`` still owns it; else ``Superseded``."""
    attempt = record.attempt or {}
    if record.finished or attempt.get("token") != token or attempt.get("state") != "running":
        raise Superseded(f"job {record.job_id}: this attempt no longer owns stage {attempt.get('stage')}")
    return attempt


def beat(record: JobRecord, token: str, now: float | None = None) -> None:
    check(record, token)["heartbeat_at"] = time.time() if now is None else now


def hand_on(record: JobRecord, token: str, settings, now: float | None = None) -> str | None:
    """The attempt ``token`` finished its stage: the next stage is pending from now. Returns it."""
    attempt = check(record, token)
    after = next_stage(attempt["stage"])
    now = time.time() if now is None else now
    record.attempt = pending(after, settings, now) if after else None
    return after


def retry_later(record: JobRecord, token: str, settings, countdown: float, reason: dict[str, Any],
                now: float | None = None) -> None:
    """The attempt failed transiently and its task is re-sent with a countdown: the stage is pending
    again, from the moment the retry becomes due (so the wait is not taken for a lost message)."""
    attempt = check(record, token)
    now = time.time() if now is None else now
    record.attempt = pending(attempt["stage"], settings, now + countdown, attempt.get("message_id"), reason)


def heartbeat_age(record: JobRecord, now: float | None = None) -> float | None:
    attempt = record.attempt or {}
    if attempt.get("state") != "running" or not attempt.get("heartbeat_at"):
        return None
    return (time.time() if now is None else now) - float(attempt["heartbeat_at"])


def display_status(record: JobRecord, settings, now: float | None = None) -> str:
    """``stalled`` for a running stage whose heartbeat is older than the timeout, else the status."""
    age = heartbeat_age(record, now)
    if not record.finished and age is not None and age > settings.worker.heartbeat_timeout_s:
        return "stalled"
    return record.status


def liveness(record: JobRecord, settings, now: float | None = None) -> dict[str, Any]:
    """What status displays show: the status (``stalled`` included), the last heartbeat and its age."""
    attempt = record.attempt or {}
    age = heartbeat_age(record, now)
    beat_at = attempt.get("heartbeat_at")
    return {"status": display_status(record, settings, now),
            "heartbeat_at": dt.datetime.fromtimestamp(beat_at, dt.timezone.utc).isoformat() if beat_at else None,
            "heartbeat_age_s": None if age is None else round(age, 1),
            "attempts_lost": dict(record.lost_attempts), "waiting_for": attempt.get("waiting_for")}
