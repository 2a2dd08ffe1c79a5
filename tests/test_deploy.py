"""deploy/ against the code: settings names, queue names, ports, routes, CLI options, grace periods,
KEDA numbers, images and Dockerfiles. Nothing here builds an image or talks to a cluster; every
check reads the files and compares them with what pipeline/, workers/ and service/ define."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import click
import pytest
import typer.main
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from pipeline.cli import app as cli_app
from pipeline.settings import ApiSettings, Settings, WorkerSettings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILES = {"alive-cpu": DEPLOY / "Dockerfile.cpu", "alive-gpu": DEPLOY / "Dockerfile.gpu"}
"""The image name mapping (deploy/README.md): an image ``alive-X[:tag]`` is built from deploy/Dockerfile.X."""
THIRD_PARTY_IMAGES = {"redis", "postgres", "chrislusf/seaweedfs"}
NOT_FIELDS = {"ALIVE_CONFIG"}  # read by load_settings (the YAML file), not a Settings field
WORKER = WorkerSettings()  # the defaults (sections do not read the environment; Settings() would)
API = ApiSettings()
QUEUES = {"gpu": WORKER.gpu_queue, "cpu": WORKER.cpu_queue, "webhooks": WORKER.webhook_queue}
try:  # typer >= 0.29 parses with its own copy of click: its errors are not click's
    from typer._click import ClickException as _TyperClickException
except ImportError:  # pragma: no cover - older typer uses click itself
    _TyperClickException = click.ClickException
CLI_ERRORS = (click.ClickException, _TyperClickException)


# ------------------------------------------------------------------------------------------------
# helpers


def resolve_env(name: str):
    """The Settings field an ALIVE_* variable sets, as (model, field name); raises KeyError if none.

    Mirrors pydantic-settings with env_prefix ALIVE_ and env_nested_delimiter __ (case-insensitive):
    ALIVE_DATA_DIR -> data_dir; ALIVE_STORAGE__S3__BUCKET -> storage.s3.bucket. Only leaves count."""
    if not name.startswith("ALIVE_"):
        raise KeyError(f"{name}: not an ALIVE_ variable")
    parts = name[len("ALIVE_"):].lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            raise KeyError(f"{name}: {model.__name__} has no field {part!r} (has: {', '.join(fields)})")
        annotation = fields[part].annotation
        nested = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if i == len(parts) - 1:
            if nested:
                raise KeyError(f"{name}: {part!r} is a section, not a setting")
            return model, part
        if not nested:
            raise KeyError(f"{name}: {part!r} is a setting and has no sub-fields")
        model = annotation
    raise KeyError(name)  # pragma: no cover


def deploy_text_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix != ".pyc" and "__pycache__" not in p.parts)


def k8s_docs() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def by_kind(kind: str) -> list[dict]:
    return [d for d in k8s_docs() if d.get("kind") == kind]


def deployment(name: str) -> dict:
    (found,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == name]
    return found


def pod_specs() -> list[dict]:
    return [d["spec"]["template"]["spec"] for d in k8s_docs() if d.get("kind") in ("Deployment", "Job")]


def alive_commands() -> list[tuple[str, list[str]]]:
    """(where, args after `alive`) of every container that runs the alive entrypoint."""
    found = []
    for name, svc in compose()["services"].items():
        if not str(svc.get("image", "")).startswith("alive-"):
            continue
        if "entrypoint" not in svc:
            found.append((f"compose {name}", list(svc["command"])))
        elif svc["entrypoint"] == ["sh", "-c"]:  # a shell line: each `alive ...` in it
            found += [(f"compose {name} (sh)", args) for args in _alive_in_shell(" ".join(svc["command"]))]
    for spec in pod_specs():
        for c in spec["containers"]:
            if c["image"].startswith("alive-"):
                assert "command" not in c, "containers keep the image's ENTRYPOINT (alive) and pass args"
                found.append((f"k8s {c['name']}", list(c["args"])))
            probe = (c.get("livenessProbe") or {}).get("exec", {}).get("command", [])
            if "--" in probe:  # the healthcheck is told the container's alive command
                found.append((f"k8s {c['name']} probe", probe[probe.index("--") + 1:]))
                assert probe[probe.index("--") + 1:] == c["args"], f"{c['name']}: the probe checks another command"
    for image, path in DOCKERFILES.items():
        found.append((f"{path.name} CMD", json.loads(_instruction(path, "CMD"))))
    return found


def _alive_in_shell(line: str) -> list[list[str]]:
    """The argument lists of every `alive ...` a shell line runs (up to |, &&, ||, ;)."""
    tokens = shlex.split(line, posix=True)
    found = []
    for i, token in enumerate(tokens):
        if token == "alive" and i + 1 < len(tokens) and not tokens[i + 1].startswith(("-", ":")):
            args = []
            for t in tokens[i + 1:]:
                if t in ("|", "||", "&&", ";", ")") or t.endswith(")"):
                    break
                args.append(t)
            found.append(args)
    return found


def _instruction(dockerfile: Path, name: str) -> str:
    """The argument of the last NAME instruction (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    values = [line.split(None, 1)[1] for line in text.splitlines() if line.upper().startswith(name + " ")]
    assert values, f"{dockerfile.name} has no {name}"
    return values[-1].strip()


def click_command(args: list[str]):
    """The (click) command `alive ARGS` names (through sub-groups: keys, models) and its own arguments."""
    command = typer.main.get_command(cli_app)
    path = "alive"
    args = list(args)
    while hasattr(command, "commands"):  # a group
        assert args, f"{path}: no subcommand"
        sub = command.commands.get(args[0])
        assert sub is not None, f"{path} has no subcommand {args[0]!r} (has: {', '.join(command.commands)})"
        path, command, args = f"{path} {args[0]}", sub, args[1:]
    return command, path, args


def parse_cli(args: list[str]) -> dict:
    """Parse like the CLI would (unknown options and bad values raise); the parsed parameters."""
    command, path, rest = click_command(args)
    return command.make_context(path, rest).params


def seconds(value) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(value)):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


