"""The Celery app, configured from the project settings (the only configuration there is).

Broker: ``worker.broker_url`` (any Redis >= 6.2 or RabbitMQ URL) or, when unset, the embedded
Redis under the data dir (``workers/broker.py``). Reliability defaults are chosen for multi-minute
GPU tasks: late acks + requeue when a worker dies, prefetch 1, and a Redis visibility timeout well
above the longest hard time limit (so a running task is never handed to a second worker).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from celery import Celery

from pipeline.settings import Settings, load_settings
from workers.broker import embedded_broker

log = logging.getLogger(__name__)

TASK_MODULES = ["workers.tasks", "service.webhooks"]
#: Seconds the Redis restore sweep's lock lives (kombu default: 300); see celery_config.
UNACKED_MUTEX_EXPIRE_S = 10


def broker_url(settings: Settings) -> str:
    return settings.worker.broker_url or embedded_broker(settings.data_dir).url


def uses_embedded_broker(settings: Settings) -> bool:
    return settings.worker.broker_url is None


def ensure_broker(settings: Settings) -> None:
    """Start (or join) the embedded broker when no broker URL is configured."""
    if uses_embedded_broker(settings):
        embedded_broker(settings.data_dir).start()


def _is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "redis+socket://", "socket://"))


def celery_config(settings: Settings) -> dict:
    w = settings.worker
    url = broker_url(settings)
    backend = w.result_backend or (url if _is_redis(url) else None)
    config = {
        "broker_url": url,
        "result_backend": backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,  # ack after the task ran: a killed worker's task is delivered again
        "task_reject_on_worker_lost": True,  # ... also when the child process died (kill -9, OOM)
        "worker_prefetch_multiplier": 1,  # a busy GPU worker must not sit on queued jobs
        "task_track_started": True,
        "task_default_queue": w.cpu_queue,
        # Celery's own defaults, stated so that one process re-configured from RabbitMQ back to
        # Redis (tests, `alive` commands switching brokers) does not keep the quorum queue list
        # and its "no missing queues" rule: rabbitmq_queues() below overrides them for RabbitMQ.
        "task_queues": None,
        "task_create_missing_queues": True,
        "task_default_exchange_type": "direct",
        "alive_dead_letter_queue": None,
        # Exact names win over globs in Celery's MapRoute (whatever the order); the glob catches the rest.
        # Webhooks have their own queue and workers: a slow receiver never holds a cpu worker.
        "task_routes": {"alive.generate": {"queue": w.gpu_queue}, "alive.webhook": {"queue": w.webhook_queue},
                        "alive.*": {"queue": w.cpu_queue}},
        "broker_connection_retry_on_startup": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,  # they come back via redelivery
        # ... but only if that cancel can write RETRY to the result backend. Celery 5.7 marks the request
        # as cancelled *after* that write; when it raises (the backend is the broker's Redis, just gone),
        # the terminated child is then taken for a revoke and its message is ACKED: lost, never
        # redelivered (tests/test_faults.py, first test: ~1 broker restart in 6 lost the running task).
        # So backend operations wait for the backend to come back instead of failing.
        "result_backend_always_retry": True,
        "result_backend_max_sleep_between_retries_ms": 1000,  # notice a returned backend within ~1 s
        "result_expires": int(settings.storage.retention_hours * 3600),
        "worker_hijack_root_logger": False,
        "task_soft_time_limit": w.cpu_soft_time_limit_s,
        "task_time_limit": w.cpu_time_limit_s,
        # the reconciler is not here: `alive worker --beat` runs it as a process of its own (workers/reconcile.py)
        "beat_schedule": {"alive-cleanup": {"task": "alive.cleanup", "schedule": 3600.0}},
        "beat_schedule_filename": str(settings.data_dir / "celerybeat-schedule"),
        "task_annotations": {
            "alive.generate": {"soft_time_limit": w.generate_soft_time_limit_s, "time_limit": w.generate_time_limit_s},
            # a delivery ends at its own deadline; these only bound the database calls around it
            "alive.webhook": {"soft_time_limit": int(settings.api.webhook_timeout_s) + 30,
                              "time_limit": int(settings.api.webhook_timeout_s) + 60},
        },
    }
    if _is_redis(url):
        transport = {
            "visibility_timeout": w.visibility_timeout_s,
            "unacked_restore_interval": w.unacked_restore_interval_s,  # look for lost tasks often ...
            "unacked_restore_throttle": 1,  # ... and put them back without the default pauses
            # The sweep's lock outlives a holder that dies mid-sweep (SIGKILL) and a broker restart
            # during a sweep (the AOF keeps it): kombu's default 300 s would stop every restore for
            # 5 minutes. A sweep holds it for milliseconds, and restoring one message is a WATCHed
            # transaction, so two sweeps overlapping after a short expiry still restore it only once.
            "unacked_mutex_expire": UNACKED_MUTEX_EXPIRE_S,
        }
        config["broker_transport_options"] = transport
        config["result_backend_transport_options"] = {"visibility_timeout": w.visibility_timeout_s}
    elif _is_amqp(url):
        config.update(rabbitmq_queues(settings))
    return config


def _is_amqp(url: str) -> bool:
    return url.startswith(("amqp://", "amqps://", "pyamqp://"))


def rabbitmq_queues(settings: Settings) -> dict:
    """RabbitMQ: the work queues as quorum (or classic) queues, and the dead-letter queue.

    Quorum queues are replicated (a broker node may die) and count deliveries: a message delivered
    ``worker.rabbitmq_delivery_limit`` times without an ack (a task that crashes its worker before
    the job record can count it) is moved to ``worker.dead_letter_queue``, where the reconciler
    fails its job with a reason. Their exchanges are topic exchanges because Celery's native delayed
    delivery (how countdown retries work on quorum queues, Celery >= 5.5) does not route through
    direct ones."""
    from kombu import Exchange, Queue

    w = settings.worker
    quorum = w.rabbitmq_queue_type == "quorum"
    dead = Exchange(w.dead_letter_queue, type="direct", durable=True)
    arguments = {"x-queue-type": w.rabbitmq_queue_type}
    if quorum:
        arguments.update({"x-delivery-limit": w.rabbitmq_delivery_limit, "x-dead-letter-exchange": dead.name,
                          "x-dead-letter-routing-key": w.dead_letter_queue})
    queues = [Queue(name, Exchange(name, type="topic", durable=True), routing_key=name, queue_arguments=arguments)
              for name in (w.cpu_queue, w.gpu_queue, w.webhook_queue)]
    dead_queue = Queue(w.dead_letter_queue, dead, routing_key=w.dead_letter_queue,
                       queue_arguments={"x-queue-type": w.rabbitmq_queue_type})
    config = {"task_queues": queues, "task_default_exchange_type": "topic", "task_create_missing_queues": False,
              "alive_dead_letter_queue": dead_queue}
    if quorum:
        config["broker_native_delayed_delivery_queue_type"] = "quorum"
    return config


def declare_queues(app: Celery) -> None:
    """RabbitMQ: declare every work queue (with its exchange) and the dead-letter queue, idempotently.

    Workers call it at start: Celery's native delayed delivery binds *all* of the app's queues to
    its delay exchanges, and gives up (countdown retries then never arrive) when one of them, e.g.
    the webhook queue on a gpu-only host, was not declared yet."""
    dead = app.conf.get("alive_dead_letter_queue")
    if dead is None:
        return
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in [*app.conf.task_queues, dead]:
            queue.bind(channel).declare()


def configure(app: Celery, settings: Settings) -> Celery:
    """Apply settings to the app (before a worker starts or a job is sent)."""
    config = celery_config(settings)
    moved = app.conf.get("broker_url") != config["broker_url"] or \
        app.conf.get("result_backend") != config["result_backend"]
    rerouted = _routing(app.conf) != _routing(config)
    app.conf.update(config)
    app.conf.alive_settings = settings
    if moved:
        _drop_connections(app)
    if rerouted and "amqp" in app.__dict__:  # Celery caches queues and routes on first use
        app.__dict__["amqp"]._producer_pool = None
        del app.__dict__["amqp"]
    return app


def _routing(conf) -> tuple:
    queues = conf.get("task_queues") or ()
    return (conf.get("task_default_queue"), repr(conf.get("task_routes")), conf.get("task_default_exchange_type"),
            tuple((q.name, q.exchange.name, q.exchange.type, repr(q.queue_arguments)) for q in queues))


def _drop_connections(app: Celery) -> None:
    """Forget connections to a previous broker/backend (one process switching brokers, e.g. tests).

    Celery caches the producer pool and the result backend on first use and has no public way to
    re-point them; these are the attributes its own after-fork hook resets.
    """
    if app._pool is not None:
        app._pool.force_close_all()
    # app._pool is kombu's process-wide pool for that URL (kombu.pools.connections), and the producer
    # pools refer to it: closed but left registered, a later switch back to the same URL was handed
    # the closed pool ("Acquire on closed pool", CI). Empty the registries with it.
    from kombu import pools

    pools.reset()
    app._pool = None
    if "amqp" in app.__dict__:
        app.__dict__["amqp"]._producer_pool = None
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)


def current_settings() -> Settings:
    return app.conf.alive_settings


app = configure(Celery("alive", include=TASK_MODULES), load_settings())


def warm_up_gpu_engine_in_children(settings: Settings) -> None:
    """Have every pool child of a GPU worker load the svd engine and run its warm-up as it starts,
    so the first job does not pay for loading, CUDA start-up and compiling. Registered in the
    worker's parent before it forks; CUDA is first touched in the child (NOTES: never before fork)."""
    from celery.signals import worker_process_init

    if settings.engine.name != "svd" or not settings.performance.warmup:
        return

    @worker_process_init.connect(weak=False)
    def _warm_up(**_: object) -> None:
        import torch

        from pipeline.engines import get_engine

        if not torch.cuda.is_available():
            log.info("no CUDA device in this worker child: svd warm-up skipped")
            return
        try:
            seconds = get_engine(settings).warm_up()
            log.info("svd engine loaded and warmed up in %.1f s", seconds or 0.0)
        except Exception:  # noqa: BLE001 - a failed warm-up must not kill the worker; the job reports it
            log.exception("svd warm-up failed; the first job will load the model itself")


def install_shutdown_grace(settings: Settings) -> None:
    """SIGTERM: a warm shutdown (the running task finishes, nothing new is taken) for at most
    ``worker.shutdown_grace_s``; then, or at a second SIGTERM, a cold one (SIGQUIT): the task is
    stopped and, unacknowledged, goes back to the queue (RabbitMQ at once; Redis when the worker
    closes its connection; the reconciler in any case). An orchestrator must wait a little longer
    than this grace before it kills the worker (deploy/: terminationGracePeriodSeconds)."""
    from celery.signals import worker_shutting_down

    grace = settings.worker.shutdown_grace_s
    begun = threading.Event()

    def cold() -> None:
        os.kill(os.getpid(), signal.SIGQUIT)

    @worker_shutting_down.connect(weak=False)
    def _grace(sig=None, how=None, **_: object) -> None:
        if how != "Warm":
            return
        if begun.is_set():
            log.warning("%s again: stopping now; the running task goes back to the queue", sig)
            cold()
            return
        begun.set()
        log.warning("%s: finishing the running task for up to %d s, then stopping (a second %s stops now)",
                    sig, grace, sig)
        timer = threading.Timer(grace, cold)
        timer.daemon = True
        timer.start()
