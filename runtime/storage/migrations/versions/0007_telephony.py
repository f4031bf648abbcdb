"""Telephony: a session's caller number, and the PIN a caller keys in to reach a run.

Revision ID: telephony
Revises: annotations
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "telephony"
down_revision = "annotations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("user_number", sa.String, nullable=True))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("pin", sa.String, nullable=True))
    op.create_index("ix_runs_channel_id_pin", "runs", ["channel_id", "pin"])


def downgrade() -> None:
    op.drop_index("ix_runs_channel_id_pin", "runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("pin")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("user_number")
