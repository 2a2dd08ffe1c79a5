"""Checking a file end to end: its embedded credential, its watermark, and, when the manifest is
gone or broken, the credential recovered from a manifest repository.

``check_file`` is what `alive verify` prints. The order of trust:
1. an embedded manifest that validates is the answer (exit 0), and its soft bindings are compared
   with the pixels (``watermark_agrees``);
2. otherwise the watermark's id is looked up (the local repository, then ``--resolver``), and a hit
   counts only when the copy's fingerprint matches the one signed into the recovered manifest;
3. the recovered manifest's own signature is validated (its content hash belongs to the original,
   not to the copy, so that one check is set apart: ``provenance.verify_manifest_store``).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pipeline import fingerprint as fp
from pipeline import watermark
from pipeline.errors import InputRejected, TransientError
from pipeline.manifests import ManifestRepository, Match, StoredManifest
from pipeline.provenance import NOT_MEDIA, VerifyReport, verify, verify_manifest_store
from pipeline.softbinding import Bindings, inspect_file, lookup

VALID = ("Valid", "Trusted")
RESOLVER_TIMEOUT_S = 10.0
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class FileCheck:
    file: Path
    embedded: VerifyReport
    bindings: Bindings | None  # None: not media, or not decodable as frames
    recovered: dict[str, Any] | None
    watermark_agrees: bool | None  # embedded manifest's watermark id == the pixels' (None: nothing to compare)

    @property
    def ok(self) -> bool:
        """Exit 0: an embedded credential that validates, or one recovered whose signature validates."""
        return self.embedded.state in VALID or bool(self.recovered and self.recovered["state"] in VALID)

    def to_dict(self) -> dict[str, Any]:
        embedded = None if self.embedded.state in ("NoManifest", NOT_MEDIA) else self.embedded.to_dict()
        mark = self.bindings.watermark if self.bindings else None
        return {
            **self.embedded.to_dict(),  # the embedded report's fields at the top, as before (compatibility)
            "embedded": embedded,
            "watermark": None if mark is None else {**mark.to_dict(), "agrees_with_manifest": self.watermark_agrees},
            "recovered": self.recovered,
            "ok": self.ok,
        }


def check_file(path: Path, trust_anchors_pem: bytes | None, repository: ManifestRepository | None = None,
               resolver_url: str | None = None, readers: Sequence[Any] = ()) -> FileCheck:
    """``readers``: watermark readers beside alive's own (``softbinding.detectors(settings)``)."""
    path = Path(path)
    embedded = verify(path, trust_anchors_pem)
    bindings = None
    if embedded.state != NOT_MEDIA:
        try:
            bindings = inspect_file(path, readers=readers)
        except InputRejected:
            bindings = None  # e.g. audio, PDF: credentials but no pictures to read
    agrees = _agrees(embedded, bindings)
    recovered = None
    if embedded.state not in VALID and bindings is not None:
        recovered = _recover(bindings, embedded, trust_anchors_pem, repository, resolver_url)
    return FileCheck(path, embedded, bindings, recovered, agrees)


def _agrees(embedded: VerifyReport, bindings: Bindings | None) -> bool | None:
    signed = [b["value"] for b in embedded.soft_bindings if b["alg"] == watermark.ALGORITHM]
    if not signed or bindings is None or not bindings.watermark.found:
        return None
    return watermark.binding_value(bindings.watermark.credential_id) in signed


def _recover(bindings: Bindings, embedded: VerifyReport, anchors: bytes | None,
             repository: ManifestRepository | None, resolver_url: str | None) -> dict[str, Any] | None:
    sources: list[tuple[str, ManifestRepository]] = []
    if repository is not None:
        sources.append(("local repository", repository))
    if resolver_url:
        sources.append((resolver_url, RemoteRepository(resolver_url)))
    for where, repo in sources:
        matches = lookup(bindings, repo)
        if matches:
            return _describe(matches[0], where, embedded, bindings, anchors)
    return None


