"""C2PA labelling: dev credentials, sign + verify, tamper detection, privacy of the source photo.

Every test runs the real c2pa library and the bundled ffmpeg on a tiny clip built here.
"""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import struct
import subprocess
import threading
from pathlib import Path

import c2pa
import imageio_ffmpeg
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from PIL import Image

from pipeline import provenance
from pipeline.errors import LabelFailed
from pipeline.provenance import (
    TRAINED_ALGORITHMIC_MEDIA,
    Credentials,
    LabelInfo,
    build_manifest,
    ensure_dev_credentials,
    load_credentials,
    sign_video,
    verify,
)
from pipeline.settings import LabelSettings

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def _ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-v", "error", "-y", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def clip_bytes(tmp_path_factory) -> bytes:
    """A 64x64, 8-frame H.264 MP4 (moov before mdat, as pipeline/encode.py writes them)."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=8", "-frames:v", "8", "-c:v", "libx264",
            "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path))
    return path.read_bytes()


@pytest.fixture(scope="module")
def dev_creds(tmp_path_factory) -> Credentials:
    return ensure_dev_credentials(tmp_path_factory.mktemp("data") / "dev-c2pa")


@pytest.fixture
def clip(tmp_path, clip_bytes) -> Path:
    path = tmp_path / "clip.mp4"
    path.write_bytes(clip_bytes)
    return path


@pytest.fixture(scope="module")
def photo_jpeg() -> bytes:
    """A noisy 512x512 JPEG: incompressible, so an embedded thumbnail of it cannot hide in the size."""
    pixels = np.random.default_rng(7).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _info(**kw) -> LabelInfo:
    base = dict(title="my story", generator_name="alive", generator_version="0.1.0",
                software_agent="alive svd engine", digital_source_type=TRAINED_ALGORITHMIC_MEDIA)
    return LabelInfo(**{**base, **kw})


def _reader_store(path: Path) -> dict:
    """The manifest store exactly as c2pa's own Reader reports it."""
    with open(path, "rb") as fh, c2pa.Reader("video/mp4", fh) as reader:
        return json.loads(reader.json())


def _active(store: dict) -> dict:
    return store["manifests"][store["active_manifest"]]


def _top_level_boxes(data: bytes) -> list[tuple[str, int, int]]:
    """(type, offset, size) of each top-level ISO BMFF box."""
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if size == 1:  # 64-bit "largesize" follows the type
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
        elif size == 0:  # box runs to the end of the file
            size = len(data) - pos
        assert size >= 8, f"bad box size {size} at {pos}"
        boxes.append((kind.decode("latin-1"), pos, size))
        pos += size
    return boxes


# ---- credentials --------------------------------------------------------------------------------


def test_dev_credentials_generated_once_and_reused(tmp_path, caplog):
    directory = tmp_path / "dev-c2pa"
    with caplog.at_level(logging.WARNING, logger="pipeline.provenance"):
        first = ensure_dev_credentials(directory)
    assert "DEVELOPMENT" in caplog.text
    assert first.development and first.trust_anchors_pem
    key_file = directory / "leaf.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in directory.iterdir()}
    assert sorted(before) == ["chain.pem", "leaf.key", "root.pem"]

    second = ensure_dev_credentials(directory)
    assert second == first
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in directory.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name != "dev-c2pa"], "temporary directory left behind"


def test_dev_chain_shape(dev_creds):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    leaf, inter = x509.load_pem_x509_certificates(dev_creds.chain_pem)
    (root,) = x509.load_pem_x509_certificates(dev_creds.trust_anchors_pem)
    assert leaf.issuer == inter.subject and inter.issuer == root.subject
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 1
    assert inter.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days >= 3000
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey) and leaf.public_key().curve.name == "secp256r1"


def test_racing_generators_share_one_chain(tmp_path):
    directory = tmp_path / "dev-c2pa"
    results: list[Credentials] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_dev_credentials(directory))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(r == results[0] for r in results)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev-c2pa"]

    # The loser of a race: its rename onto the winner's complete directory fails; it keeps theirs.
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    provenance._generate_dev_chain(directory)
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev-c2pa"]


def test_existing_empty_dir_is_filled_but_incomplete_dir_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ensure_dev_credentials(empty).development
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "root.pem").write_text("something else")
    with pytest.raises(LabelFailed) as err:
        ensure_dev_credentials(broken)
    assert err.value.code == "credentials_invalid" and str(broken) in err.value.message
    assert (broken / "root.pem").read_text() == "something else"