def worker_targets() -> list[tuple[str, float]]:
    """(where, grace seconds) of every container running `alive worker`."""
    out = []
    for name, svc in compose()["services"].items():
        if str(svc.get("image", "")).startswith("alive-") and svc.get("command", [None])[0] == "worker":
            out.append((f"compose {name}", seconds(svc.get("stop_grace_period", 10))))
    for d in by_kind("Deployment"):
        spec = d["spec"]["template"]["spec"]
        if any(c.get("args", [None])[0] == "worker" for c in spec["containers"]):
            out.append((f"k8s {d['metadata']['name']}", float(spec.get("terminationGracePeriodSeconds", 30))))
    return out


# ------------------------------------------------------------------------------------------------
# files parse


def test_every_yaml_parses():
    paths = sorted(DEPLOY.rglob("*.yml")) + sorted(DEPLOY.rglob("*.yaml"))
    assert COMPOSE in paths and len(paths) >= 8
    for path in paths:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} is empty"
        for doc in docs:
            assert isinstance(doc, dict)
            if path.parent == K8S:
                assert {"apiVersion", "kind"} <= doc.keys(), f"{path}: not a Kubernetes object"
                assert "namespace" not in doc.get("metadata", {}), f"{path}: manifests are namespace-free"


def test_kustomization_lists_every_manifest():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


# ------------------------------------------------------------------------------------------------
# ALIVE_* names


def test_resolver_accepts_real_settings_and_rejects_made_up_ones():
    assert resolve_env("ALIVE_DATA_DIR") == (Settings, "data_dir")
    assert resolve_env("ALIVE_STORAGE__S3__ENDPOINT_URL")[1] == "endpoint_url"
    assert resolve_env("ALIVE_WORKER__BROKER_URL")[1] == "broker_url"
    for bad in ("ALIVE_NOPE__X", "ALIVE_STORAGE__S3__NOPE", "ALIVE_STORAGE", "ALIVE_STORAGE__S3",
                "ALIVE_WORKER__BROKER_URL__X", "ALIVE_STORAGE_BACKEND", "ALIVE_JOBS_STORE", "AWS_REGION"):
        with pytest.raises(KeyError):
            resolve_env(bad)


def test_every_alive_variable_in_deploy_is_a_setting():
    names: dict[str, set[str]] = {}
    for path in deploy_text_files():
        for name in re.findall(r"\bALIVE_[A-Z0-9_]*[A-Z0-9]", path.read_text(errors="replace")):
            names.setdefault(name, set()).add(str(path.relative_to(REPO)))
    assert len(names) >= 15, sorted(names)
    for name, where in sorted(names.items()):
        if name in NOT_FIELDS:
            continue
        try:
            resolve_env(name)
        except KeyError as exc:
            pytest.fail(f"{exc} (named in {', '.join(sorted(where))})")


