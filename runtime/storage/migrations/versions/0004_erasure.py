"""Erasure and retention: runs keep who erased them and when; organizations may set a retention period.

Revision ID: erasure
Revises: webhooks
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "erasure"
down_revision = "webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("organizations") as batch:
        batch.add_column(sa.Column("retention_days", sa.Integer, nullable=True))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("erased_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("erased_by", sa.String, nullable=True))
        batch.create_index("ix_runs_ended_at", ["ended_at"])


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_ended_at")
        batch.drop_column("erased_by")
        batch.drop_column("erased_at")
    with op.batch_alter_table("organizations") as batch:
        batch.drop_column("retention_days")
