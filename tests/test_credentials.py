"""`alive credentials init DIR`: one development chain as the three files the label settings name,
shared by several hosts whose labels then verify Trusted on each other.

Real certificates, the real c2pa library and a real H.264 clip made by the bundled ffmpeg.
"""

from __future__ import annotations

import io
import stat
import subprocess
from pathlib import Path

import imageio_ffmpeg
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from PIL import Image
from typer.testing import CliRunner

from pipeline import stages
from pipeline.cli import app
from pipeline.provenance import ALGORITHMIC_MEDIA, DEV_ORGANIZATION, UNTRUSTED, default_trust_anchors, verify
from pipeline.settings import load_settings

FILES = ("chain.pem", "key.pem", "anchors.pem")


@pytest.fixture
def run():
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def clip_bytes(tmp_path_factory) -> bytes:
    """A 64x64, 8-frame H.264 MP4 (moov before mdat, as pipeline/encode.py writes them)."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=64x64:rate=8", "-frames:v", "8", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-movflags", "+faststart", str(path)], check=True, capture_output=True, timeout=60)
    return path.read_bytes()


@pytest.fixture(scope="module")
def photo_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 120, 40)).save(buf, format="PNG")
    return buf.getvalue()


def _env_lines(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if line.startswith("ALIVE_"))


def _host_settings(data_dir: Path, env: dict[str, str], monkeypatch):
    """A host's settings as its worker reads them: from the environment lines `init` printed."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        return load_settings(data_dir=data_dir)
    finally:
        for name in env:
            monkeypatch.delenv(name)


def _sign_on(settings, clip_bytes: bytes, photo_png: bytes, name: str) -> Path:
    """Label a clip the way the worker's label stage does, with this host's settings."""
    unsigned = settings.data_dir / f"{name}.unsigned.mp4"
    unsigned.parent.mkdir(parents=True, exist_ok=True)
    unsigned.write_bytes(clip_bytes)
    signed = settings.data_dir / f"{name}.mp4"
    summary = stages.label(unsigned, signed, photo_png, "alive motion engine", settings,
                           source_type=ALGORITHMIC_MEDIA)
    assert summary["state"] == "Trusted" and not summary["development_credentials"], summary
    return signed


def test_init_writes_the_three_files_and_the_env_lines(run, tmp_path):
    folder = tmp_path / "creds"
    result = run("credentials", "init", folder)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)  # no temp file left
    assert stat.S_IMODE((folder / "key.pem").stat().st_mode) == 0o600
    for name in FILES:
        assert str(folder / name) in result.output
    env = _env_lines(result.output)
    assert env == {"ALIVE_LABEL__CERT_CHAIN": str(folder / "chain.pem"),
                   "ALIVE_LABEL__PRIVATE_KEY": str(folder / "key.pem"),
                   "ALIVE_LABEL__TRUST_ANCHORS": str(folder / "anchors.pem")}

    chain = x509.load_pem_x509_certificates((folder / "chain.pem").read_bytes())
    roots = x509.load_pem_x509_certificates((folder / "anchors.pem").read_bytes())
    assert len(chain) == 2 and len(roots) == 1
    leaf, intermediate = chain
    assert leaf.issuer == intermediate.subject and intermediate.issuer == roots[0].subject
    organisation = leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    assert organisation == DEV_ORGANIZATION and "development" in organisation


def test_the_env_lines_are_the_names_the_settings_read(run, tmp_path, monkeypatch):
    result = run("credentials", "init", tmp_path / "creds")
    env = _env_lines(result.output)
    label = _host_settings(tmp_path / "data", env, monkeypatch).label
    assert (str(label.cert_chain), str(label.private_key), str(label.trust_anchors)) == (
        env["ALIVE_LABEL__CERT_CHAIN"], env["ALIVE_LABEL__PRIVATE_KEY"], env["ALIVE_LABEL__TRUST_ANCHORS"])


def test_second_init_without_force_fails_and_changes_nothing(run, tmp_path):
    folder = tmp_path / "creds"
    assert run("credentials", "init", folder).exit_code == 0
    before = {name: ((folder / name).read_bytes(), (folder / name).stat().st_ino) for name in FILES}
    again = run("credentials", "init", folder)
    assert again.exit_code == 2, again.output
    assert "credentials_exist" in again.output and "--force" in again.output and "Traceback" not in again.output
    assert {name: ((folder / name).read_bytes(), (folder / name).stat().st_ino) for name in FILES} == before
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)


def test_one_existing_file_is_enough_to_refuse(run, tmp_path):
    folder = tmp_path / "creds"
    folder.mkdir()
    (folder / "anchors.pem").write_bytes(b"someone else's root")
    result = run("credentials", "init", folder)
    assert result.exit_code == 2 and "anchors.pem" in result.output
    assert sorted(p.name for p in folder.iterdir()) == ["anchors.pem"]
    assert (folder / "anchors.pem").read_bytes() == b"someone else's root"


def test_force_replaces_the_chain(run, tmp_path):
    folder = tmp_path / "creds"
    assert run("credentials", "init", folder).exit_code == 0
    old = {name: (folder / name).read_bytes() for name in FILES}
    result = run("credentials", "init", folder, "--force")
    assert result.exit_code == 0, result.output
    assert all((folder / name).read_bytes() != old[name] for name in FILES)
    assert stat.S_IMODE((folder / "key.pem").stat().st_mode) == 0o600
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)


def test_a_worker_with_those_files_signs_trusted_against_anchors_only(run, tmp_path, monkeypatch, clip_bytes,
                                                                     photo_png):
    folder, stranger = tmp_path / "creds", tmp_path / "other"
    env = _env_lines(run("credentials", "init", folder).output)
    assert run("credentials", "init", stranger).exit_code == 0
    settings = _host_settings(tmp_path / "worker", env, monkeypatch)
    signed = _sign_on(settings, clip_bytes, photo_png, "story")
    assert not settings.dev_credentials_dir.exists()  # the configured chain signed, not a dev default

    trusted = run("verify", signed, "--trust", folder / "anchors.pem")
    assert trusted.exit_code == 0, trusted.output
    assert "state               Trusted" in trusted.output
    report = verify(signed, (folder / "anchors.pem").read_bytes())
    assert report.state == "Trusted" and report.failure_codes == [] and report.development_certificate

    elsewhere = verify(signed, (stranger / "anchors.pem").read_bytes())
    assert elsewhere.state != "Trusted" and UNTRUSTED in elsewhere.failure_codes
    shown = run("verify", signed, "--trust", stranger / "anchors.pem")
    assert "Trusted" not in shown.output.replace("untrusted", "")
    assert UNTRUSTED in shown.output


def test_two_hosts_sharing_the_folder_trust_each_other(run, tmp_path, monkeypatch, clip_bytes, photo_png):
    env = _env_lines(run("credentials", "init", tmp_path / "shared").output)
    host_a = _host_settings(tmp_path / "host-a", env, monkeypatch)
    host_b = _host_settings(tmp_path / "host-b", env, monkeypatch)
    from_a = _sign_on(host_a, clip_bytes, photo_png, "a")
    from_b = _sign_on(host_b, clip_bytes, photo_png, "b")
    for verifier, made_elsewhere in ((host_a, from_b), (host_b, from_a)):
        report = verify(made_elsewhere, default_trust_anchors(verifier))
        assert report.state == "Trusted" and report.failure_codes == [], report
    assert not host_a.dev_credentials_dir.exists() and not host_b.dev_credentials_dir.exists()