def _env_of(mapping: dict) -> dict[str, str]:
    return {k: str(v) for k, v in mapping.items() if k.startswith("ALIVE_")}


def _load_with(monkeypatch, env: dict[str, str]) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_compose_environment_is_valid_settings(monkeypatch, tmp_path):
    env = _env_of(compose()["services"]["api"]["environment"])
    settings = _load_with(monkeypatch, env)
    assert settings.storage.backend == "s3" and settings.jobs.store == "database"
    assert settings.worker.broker_url and settings.jobs.database_url.startswith("postgresql")
    assert str(settings.engine.cache_dir) == "/models"
    assert settings.api.public_url  # links, and no Host allow-list in front of the probes
    for name, svc in compose()["services"].items():  # every alive service gets the same settings
        if svc.get("command", [None])[0] in ("serve", "worker"):
            assert _env_of(svc["environment"]) == env, name
    # the files the settings name are on the containers that use them
    mounts = {n: [v.split(":")[1] for v in s.get("volumes", [])] for n, s in compose()["services"].items()}
    for name, svc in compose()["services"].items():
        args = svc.get("command") or []
        if args[:1] == ["worker"] and parse_cli(args)["queues"] == WORKER.cpu_queue:  # runs alive.label
            assert str(settings.label.cert_chain.parent) in mounts[name], name
        if args[:1] == ["serve"] or (args[:1] == ["worker"] and parse_cli(args)["queues"] == WORKER.webhook_queue):
            assert str(settings.api.secret_key_file.parent) in mounts[name], name
    assert str(settings.label.cert_chain.parent) in mounts["credentials"]


def test_k8s_environment_is_valid_settings(monkeypatch):
    (config,) = [d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "alive-config"]
    (secret,) = [d for d in by_kind("Secret") if d["metadata"]["name"] == "alive-secrets"]
    env = {**_env_of(config["data"]), **_env_of(secret["stringData"])}
    for c in deployment("alive-cpu-worker")["spec"]["template"]["spec"]["containers"]:
        env.update(_env_of({e["name"]: e["value"] for e in c.get("env", [])}))
    settings = _load_with(monkeypatch, env)
    assert settings.storage.backend == "s3" and settings.jobs.store == "database"
    assert settings.api.public_url, "without api.public_url the Host allow-list (localhost) refuses the probes"
    assert settings.label.cert_chain and settings.label.private_key
    # the files the settings name are mounted where the pods that need them look
    key_dir = str(Path(str(settings.api.secret_key_file)).parent)
    for name in ("alive-api", "alive-webhook-worker"):
        mounts = [m["mountPath"] for c in deployment(name)["spec"]["template"]["spec"]["containers"]
                  for m in c["volumeMounts"]]
        assert key_dir in mounts, name
    c2pa_dir = str(Path(str(settings.label.cert_chain)).parent)
    for name in ("alive-cpu-worker", "alive-beat"):
        mounts = [m["mountPath"] for c in deployment(name)["spec"]["template"]["spec"]["containers"]
                  for m in c["volumeMounts"]]
        assert c2pa_dir in mounts, name


# ------------------------------------------------------------------------------------------------
# commands, queues, ports, routes


def test_cli_parser_rejects_made_up_commands_and_options():
    with pytest.raises(CLI_ERRORS):
        parse_cli(["worker", "--nope"])
    with pytest.raises(CLI_ERRORS):
        parse_cli(["worker", "-c", "zero"])
    with pytest.raises(AssertionError):
        click_command(["wrker"])
    assert parse_cli(["worker", "-Q", "gpu", "-c", "1"])["queues"] == "gpu"


def test_every_alive_command_parses():
    commands = alive_commands()
    assert len(commands) >= 12
    for where, args in commands:
        try:
            parse_cli(args)
        except CLI_ERRORS as exc:
            pytest.fail(f"{where}: `alive {' '.join(args)}`: {exc.format_message()}")


def test_options_appear_in_help():
    runner = CliRunner()
    for where, args in alive_commands():
        command, path, rest = click_command(args)
        result = runner.invoke(cli_app, path.split()[1:] + ["--help"])
        assert result.exit_code == 0, result.output
        for token in rest:
            if token.startswith("-"):
                assert token.split("=")[0] in result.output, f"{where}: {token} not in `{path} --help`"


