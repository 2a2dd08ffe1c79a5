"""Container health check for every alive image: exit 0 healthy, 1 not.

    python /opt/alive/healthcheck.py                 # reads the container's own command (/proc/1/cmdline)
    python /opt/alive/healthcheck.py -- worker -Q gpu  # or is told it (Kubernetes exec probes)

- ``alive serve``: GET http://127.0.0.1:<port>/healthz (port: --port, else api.port from the settings).
  /healthz is the liveness route (never rate-limited); readiness (/readyz: database and broker) is
  left to the orchestrator's readiness probe, so a database outage does not restart every API.
- ``alive worker``: a Celery ``ping`` sent to this container's own worker node only (the name the CLI
  gives it: --name, else ``alive-<queues>@<hostname>``), so a healthy neighbour never answers for
  a dead one. The prefork parent answers while its child runs a long generation.

The worker's options are parsed by the ``alive`` CLI's own parser, so they mean here what they mean
there (tests/test_deploy.py checks the node name against the one ``alive worker`` passes to Celery).
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

TIMEOUT_S = 5.0  # each probe gives the whole check more (Dockerfiles, k8s timeoutSeconds)


def own_command() -> list[str]:
    """The ``alive`` arguments of PID 1 (after tini / docker-init and the console-script launcher)."""
    raw = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    argv = [a.decode() for a in raw if a]
    for i, arg in enumerate(argv):
        if os.path.basename(arg) == "alive":
            return argv[i + 1:]
    raise SystemExit(f"healthcheck: PID 1 is not an alive command: {argv}")


def _subcommand(args: list[str]):
    import typer.main

    from pipeline.cli import app

    group = typer.main.get_command(app)
    name, rest = args[0], args[1:]
    command = group.commands[name]  # type: ignore[attr-defined]
    return name, command.make_context(name, list(rest), resilient_parsing=True).params


def worker_node_name(args: list[str], hostname: str | None = None) -> str:
    """The Celery node name ``alive worker ARGS`` runs under, as pipeline/cli.py builds it."""
    from celery.utils.nodenames import host_format

    from pipeline.settings import load_settings

    name, params = _subcommand(args)
    if name != "worker":
        raise ValueError(f"not a worker command: {args}")
    settings = load_settings(params.get("config"))
    names = {"cpu": settings.worker.cpu_queue, "gpu": settings.worker.gpu_queue,
             "webhooks": settings.worker.webhook_queue}
    wanted = [names.get(q.strip(), q.strip()) for q in params["queues"].split(",") if q.strip()]
    node = params.get("name") or "alive-" + "-".join(wanted) + "@%h"
    return host_format(node, host=hostname) if hostname else host_format(node)


def api_url(args: list[str]) -> str:
    from pipeline.settings import load_settings

    _, params = _subcommand(args)
    port = params.get("port") or load_settings(params.get("config")).api.port
    return f"http://127.0.0.1:{port}/healthz"


def check(args: list[str]) -> int:
    if not args:
        print("healthcheck: no alive subcommand", file=sys.stderr)
        return 1
    if args[0] == "serve":
        try:
            with urllib.request.urlopen(api_url(args), timeout=TIMEOUT_S) as reply:
                return 0 if reply.status == 200 else 1
        except OSError as exc:
            print(f"healthcheck: {exc}", file=sys.stderr)
            return 1
    if args[0] == "worker":
        node = worker_node_name(args)
        from workers.app import app  # configured from the same settings (ALIVE_* environment) as the worker

        replies = app.control.ping(destination=[node], timeout=TIMEOUT_S) or []
        if any(node in reply for reply in replies):
            return 0
        print(f"healthcheck: worker {node} did not answer a ping within {TIMEOUT_S:g} s", file=sys.stderr)
        return 1
    return 0  # one-shot commands (models pull, keys ...): nothing long-running to check


def main(argv: list[str]) -> int:
    args = argv[argv.index("--") + 1:] if "--" in argv else own_command()
    return check(args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