def _write_custom(tmp_path: Path, creds: Credentials) -> LabelSettings:
    (tmp_path / "chain.pem").write_bytes(creds.chain_pem)
    (tmp_path / "key.pem").write_bytes(creds.key_pem)
    (tmp_path / "anchors.pem").write_bytes(creds.trust_anchors_pem)
    return LabelSettings(cert_chain=tmp_path / "chain.pem", private_key=tmp_path / "key.pem",
                         trust_anchors=tmp_path / "anchors.pem")


def test_load_credentials_from_settings(tmp_path, dev_creds):
    settings = _write_custom(tmp_path, dev_creds)
    creds = load_credentials(settings, tmp_path / "unused-dev")
    assert not creds.development
    assert (creds.chain_pem, creds.key_pem, creds.trust_anchors_pem) == (
        dev_creds.chain_pem, dev_creds.key_pem, dev_creds.trust_anchors_pem)
    assert not (tmp_path / "unused-dev").exists()


def test_load_credentials_defaults_to_dev_chain(tmp_path):
    creds = load_credentials(LabelSettings(), tmp_path / "dev")
    assert creds.development and (tmp_path / "dev" / "leaf.key").is_file()


def test_load_credentials_missing_file_names_the_path(tmp_path, dev_creds):
    settings = _write_custom(tmp_path, dev_creds)
    missing = tmp_path / "nope" / "key.pem"
    with pytest.raises(LabelFailed) as err:
        load_credentials(settings.model_copy(update={"private_key": missing}), tmp_path / "dev")
    assert err.value.code == "credentials_missing"
    assert str(missing) in err.value.message and "label.private_key" in err.value.message


def test_load_credentials_needs_chain_and_key_together(tmp_path, dev_creds):
    settings = _write_custom(tmp_path, dev_creds).model_copy(update={"private_key": None})
    with pytest.raises(LabelFailed) as err:
        load_credentials(settings, tmp_path / "dev")
    assert err.value.code == "credentials_missing" and "label.private_key" in err.value.message


@pytest.mark.parametrize("what", ["garbage_key", "garbage_chain", "wrong_key"])
def test_load_credentials_rejects_bad_files(tmp_path, dev_creds, what):
    settings = _write_custom(tmp_path, dev_creds)
    if what == "garbage_key":
        (tmp_path / "key.pem").write_bytes(dev_creds.key_pem[:60] + b"!!" + dev_creds.key_pem[62:])
    elif what == "garbage_chain":
        (tmp_path / "chain.pem").write_text("not a certificate")
    else:
        other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        (tmp_path / "key.pem").write_bytes(other)
    with pytest.raises(LabelFailed) as err:
        load_credentials(settings, tmp_path / "dev")
    assert err.value.code == "credentials_invalid"
    assert str(tmp_path) in err.value.message


# ---- manifest --------------------------------------------------------------------------------------


