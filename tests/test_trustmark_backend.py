"""The optional TrustMark backend: weights fetched only by `alive models pull trustmark`, md5 checked,
never a partial file under a final name, and clear errors offline. A real HTTP server on loopback
stands in for Adobe's CDN; the md5 table is patched to the files it serves."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import socket
import threading
from functools import partial

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline import trustmark_backend as tmb
from pipeline.cli import app
from pipeline.errors import ModelUnavailable

FILES = {"trustmark_Q.yaml": b"model:\n  target: trustmark.model.TrustMark_Arch\n",
         "encoder_Q.ckpt": b"E" * 300_000, "decoder_Q.ckpt": bytes(range(256)) * 2000}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def cdn(tmp_path):
    """A local HTTP server serving FILES; yields (base_url, served folder, request log)."""
    served = tmp_path / "cdn"
    served.mkdir()
    for name, data in FILES.items():
        (served / name).write_bytes(data)
    requests: list[str] = []

    class Handler(_Quiet):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", served, requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def table(monkeypatch):
    """Point the md5 table at the files the local server serves."""
    monkeypatch.setitem(tmb.WEIGHTS, "Q", {n: hashlib.md5(d).hexdigest() for n, d in FILES.items()})


def _dead_url() -> str:
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_weights_table_is_q_encoder_decoder_config_with_the_package_md5s():
    assert set(tmb.WEIGHTS["Q"]) == {"trustmark_Q.yaml", "encoder_Q.ckpt", "decoder_Q.ckpt"}
    assert tmb.WEIGHTS["Q"]["decoder_Q.ckpt"] == "4ced90e9cfe13e3295ad082887fe9187"  # trustmark 0.9.2
    assert tmb.BASE_URL == "https://cai-watermark.adobe.net/watermarking/trustmark-models/"
    assert tmb.TrustMarkBackend.ALGORITHM == "com.adobe.trustmark.Q"


def test_pull_downloads_verifies_then_skips(cdn, table, tmp_path):
    base, _, requests = cdn
    folder = tmb.pull(tmp_path / "models", base_url=base)
    assert folder == tmp_path / "models" / "trustmark"
    assert {p.name for p in folder.iterdir()} == set(FILES)  # no temporary file left behind
    for name, data in FILES.items():
        assert (folder / name).read_bytes() == data
    assert sorted(requests) == sorted("/" + n for n in FILES)
    # second pull: everything present with the right md5, so no request at all (even with no server)
    assert tmb.pull(tmp_path / "models", base_url=_dead_url()) == folder
    assert len(requests) == len(FILES)


def test_pull_replaces_a_damaged_file_only(cdn, table, tmp_path):
    base, _, requests = cdn
    folder = tmb.pull(tmp_path / "models", base_url=base)
    (folder / "encoder_Q.ckpt").write_bytes(b"truncated")
    requests.clear()
    tmb.pull(tmp_path / "models", base_url=base)
    assert requests == ["/encoder_Q.ckpt"]
    assert (folder / "encoder_Q.ckpt").read_bytes() == FILES["encoder_Q.ckpt"]


def test_pull_refuses_a_file_with_the_wrong_md5(cdn, table, tmp_path):
    base, served, _ = cdn
    (served / "decoder_Q.ckpt").write_bytes(b"<html>captive portal</html>")
    with pytest.raises(ModelUnavailable) as caught:
        tmb.pull(tmp_path / "models", base_url=base)
    message = caught.value.message
    assert "decoder_Q.ckpt has md5 " + hashlib.md5(b"<html>captive portal</html>").hexdigest() in message
    assert "expected " + hashlib.md5(FILES["decoder_Q.ckpt"]).hexdigest() in message
    folder = tmp_path / "models" / "trustmark"
    assert not (folder / "decoder_Q.ckpt").exists()
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]
    # the files that were right are kept, each complete
    assert (folder / "trustmark_Q.yaml").read_bytes() == FILES["trustmark_Q.yaml"]


def test_pull_missing_file_on_server_is_a_clear_error(cdn, table, tmp_path):
    base, served, _ = cdn
    (served / "encoder_Q.ckpt").unlink()
    with pytest.raises(ModelUnavailable, match=r"encoder_Q.ckpt: HTTP 404"):
        tmb.pull(tmp_path / "models", base_url=base)
    assert not (tmp_path / "models" / "trustmark" / "encoder_Q.ckpt").exists()


def test_pull_unreachable_host_says_what_is_needed_and_how_to_copy_by_hand(table, tmp_path):
    with pytest.raises(ModelUnavailable) as caught:
        tmb.pull(tmp_path / "models", base_url=_dead_url())
    message = caught.value.message
    assert "needs network access to 127.0.0.1" in message
    folder = tmp_path / "models" / "trustmark"
    assert str(folder) in message and "trustmark_Q.yaml, encoder_Q.ckpt, decoder_Q.ckpt" in message
    assert list(folder.iterdir()) == []


def test_require_without_weights_names_the_pull_command(tmp_path):
    backend = tmb.TrustMarkBackend(tmp_path / "models")
    assert backend.available() is False
    with pytest.raises(ModelUnavailable) as caught:
        backend.require()
    message = caught.value.message
    assert "run `alive models pull trustmark`" in message
    assert str(tmp_path / "models" / "trustmark") in message and "encoder_Q.ckpt" in message


def _trustmark_imports() -> bool:
    if importlib.util.find_spec("trustmark") is None:
        return False
    try:
        import trustmark.trustmark  # noqa: F401
    except (ImportError, RuntimeError, OSError):
        return False
    return True


@pytest.mark.skipif(_trustmark_imports(), reason="trustmark imports here")
def test_require_without_the_package_names_the_extra(cdn, table, tmp_path):
    tmb.pull(tmp_path / "models", base_url=cdn[0])
    backend = tmb.TrustMarkBackend(tmp_path / "models")
    with pytest.raises(ModelUnavailable) as caught:
        backend.require()
    assert "pip install 'alive-pipeline[trustmark]'" in caught.value.message
    assert "models pull" not in caught.value.message  # the weights are there: only the package is missing
    with pytest.raises(ModelUnavailable):
        backend.embed(np.zeros((8, 8, 3), np.uint8), "0123456789ab")  # the same error, never a download


def test_binding_value_round_trip():
    value = tmb.binding_value("0123456789ab")
    assert value.startswith("1*") and len(value) == 2 + 61 and value.endswith("0" * 13)
    assert tmb.credential_id_from_value(value) == "0123456789ab"
    with pytest.raises(ValueError):
        tmb.credential_id_from_value("1*" + "1" * 61)  # check bits not zero: not ours
    with pytest.raises(ValueError):
        tmb.binding_value("xyz")


def test_cli_pull_trustmark_against_the_local_server(cdn, table, tmp_path):
    runner = CliRunner()
    assert "trustmark" in runner.invoke(app, ["models", "pull", "--help"]).output
    result = runner.invoke(app, ["models", "pull", "trustmark", "--base-url", cdn[0]],
                           env={"ALIVE_DATA_DIR": str(tmp_path / "data")})
    assert result.exit_code == 0, result.output
    folder = tmp_path / "data" / "models" / "trustmark"
    assert str(folder) in result.output and "label.watermark_backend: trustmark" in result.output
    assert {p.name for p in folder.iterdir()} == set(FILES)


def test_cli_pull_trustmark_offline_is_one_clear_line(table, tmp_path):
    result = CliRunner().invoke(app, ["models", "pull", "trustmark", "--base-url", _dead_url()],
                                env={"ALIVE_DATA_DIR": str(tmp_path / "data")})
    assert result.exit_code == ModelUnavailable.exit_code
    assert "model_unavailable" in result.output and "Traceback" not in result.output


def _trustmark_or_skip():
    try:
        import trustmark.trustmark  # noqa: F401
    except (ImportError, RuntimeError, OSError) as exc:  # RuntimeError: torchvision built for another torch
        pytest.skip(f"the trustmark package does not import here: {exc}")


# The architecture of TrustMark Q as its published trustmark_Q.yaml describes it (UNet encoder width
# 32, 4 downsamplings, 1 middle block; ResNet-50 decoder). The training-only parts are replaced by
# Identity when a part is loaded, so their targets here are placeholders.
RANDOM_Q_YAML = """model:
  target: trustmark.model.TrustMark_Arch
  params:
    cover_key: image
    secret_key: secret
    secret_len: 100
    resolution: 256
    secret_encoder_config: {target: trustmark.unet.Unet1, params: {width: 32, ndown: 4, nmiddle: 1, activ: silu}}
    secret_decoder_config: {target: trustmark.unet.SecretDecoder, params: {arch: resnet50}}
    discriminator_config: {target: trustmark.model.Identity}
    loss_config: {target: trustmark.model.Identity}
    noise_config: {target: trustmark.model.Identity}
