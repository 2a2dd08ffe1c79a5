"""C2PA Content Credentials: build, sign and verify the manifest that says how a clip was made.

The ``c2pa.created`` action carries the IPTC digital source type of the engine that made the frames
(``Engine.digital_source_type``): ``trainedAlgorithmicMedia`` ("Created using Generative AI") for
SVD, ``algorithmicMedia`` ("Pure algorithmic media") for the classical motion engine, which uses no
trained model. Players and platforms read it to decide whether to show "AI-generated".

Signing is the last step of a job, after every ffmpeg step: a remux (even ``-c copy``) drops the
manifest, and any later byte change turns it "Invalid". Each signed file is re-read and verified
before it replaces the destination, so a label that does not validate is never published.

Credentials come from the settings (a production chain; a remote/KMS signer can replace
``_sign_to`` later) or, when none are configured, from a development chain generated once on this
machine. The development chain validates ("Trusted") only against its own root: nobody else trusts it.
``init_credentials`` (`alive credentials init DIR`) writes one such development chain as the three
files the settings name, for several hosts to share; ``make_dev_chain`` makes the chain for both.

c2pa objects (Signer, Context, Builder, Reader) are created inside each call and closed there: they
are native handles that do not survive ``fork()`` (Celery prefork workers), so nothing is cached at
module level.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import c2pa
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pipeline.errors import AliveError, ConfigError, LabelFailed, StorageFull, is_disk_full
from pipeline.settings import LabelSettings, Settings
from pipeline.storage import create_temp_beside, staged_path

log = logging.getLogger(__name__)

# IPTC Digital Source Type vocabulary (https://cv.iptc.org/newscodes/digitalsourcetype/). Which term a
# clip gets is decided by the engine that made its frames (``Engine.digital_source_type``), never here.
IPTC_DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/"
# "Created using Generative AI": created algorithmically using an AI model trained on captured content
TRAINED_ALGORITHMIC_MEDIA = IPTC_DIGITAL_SOURCE_TYPE + "trainedAlgorithmicMedia"
# "Pure algorithmic media": created purely by an algorithm not based on any sampled training data
ALGORITHMIC_MEDIA = IPTC_DIGITAL_SOURCE_TYPE + "algorithmicMedia"
# "Edited using Generative AI": augmentation, correction or enhancement using a Generative AI model
COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA = IPTC_DIGITAL_SOURCE_TYPE + "compositeWithTrainedAlgorithmicMedia"
# "Composite including generative AI elements": at least one of the elements is Generative AI
COMPOSITE_SYNTHETIC = IPTC_DIGITAL_SOURCE_TYPE + "compositeSynthetic"
_AI_SOURCE_TYPES = {TRAINED_ALGORITHMIC_MEDIA, COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA, COMPOSITE_SYNTHETIC}
_C2PA_DIGITAL_SOURCE_TYPE = "http://c2pa.org/digitalsourcetype/"
SOURCE_TYPE_NAMES = {  # the IPTC names (2024-09 release), shown beside the URI by `alive verify`
    "digitalCapture": "Digital capture sampled from real life",
    "computationalCapture": "Multi-frame computational capture sampled from real life",
    "humanEdits": "Human-edited media",
    "algorithmicallyEnhanced": "Algorithmically-altered media",
    "digitalCreation": "Digital creation",
    "dataDrivenMedia": "Data-driven media",
    "trainedAlgorithmicMedia": "Created using Generative AI",
    "algorithmicMedia": "Pure algorithmic media",
    "compositeWithTrainedAlgorithmicMedia": "Edited using Generative AI",
    "compositeSynthetic": "Composite including generative AI elements",
    "composite": "Composite of elements",
    "compositeCapture": "Composite of captured elements",
    "screenCapture": "Screen capture",
    "virtualRecording": "Virtual event recording",
}


def is_ai_generated(source_type: str | None) -> bool:
    """Whether an IPTC digital source type says a trained (generative AI) model made or edited the media."""
    return source_type in _AI_SOURCE_TYPES


def source_type_name(source_type: str | None) -> str | None:
    """The IPTC name of a digital source type URI ("Pure algorithmic media"), None when unknown."""
    if not source_type:
        return None
    return SOURCE_TYPE_NAMES.get(source_type.rstrip("/").rsplit("/", 1)[-1])

VIDEO_MIME = "video/mp4"
SOURCE_INGREDIENT_ID = "source-photo"
# The only failure code accepted after signing when no trust anchors are known: the signature and
# hashes are fine, the verifier just has no root to chain the certificate to.
UNTRUSTED = "signingCredential.untrusted"
# Long edge of the source-photo thumbnail when the operator opts in (settings.include_thumbnail);
# c2pa's default is 1024 px, more of the user's photo than a "thumbnail" needs.
INGREDIENT_THUMBNAIL_LONG_EDGE = 256

DEV_FILES = ("root.pem", "chain.pem", "leaf.key")
# Organisation named in every certificate of the development chain. Chains generated before this name
# said "alive development (untrusted)", which `alive verify` printed beside "Trusted" (true only on the
# machine whose root it is): such chains are still recognised, and reported under the current name.
DEV_ORGANIZATION = "alive development (not publicly trusted)"
_DEV_ORGANIZATIONS = (DEV_ORGANIZATION, "alive development (untrusted)")
_DEV_LEAF_DAYS = 3650  # without a timestamp authority the label turns Invalid when the leaf expires
_DEV_CA_DAYS = 36500
_warned_dev_dirs: set[Path] = set()


# --------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """PEM material for one signer. ``chain_pem`` is leaf then intermediate(s), never the root."""

    chain_pem: bytes
    key_pem: bytes
    trust_anchors_pem: bytes | None
    development: bool

    def __repr__(self) -> str:  # keep the private key out of logs and tracebacks
        return f"Credentials(development={self.development}, anchors={self.trust_anchors_pem is not None})"


def ensure_dev_credentials(directory: Path) -> Credentials:
    """Return the development chain stored in ``directory``, generating it on first use.

    The chain is root CA (pathlen 1) -> intermediate CA (pathlen 0) -> leaf (digitalSignature,
    emailProtection), ES256: the shape c2pa accepts (a self-signed signer, a missing EKU or AKI is
    refused). Generation writes a private temporary directory next to ``directory`` and renames it
    into place, so two processes racing end up sharing one complete chain, never a mix of two.
    """
    directory = Path(directory)
    if not _dev_files_present(directory):
        _generate_dev_chain(directory)
    creds = _read_dev_chain(directory)
    if directory not in _warned_dev_dirs:
        _warned_dev_dirs.add(directory)
        log.warning(
            "C2PA labels are signed with the DEVELOPMENT certificate chain in %s: it validates only "
            "against its own root and is trusted by nobody else. Configure label.cert_chain and "
            "label.private_key with a real signing certificate before publishing.",
            directory,
        )
    return creds


def load_credentials(settings: LabelSettings, dev_dir: Path) -> Credentials:
    """Credentials from ``settings`` when a chain and key are configured, else the dev chain.

    Configured files are checked here (readable, PEM, key matches the leaf, leaf not expired) so a
    misconfiguration fails with the offending path instead of an opaque error at signing time.
    Extra ``trust_anchors`` configured beside the dev chain are added to the dev root.
    """
    if settings.cert_chain is None and settings.private_key is None:
        creds = ensure_dev_credentials(dev_dir)
        if settings.trust_anchors is not None:
            extra = _read_configured(settings.trust_anchors, "label.trust_anchors")
            _parse_certs(extra, settings.trust_anchors)
            creds = dataclasses.replace(creds, trust_anchors_pem=(creds.trust_anchors_pem or b"") + extra)
        return creds
    if settings.cert_chain is None or settings.private_key is None:
        given, missing = (
            ("label.cert_chain", "label.private_key")
            if settings.private_key is None
            else ("label.private_key", "label.cert_chain")
        )
        raise LabelFailed(
            f"{given} is set but {missing} is not: configure both (leaf + intermediate PEM chain and "
            "its private key), or neither to use the development chain",
            code="credentials_missing",
            details={"missing": missing},
        )
    chain_pem = _read_configured(settings.cert_chain, "label.cert_chain")
    key_pem = _read_configured(settings.private_key, "label.private_key")
    anchors = None
    if settings.trust_anchors is not None:
        anchors = _read_configured(settings.trust_anchors, "label.trust_anchors")
        _parse_certs(anchors, settings.trust_anchors)
    certs = _parse_certs(chain_pem, settings.cert_chain)
    key = _parse_key(key_pem, settings.private_key)
    _check_leaf(certs[0], key, settings.cert_chain)
    return Credentials(chain_pem=chain_pem, key_pem=key_pem, trust_anchors_pem=anchors, development=False)


def _read_configured(path: Path, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise LabelFailed(
            f"{setting} points to {path}, which does not exist: fix the path or unset it",
            code="credentials_missing",
            details={"path": str(path), "setting": setting},
        ) from None
    except OSError as exc:
        raise LabelFailed(
            f"{setting} points to {path}, which cannot be read ({exc.strerror or exc}): check its permissions",
            code="credentials_invalid",
            details={"path": str(path), "setting": setting},
        ) from exc


def _parse_certs(pem: bytes, path: Path) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise LabelFailed(
            f"{path} holds no readable PEM certificate ({exc}): expected PEM 'BEGIN CERTIFICATE' blocks",
            code="credentials_invalid",
            details={"path": str(path)},
        ) from exc
    return certs


def _parse_key(pem: bytes, path: Path | None) -> Any:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        where = f"{path}" if path is not None else "the private key"
        raise LabelFailed(
            f"{where} is not an unencrypted PEM private key ({exc}): expected PKCS#8 or SEC1 PEM without a passphrase",
            code="credentials_invalid",
            details={"path": str(path)} if path is not None else {},
        ) from exc


def _check_leaf(leaf: x509.Certificate, key: Any, path: Path) -> None:
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(serialization.Encoding.DER, pub) != key.public_key().public_bytes(
        serialization.Encoding.DER, pub
    ):
        raise LabelFailed(
            f"the first certificate in {path} does not belong to the configured private key: "
            "put the leaf (signing) certificate first, then the intermediate(s)",
            code="credentials_invalid",
            details={"path": str(path)},
        )
    if leaf.not_valid_after_utc <= dt.datetime.now(dt.timezone.utc):
        raise LabelFailed(
            f"the signing certificate in {path} expired on {leaf.not_valid_after_utc:%Y-%m-%d}: renew it",
            code="credentials_invalid",
            details={"path": str(path)},
        )


def _signing_alg(key_pem: bytes) -> c2pa.C2paSigningAlg:
    """Pick the C2PA algorithm from the key type (ES256 for the dev chain's P-256 key)."""
    key = _parse_key(key_pem, None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        by_curve = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        name = by_curve.get(key.curve.name)
        if name is None:
            raise LabelFailed(
                f"EC curve {key.curve.name} is not allowed by C2PA: use P-256, P-384 or P-521",
                code="credentials_invalid",
            )
        return c2pa.C2paSigningAlg[name]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return c2pa.C2paSigningAlg.ED25519
    if isinstance(key, rsa.RSAPrivateKey):
        return c2pa.C2paSigningAlg.PS256
    raise LabelFailed(f"unsupported private key type {type(key).__name__}", code="credentials_invalid")


def _dev_files_present(directory: Path) -> bool:
    return all((directory / name).is_file() for name in DEV_FILES)


def _read_dev_chain(directory: Path) -> Credentials:
    try:
        chain, key, root = ((directory / n).read_bytes() for n in ("chain.pem", "leaf.key", "root.pem"))
    except OSError as exc:
        raise LabelFailed(
            f"the development C2PA chain in {directory} cannot be read ({exc}): delete the directory "
            "to have it generated again",
            code="credentials_invalid",
            details={"path": str(directory)},
        ) from exc
    return Credentials(chain_pem=chain, key_pem=key, trust_anchors_pem=root, development=True)


def _generate_dev_chain(directory: Path) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    # mkdtemp: mode 0700, on the same filesystem as the target so the rename is atomic.
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        root_pem, chain_pem, key_pem = make_dev_chain()
        (tmp / "root.pem").write_bytes(root_pem)
        (tmp / "chain.pem").write_bytes(chain_pem)
        fd = os.open(tmp / "leaf.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_pem)
        try:
            # rename(2) replaces an *empty* directory and fails on a non-empty one, so the first
            # process to finish wins and everyone else reads its files.
            os.rename(tmp, directory)
        except OSError:
            if not _dev_files_present(directory):
                raise LabelFailed(
                    f"{directory} exists but does not hold a complete development chain "
                    f"({', '.join(DEV_FILES)}): move it away so it can be generated",
                    code="credentials_invalid",
                    details={"path": str(directory)},
                ) from None
            return
        log.info("generated a development C2PA certificate chain in %s", directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class DevChain(NamedTuple):
    """A development chain as PEM: what `ensure_dev_credentials` and `init_credentials` write."""

    root_pem: bytes
    chain_pem: bytes  # leaf then intermediate: what the signer sends
    key_pem: bytes  # the leaf's private key, PKCS#8


def make_dev_chain() -> DevChain:
    """A fresh ES256 development chain: root CA (pathlen 1) -> intermediate CA (pathlen 0) -> leaf.

    Every certificate, the leaf's subject included, names the organisation ``DEV_ORGANIZATION``
    ("alive development (not publicly trusted)"), so a verifier sees it is a development credential.
    """
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)  # tolerate small clock skew
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]
    root_key, inter_key, leaf_key = keys

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEV_ORGANIZATION),
            ]
        )

    def cert(subject: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool, pathlen: int | None, days: int):
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=pathlen), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        )
        if ca:
            usage = dict(key_cert_sign=True, crl_sign=True, digital_signature=False)
        else:
            usage = dict(key_cert_sign=False, crl_sign=False, digital_signature=True)
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
            )
        builder = builder.add_extension(
            x509.KeyUsage(
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False, **usage,
            ),
            critical=True,
        )
        return builder.sign(issuer_key, hashes.SHA256())

    root = cert("alive dev root CA", root_key, "alive dev root CA", root_key, ca=True, pathlen=1, days=_DEV_CA_DAYS)
    inter = cert("alive dev intermediate CA", inter_key, "alive dev root CA", root_key, ca=True, pathlen=0,
                 days=_DEV_CA_DAYS)
    leaf = cert("alive dev signer", leaf_key, "alive dev intermediate CA", inter_key, ca=False, pathlen=None,
                days=_DEV_LEAF_DAYS)
    pem = serialization.Encoding.PEM
    key_pem = leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return DevChain(root.public_bytes(pem), leaf.public_bytes(pem) + inter.public_bytes(pem), key_pem)