def _describe(match: Match, where: str, embedded: VerifyReport, bindings: Bindings,
              anchors: bytes | None) -> dict[str, Any]:
    stored = match.manifest
    report = verify_manifest_store(stored.manifest_store, anchors)
    signed_print = _signed_fingerprint(report)
    lost = ["the embedded Content Credentials (the manifest was stripped: re-encoded, remuxed or uploaded "
            "to a platform that drops metadata)" if embedded.state == "NoManifest" else
            f"the embedded manifest's validity ({embedded.state}: the file changed after signing)"]
    lost.append("the exact bytes of the original (this copy's content hash differs from the signed one)")
    return {
        "state": report.state,
        "digital_source_type": report.digital_source_type,
        "ai_generated": report.ai_generated,
        "job_id": stored.job_id or None,
        "manifest_id": stored.manifest_id,
        "manifest_label": report.manifest_label,
        "title": report.title,
        "generator": report.generator,
        "software_agent": report.software_agent,
        "signer": report.signer,
        "signer_trust": report.signer_trust,
        "signed_at": report.signed_at or (stored.created_at.isoformat() if stored.created_at else None),
        "actions": report.actions,
        "found_by": match.by,
        "found_in": where,
        "similarity": round(match.similarity, 3),
        "fingerprint_in_manifest_matches": None if signed_print is None else
        fp.similarity(bindings.fingerprint, signed_print) >= fp.MATCH_THRESHOLD,
        "status_codes": report.status_codes,
        "lost": lost,
        "detail": report.detail,
    }


def _signed_fingerprint(report: VerifyReport) -> list[str] | None:
    """The fingerprint signed into the manifest's soft-binding assertion, as hex hashes."""
    for binding in report.soft_bindings:
        if binding["alg"] == fp.ALGORITHM:
            raw = base64.b64decode(binding["value"])
            size = fp.HASH_SIZE * fp.HASH_SIZE // 8  # bytes per frame hash
            return [raw[i:i + size].hex() for i in range(0, len(raw), size)]
    return None


class RemoteRepository:
    """A manifest repository reached over HTTP (another alive's ``/v1/credentials``, the shape of the
    C2PA Soft Binding Resolution API): by binding, then each manifest store by id. Read only; it
    answers no fingerprint-only queries (that would mean uploading the file)."""

    def __init__(self, base_url: str, timeout_s: float = RESOLVER_TIMEOUT_S):
        self.base = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def _get(self, path: str, limit: int) -> bytes:
        url = f"{self.base}{path}"
        if not url.startswith(("http://", "https://")):
            raise InputRejected(f"--resolver {self.base}: not an http(s) URL", code="bad_option")
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as reply:  # noqa: S310 (http(s) checked)
                data = reply.read(limit + 1)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return b""
            raise TransientError(f"the resolver {self.base} answered {exc.code} for {path}", code="resolver_error") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise TransientError(f"the resolver {self.base} did not answer: {exc}", code="resolver_unreachable") from exc
        if len(data) > limit:
            raise TransientError(f"the resolver {self.base} sent more than {limit} bytes for {path}", code="resolver_error")
        return data

    def by_binding(self, alg: str, value: str, limit: int = 10) -> list[StoredManifest]:
        query = urllib.parse.urlencode({"alg": alg, "value": value, "maxResults": limit})
        body = self._get(f"/matches/byBinding?{query}", 1024 * 1024)
        found = []
        for item in (json.loads(body) if body else {}).get("matches", [])[:limit]:
            stored = self.get(str(item.get("manifestId", "")))
            if stored is not None:
                found.append(stored)
        return found

    def get(self, manifest_id: str) -> StoredManifest | None:
        try:
            watermark.binding_value(manifest_id)  # a well-formed id only: it goes into a URL path
        except ValueError:
            return None
        store = self._get(f"/manifests/{manifest_id}", MAX_MANIFEST_BYTES)
        if not store:
            return None
        report = verify_manifest_store(store)
        return StoredManifest(manifest_id=manifest_id, job_id="", manifest_store=store,
                              manifest_label=report.manifest_label, watermark_alg=watermark.ALGORITHM,
                              watermark_value=watermark.binding_value(manifest_id), fingerprint_alg=fp.ALGORITHM,
                              fingerprint=_signed_fingerprint(report) or [],
                              digital_source_type=report.digital_source_type, title=report.title,
                              signer=report.signer, generator=report.generator)

    def by_fingerprint(self, fingerprint: list[str], limit: int = 10) -> list[Match]:
        return []

    def add(self, manifest: StoredManifest) -> None:
        raise NotImplementedError("a remote repository is read only")

    def forget_job(self, job_id: str) -> int:
        raise NotImplementedError("a remote repository is read only")
