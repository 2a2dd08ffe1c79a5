"""Manifest repository: every signed manifest store, with the soft bindings that find it again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-10

- ``manifests``: the ``.c2pa`` bytes of each signed story, keyed by its credential id (the
  watermark's 48-bit payload, 12 hex digits), with the watermark binding (alg + value, indexed
  together: the by-binding lookup) and the perceptual fingerprint (a JSON list of hex hashes,
  scanned by the by-fingerprint lookup). No foreign key to ``jobs``: a manifest outlives its job.

Written out in full (not importing ``service.db``), like 0001.
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "manifests",
        sa.Column("manifest_id", sa.String(length=12), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("manifest_store", sa.LargeBinary(), nullable=False),
        sa.Column("manifest_label", sa.String(length=255), nullable=True),
        sa.Column("watermark_alg", sa.String(length=100), nullable=False),
        sa.Column("watermark_value", sa.String(length=255), nullable=False),
        sa.Column("fingerprint_alg", sa.String(length=100), nullable=False),
        sa.Column("fingerprint", sa.Text(), nullable=False),
        sa.Column("digital_source_type", sa.String(length=255), nullable=True),
        sa.Column("title", sa.String(length=500), nullable=True),
        sa.Column("signer", sa.String(length=500), nullable=True),
        sa.Column("generator", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("manifest_id", name=op.f("pk_manifests")),
    )
    op.create_index(op.f("ix_manifests_job_id"), "manifests", ["job_id"])
    op.create_index("ix_manifests_watermark_alg_watermark_value", "manifests", ["watermark_alg", "watermark_value"])


def downgrade() -> None:
    op.drop_table("manifests")  # drops its indexes with it
