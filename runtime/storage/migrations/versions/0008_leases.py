"""Leases: which server process acts for a run in progress, and the processes' heartbeats.

Revision ID: leases
Revises: telephony
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "leases"
down_revision = "telephony"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("owner_id", sa.String, nullable=True))
        batch.add_column(sa.Column("lease_epoch", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "server_processes",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("slot", sa.String, nullable=False),
        sa.Column("host", sa.String, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("alive_until", sa.Float, nullable=False),
    )
    op.create_index("ix_server_processes_slot", "server_processes", ["slot"])


def downgrade() -> None:
    op.drop_index("ix_server_processes_slot", "server_processes")
    op.drop_table("server_processes")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("lease_epoch")
        batch.drop_column("owner_id")
