"""Webhooks: tell a client's backend that its job ended, signed so it can trust the call.

The body is the job's status document; headers ``X-Alive-Timestamp`` (unix seconds) and
``X-Alive-Signature: sha256=<hex>`` with HMAC-SHA256 over ``"<timestamp>." + body`` under the API
key's webhook secret. Verify by recomputing, comparing in constant time, and refusing timestamps
older than a few minutes (replay). Failed deliveries are retried with exponential backoff; every
attempt is logged in ``webhook_deliveries``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request

from workers.app import app, current_settings

log = logging.getLogger(__name__)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str, tolerance_s: int = 300) -> bool:
    """What a receiving backend does: constant-time compare and a freshness check."""
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


def payload(job_id: str) -> dict:
    from pipeline.jobs import open_job_store

    record = open_job_store(current_settings()).load(job_id)
    return {"event": f"animation.{record.status}", "id": job_id, "status": record.status, "error": record.error,
            "c2pa_state": record.c2pa.get("state"), "updated_at": record.updated_at}


@app.task(name="alive.webhook", bind=True, acks_late=True)
def deliver(self, job_id: str) -> int | None:
    from service import db

    settings = current_settings()
    url = db.database_url(settings)
    target, secret = db.webhook_target(url, job_id)
    if not target:
        return None
    body = json.dumps(payload(job_id), sort_keys=True).encode()
    stamp = int(time.time())
    request = urllib.request.Request(target, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "alive-webhook/1",
        "X-Alive-Timestamp": str(stamp), "X-Alive-Signature": sign(secret, stamp, body)})
    attempt = self.request.retries + 1
    status, error = None, None
    try:
        with urllib.request.urlopen(request, timeout=settings.api.webhook_timeout_s) as reply:  # noqa: S310
            status = reply.status
    except urllib.error.HTTPError as exc:
        status, error = exc.code, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        error = str(getattr(exc, "reason", exc))
    delivered = status is not None and 200 <= status < 300
    db.log_delivery(url, job_id, target, json.loads(body)["event"], attempt, status, error, delivered)
    if delivered:
        return status
    if attempt >= settings.api.webhook_max_attempts:
        log.warning("webhook for job %s to %s given up after %d attempts: %s", job_id, target, attempt, error)
        return status
    raise self.retry(countdown=min(2 ** attempt, 300), max_retries=settings.api.webhook_max_attempts)