@dataclass(frozen=True)
class CredentialFiles:
    """Where `init_credentials` put a chain: the files ``label.cert_chain``, ``label.private_key``
    and ``label.trust_anchors`` name."""

    cert_chain: Path  # chain.pem: leaf then intermediate
    private_key: Path  # key.pem: the leaf's key, mode 0600
    trust_anchors: Path  # anchors.pem: the root, to verify with

    @classmethod
    def in_directory(cls, directory: Path) -> "CredentialFiles":
        directory = Path(directory)
        return cls(directory / "chain.pem", directory / "key.pem", directory / "anchors.pem")

    def paths(self) -> tuple[Path, Path, Path]:
        return self.cert_chain, self.private_key, self.trust_anchors

    def env(self) -> dict[str, str]:
        """The environment that points a host's settings at these files (ALIVE_LABEL__CERT_CHAIN ...)."""
        config = Settings.model_config
        prefix = f"{config['env_prefix']}label{config['env_nested_delimiter']}".upper()
        return {prefix + field.upper(): str(getattr(self, field))
                for field in ("cert_chain", "private_key", "trust_anchors")}


def init_credentials(directory: Path, *, force: bool = False) -> CredentialFiles:
    """Write a new development chain into ``directory`` as chain.pem, key.pem (0600) and anchors.pem.

    Refuses with ``ConfigError`` (code ``credentials_exist``) when any of the three is there already,
    unless ``force``. Each file is written to a temporary file beside it; the three are renamed into
    place only after all three are written, so a failed write leaves the previous files (or none).
    No space left raises ``StorageFull``; another ``OSError``, ``ConfigError`` (credentials_unwritable).
    """
    files = CredentialFiles.in_directory(Path(directory).expanduser().resolve())
    present = [p for p in files.paths() if p.exists() or p.is_symlink()]
    if present and not force:
        raise ConfigError(
            f"{', '.join(str(p) for p in present)} already exist{'s' if len(present) == 1 else ''}: nothing "
            "was written. Point the settings at the existing files, or pass --force to replace them with a "
            "new chain (labels signed with the old one then verify only against the old anchors.pem)",
            code="credentials_exist", details={"paths": [str(p) for p in present]},
        )
    chain = make_dev_chain()
    contents = {files.cert_chain: chain.chain_pem, files.private_key: chain.key_pem,
                files.trust_anchors: chain.root_pem}
    try:
        files.cert_chain.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:  # all three are renamed into place on leaving, or none
            for path, data in contents.items():
                tmp = stack.enter_context(staged_path(path, ".tmp"))
                if path == files.private_key:
                    os.chmod(tmp, 0o600)  # before the key is in it
                tmp.write_bytes(data)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the credentials into {files.cert_chain.parent}: {exc.strerror or exc}; check "
            "that it is a folder you may write",
            code="credentials_unwritable", details={"path": str(files.cert_chain.parent)},
        ) from exc
    log.info("wrote a development C2PA certificate chain to %s", files.cert_chain.parent)
    return files


