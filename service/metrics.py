"""Prometheus text exposition for /metrics: jobs by status, stage durations, queue depth."""

from __future__ import annotations

from pipeline.settings import Settings

STAGES = ("intake", "moderate_image", "generate", "moderate_video", "encode", "label")


def render(url: str, settings: Settings) -> str:
    from service import db

    lines = ["# HELP alive_jobs Jobs in the database by status.", "# TYPE alive_jobs gauge"]
    counts = db.job_counts(url)
    for status in ("queued", "running", "succeeded", "blocked", "rejected", "failed"):
        lines.append(f'alive_jobs{{status="{status}"}} {counts.get(status, 0)}')
    lines += ["# HELP alive_stage_seconds Stage durations of the most recent jobs.", "# TYPE alive_stage_seconds summary"]
    for stage in STAGES:
        values = [r.get("timings_s", {}).get(stage) for r in db.recent_records(url)]
        values = [v for v in values if isinstance(v, (int, float))]
        lines.append(f'alive_stage_seconds_sum{{stage="{stage}"}} {sum(values):.6f}')
        lines.append(f'alive_stage_seconds_count{{stage="{stage}"}} {len(values)}')
    depth = queue_depths(settings)
    if depth:
        lines += ["# HELP alive_queue_depth Messages waiting in each broker queue.", "# TYPE alive_queue_depth gauge"]
        lines += [f'alive_queue_depth{{queue="{q}"}} {n}' for q, n in depth.items()]
    return "\n".join(lines) + "\n"


def queue_depths(settings: Settings) -> dict[str, int]:
    """Waiting messages per queue (0 when the broker cannot be asked; never raises)."""
    from kombu import Connection

    from workers.app import broker_url

    depths = {}
    w = settings.worker
    try:
        with Connection(broker_url(settings), connect_timeout=2) as conn:
            for queue in (w.gpu_queue, w.cpu_queue, w.webhook_queue):
                with conn.channel() as channel:
                    try:
                        depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
                    except conn.channel_errors:  # not declared yet (Redis: an empty queue has no key)
                        depths[queue] = 0
    except Exception:  # noqa: BLE001 - metrics must never fail the scrape
        return {}
    return depths
