"""The GPU day-one kit (benchmarks/gpu/): wheel-folder checks, the dry run end to end, the results parser.

Nothing here needs a GPU or the network: the wheel checks run on small wheels made in the test (and on
the real folder when fetch_wheels.sh has filled it), the dry run runs every step on the CPU with the tiny
model, and the parser reads the dry run's output and hand-made partial results. No timing assertions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GPU = REPO / "benchmarks" / "gpu"
sys.path.insert(0, str(GPU))

import day_one_tools as tools  # noqa: E402
import parse_results  # noqa: E402


# -- small wheels made here ------------------------------------------------------------------------
def make_wheel(folder: Path, name: str, version: str, *, requires: list[str] = (), tags: str = "py3-none-any",
               payload: bytes = b"VALUE = 1\n", tamper: bool = False, compression=zipfile.ZIP_DEFLATED) -> Path:
    """A minimal valid wheel: one module, METADATA with Requires-Dist, WHEEL, RECORD with hashes."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}/__init__.py": payload,
        f"{info}/METADATA": ("Metadata-Version: 2.1\n"
                             f"Name: {name}\nVersion: {version}\n"
                             + "".join(f"Requires-Dist: {r}\n" for r in requires) + "\n").encode(),
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tags}\n".encode(),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    if tamper:
        files[f"{dist}/__init__.py"] = payload + b"# changed after RECORD was written\n"
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / f"{dist}-{version}-{tags}.whl"
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for member, data in files.items():
            zf.writestr(member, data)
    return path


NO_DEVICE = {"device_versions": {"numpy": "2.5.2"}, "device_packages": frozenset({"numpy", "requests"})}


def check(folder: Path, pins: dict[str, str], **kw):
    return tools.check_folder(folder, pins, **{**NO_DEVICE, **kw})


def test_a_complete_folder_passes(tmp_path):
    make_wheel(tmp_path, "alpha", "1.0", requires=["beta>=2", "numpy>=2", "requests", 'old; python_version < "3.8"',
                                                     'extra-thing; extra == "fancy"'])
    make_wheel(tmp_path, "beta", "2.1")
    result = check(tmp_path, {"alpha": "1.0", "beta": "2.1"})
    assert result["ok"], result["problems"]
    assert set(result["wheels"]) == {"alpha", "beta"}
    assert result["folder_bytes"] == sum(p.stat().st_size for p in tmp_path.iterdir())


@pytest.mark.parametrize("pins, needle", [
    ({"alpha": "1.0", "beta": "2.1", "gamma": "3"}, "no wheel for pin gamma==3"),
    ({"alpha": "1.0"}, "is not pinned"),
    ({"alpha": "1.1", "beta": "2.1"}, "the pin says 1.1"),
])
def test_pins_and_wheels_must_match(tmp_path, pins, needle):
    make_wheel(tmp_path, "alpha", "1.0")
    make_wheel(tmp_path, "beta", "2.1")
    result = check(tmp_path, pins)
    assert not result["ok"]
    assert any(needle in p for p in result["problems"]), result["problems"]


def test_two_versions_of_one_distribution_are_refused(tmp_path):
    make_wheel(tmp_path, "alpha", "1.0")
    make_wheel(tmp_path, "alpha", "1.1")
    result = check(tmp_path, {"alpha": "1.0"})
    assert any("two wheels of alpha" in p for p in result["problems"]), result["problems"]


@pytest.mark.parametrize("requires, needle", [
    (["missing-pkg"], "neither in the folder nor on the device"),
    (["numpy<2"], "the device has numpy 2.5.2"),
    (["beta>=3"], "the folder has beta 2.1"),
])
def test_unmet_requirements_fail(tmp_path, requires, needle):
    make_wheel(tmp_path, "alpha", "1.0", requires=requires)
    make_wheel(tmp_path, "beta", "2.1")
    result = check(tmp_path, {"alpha": "1.0", "beta": "2.1"})
    assert any(needle in p for p in result["problems"]), result["problems"]


def test_a_device_package_of_unknown_version_is_a_note_not_a_failure(tmp_path):
    make_wheel(tmp_path, "alpha", "1.0", requires=["requests>=2"])
    result = check(tmp_path, {"alpha": "1.0"})
    assert result["ok"], result["problems"]
    assert any("requests" in n and "assumed" in n for n in result["notes"])


def test_a_changed_file_fails_the_record_check(tmp_path):
    make_wheel(tmp_path, "alpha", "1.0", tamper=True)
    result = check(tmp_path, {"alpha": "1.0"})
    assert any("does not match its RECORD hash" in p for p in result["problems"]), result["problems"]
    assert check(tmp_path, {"alpha": "1.0"}, verify_records=False)["ok"]


