"""Webhooks: endpoints, their subscriptions, and the delivery outbox.

Revision ID: webhooks
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "webhooks"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("org_id", sa.String, sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("url", sa.String, nullable=False),
        sa.Column("events", sa.JSON, nullable=False),
        sa.Column("description", sa.String, nullable=True),
        sa.Column("secret", sa.String, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_webhook_endpoints_org_id", "webhook_endpoints", ["org_id"])
    op.create_table(
        "webhook_subscriptions",
        sa.Column("endpoint_id", sa.String, sa.ForeignKey("webhook_endpoints.id"), primary_key=True),
        sa.Column("event_type", sa.String, primary_key=True),
        sa.Column("org_id", sa.String, nullable=False),
    )
    op.create_index("ix_webhook_subscriptions_org_id_event_type", "webhook_subscriptions", ["org_id", "event_type"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("endpoint_id", sa.String, sa.ForeignKey("webhook_endpoints.id"), nullable=False),
        sa.Column("run_id", sa.String, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("event_type", sa.String, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("locked_until", sa.Float, nullable=True),
        sa.Column("last_status_code", sa.Integer, nullable=True),
        sa.Column("last_error", sa.String, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("delivered_at", sa.Float, nullable=True),
        sa.UniqueConstraint("endpoint_id", "run_id", "seq", name="uq_webhook_deliveries_endpoint_run_seq"),
    )
    op.create_index("ix_webhook_deliveries_status_next_attempt_at", "webhook_deliveries", ["status", "next_attempt_at"])
    op.create_index("ix_webhook_deliveries_endpoint_id_id", "webhook_deliveries", ["endpoint_id", "id"])
    op.create_index("ix_webhook_deliveries_run_id", "webhook_deliveries", ["run_id"])


def downgrade() -> None:
    for table in ("webhook_deliveries", "webhook_subscriptions", "webhook_endpoints"):
        op.drop_table(table)