def test_readme_commands_parse():
    readme = (DEPLOY / "README.md").read_text()
    blocks = re.findall(r"```(?:sh|bash|console)?\n(.*?)```", readme, re.S)
    seen = 0
    for line in re.sub(r"\\\n\s*", " ", "\n".join(blocks)).splitlines():
        line = line.split("#", 1)[0].strip()
        for args in _alive_in_shell(line) if line else []:
            try:
                parse_cli(args)
            except CLI_ERRORS as exc:
                pytest.fail(f"deploy/README.md: `alive {' '.join(args)}`: {exc.format_message()}")
            seen += 1
    assert seen >= 4


def test_queue_names_match_settings():
    served = set()
    for where, args in alive_commands():
        if args[0] != "worker":
            continue
        queues = parse_cli(args)["queues"].split(",")
        for q in queues:
            assert q in QUEUES.values(), f"{where}: queue {q!r} is none of the settings' {sorted(QUEUES.values())}"
        served.update(queues)
    assert served == set(QUEUES.values()), "every queue needs workers"
    # the gpu image serves the gpu queue only, and nothing else serves it
    for name, svc in compose()["services"].items():
        if svc.get("command", [None])[0] == "worker":
            gpu = parse_cli(svc["command"])["queues"] == WORKER.gpu_queue
            assert (svc["image"].split(":")[0] == "alive-gpu") == gpu, name


def test_beat_runs_once():
    beats = [(w, a) for w, a in alive_commands() if a[0] == "worker" and parse_cli(a)["beat"]]
    assert {w for w, _ in beats} >= {"compose beat", "k8s beat"}
    beat = deployment("alive-beat")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    assert "alive-beat" not in {s["spec"]["scaleTargetRef"]["name"] for s in by_kind("ScaledObject")}
    assert "replicas" not in compose()["services"]["beat"].get("deploy", {})


def test_ports_match_the_api_setting():
    port = API.port
    api = deployment("alive-api")["spec"]["template"]["spec"]["containers"][0]
    named = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert list(named.values()) == [port]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = api[probe]["httpGet"]["port"]
        assert named.get(p, p) == port, probe
    (service,) = [d for d in by_kind("Service") if d["metadata"]["name"] == "alive-api"]
    assert all(named.get(p["targetPort"], p["targetPort"]) == port for p in service["spec"]["ports"])
    assert compose()["services"]["api"]["ports"] == [f"{port}:{port}"]
    assert _instruction(DOCKERFILES["alive-cpu"], "EXPOSE") == str(port)
    for where, args in alive_commands():
        if args[0] == "serve":
            params = parse_cli(args)
            assert params["port"] in (None, port), where
            assert params["host"] == "0.0.0.0", f"{where}: listens on {params['host']} (the default is loopback)"
            assert params["spawn_workers"] is False, f"{where}: the API must not start its own workers"


def test_probe_paths_are_routes(tmp_path):
    from pipeline.settings import load_settings
    from service.api import create_app

    routes = {r.path for r in create_app(load_settings(data_dir=tmp_path, jobs={"store": "database"})).routes}
    api = deployment("alive-api")["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"]["path"] in routes, probe
    assert "/healthz" in routes and "/readyz" in routes


def test_worker_grace_exceeds_the_generation_limit():
    targets = worker_targets()
    assert {w for w, _ in targets} >= {"compose gpu-worker", "compose cpu-worker", "k8s alive-gpu-worker",
                                       "k8s alive-cpu-worker", "k8s alive-beat", "k8s alive-webhook-worker"}
    for where, grace in targets:
        assert grace > WORKER.generate_time_limit_s, f"{where}: {grace} s <= generate_time_limit_s"
        assert grace >= WORKER.shutdown_grace_s, f"{where}: {grace} s < shutdown_grace_s"
    assert seconds("14m") == 840 and seconds("840s") == 840 and seconds("1m30s") == 90


# ------------------------------------------------------------------------------------------------
# healthcheck


