"""Hardening: encrypted webhook secrets, viewer reports (one per reporter), review state, revocable links.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

- ``api_keys.webhook_secret`` widens to hold a Fernet token ("enc:..."); plain secrets of older
  rows still read (``service.db.unseal_secret``) and are sealed when rotated.
- ``jobs.visibility``: visible | hidden (reported by ``api.reports_to_hide`` viewers) | removed.
- ``reports.reporter`` / ``reporter_cookie`` (keyed hashes, never an address) + unique (job_id, reporter);
  ``reviewed``.
- ``share_links.revoked_at``.
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("webhook_secret", type_=sa.String(length=512), existing_type=sa.String(length=64),
                           existing_nullable=False)
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("visibility", sa.String(length=16), nullable=False, server_default="visible"))
    with op.batch_alter_table("share_links") as batch:
        batch.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("reports") as batch:
        batch.add_column(sa.Column("reporter", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("reporter_cookie", sa.String(length=64), nullable=True))
        batch.create_index(op.f("ix_reports_reporter_cookie"), ["reporter_cookie"])
        batch.add_column(sa.Column("reviewed", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.create_unique_constraint(op.f("uq_reports_job_id_reporter"), ["job_id", "reporter"])


def downgrade() -> None:
    with op.batch_alter_table("reports") as batch:
        batch.drop_constraint(op.f("uq_reports_job_id_reporter"), type_="unique")
        batch.drop_index(op.f("ix_reports_reporter_cookie"))
        batch.drop_column("reporter_cookie")
        batch.drop_column("reviewed")
        batch.drop_column("reporter")
    with op.batch_alter_table("share_links") as batch:
        batch.drop_column("revoked_at")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("visibility")
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("webhook_secret", type_=sa.String(length=64), existing_type=sa.String(length=512),
                           existing_nullable=False)