# --------------------------------------------------------------------------------------------
# Manifest and signing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelInfo:
    """What the label says about one clip. Empty ``title``/``generator_name`` fall back to settings."""

    title: str
    generator_name: str
    generator_version: str
    software_agent: str
    digital_source_type: str  # IPTC term for what made the frames: the engine's, see Engine.digital_source_type
    source_mime: str | None = None
    source_bytes: bytes | None = None
    extra_actions: tuple[dict, ...] = ()
    # c2pa.soft-binding assertions (pipeline/softbinding.py): the watermark and the fingerprint
    soft_bindings: tuple[dict, ...] = ()


def build_manifest(info: LabelInfo, settings: LabelSettings) -> dict:
    """The whole manifest definition, in one place.

    The first action is ``c2pa.created`` with the IPTC digital source type of the engine that made
    the frames (``trainedAlgorithmicMedia`` for a trained model such as SVD: players and platforms
    read it to show "AI-generated"; ``algorithmicMedia`` for the classical motion engine). c2pa-rs
    requires the field but accepts any string, so it is checked here to be a vocabulary URI. The
    source photo, when given, is an ``inputTo`` ingredient (``parentOf`` is refused for a created
    asset); its bytes are attached by ``sign_video``, and no thumbnail of it is embedded unless
    ``settings.include_thumbnail``.
    """
    source_type = info.digital_source_type
    if not isinstance(source_type, str) or not source_type.startswith(
            (IPTC_DIGITAL_SOURCE_TYPE, _C2PA_DIGITAL_SOURCE_TYPE)) or source_type.endswith("/"):
        raise LabelFailed(
            f"digital source type {source_type!r} is not a term of the IPTC vocabulary "
            f"({IPTC_DIGITAL_SOURCE_TYPE}...): say what made the frames, e.g. {TRAINED_ALGORITHMIC_MEDIA}",
            code="bad_source_type", details={"digital_source_type": str(source_type)},
        )
    created: dict[str, Any] = {
        "action": "c2pa.created",
        "digitalSourceType": source_type,
        "softwareAgent": {"name": info.software_agent},
    }
    manifest: dict[str, Any] = {
        "claim_generator_info": [
            {"name": info.generator_name or settings.claim_generator, "version": info.generator_version}
        ],
        "title": info.title or settings.title,
        "format": VIDEO_MIME,
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [created, *[dict(a) for a in info.extra_actions]]}},
            *[dict(a) for a in info.soft_bindings],
        ],
    }
    if info.source_bytes is not None:
        created["parameters"] = {"ingredientIds": [SOURCE_INGREDIENT_ID]}
        manifest["ingredients"] = [
            {
                "title": "source photo",
                "format": info.source_mime or _sniff_image_mime(info.source_bytes),
                "relationship": "inputTo",
                "label": SOURCE_INGREDIENT_ID,
            }
        ]
    return manifest