def _healthcheck_module():
    spec = importlib.util.spec_from_file_location("alive_deploy_healthcheck", DEPLOY / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("args", [["worker", "-Q", "gpu", "-c", "1"], ["worker", "-Q", "cpu", "-c", "2"],
                                  ["worker", "-Q", "webhooks"], ["worker", "-Q", "cpu", "--beat", "-n", "alive-beat@%h"],
                                  ["worker"]])
def test_healthcheck_pings_the_node_the_cli_starts(monkeypatch, args):
    """The node name the healthcheck pings is the --hostname `alive worker` hands to Celery."""
    import workers.app
    import workers.client

    seen = {}
    monkeypatch.setattr(workers.client, "connect", lambda settings: None)
    monkeypatch.setattr(workers.app.app, "worker_main", lambda argv: seen.setdefault("argv", argv))
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    (hostname,) = [a.split("=", 1)[1] for a in seen["argv"] if a.startswith("--hostname=")]
    from celery.utils.nodenames import host_format

    hc = _healthcheck_module()
    assert hc.worker_node_name(args, hostname="pod-7") == host_format(hostname, host="pod-7")


def test_healthcheck_api_url():
    hc = _healthcheck_module()
    assert hc.api_url(["serve", "--no-workers", "--host", "0.0.0.0"]) == f"http://127.0.0.1:{API.port}/healthz"
    assert hc.api_url(["serve", "--port", "9001"]) == "http://127.0.0.1:9001/healthz"


# ------------------------------------------------------------------------------------------------
# KEDA


def test_keda_list_lengths_are_the_capacity_model_s():
    from benchmarks.capacity import DEPLOY_KEDA_INPUTS, keda_targets

    expected = keda_targets(**DEPLOY_KEDA_INPUTS)
    objects = {s["spec"]["scaleTargetRef"]["name"]: s for s in by_kind("ScaledObject")}
    assert set(objects) == {"alive-gpu-worker", "alive-cpu-worker"}
    auths = {a["metadata"]["name"] for a in by_kind("TriggerAuthentication")}
    for name, queue, key in (("alive-gpu-worker", WORKER.gpu_queue, "gpu_list_length"),
                             ("alive-cpu-worker", WORKER.cpu_queue, "cpu_list_length")):
        spec = objects[name]["spec"]
        (trigger,) = spec["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "redis"
        assert meta["listName"] == queue
        assert meta["listLength"] == str(expected[key]), f"{name}: listLength drifted from keda_targets()"
        # the scaled Deployment consumes exactly that queue
        (container,) = deployment(name)["spec"]["template"]["spec"]["containers"]
        assert parse_cli(container["args"])["queues"] == queue
        # KEDA activates when LLEN > activationListLength: from zero replicas a single waiting task must wake it
        assert isinstance(meta["activationListLength"], str) and isinstance(meta["listLength"], str)
        if spec["minReplicaCount"] == 0:
            assert int(meta["activationListLength"]) == 0, f"{name}: a lone waiting task would never start a pod"
        assert trigger["authenticationRef"]["name"] in auths
        # the address comes from the target's environment (alive-config), as addressFromEnv requires
        (config,) = [d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "alive-config"]
        assert meta["addressFromEnv"] in config["data"]
        assert {"configMapRef": {"name": "alive-config"}} in container["envFrom"]
        assert meta["databaseIndex"] == _broker_db_index()
    assert objects["alive-gpu-worker"]["spec"]["minReplicaCount"] == 0
    assert objects["alive-cpu-worker"]["spec"]["minReplicaCount"] == 1


def _broker_db_index() -> str:
    (secret,) = [d for d in by_kind("Secret") if d["metadata"]["name"] == "alive-secrets"]
    return secret["stringData"]["ALIVE_WORKER__BROKER_URL"].rsplit("/", 1)[1]


def test_readme_states_the_keda_numbers():
    from benchmarks.capacity import DEPLOY_KEDA_INPUTS, keda_targets

    k = keda_targets(**DEPLOY_KEDA_INPUTS)
    readme = (DEPLOY / "README.md").read_text()
    assert f"listLength {k['gpu_list_length']}" in readme and f"listLength {k['cpu_list_length']}" in readme


# ------------------------------------------------------------------------------------------------
# images and Dockerfiles


def _images() -> list[tuple[str, str]]:
    out = [(f"compose {n}", s["image"]) for n, s in compose()["services"].items()]
    for spec in pod_specs():
        out += [(f"k8s {c['name']}", c["image"]) for c in spec["containers"]]
    return out


def test_images_come_from_deploy_dockerfiles():
    for where, image in _images():
        repo = image.rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image
        if repo.startswith("alive-"):
            assert repo in DOCKERFILES and DOCKERFILES[repo].is_file(), f"{where}: no Dockerfile for {image}"
        else:
            assert repo in THIRD_PARTY_IMAGES, f"{where}: unexpected image {image}"
    for name, svc in compose()["services"].items():
        if "build" in svc:
            repo = svc["image"].split(":")[0]
            assert (REPO / svc["build"]["dockerfile"]) == DOCKERFILES[repo], name
            assert (COMPOSE.parent / svc["build"]["context"]).resolve() == REPO, name
    gpu = deployment("alive-gpu-worker")["spec"]["template"]["spec"]["containers"][0]
    assert gpu["image"].startswith("alive-gpu:")
    others = [c["image"] for d in by_kind("Deployment") if d["metadata"]["name"] != "alive-gpu-worker"
              for c in d["spec"]["template"]["spec"]["containers"]]
    assert others and all(i.startswith("alive-cpu:") for i in others)


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_basics(image):
    path = DOCKERFILES[image]
    user = _instruction(path, "USER").split(":")[0]
    assert user not in ("root", "0"), f"{path.name} runs as root"
    assert json.loads(_instruction(path, "ENTRYPOINT")) == ["alive"]
    health = _instruction(path, "HEALTHCHECK")
    assert "CMD" in health and "/opt/alive/healthcheck.py" in health
    assert "COPY deploy/healthcheck.py /opt/alive/healthcheck.py" in path.read_text()
    # torch pinned as scripts/install.sh pins it
    pinned = re.search(r"^TORCH_VERSION=(\S+)", (REPO / "scripts" / "install.sh").read_text(), re.M).group(1)
    assert f"ARG TORCH_VERSION={pinned}" in path.read_text()
    assert 'torch==${TORCH_VERSION}' in path.read_text()
    # editable install: configs/presets beside the package (pipeline/settings.py PRESETS_DIR)
    assert "pip install -e" in path.read_text() and "COPY configs ./configs" in path.read_text()
    ignore = path.with_name(path.name + ".dockerignore")
    assert ignore.is_file() and "!deploy/healthcheck.py" in ignore.read_text()
    text = path.read_text()
    assert "ALIVE_ENGINE__CACHE_DIR=/models" in text


def test_dockerfile_bases():
    assert _instruction(DOCKERFILES["alive-cpu"], "FROM").startswith("python:3.12-slim")
    assert re.match(r"nvidia/cuda:12\.\d+(\.\d+)?-(runtime|base)-ubuntu24\.04", _instruction(DOCKERFILES["alive-gpu"], "FROM"))
    assert "whl/cpu" in DOCKERFILES["alive-cpu"].read_text()


# ------------------------------------------------------------------------------------------------
# GPU, weights, disruption, security


def test_gpu_resources_and_read_only_weights():
    spec = deployment("alive-gpu-worker")["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    (config,) = [d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "alive-config"]
    cache = config["data"]["ALIVE_ENGINE__CACHE_DIR"]
    (models,) = [m for m in c["volumeMounts"] if m["mountPath"] == cache]
    assert models["readOnly"] is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == models["name"]]
    assert volume["persistentVolumeClaim"]["readOnly"] is True
    svc = compose()["services"]["gpu-worker"]
    (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["count"] == 1
    assert f"alive-models:{compose()['services']['api']['environment']['ALIVE_ENGINE__CACHE_DIR']}:ro" in svc["volumes"]


def test_disruption_budgets_cover_api_and_gpu_workers():
    budgets = {tuple(sorted(p["spec"]["selector"]["matchLabels"].items())) for p in by_kind("PodDisruptionBudget")}
    for name in ("alive-api", "alive-gpu-worker"):
        labels = deployment(name)["spec"]["template"]["metadata"]["labels"]
        assert any(set(b) <= set(labels.items()) for b in budgets), name


def test_pods_run_as_the_image_user_not_root():
    uid = int(_instruction(DOCKERFILES["alive-cpu"], "USER").split(":")[0])
    assert uid == int(_instruction(DOCKERFILES["alive-gpu"], "USER").split(":")[0])
    for spec in pod_specs():
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == uid
        for c in spec["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            data = [m for m in c["volumeMounts"] if m["mountPath"] == "/var/lib/alive"]
            assert data, f"{c['name']}: no writable data dir (ALIVE_DATA_DIR)"


def test_compose_dependencies_are_healthy_conditions():
    services = compose()["services"]
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert cond["condition"] in ("service_healthy", "service_completed_successfully"), name
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep] or services[dep].get("image", "").startswith("alive-"), dep
        if svc.get("command", [None])[0] in ("serve", "worker"):
            assert svc.get("init") is True, f"{name}: no init process to forward signals"