def test_size_limits_fail_clearly(tmp_path):
    make_wheel(tmp_path, "alpha", "1.0", payload=os.urandom(50_000))
    size = sum(p.stat().st_size for p in tmp_path.iterdir())
    over = check(tmp_path, {"alpha": "1.0"}, limit_bytes=size - 1)
    assert any("over the" in p and "carry limit" in p for p in over["problems"]), over["problems"]
    tree = check(tmp_path, {"alpha": "1.0"}, limit_bytes=size + 10, tree_bytes=100)
    assert any("would travel" in p for p in tree["problems"]), tree["problems"]
    assert tree["travel_bytes"] == size + 100
    assert check(tmp_path, {"alpha": "1.0"}, limit_bytes=size + 1000, tree_bytes=100)["ok"]


@pytest.mark.parametrize("filename, fits", [
    ("a-1-py3-none-any.whl", True),
    ("a-1-py2.py3-none-any.whl", True),
    ("a-1-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", True),
    ("a-1-cp311-abi3-manylinux2014_x86_64.whl", True),
    ("a-1-py3-none-manylinux_2_28_x86_64.whl", True),
    ("a-1-cp311-cp311-manylinux_2_17_x86_64.whl", False),
    ("a-1-cp313-abi3-manylinux_2_17_x86_64.whl", False),
    ("a-1-cp312-cp312-linux_x86_64.whl", False),
    ("a-1-cp312-cp312-manylinux_2_17_aarch64.whl", False),
    ("a-1-cp312-cp312-manylinux_2_41_x86_64.whl", False),
    ("a-1-cp312-cp312-macosx_11_0_x86_64.whl", False),
])
def test_wheel_tags_must_fit_the_device(filename, fits):
    info = tools.parse_wheel_name(filename)
    assert info is not None
    assert (tools.tag_problem(info) is None) is fits


def test_lzma_repack_keeps_every_file_and_pip_installs_it(tmp_path):
    src, dst, site = tmp_path / "src", tmp_path / "dst", tmp_path / "site"
    src.mkdir()
    dst.mkdir()
    wheel = make_wheel(src, "alpha", "1.0", payload=b"VALUE = 42\n" * 2000)
    tools.repack_lzma(wheel, dst / wheel.name)
    with zipfile.ZipFile(dst / wheel.name) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_LZMA}
        with zipfile.ZipFile(wheel) as orig:
            assert [(i.filename, zf.read(i)) for i in zf.infolist()] == [(i.filename, orig.read(i)) for i in orig.infolist()]
    assert check(dst, {"alpha": "1.0"})["ok"]
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                           "--disable-pip-version-check", "--target", str(site), str(dst / wheel.name)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (site / "alpha" / "__init__.py").read_bytes() == b"VALUE = 42\n" * 2000


def test_stage_copies_small_wheels_repacks_big_ones_and_writes_the_manifest(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "wheels"
    src.mkdir()
    small = make_wheel(src, "alpha", "1.0")
    big = make_wheel(src, "beta", "2.1", payload=os.urandom(20_000).hex().encode())
    rc = tools.main(["wheels-stage", "--src", str(src), "--dir", str(dst), "--repack-over-bytes", "5000",
                     "alpha==1.0", "beta==2.1"])
    assert rc == 0
    manifest = json.loads((dst / "MANIFEST.json").read_text())
    by_name = {w["name"]: w for w in manifest["wheels"]}
    assert by_name["alpha"]["repacked"] is False and (dst / small.name).read_bytes() == small.read_bytes()
    assert by_name["beta"]["repacked"] is True and by_name["beta"]["source_bytes"] == big.stat().st_size
    with zipfile.ZipFile(dst / big.name) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_LZMA}
    assert (dst / "requirements.txt").read_text() == "alpha==1.0\nbeta==2.1\n"
    assert tools.main(["wheels-stage", "--src", str(src), "--dir", str(dst), "alpha==1.0", "gamma==3"]) == 1


