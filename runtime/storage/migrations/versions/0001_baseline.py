"""Baseline: the schema as it stood before migrations (every table of the first releases).

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "organizations",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("org_id", sa.String, sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("key_hash", sa.String, nullable=False, unique=True),
        sa.Column("hint", sa.String, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "settings",
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("value", sa.JSON, nullable=False),
    )
    op.create_table(
        "blueprints",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("org_id", sa.String, sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("latest_version", sa.Integer, nullable=False),
        sa.Column("published_version", sa.Integer, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_blueprints_org_id", "blueprints", ["org_id"])
    op.create_table(
        "blueprint_versions",
        sa.Column("blueprint_id", sa.String, sa.ForeignKey("blueprints.id"), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("content", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("published_at", sa.Float, nullable=True),
    )
    op.create_table(
        "channels",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("org_id", sa.String, sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("type", sa.String, nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_channels_org_id", "channels", ["org_id"])
    op.create_table(
        "runs",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("org_id", sa.String, sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("blueprint_id", sa.String, sa.ForeignKey("blueprints.id"), nullable=False),
        sa.Column("blueprint_version", sa.Integer, nullable=False),
        sa.Column("channel_id", sa.String, sa.ForeignKey("channels.id"), nullable=True),
        sa.Column("connector_id", sa.String, nullable=True),
        sa.Column("participant", sa.JSON, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("end_reason", sa.String, nullable=True),
        sa.Column("join_token", sa.String, nullable=False, unique=True),
        sa.Column("position", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("join_expires_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("ended_at", sa.Float, nullable=True),
        sa.Column("idle_since", sa.Float, nullable=True),
        sa.Column("last_seq", sa.Integer, nullable=False),
    )
    op.create_index("ix_runs_org_id_id", "runs", ["org_id", "id"])
    op.create_index("ix_runs_status_join_expires_at", "runs", ["status", "join_expires_at"])
    op.create_table(
        "run_metadata",
        sa.Column("run_id", sa.String, sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("value", sa.String, nullable=False),
    )
    op.create_index("ix_run_metadata_key_value", "run_metadata", ["key", "value"])
    op.create_table(
        "sessions",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("run_id", sa.String, sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("type", sa.String, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float, nullable=True),
        sa.Column("end_reason", sa.String, nullable=True),
    )
    op.create_index("ix_sessions_run_id", "sessions", ["run_id"])
    op.create_table(
        "messages",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String, nullable=False, unique=True),
        sa.Column("run_id", sa.String, sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("session_id", sa.String, nullable=True),
        sa.Column("role", sa.String, nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("question_id", sa.String, nullable=True),
        sa.Column("kind", sa.String, nullable=True),
        sa.Column("is_filler", sa.Boolean, nullable=False),
        sa.Column("is_interrupted", sa.Boolean, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float, nullable=False),
        sa.Column("latency", sa.JSON, nullable=True),
        sa.Column("client_id", sa.String, nullable=True),
        sa.UniqueConstraint("run_id", "client_id", name="uq_messages_run_client_id"),
    )
    op.create_index("ix_messages_run_id_pk", "messages", ["run_id", "pk"])
    op.create_table(
        "events",
        sa.Column("run_id", sa.String, sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("type", sa.String, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "events",
        "messages",
        "sessions",
        "run_metadata",
        "runs",
        "channels",
        "blueprint_versions",
        "blueprints",
        "settings",
        "api_keys",
        "organizations",
    ):
        op.drop_table(table)