"""


@pytest.mark.slow
def test_random_weight_networks_load_from_our_cache_and_embed_without_downloading(tmp_path, monkeypatch):
    """Real TrustMark code, random weights (the real ones are on Adobe's CDN, unreachable here):
    the load path, the no-download guard, in-place marking of distinct buffers and the detector's
    'nothing found' on a random decoder. Not a robustness test."""
    _trustmark_or_skip()
    import torch
    import trustmark.trustmark as upstream
    from omegaconf import OmegaConf

    folder = tmp_path / "models" / "trustmark"
    folder.mkdir(parents=True)
    (folder / "trustmark_Q.yaml").write_text(RANDOM_Q_YAML)
    torch.manual_seed(0)
    arch = upstream.instantiate_from_config(OmegaConf.create(RANDOM_Q_YAML).model)
    state = {k: v for k, v in arch.state_dict().items() if k.startswith(("encoder.", "decoder."))}
    torch.save({"state_dict": {k: v for k, v in state.items() if k.startswith("encoder.")}}, folder / "encoder_Q.ckpt")
    torch.save({"state_dict": {k: v for k, v in state.items() if k.startswith("decoder.")}}, folder / "decoder_Q.ckpt")
    monkeypatch.setitem(tmb.WEIGHTS, "Q", {n: hashlib.md5((folder / n).read_bytes()).hexdigest()
                                           for n in ("trustmark_Q.yaml", "encoder_Q.ckpt", "decoder_Q.ckpt")})

    def no_network(*args, **kwargs):
        raise AssertionError("TrustMark tried to download")

    monkeypatch.setattr(upstream.urllib.request, "urlretrieve", no_network)
    monkeypatch.setattr(upstream.urllib.request, "urlopen", no_network)

    backend = tmb.TrustMarkBackend(tmp_path / "models", device="cpu")
    assert backend.available()
    rng = np.random.default_rng(1)
    clip = rng.integers(0, 256, (2, 96, 64, 3), dtype=np.uint8)
    frames = [clip[0], clip[1], clip[0], clip[1]]  # a looped story: 4 frames, 2 buffers
    before = clip.copy()
    assert backend.embed(frames, "0123456789ab") is frames
    assert clip.dtype == np.uint8 and clip.shape == (2, 96, 64, 3)
    assert not np.array_equal(clip, before)  # marked in place, in the shared buffers
    assert np.array_equal(frames[2], frames[0])
    found, credential_id, confidence, read = backend.detect(frames)
    assert (found, credential_id, confidence, read) == (False, None, 0.0, 2)  # 2 distinct buffers read

    # a checkpoint that does not fit the network is refused, not silently left random
    torch.save({"state_dict": {}}, folder / "encoder_Q.ckpt")
    monkeypatch.setitem(tmb.WEIGHTS["Q"], "encoder_Q.ckpt", hashlib.md5((folder / "encoder_Q.ckpt").read_bytes()).hexdigest())
    with pytest.raises(ModelUnavailable, match="does not fit the TrustMark encoder"):
        tmb.TrustMarkBackend(tmp_path / "models", device="cpu").embed(frames, "0123456789ab")


# -- wired into the pipeline ------------------------------------------------------------------------
def test_animate_with_trustmark_not_pulled_stops_before_any_work(tmp_path, sample_photo):
    """label.watermark_backend: trustmark without its weights: the run stops at once with the pull
    command in the message, and writes nothing."""
    out = tmp_path / "story.mp4"
    env = {"ALIVE_LABEL__WATERMARK_BACKEND": "trustmark", "ALIVE_DATA_DIR": str(tmp_path / "data")}
    result = CliRunner().invoke(app, ["animate", str(sample_photo), "-o", str(out)], env=env)
    assert result.exit_code == ModelUnavailable.exit_code, result.output
    assert "alive models pull trustmark" in " ".join(result.output.split())
    assert "alive-pipeline[trustmark]" in " ".join(result.output.split())  # printed as text, not rich markup
    assert [p.name for p in tmp_path.iterdir() if p.name != "data"] == []


def test_a_trustmark_soft_binding_carries_trustmark_s_own_value():
    from pipeline.softbinding import SoftBinding, binding_value

    soft = SoftBinding("a1b2c3d4e5f6", True, [], watermark_alg=tmb.ALGORITHM)
    mark = soft.assertions()[0]
    assert mark["data"]["alg"] == "com.adobe.trustmark.Q"
    assert mark["data"]["blocks"][0]["value"] == tmb.binding_value("a1b2c3d4e5f6") == soft.watermark_value
    assert tmb.credential_id_from_value(binding_value(tmb.ALGORITHM, "a1b2c3d4e5f6")) == "a1b2c3d4e5f6"
    with pytest.raises(ValueError, match="unknown watermark algorithm"):
        binding_value("com.example.nothing", "a1b2c3d4e5f6")