@pytest.mark.slow
def test_install_resolves_from_the_folder_and_falls_back_to_a_target(tmp_path):
    """The GPU machine's install path, in a bare venv: pip with --no-index --find-links into the
    interpreter's own environment; when the resolver fails, --no-deps --target + PYTHONPATH."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")

    def install(folder: Path, name: str) -> dict:
        target, out, env_file = tmp_path / f"site-{name}", tmp_path / f"{name}.json", tmp_path / f"{name}.env"
        done = subprocess.run([python, str(GPU / "day_one_tools.py"), "install", "--wheels", str(folder), "--target",
                               str(target), "--out", str(out), "--env-file", str(env_file)],
                              capture_output=True, text=True, env=_clean_env(), timeout=300)
        assert done.returncode == 1, done.stderr  # the GPU path's modules are not in a bare venv: smoke test fails
        result = json.loads(out.read_text())
        assert result["ok"] is False and "diffusers" in result["failed_imports"]
        return {**result, "env_file": env_file.read_text(), "target": target}

    good = tmp_path / "good"
    good.mkdir()
    make_wheel(good, "alpha", "1.0", requires=["beta>=1"])
    make_wheel(good, "beta", "1.0")
    (good / "requirements.txt").write_text("alpha==1.0\nbeta==1.0\n")
    result = install(good, "good")
    assert result["method"].startswith("pip install into"), result
    assert result["absent_before"] == ["alpha==1.0", "beta==1.0"] and result["env_file"].strip() == ""
    subprocess.run([python, "-c", "import alpha, beta"], check=True, cwd=tmp_path, timeout=60)

    broken = tmp_path / "broken"
    broken.mkdir()
    make_wheel(broken, "gamma", "1.0", requires=["not-in-the-folder"])
    (broken / "requirements.txt").write_text("gamma==1.0\n")
    result = install(broken, "broken")
    assert "--target" in result["method"] and result["pip_target_rc"] == 0, result
    assert "pip_env_error" in result
    assert result["env_file"].strip().startswith(f"export PYTHONPATH={result['target']}:")
    assert (result["target"] / "gamma" / "__init__.py").exists()


def test_the_real_wheel_folder_passes_fetch_wheels_check():
    folder = GPU / "wheels"
    if not (folder / "MANIFEST.json").exists():
        pytest.skip("benchmarks/gpu/wheels is absent (git-ignored): run benchmarks/gpu/fetch_wheels.sh to fill it")
    done = subprocess.run(["bash", str(GPU / "fetch_wheels.sh"), "--check"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "OK: the folder is complete and fits the carry limit" in done.stdout
    size = re.search(r"folder: ([\d.]+) MiB", done.stdout)
    assert size and float(size[1]) < 64


# -- gpu tests, stages table -----------------------------------------------------------------------
def test_gpu_test_files_and_junit_counts(tmp_path):
    marker = "mark." + "gpu"  # spelled apart so that this file does not count as a gpu-marked one
    (tmp_path / "test_a.py").write_text(f"import pytest\n\n@pytest.{marker}\ndef test_x():\n    pass\n")
    (tmp_path / "test_b.py").write_text("def test_y():\n    pass\n")
    (tmp_path / "test_c.py").write_text(f"import pytest\npytestmark = [pytest.mark.slow, pytest.{marker}]\n")
    assert [p.name for p in tools.gpu_test_files(tmp_path)] == ["test_a.py", "test_c.py"]
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1">'
                   '<testcase classname="t" name="ok"/><testcase classname="t" name="bad">'
                   '<failure message="boom"/></testcase><testcase classname="t" name="s"><skipped/></testcase>'
                   '<testcase classname="t" name="ok2"/></testsuite></testsuites>')
    counts = tools.junit_counts(xml)
    assert (counts["tests"], counts["passed"], counts["failures"], counts["skipped"]) == (4, 2, 1, 1)
    assert counts["failed_tests"] == ["t::bad: boom"]


def test_stage_table_parsing():
    text = ("| stage | s per clip | s per second of video |\n| --- | ---: | ---: |\n"
            "| intake (decode, checks, sanitise) | 0.003 | 0.001 |\n"
            "| **CPU side of one tiktok story** (intake + ...) | **10.38** | **2.59** |\n")
    rows = tools.parse_stage_table(text)
    assert rows == [{"stage": "intake (decode, checks, sanitise)", "s_per_clip": 0.003, "s_per_second": 0.001},
                    {"stage": "CPU side of one tiktok story (intake + ...)", "s_per_clip": 10.38, "s_per_second": 2.59}]


# -- day_one.sh ------------------------------------------------------------------------------------
def _clean_env() -> dict[str, str]:
    """The suite's ALIVE_* settings (small story, session data dir) must not leak into the dry run."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ALIVE_")}


