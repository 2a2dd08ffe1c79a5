"""The distributed chain with real worker processes on the embedded Redis broker."""

from __future__ import annotations

import json

import pytest

from pipeline.engines import GenerationOptions
from pipeline.errors import InputRejected, TransientError
from pipeline.jobs import Keys
from service.stores import open_job_store
from pipeline.provenance import verify
from pipeline.storage import open_storage
from tests.worker_fixtures import WorkerEnv
from tests.deadlines import scaled
from workers.client import connect, submit, wait

pytestmark = pytest.mark.slow

SMALL = GenerationOptions.build(seed=4, num_frames=4, num_inference_steps=2, width=72, height=128)


@pytest.fixture
def cluster(tmp_path, data_dir):
    env = WorkerEnv(tmp_path / "d", data_dir / "models")
    connect(env.settings)
    yield env
    env.close()


def _store(env):
    storage = open_storage(env.settings)
    return storage, open_job_store(env.settings)


def test_chain_runs_on_separate_gpu_and_cpu_workers(cluster, sample_photo):
    cluster.start_worker("gpu", name="gpu")
    cluster.start_worker("cpu", name="cpu")
    job_id = submit(sample_photo, cluster.settings, SMALL, engine="tiny", prompt="waves", label="astronaut.jpg")
    record = wait([job_id], cluster.settings, timeout=scaled(120))[job_id]
    assert record.status == "succeeded", record.error
    storage, jobs = _store(cluster)
    keys = Keys(job_id)
    # outputs exist and the C2PA label verifies; the photo and intermediates are gone
    assert storage.exists(keys.video) and storage.exists(keys.poster) and storage.exists(keys.report)
    for key in keys.transient:
        assert not storage.exists(key), key
    assert record.source_retained is False
    checked = verify(storage.local_path(keys.video), (cluster.settings.dev_credentials_dir / "root.pem").read_bytes())
    assert checked.state == "Trusted" and "tiny" in checked.software_agent
    report = json.loads(storage.get_bytes(keys.report))
    assert report["status"] == "succeeded" and report["engine"]["engine"] == "tiny"
    assert set(report["timings_s"]) >= {"intake", "moderate_image", "generate", "moderate_video", "encode", "label"}
    assert report["moderation"]["image"]["decision"] == "allow" and report["prompt"] == "waves"
    assert record.outputs["video"].startswith("file://")
    # generation ran on the gpu worker, the rest on the cpu worker
    gpu_log = (cluster.data_dir / "gpu.log").read_text()
    cpu_log = (cluster.data_dir / "cpu.log").read_text()
    assert "Task alive.generate[" in gpu_log and "Task alive.encode[" not in gpu_log
    assert "Task alive.encode[" in cpu_log and "Task alive.generate[" not in cpu_log


def test_rejected_and_blocked_jobs_record_the_reason_and_keep_nothing(cluster, tmp_path, sample_photo):
    cluster.start_worker("cpu,gpu")
    bad = tmp_path / "fake.jpg"
    bad.write_bytes(b"GIF89a not really")
    storage, _ = _store(cluster)
    before = sorted(p.name for p in (cluster.settings.store_root / "jobs").glob("*")) \
        if (cluster.settings.store_root / "jobs").exists() else []
    with pytest.raises(InputRejected) as refused:  # intake runs at submit: no job is ever made for it
        submit(bad, cluster.settings, SMALL, engine="tiny")
    assert refused.value.code in ("unsupported_format", "not_an_image")
    after = sorted(p.name for p in (cluster.settings.store_root / "jobs").glob("*")) \
        if (cluster.settings.store_root / "jobs").exists() else []
    assert after == before
    blocked = submit(sample_photo, cluster.settings, SMALL, engine="tiny", prompt="naked people")
    records = wait([blocked], cluster.settings, timeout=scaled(60))
    assert records[blocked].status == "blocked" and records[blocked].error["code"] == "blocked_prompt"
    assert records[blocked].moderation["prompt"]["decision"] == "block"
    for job_id in (blocked,):
        for key in Keys(job_id).transient:
            assert not storage.exists(key)
        assert json.loads(storage.get_bytes(Keys(job_id).report))["status"] in ("rejected", "blocked")


def test_duplicate_delivery_of_finished_tasks_is_a_no_op(cluster, sample_photo):
    cluster.start_worker("cpu,gpu")
    job_id = submit(sample_photo, cluster.settings, SMALL, engine="tiny")
    assert wait([job_id], cluster.settings, timeout=scaled(120))[job_id].status == "succeeded"
    storage, jobs = _store(cluster)
    video = storage.local_path(Keys(job_id).video)
    before = (video.stat().st_ino, video.stat().st_mtime_ns, jobs.load(job_id).updated_at)
    from workers.tasks import finalize, label

    # the same tasks delivered again (run here, eagerly): they see the job ended and touch nothing
    assert label.apply((job_id,)).state == "IGNORED"
    assert finalize.apply((job_id,)).state == "IGNORED"
    assert (video.stat().st_ino, video.stat().st_mtime_ns) == before[:2]
    assert jobs.load(job_id).status == "succeeded"
    assert sorted(p.name for p in video.parent.iterdir() if not p.name.startswith(".")) == [
        "job.json", "poster.jpg", "preview.webp", "report.json", "story.mp4"]


def test_submit_to_a_dead_broker_fails_cleanly_and_leaves_nothing(tmp_path, data_dir, sample_photo):
    env = WorkerEnv(tmp_path / "d", data_dir / "models", broker_url="redis://127.0.0.1:1/0")
    try:
        connect(env.settings)
        with pytest.raises(TransientError) as info:
            submit(sample_photo, env.settings, SMALL)
        assert info.value.code == "broker_unavailable" and "127.0.0.1:1" in info.value.message
        jobs_dir = env.settings.store_root / "jobs"
        assert not jobs_dir.exists() or not any(jobs_dir.iterdir())
    finally:
        env.close()


def test_importing_the_tasks_loads_no_model_and_no_cuda():
    """The prefork parent must never touch CUDA (children could not re-initialise it) nor load weights."""
    import subprocess
    import sys

    code = ("import sys, workers.tasks, pipeline.cli; "
            "print(sorted(m for m in ('torch', 'diffusers', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
