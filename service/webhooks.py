"""Webhooks: tell a client's backend that its job ended, signed so it can trust the call.

The body is the job's status document; headers ``X-Alive-Event-Id`` (the same on every attempt of
one job's event: receivers de-duplicate on it), ``X-Alive-Timestamp`` (unix seconds, of this
attempt) and ``X-Alive-Signature: sha256=<hex>`` with HMAC-SHA256 over ``"<timestamp>." + body``
under the API key's webhook secret. Verify by recomputing, comparing in constant time, and refusing
timestamps older than a few minutes (replay).

Deliveries run on their own queue (``worker.webhook_queue``) and workers, never beside encoding.
Each attempt re-checks the URL (``service/egress.py``: it must resolve to public addresses only,
unless ``api.webhook_allow_private`` / ``api.webhook_allow_hosts`` say otherwise), connects to the
checked address, follows no redirect and ends at ``api.webhook_timeout_s`` for the whole exchange.
A refused URL fails the delivery at once (no retry); a timeout, a connection error or any non-2xx
reply is retried with exponential backoff up to ``api.webhook_max_attempts``. Every attempt is
logged in ``webhook_deliveries``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid

from pipeline.errors import InputRejected, TransientError
from workers.app import app, current_settings

log = logging.getLogger(__name__)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str, tolerance_s: int = 300) -> bool:
    """What a receiving backend does: constant-time compare and a freshness check."""
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


#: Namespace of event ids (uuid5 of "<job id>:<event>").
EVENT_NAMESPACE = uuid.UUID("4f0c5a52-8f1e-5e0a-9a53-616c6976652e")


def event_id(job_id: str, event: str) -> str:
    """Stable id of one job's event: the same on every retry and redelivery of it."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{job_id}:{event}"))


def payload(job_id: str) -> dict:
    from service.stores import open_job_store

    record = open_job_store(current_settings()).load(job_id)
    return {"event": f"animation.{record.status}", "id": job_id, "status": record.status, "error": record.error,
            "c2pa_state": record.c2pa.get("state"), "updated_at": record.updated_at}


@app.task(name="alive.webhook", bind=True, acks_late=True)
def deliver(self, job_id: str) -> int | None:
    from service import db, egress

    settings = current_settings()
    url = db.database_url(settings)
    target_url, secret = db.webhook_target(url, job_id)
    if not target_url:
        return None
    document = payload(job_id)
    event = document["event"]
    document["event_id"] = event_id(job_id, event)  # also in the signed body: a replay cannot change it
    body = json.dumps(document, sort_keys=True).encode()
    attempt = self.request.retries + 1
    status, error = None, None
    try:
        target = egress.check_callback_url(target_url, settings)  # again: DNS may say something else now
    except InputRejected as exc:  # not where a webhook may go: no connection, no retry
        log.warning("webhook for job %s not sent: %s", job_id, exc.message)
        db.log_delivery(url, job_id, target_url, event, attempt, None, exc.message, False)
        return None
    except TransientError as exc:  # DNS could not answer now: try again later
        error = exc.message
    else:
        stamp = int(time.time())
        headers = {"Content-Type": "application/json", "User-Agent": "alive-webhook/1",
                   "X-Alive-Event-Id": document["event_id"], "X-Alive-Timestamp": str(stamp),
                   "X-Alive-Signature": sign(secret, stamp, body)}
        status, error = egress.post(target, body, headers, settings.api.webhook_timeout_s,
                                    settings.api.webhook_max_response_bytes)
    delivered = error is None and status is not None and 200 <= status < 300
    db.log_delivery(url, job_id, target_url, event, attempt, status, error, delivered)
    if delivered:
        return status
    if attempt >= settings.api.webhook_max_attempts:
        log.warning("webhook for job %s given up after %d attempts: %s", job_id, attempt, error)
        return status
    log.info("webhook for job %s, attempt %d failed (%s); retried", job_id, attempt, error)
    raise self.retry(countdown=min(2 ** attempt, 300), max_retries=settings.api.webhook_max_attempts)
