"""Review of runs: a run's annotation (correct, incorrect, critical) and its issues, with transcript corrections.

Revision ID: annotations
Revises: study_links
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "annotations"
down_revision = "study_links"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_annotations",
        sa.Column("run_id", sa.String, sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("value", sa.String, nullable=False),
        sa.Column("annotated_by", sa.String, nullable=False),
        sa.Column("annotated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_run_annotations_value", "run_annotations", ["value"])
    op.create_table(
        "run_issues",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("run_id", sa.String, sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("type", sa.String, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("priority", sa.String, nullable=False),
        sa.Column("message_id", sa.String, nullable=True),
        sa.Column("correction", sa.Text, nullable=True),
        sa.Column("correction_reason", sa.Text, nullable=True),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("created_by", sa.String, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_by", sa.String, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("approved_by", sa.String, nullable=True),
        sa.Column("approved_at", sa.Float, nullable=True),
    )
    op.create_index("ix_run_issues_run_id_id", "run_issues", ["run_id", "id"])


def downgrade() -> None:
    op.drop_table("run_issues")
    op.drop_table("run_annotations")
