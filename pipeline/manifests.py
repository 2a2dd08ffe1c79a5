"""The manifest repository's shape: what is kept of every signed label, and how it is found again.

Durable Content Credentials (C2PA 2.x) are three things: the manifest embedded in the file (hard
binding), a soft binding that survives re-encoding (alive's invisible watermark, carrying the
credential id, and a perceptual fingerprint of the frames), and a repository that finds the
manifest from the soft binding once a platform stripped the metadata. This module is the
repository's contract; ``service/manifests.py`` keeps it in the job database (SQLite by default,
PostgreSQL when configured), wired by the front doors: the library never imports the service layer.

A stored manifest is small (a few KB) and is the record of provenance: it outlives the video.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class StoredManifest:
    """One signed manifest store with what finds it."""

    manifest_id: str  # the credential id: 12 hex digits, the watermark's payload (pipeline/watermark.py)
    job_id: str
    manifest_store: bytes  # the signed .c2pa bytes, exactly as embedded (application/c2pa)
    manifest_label: str | None  # the active manifest's label (urn:c2pa:...)
    watermark_alg: str  # soft-binding algorithm of the watermark (pipeline/watermark.ALGORITHM)
    watermark_value: str  # its value as in the c2pa.soft-binding assertion (base64)
    fingerprint_alg: str  # pipeline/fingerprint.ALGORITHM
    fingerprint: list[str] = field(default_factory=list)  # perceptual hashes, hex, one per sampled frame
    digital_source_type: str | None = None
    title: str | None = None
    signer: str | None = None
    generator: str | None = None
    created_at: dt.datetime | None = None  # when it was signed (UTC)


@dataclass(frozen=True)
class Match:
    """A repository hit: the manifest and how close the queried content is (1.0 = identical)."""

    manifest: StoredManifest
    similarity: float
    by: str  # "watermark", "fingerprint" or "watermark+fingerprint"


class ManifestRepository(Protocol):
    def add(self, manifest: StoredManifest) -> None:
        """Keep it; adding the same manifest_id again replaces the earlier one (a retried label)."""

    def get(self, manifest_id: str) -> StoredManifest | None: ...

    def by_binding(self, alg: str, value: str, limit: int = 10) -> list[StoredManifest]:
        """Manifests whose watermark (or fingerprint) binding has exactly this alg and value."""

    def by_fingerprint(self, fingerprint: list[str], limit: int = 10) -> list[Match]:
        """Manifests whose fingerprint matches (``pipeline.fingerprint.similarity`` above its threshold), best first."""

    def forget_job(self, job_id: str) -> int:
        """Remove the job's manifests (on request only); returns how many."""