def test_build_manifest_shape(photo_jpeg):
    resized = {"action": "c2pa.resized", "parameters": {"width": 576, "height": 1024}}
    m = build_manifest(_info(source_bytes=photo_jpeg, extra_actions=(resized,)), LabelSettings())
    assert m["claim_generator_info"] == [{"name": "alive", "version": "0.1.0"}]
    assert m["title"] == "my story"
    actions = m["assertions"][0]["data"]["actions"]
    assert actions[0]["action"] == "c2pa.created"
    assert actions[0]["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert actions[0]["softwareAgent"] == {"name": "alive svd engine"}
    assert actions[1] == resized
    (ingredient,) = m["ingredients"]
    assert ingredient["relationship"] == "inputTo" and ingredient["format"] == "image/jpeg"
    assert actions[0]["parameters"]["ingredientIds"] == [ingredient["label"]]
    assert "thumbnail" not in ingredient


def test_build_manifest_falls_back_to_settings():
    m = build_manifest(_info(title="", generator_name=""), LabelSettings(title="T", claim_generator="gen"))
    assert m["title"] == "T" and m["claim_generator_info"][0]["name"] == "gen"
    assert "ingredients" not in m


# ---- sign + verify ------------------------------------------------------------------------------


def test_sign_and_verify_trusted_and_untrusted(tmp_path, clip, dev_creds):
    dst = tmp_path / "out" / "signed.mp4"
    dst.parent.mkdir()
    summary = sign_video(clip, dst, _info(), dev_creds, LabelSettings())
    assert summary["state"] == "Trusted"
    assert summary["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert summary["manifest_label"].startswith("urn:c2pa:")
    assert 0 < summary["bytes_added"] < 8000
    assert summary["development_credentials"] is True
    assert clip.read_bytes() != dst.read_bytes() and sorted(os.listdir(dst.parent)) == ["signed.mp4"]

    trusted = verify(dst, dev_creds.trust_anchors_pem)
    assert trusted.state == "Trusted"
    assert trusted.failure_codes == []
    assert "signingCredential.untrusted" not in trusted.status_codes
    assert trusted.digital_source_type == TRAINED_ALGORITHMIC_MEDIA and trusted.ai_generated
    assert trusted.generator == "alive 0.1.0"
    assert trusted.software_agent == "alive svd engine"
    assert trusted.title == "my story"
    assert "alive dev signer" in trusted.signer
    assert trusted.to_dict()["ai_generated"] is True

    untrusted = verify(dst)
    assert untrusted.state == "Valid"
    assert untrusted.failure_codes == ["signingCredential.untrusted"]
    assert "signingCredential.untrusted" in untrusted.status_codes
    assert untrusted.ai_generated

    store = _reader_store(dst)  # the same facts straight from c2pa
    manifest = _active(store)
    assert manifest["claim_generator_info"][0]["name"] == "alive"
    assert manifest["claim_generator_info"][0]["version"] == "0.1.0"
    assert not [a for a in manifest["assertions"] if "thumbnail" in a["label"]]


def test_flipped_byte_in_mdat_is_invalid(tmp_path, clip, dev_creds):
    dst = tmp_path / "signed.mp4"
    sign_video(clip, dst, _info(), dev_creds, LabelSettings())
    data = bytearray(dst.read_bytes())
    boxes = _top_level_boxes(bytes(data))
    kinds = [k for k, _, _ in boxes]
    assert "uuid" in kinds and "mdat" in kinds  # the manifest lives in a top-level uuid box
    _, offset, size = next(b for b in boxes if b[0] == "mdat")
    data[offset + size // 2] ^= 0x01
    dst.write_bytes(bytes(data))
    report = verify(dst, dev_creds.trust_anchors_pem)
    assert report.state == "Invalid"
    assert "assertion.bmffHash.mismatch" in report.failure_codes


def test_appended_bytes_are_invalid(tmp_path, clip, dev_creds):
    dst = tmp_path / "signed.mp4"
    sign_video(clip, dst, _info(), dev_creds, LabelSettings())
    with open(dst, "ab") as fh:
        fh.write(struct.pack(">I4s", 16, b"free") + b"\0" * 8)  # a well-formed extra box
    report = verify(dst, dev_creds.trust_anchors_pem)
    assert report.state == "Invalid"
    assert "assertion.bmffHash.mismatch" in report.failure_codes


def test_appended_garbage_is_invalid(tmp_path, clip, dev_creds):
    dst = tmp_path / "signed.mp4"
    sign_video(clip, dst, _info(), dev_creds, LabelSettings())
    with open(dst, "ab") as fh:
        fh.write(b"trailing junk")
    report = verify(dst, dev_creds.trust_anchors_pem)
    assert report.state == "Invalid" and report.failure_codes and not report.ai_generated


def test_remux_drops_the_manifest(tmp_path, clip, dev_creds):
    dst = tmp_path / "signed.mp4"
    sign_video(clip, dst, _info(), dev_creds, LabelSettings())
    remuxed = tmp_path / "remuxed.mp4"
    _ffmpeg("-i", str(dst), "-c", "copy", str(remuxed))
    report = verify(remuxed, dev_creds.trust_anchors_pem)
    assert report.state == "NoManifest" and not report.ai_generated and report.digital_source_type is None


def test_unsigned_file_has_no_manifest(clip):
    report = verify(clip)
    assert report.state == "NoManifest" and report.status_codes == [] and report.signer is None


def test_verify_missing_file_raises(tmp_path):
    with pytest.raises(LabelFailed) as err:
        verify(tmp_path / "absent.mp4")
    assert err.value.code == "unreadable" and "absent.mp4" in err.value.message


def test_source_photo_thumbnail_is_off_by_default(tmp_path, clip, dev_creds, photo_jpeg):
    plain = tmp_path / "plain.mp4"
    summary = sign_video(clip, plain, _info(source_bytes=photo_jpeg, source_mime="image/jpeg"), dev_creds,
                         LabelSettings())
    (ingredient,) = _active(_reader_store(plain))["ingredients"]
    assert ingredient["relationship"] == "inputTo" and ingredient["format"] == "image/jpeg"
    assert "thumbnail" not in ingredient
    assert not verify(plain).has_ingredient_thumbnail and not summary["ingredient_thumbnail"]
    assert summary["bytes_added"] < 8000, summary  # a thumbnail of the photo would add tens of KB

    with_thumb = tmp_path / "thumb.mp4"
    summary_t = sign_video(clip, with_thumb, _info(source_bytes=photo_jpeg), dev_creds,
                           LabelSettings(include_thumbnail=True))
    (ingredient,) = _active(_reader_store(with_thumb))["ingredients"]
    assert ingredient["thumbnail"]["format"].startswith("image/")
    labels = [a["label"] for a in _active(_reader_store(with_thumb))["assertions"]]
    assert not [label for label in labels if label.startswith("c2pa.thumbnail.claim")]  # none of the video
    assert verify(with_thumb, dev_creds.trust_anchors_pem).has_ingredient_thumbnail
    assert summary_t["state"] == "Trusted"
    assert summary_t["bytes_added"] > summary["bytes_added"] + 10_000


def test_sign_in_place(clip, dev_creds):
    original = clip.read_bytes()
    summary = sign_video(clip, clip, _info(), dev_creds, LabelSettings())
    assert summary["state"] == "Trusted"
    assert clip.stat().st_size == len(original) + summary["bytes_added"]
    assert verify(clip, dev_creds.trust_anchors_pem).state == "Trusted"
    assert sorted(os.listdir(clip.parent)) == ["clip.mp4"]


def test_sign_keeps_file_mode(tmp_path, clip, dev_creds):
    clip.chmod(0o644)
    dst = tmp_path / "signed.mp4"
    sign_video(clip, dst, _info(), dev_creds, LabelSettings())
    assert stat.S_IMODE(dst.stat().st_mode) == 0o644


def _assert_no_output(dst: Path, before: list[str]) -> None:
    assert not dst.exists()
    assert sorted(os.listdir(dst.parent)) == before, "temporary file left behind"


def test_non_mp4_source_fails_cleanly(tmp_path, dev_creds, photo_jpeg):
    src = tmp_path / "photo.mp4"
    src.write_bytes(photo_jpeg)
    dst = tmp_path / "signed.mp4"
    with pytest.raises(LabelFailed) as err:
        sign_video(src, dst, _info(), dev_creds, LabelSettings())
    assert err.value.code == "sign_failed" and "c2pa_error" in err.value.details
    assert str(src) in err.value.message
    _assert_no_output(dst, ["photo.mp4"])


def test_corrupted_key_fails_cleanly(tmp_path, clip, dev_creds):
    bad = Credentials(dev_creds.chain_pem, dev_creds.key_pem[:60] + b"!!" + dev_creds.key_pem[62:],
                      dev_creds.trust_anchors_pem, development=False)
    dst = tmp_path / "signed.mp4"
    with pytest.raises(LabelFailed):
        sign_video(clip, dst, _info(), bad, LabelSettings())
    _assert_no_output(dst, ["clip.mp4"])


def test_key_not_matching_chain_fails_verification(tmp_path, clip, dev_creds):
    """A key that does not belong to the leaf is caught (c2pa's after-sign check or our re-read)."""
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    dst = tmp_path / "signed.mp4"
    with pytest.raises(LabelFailed) as err:
        sign_video(clip, dst, _info(), Credentials(dev_creds.chain_pem, other, dev_creds.trust_anchors_pem, False),
                   LabelSettings())
    assert err.value.code in {"sign_failed", "verify_failed"}
    _assert_no_output(dst, ["clip.mp4"])


def test_wrong_trust_anchor_fails_verification(tmp_path, clip, dev_creds):
    stranger = ensure_dev_credentials(tmp_path / "other-dev")
    creds = Credentials(dev_creds.chain_pem, dev_creds.key_pem, stranger.trust_anchors_pem, development=False)
    dst = tmp_path / "signed.mp4"
    with pytest.raises(LabelFailed) as err:
        sign_video(clip, dst, _info(), creds, LabelSettings())
    assert err.value.code == "verify_failed"
    assert "signingCredential.untrusted" in err.value.details["status_codes"]
    assert not dst.exists()


def test_custom_credentials_without_anchors_are_valid(tmp_path, clip, dev_creds):
    settings = _write_custom(tmp_path, dev_creds).model_copy(update={"trust_anchors": None})
    creds = load_credentials(settings, tmp_path / "dev")
    dst = tmp_path / "signed.mp4"
    summary = sign_video(clip, dst, _info(), creds, settings)
    assert summary["state"] == "Valid" and summary["development_credentials"] is False
    assert "signingCredential.untrusted" in summary["status_codes"]


def test_signed_clip_still_decodes(tmp_path, clip, dev_creds):
    dst = tmp_path / "signed.mp4"
    sign_video(clip, dst, _info(), dev_creds, LabelSettings())
    frames = list(imageio_ffmpeg.read_frames(str(dst)))
    assert len(frames) - 1 == 8  # first item is the metadata dict