def _builder_settings(settings: LabelSettings) -> dict:
    """c2pa Context settings for signing (keys as in c2pa-rs 0.91 ``BuilderSettings``)."""
    return {
        "builder": {
            # Off by default: on, c2pa embeds a JPEG of every ingredient, i.e. the user's photo.
            # c2pa-rs makes no claim thumbnail for MP4 either way.
            "thumbnail": {"enabled": settings.include_thumbnail, "long_edge": INGREDIENT_THUMBNAIL_LONG_EDGE},
            # Hash free/skip boxes too: nothing in the file may change without breaking the label
            # (also avoids the informational assertion.bmffHash.additionalExclusionsPresent).
            "bmff_hash_exclude_free_and_skip_boxes": False,
        },
        **_verify_settings(None),
    }


def _verify_settings(trust_anchors_pem: bytes | None) -> dict:
    """No network while reading: no remote manifests, no OCSP; trust only the given anchors."""
    config: dict[str, Any] = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
    if trust_anchors_pem:
        config["trust"] = {"user_anchors": trust_anchors_pem.decode("utf-8", errors="replace")}
    return config


def sign_video(src: Path, dst: Path, info: LabelInfo, credentials: Credentials, settings: LabelSettings) -> dict:
    """``sign_video_keeping_store`` without the manifest store's bytes."""
    return sign_video_keeping_store(src, dst, info, credentials, settings)[0]


