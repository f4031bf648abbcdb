"""Study links: reusable links for recruitment panels, and the participant each run was made for.

Revision ID: study_links
Revises: erasure
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "study_links"
down_revision = "erasure"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "study_links",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("org_id", sa.String, sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("token", sa.String, nullable=False, unique=True),
        sa.Column("blueprint_id", sa.String, sa.ForeignKey("blueprints.id"), nullable=False),
        sa.Column("channel_id", sa.String, sa.ForeignKey("channels.id"), nullable=False),
        sa.Column("participant_param", sa.String, nullable=False),
        sa.Column("metadata_params", sa.JSON, nullable=False),
        sa.Column("max_completes", sa.Integer, nullable=True),
        sa.Column("closes_at", sa.Float, nullable=True),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("completion_redirect_url", sa.String, nullable=True),
        sa.Column("screenout_redirect_url", sa.String, nullable=True),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_study_links_org_id", "study_links", ["org_id"])
    op.create_table(
        "study_link_participants",
        sa.Column("link_id", sa.String, sa.ForeignKey("study_links.id"), primary_key=True),
        sa.Column("external_id", sa.String, primary_key=True),
        sa.Column("run_id", sa.String, sa.ForeignKey("runs.id"), nullable=False, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("study_link_participants")
    op.drop_table("study_links")