def test_day_one_refuses_unknown_steps_and_a_missing_out(tmp_path):
    env = _clean_env()
    env.pop("OUT", None)
    done = subprocess.run(["bash", str(GPU / "day_one.sh")], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "no $OUT and no --out" in done.stderr
    done = subprocess.run(["bash", str(GPU / "day_one.sh"), "--dry-run", "--out", str(tmp_path), "--only", "warp"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "unknown step warp" in done.stderr


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("day_one_dry")
    done = subprocess.run(["bash", str(GPU / "day_one.sh"), "--dry-run", "--out", str(out)], capture_output=True,
                          text=True, env=_clean_env(), timeout=600)
    return out, done


@pytest.mark.slow
def test_dry_run_runs_every_step_end_to_end(dry_run):
    out, done = dry_run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["day_one.log", "logs.tar.gz", "results.json", "summary.md"]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in files)  # what the device tool brings back
    results = json.loads((out / "results.json").read_text())
    assert results["dry_run"] is True
    assert results["order"] == ["env", "install", "gpu_tests", "svd", "compile", "stages"]
    assert {s["status"] for s in results["steps"].values()} <= {"ok", "skipped"}, results["steps"]
    assert results["env"]["torch"]["cuda_available"] is False
    assert results["install"]["ok"], results["install"]
    rows = {r["key"]: r for r in results["svd"]["rows"]}
    assert list(rows) == tools.MAIN_ROWS
    assert rows["baseline"]["guard"]["against"] == "ours, default settings"
    assert rows["batch"]["guard"]["against"] == "ours, default settings"
    assert all(r["per_clip_s"] > 0 and r["peak_bytes"] > 0 for r in rows.values())
    assert rows["sequential"]["clips"] == rows["batch"]["clips"] == 2
    compiled = results["compile"]["rows"]
    assert [r["key"] for r in compiled] == ["compile"] and compiled[0]["compile_warmup_s"] > 0
    assert results["compile"]["compile_backend"] == "eager"
    stages = [r["stage"] for r in results["stages"]["rows"]]
    assert stages[0].startswith("intake") and any(s.startswith("label") for s in stages)
    assert "## GPU day one (DRY RUN" in done.stdout


@pytest.mark.slow
def test_parser_reads_the_dry_run(dry_run):
    out, done = dry_run
    assert done.returncode == 0
    text = subprocess.run([sys.executable, str(GPU / "parse_results.py"), str(out)], capture_output=True, text=True,
                          timeout=60).stdout
    assert text == (out / "summary.md").read_text()
    assert "| row | settings |" in text and "speed-up vs baseline" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "StableVideoDiffusionPipeline" in line]
    assert table and "| 1.00x |" in table[0]
    assert "ours, 2 clips in one UNet batch" in text and "ours, compile" in text
    assert "### stages: CPU side of one story" in text
    assert "GPU-marked tests: none run" in text


def test_parser_says_what_is_missing_or_failed():
    row = {"key": "baseline", "name": "baseline: x", "settings": "d", "notes": "", "repeats": 2, "encode_s": 1.0,
           "unet_s": 18.0, "decode_s": 3.0, "total_s": 22.0, "per_clip_s": 22.0, "clips_per_hour": 163.6,
           "peak_gib": 30.0, "samples": "50 / 0", "tflops_all": 190.0, "tflops_unet": 200.0}
    ours = {**row, "key": "ours", "name": "ours, default settings", "total_s": 11.0, "per_clip_s": 11.0}
    results = {
        "dry_run": False, "budget_total_s": 525, "order": ["env", "svd", "compile", "stages"],
        "steps": {"env": {"status": "ok", "wall_s": 2, "budget_s": 15}, "svd": {"status": "timed_out", "wall_s": 220,
                  "budget_s": 220}, "compile": {"status": "skipped", "reason": "no time left"},
                  "stages": {"status": "failed", "wall_s": 3, "budget_s": 75}},
        "env": {"date": "2026-12-10T10:00:00+00:00", "commit": "abc1234", "gpu": {"name": "NVIDIA H200",
                "memory_gib": 139.8, "multiprocessors": 132, "capability": "9.0"}, "torch": {"version": "2.11.0",
                "cuda": "13.0"}, "versions": {"diffusers": "0.42.1"}},
        "svd": {"device": "cuda", "model": "full-size SVD-XT", "dtype": "bf16", "seed": 42,
                "shape": {"width": 576, "height": 1024, "frames": 25, "steps": 25},
                "rows_planned": ["baseline", "ours", "few-step", "attention-default"], "rows": [row, ours],
                "errors": [{"row": "attention-default", "error": "OutOfMemoryError: CUDA out of memory", "after_s": 4}]},
    }
    text = parse_results.section(results)
    assert "NVIDIA H200" in text and "commit abc1234" in text and "2026-12-10" in text
    assert "svd timed_out" in text and "compile skipped (no time left)" in text and "stages failed" in text
    assert "| 2.00x |" in text  # ours against the plain diffusers call: 22 s / 11 s
    assert "Row attention-default FAILED" in text and "Not measured (the step's time ran out first): few-step" in text
    assert "### stages: not measured." in text