def sign_video_keeping_store(src: Path, dst: Path, info: LabelInfo, credentials: Credentials,
                             settings: LabelSettings) -> tuple[dict, bytes]:
    """Sign the MP4 ``src`` into ``dst`` (which may be ``src``), verify it, then move it into place.

    Signing writes a temporary file next to ``dst``; it replaces ``dst`` only after a fresh Reader
    found it "Valid" or "Trusted" with no failure code (``signingCredential.untrusted`` is allowed
    only when no trust anchors are known). On any failure ``dst`` is untouched and no temporary
    file is left; no space left to write it raises ``StorageFull`` (disk_full), other failures
    ``LabelFailed``. Returns a summary for the job report and the signed manifest store (the
    ``.c2pa`` bytes embedded in the file, for the manifest repository).
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise LabelFailed(f"cannot sign {src}: no such file", code="unreadable", details={"path": str(src)})
    manifest = build_manifest(info, settings)
    alg = _signing_alg(credentials.key_pem)
    started = time.perf_counter()
    try:
        tmp = create_temp_beside(dst, ".c2pa-tmp")
    except OSError as exc:
        raise _unwritable(dst, exc) from exc
    try:
        with tmp.open("w+b") as out:
            store = _sign_to(src, out, manifest, info, credentials, settings, alg)
            out.flush()
            os.fsync(out.fileno())
        signed_at = time.perf_counter()
        report = verify(tmp, credentials.trust_anchors_pem)
        _require_valid(report, src, credentials.trust_anchors_pem is not None)
        verified_at = time.perf_counter()
        bytes_added = tmp.stat().st_size - src.stat().st_size
        os.chmod(tmp, stat.S_IMODE(src.stat().st_mode))  # keep the video's mode
        os.replace(tmp, dst)
    except OSError as exc:
        raise _unwritable(dst, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "manifest_label": report.manifest_label,
        "state": report.state,
        "status_codes": report.status_codes,
        "digital_source_type": report.digital_source_type,
        "ai_generated": report.ai_generated,
        "signer": report.signer,
        "signer_trust": report.signer_trust,
        "development_credentials": credentials.development,
        "timestamped": settings.tsa_url is not None,
        "ingredient_thumbnail": report.has_ingredient_thumbnail,
        "bytes_added": bytes_added,
        "sign_seconds": round(signed_at - started, 4),
        "verify_seconds": round(verified_at - signed_at, 4),
        "seconds": round(verified_at - started, 4),
    }, store


def _unwritable(dst: Path, exc: OSError) -> AliveError:
    """Why the signed file could not be written: ``StorageFull`` (disk_full, retried) when there was
    no space left, else ``LabelFailed`` (unwritable)."""
    if is_disk_full(exc):
        return StorageFull.from_os_error(exc, f"the signed video {dst.name}")
    return LabelFailed(
        f"cannot write the signed video to {dst}: {exc.strerror or exc}; check the directory exists and has space",
        code="unwritable",
        details={"path": str(dst)},
    )


def _sign_to(src: Path, out: Any, manifest: dict, info: LabelInfo, credentials: Credentials,
             settings: LabelSettings, alg: c2pa.C2paSigningAlg) -> bytes:
    """Run the c2pa Builder: ``src`` -> ``out`` (an open w+b file); returns the manifest store's
    bytes. Native errors -> LabelFailed."""
    definition = dict(manifest)
    ingredients = definition.pop("ingredients", [])  # attached below with their bytes
    try:
        signer_info = c2pa.C2paSignerInfo(alg, credentials.chain_pem, credentials.key_pem, settings.tsa_url)
        with (
            c2pa.Signer.from_info(signer_info) as signer,
            c2pa.Context.from_dict(_builder_settings(settings)) as context,
            c2pa.Builder(definition, context=context) as builder,
        ):
            for ingredient in ingredients:
                builder.add_ingredient(ingredient, ingredient["format"], io.BytesIO(info.source_bytes or b""))
            with open(src, "rb") as source:
                return bytes(builder.sign(signer, VIDEO_MIME, source, out))
    except c2pa.C2paError as exc:
        raise LabelFailed(
            f"C2PA signing of {src} failed: {exc}. Check that it is a complete MP4 and that the "
            "certificate chain and key are valid",
            code="sign_failed",
            details={"path": str(src), "c2pa_error": str(exc)},
        ) from exc
    except OSError as exc:
        raise LabelFailed(f"cannot read {src} for signing: {exc}", code="unreadable",
                          details={"path": str(src)}) from exc


def _require_valid(report: "VerifyReport", src: Path, have_anchors: bool) -> None:
    allowed = set() if have_anchors else {UNTRUSTED}
    failures = [c for c in report.failure_codes if c not in allowed]
    if report.state not in ("Valid", "Trusted") or failures:
        hint = (
            "the signing chain does not lead to the configured trust anchors"
            if UNTRUSTED in failures
            else "the signed file did not validate"
        )
        raise LabelFailed(
            f"C2PA label on {src} failed verification right after signing: state {report.state}, "
            f"failures {failures or report.status_codes}; {hint}",
            code="verify_failed",
            details={"state": report.state, "status_codes": report.status_codes, "detail": report.detail},
        )


def _sniff_image_mime(data: bytes) -> str:
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise LabelFailed(
        "the source photo given as C2PA ingredient is not JPEG, PNG or WebP: pass source_mime",
        code="bad_ingredient",
    )


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyReport:
    """What a verifier sees in a file. ``state`` is c2pa's validation state, or "NoManifest"
    (no Content Credentials at all), "Unsupported" (a format c2pa cannot read) or "NotMedia" (the
    file is no video or image at all: empty, text, a JSON error body ...; ``detail`` says what)."""

    state: str
    status_codes: list[str]
    digital_source_type: str | None
    generator: str | None
    software_agent: str | None
    title: str | None
    signer: str | None
    has_ingredient_thumbnail: bool
    ai_generated: bool
    manifest_label: str | None = None
    failure_codes: list[str] = dataclasses.field(default_factory=list)
    detail: str | None = None
    actions: list[dict] = dataclasses.field(default_factory=list)  # [{action, description}] as signed
    # What the file's first bytes are: mp4 (any ISO-BMFF), jpeg, png, webp, gif, ... or, for
    # "NotMedia": empty, json, html, text, binary.
    content: str | None = None
    # Why the signer is (not) trusted, in words that never contradict ``state``.
    signer_trust: str | None = None
    development_certificate: bool = False  # signed with an alive development chain
    # c2pa.soft-binding assertions as signed: [{alg, value}] (the watermark id, the fingerprint)
    soft_bindings: list[dict] = dataclasses.field(default_factory=list)
    signed_at: str | None = None  # the signature's time, when the manifest says

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


NOT_MEDIA = "NotMedia"
NOT_MEDIA_CODE = "not_a_video"  # the error code `alive verify` prints for a "NotMedia" file
_SNIFF_BYTES = 512
# Top-level ISO-BMFF box types a file can start with (MP4, MOV, M4A, HEIF, AVIF): "ftyp" nearly always.
_BMFF_FIRST_BOXES = {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"uuid", b"pnot"}
_TEXT_CONTENT = ("json", "html", "xml", "text")


def verify(path: Path, trust_anchors_pem: bytes | None = None) -> VerifyReport:
    """Read and validate the Content Credentials of ``path``; offline (no remote manifest, no OCSP).

    A file without a manifest gives state "NoManifest"; one that is no media file at all (empty,
    JSON, HTML or other text, or bytes no reader recognises) gives "NotMedia" with what it is in
    ``detail``; a media file c2pa cannot parse gives "Invalid" with the parser's message in
    ``detail``. Only a missing or unreadable file raises.
    """
    path = Path(path)
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise LabelFailed(
            f"cannot verify {path}: {exc.strerror or exc}", code="unreadable", details={"path": str(path)}
        ) from exc
    with fh:
        try:
            head = fh.read(_SNIFF_BYTES)
            size = os.fstat(fh.fileno()).st_size
            fh.seek(0)
        except OSError as exc:
            raise LabelFailed(f"cannot verify {path}: {exc.strerror or exc}", code="unreadable",
                              details={"path": str(path)}) from exc
        content, mime = sniff_media(head, size)
        if content == "empty" or content in _TEXT_CONTENT:
            return _not_media(path, content, head, size)
        try:
            with (
                c2pa.Context.from_dict(_verify_settings(trust_anchors_pem)) as context,
                c2pa.Reader(mime or _mime_for(path), fh, context=context) as reader,
            ):
                store = json.loads(reader.json())
        except c2pa.C2paError.ManifestNotFound:
            return _empty_report("NoManifest", content=content)
        except c2pa.C2paError as exc:
            if content == "binary":  # no media signature, and c2pa could not read it either
                return _not_media(path, content, head, size)
            if isinstance(exc, c2pa.C2paError.NotSupported):
                return _empty_report("Unsupported", detail=str(exc), content=content)
            return _empty_report("Invalid", codes=[_error_code(exc)], detail=str(exc), content=content)
    return _report_from_store(store, content)


HASH_MISMATCH_CODES = ("assertion.bmffHash.mismatch", "assertion.dataHash.mismatch", "assertion.boxesHash.mismatch")


def verify_manifest_store(store: bytes, trust_anchors_pem: bytes | None = None) -> VerifyReport:
    """Validate a manifest store on its own (one recovered from the repository for a copy).

    Without the original bytes its hard binding cannot match (c2pa says ``assertion.*Hash.mismatch``):
    that code is set apart, and the state is the signature's and the claim's own: "Trusted" or
    "Valid" when nothing else fails, "Invalid" otherwise. ``detail`` says the content hash was not
    checked."""
    try:
        with (
            c2pa.Context.from_dict(_verify_settings(trust_anchors_pem)) as context,
            c2pa.Reader("application/c2pa", io.BytesIO(store), context=context) as reader,
        ):
            doc = json.loads(reader.json())
    except c2pa.C2paError as exc:
        return _empty_report("Invalid", codes=[_error_code(exc)], detail=str(exc), content="c2pa")
    for key in ("validation_status",):
        doc[key] = [v for v in doc.get(key) or [] if v.get("code") not in HASH_MISMATCH_CODES]
    results = (doc.get("validation_results") or {}).get("activeManifest") or {}
    if isinstance(results.get("failure"), list):
        results["failure"] = [v for v in results["failure"] if v.get("code") not in HASH_MISMATCH_CODES]
    failures, _ = _status_codes(doc)
    untrusted = "signingCredential.untrusted" in failures
    if not [c for c in failures if c != "signingCredential.untrusted"]:
        doc["validation_state"] = "Valid" if untrusted or not trust_anchors_pem else "Trusted"
    else:
        doc["validation_state"] = "Invalid"
    report = _report_from_store(doc, "c2pa")
    return dataclasses.replace(report, detail="the manifest's own signature and claim were checked; its content "
                                              "hash belongs to the original file, not to this copy")


def sniff_media(head: bytes, size: int) -> tuple[str, str | None]:
    """(kind, MIME type or None) of a file from its first bytes and its size.

    Media kinds: mp4 (any ISO-BMFF: MP4, MOV, M4A, HEIF, AVIF), jpeg, png, webp, gif, tiff, avi,
    wav, mp3, flac, pdf, svg, c2pa, zip. Not media: empty, json, html, xml, text, and binary (bytes
    no signature here matches; c2pa still gets a try, it reads a few more container formats).
    """
    if size == 0 or not head:
        return "empty", None
    if len(head) >= 8 and head[4:8] in _BMFF_FIRST_BOXES:
        if head[4:8] == b"ftyp":
            brand = head[8:12]
            if brand == b"qt  ":
                return "mp4", "video/quicktime"
            if brand in (b"avif", b"avis"):
                return "mp4", "image/avif"
            if brand in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"):
                return "mp4", "image/heic"
            if brand in (b"M4A ", b"M4B "):
                return "mp4", "audio/mp4"
        return "mp4", VIDEO_MIME
    if len(head) >= 8 and head[4:8] == b"jumb":
        return "c2pa", "application/c2pa"
    signatures = (
        (b"\xff\xd8\xff", "jpeg", "image/jpeg"),
        (b"\x89PNG\r\n\x1a\n", "png", "image/png"),
        (b"GIF87a", "gif", "image/gif"),
        (b"GIF89a", "gif", "image/gif"),
        (b"II*\x00", "tiff", "image/tiff"),
        (b"MM\x00*", "tiff", "image/tiff"),
        (b"ID3", "mp3", "audio/mpeg"),
        (b"fLaC", "flac", "audio/flac"),
        (b"%PDF-", "pdf", "application/pdf"),
        (b"PK\x03\x04", "zip", None),  # EPUB, Office, OpenDocument: c2pa tells them apart by extension
    )
    for magic, kind, mime in signatures:
        if head.startswith(magic):
            return kind, mime
    if head[:4] == b"RIFF" and len(head) >= 12:
        riff = {b"WEBP": ("webp", "image/webp"), b"AVI ": ("avi", "video/x-msvideo"),
                b"WAVE": ("wav", "audio/wav")}.get(head[8:12])
        if riff:
            return riff
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06:
        return "mp3", "audio/mpeg"  # an MPEG audio frame header without an ID3 tag
    text = _as_text(head)
    if text is None:
        return "binary", None
    start = text.lstrip("\ufeff \t\r\n")[:256].lower()
    if start.startswith("<svg") or (start.startswith("<?xml") and "<svg" in text.lower()):
        return "svg", "image/svg+xml"
    if start.startswith(("{", "[")):
        return "json", None
    if start.startswith(("<!doctype html", "<html", "<head", "<body")):
        return "html", None
    if start.startswith("<"):
        return "xml", None
    return "text", None


def _as_text(head: bytes) -> str | None:
    """``head`` decoded as UTF-8 when it looks like text (no NUL, few control characters), else None."""
    if b"\x00" in head:
        return None
    text = head.decode("utf-8", errors="replace")
    undecodable = text.count("\ufffd")  # up to 3: a multi-byte character cut at the end of ``head``
    controls = sum(1 for ch in text if ord(ch) < 32 and ch not in "\t\r\n\f")
    if not text or undecodable > 3 or controls > len(text) // 50:
        return None
    return text.rstrip("\ufffd")


def _not_media(path: Path, content: str, head: bytes, size: int) -> VerifyReport:
    if content == "empty":
        why = "it is empty (0 bytes): whatever wrote it (a download, a copy) got nothing or did not finish"
    elif content == "binary":
        why = f"its {size} bytes start with {head[:8].hex(' ')}, which is no video or image format alive can read"
    else:
        snippet = " ".join((_as_text(head) or "").split())
        snippet = snippet[:48] + "..." if len(snippet) > 48 else snippet
        what = {"json": "JSON", "html": "an HTML page", "xml": "XML", "text": "text"}[content]
        why = f"it is {what} ({size} bytes) starting {snippet!r}"
        if content == "json":
            why += (", which looks like a JSON error body, e.g. from downloading a video that was not ready: "
                    "check the job's status, then download the video again")
        elif content == "html":
            why += ", which looks like an error or login page saved in place of the video: download it again"
    return _empty_report(NOT_MEDIA, detail=f"{path.name} is not a video or image: {why}", content=content)


def _mime_for(path: Path) -> str | None:
    """MIME from the extension for video files; None lets c2pa detect the format from the bytes."""
    return {".mp4": VIDEO_MIME, ".m4v": VIDEO_MIME, ".mov": "video/quicktime"}.get(path.suffix.lower())


def _error_code(exc: c2pa.C2paError) -> str:
    # c2pa-python's typed errors read "Kind: message"; keep the kind as a stable code.
    kind = str(exc).split(":", 1)[0].strip()
    return f"c2pa.error.{kind}" if kind and " " not in kind else "c2pa.error"


def _empty_report(state: str, *, codes: list[str] | None = None, detail: str | None = None,
                  content: str | None = None) -> VerifyReport:
    codes = codes or []
    return VerifyReport(
        state=state, status_codes=codes, digital_source_type=None, generator=None, software_agent=None,
        title=None, signer=None, has_ingredient_thumbnail=False, ai_generated=False,
        failure_codes=list(codes), detail=detail, content=content,
    )


def _report_from_store(store: dict, content: str | None = None) -> VerifyReport:
    label = store.get("active_manifest")
    manifest = store.get("manifests", {}).get(label) or {}
    failures, informational = _status_codes(store)
    created = _first_action_with_source_type(manifest)
    source_type = created.get("digitalSourceType") if created else None
    agent = created.get("softwareAgent") if created else None
    if isinstance(agent, dict):
        agent = agent.get("name")
    generators = manifest.get("claim_generator_info") or []
    generator = None
    if generators and isinstance(generators[0], dict):
        generator = " ".join(str(generators[0][k]) for k in ("name", "version") if generators[0].get(k))
    elif manifest.get("claim_generator"):
        generator = manifest["claim_generator"]
    state = store.get("validation_state") or ("Invalid" if failures else "Valid")
    signer, development, trust = _signer(manifest.get("signature_info") or {}, state, failures)
    actions = _actions(manifest)
    return VerifyReport(
        state=state,
        status_codes=failures + informational,
        digital_source_type=source_type,
        generator=generator,
        software_agent=agent if isinstance(agent, str) else None,
        title=manifest.get("title"),
        signer=signer,
        has_ingredient_thumbnail=any("thumbnail" in ing for ing in manifest.get("ingredients", [])),
        # AI-generated when any action says a trained model made or edited the media
        ai_generated=any(is_ai_generated(a.get("digitalSourceType")) for a in actions),
        manifest_label=label,
        failure_codes=failures,
        actions=actions,
        content=content,
        signer_trust=trust,
        development_certificate=development,
        soft_bindings=_soft_bindings(manifest),
        signed_at=(manifest.get("signature_info") or {}).get("time"),
    )


def _soft_bindings(manifest: dict) -> list[dict]:
    found = []
    for assertion in manifest.get("assertions") or []:
        if assertion.get("label") == "c2pa.soft-binding" and isinstance(assertion.get("data"), dict):
            data = assertion["data"]
            for block in data.get("blocks") or []:
                if isinstance(block, dict) and isinstance(block.get("value"), str):
                    found.append({"alg": str(data.get("alg")), "value": block["value"]})
    return found


def _signer(sig: dict, state: str, failures: list[str]) -> tuple[str | None, bool, str | None]:
    """(who signed, whether it is an alive development chain, why it is or is not trusted).

    The trust words follow the validation state, so the two never disagree: a development chain is
    "Trusted" only where its own root is a trust anchor, and that is what it says then.
    """
    common_name, issuer = sig.get("common_name"), sig.get("issuer")
    development = issuer in _DEV_ORGANIZATIONS
    if development:
        issuer = DEV_ORGANIZATION  # chains made before the rename say "(untrusted)" here
    signer = " / ".join(str(v) for v in (common_name, issuer) if v) or None
    if signer is None:
        return None, False, None
    if state == "Trusted":
        trust = ("trusted on this machine only: an alive development certificate; its root is a trust "
                 "anchor here, and nobody else trusts it" if development
                 else "trusted: the certificate chains to a trust anchor given to the verifier")
    elif UNTRUSTED in failures:
        trust = ("not trusted here: an alive development certificate whose root is no trust anchor here "
                 "(only the machine that made it trusts it)" if development
                 else "not trusted: the certificate chains to no trust anchor given to the verifier")
    elif state == "Valid":
        trust = "not checked: no trust anchors were given to the verifier"
    else:
        trust = "not established: the credential does not validate"
    return signer, development, trust


def _actions(manifest: dict) -> list[dict]:
    """Every action the manifest lists, with its description: what was done to the asset, in order."""
    found = []
    for assertion in manifest.get("assertions", []):
        if str(assertion.get("label", "")).startswith("c2pa.actions"):
            for action in (assertion.get("data") or {}).get("actions", []):
                description = (action.get("parameters") or {}).get("description")
                found.append({"action": action.get("action"), "description": description,
                              **({"digitalSourceType": action["digitalSourceType"]}
                                 if action.get("digitalSourceType") else {})})
    return found


def _status_codes(store: dict) -> tuple[list[str], list[str]]:
    """(failure codes, informational codes) of the active manifest and its ingredients."""
    results = store.get("validation_results")
    if not results:  # older readers: a flat list of failures only
        return [s["code"] for s in store.get("validation_status") or [] if "code" in s], []
    failures: list[str] = []
    informational: list[str] = []
    groups = [results.get("activeManifest") or {}]
    groups += [d.get("validationDeltas") or {} for d in results.get("ingredientDeltas") or []]
    for group in groups:
        failures += [s["code"] for s in group.get("failure") or [] if "code" in s]
        informational += [s["code"] for s in group.get("informational") or [] if "code" in s]
    return failures, informational


def _first_action_with_source_type(manifest: dict) -> dict | None:
    for assertion in manifest.get("assertions", []):
        if str(assertion.get("label", "")).startswith("c2pa.actions"):
            for action in (assertion.get("data") or {}).get("actions", []):
                if action.get("digitalSourceType"):
                    return action
    return None


def default_trust_anchors(settings) -> bytes | None:
    """Roots to verify against when none are given: the configured ones, else this machine's dev root."""
    if settings.label.trust_anchors is not None:
        return Path(settings.label.trust_anchors).read_bytes()
    dev_root = settings.dev_credentials_dir / "root.pem"
    return dev_root.read_bytes() if dev_root.is_file() else None
