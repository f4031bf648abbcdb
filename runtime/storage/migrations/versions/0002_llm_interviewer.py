"""The AI interviewer: message metadata, run usage and analysis, durable jobs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("meta", sa.JSON, nullable=True))
    with op.batch_alter_table("runs") as batch:
        for name in ("llm_calls", "input_tokens", "output_tokens", "cached_tokens"):
            batch.add_column(sa.Column(name, sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("cost_usd", sa.Float, nullable=True, server_default="0"))
        batch.add_column(sa.Column("summary", sa.JSON, nullable=True))
        batch.add_column(sa.Column("result", sa.JSON, nullable=True))
        batch.add_column(sa.Column("result_error", sa.Text, nullable=True))
        batch.add_column(sa.Column("analysed_at", sa.Float, nullable=True))
    op.create_table(
        "jobs",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("run_id", sa.String, sa.ForeignKey("runs.id"), nullable=True),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("run_after", sa.Float, nullable=False),
        sa.Column("locked_until", sa.Float, nullable=True),
        sa.Column("locked_by", sa.String, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_jobs_run_id", "jobs", ["run_id"])
    op.create_index("ix_jobs_status_run_after", "jobs", ["status", "run_after"])


def downgrade() -> None:
    op.drop_table("jobs")
    with op.batch_alter_table("runs") as batch:
        for name in (
            "analysed_at",
            "result_error",
            "result",
            "summary",
            "cost_usd",
            "cached_tokens",
            "output_tokens",
            "input_tokens",
            "llm_calls",
        ):
            batch.drop_column(name)
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("meta")
