"""Tables, in SQLAlchemy Core. SQLite by default; nothing here is SQLite-only except the pragmas.

Metadata (run and participant) is stored twice: as JSON on the run, to return
it, and as rows of ``run_metadata``, so ``metadata[key]=value`` filters use an
index instead of scanning JSON.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

organizations = Table(
    "organizations",
    metadata,
    Column("id", String, primary_key=True),
    Column("name", String, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("retention_days", Integer, nullable=True),  # ended runs' data is erased this long after (None: kept)
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String, primary_key=True),
    Column("org_id", String, ForeignKey("organizations.id"), nullable=False),
    Column("key_hash", String, nullable=False, unique=True),
    Column("hint", String, nullable=False),  # last characters, to tell keys apart
    Column("created_at", Float, nullable=False),
)

settings_kv = Table(
    "settings",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", JSON, nullable=False),
)

blueprints = Table(
    "blueprints",
    metadata,
    Column("id", String, primary_key=True),
    Column("org_id", String, ForeignKey("organizations.id"), nullable=False, index=True),
    Column("latest_version", Integer, nullable=False),
    Column("published_version", Integer, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

blueprint_versions = Table(
    "blueprint_versions",
    metadata,
    Column("blueprint_id", String, ForeignKey("blueprints.id"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("status", String, nullable=False),
    Column("content", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("published_at", Float, nullable=True),
)

channels = Table(
    "channels",
    metadata,
    Column("id", String, primary_key=True),
    Column("org_id", String, ForeignKey("organizations.id"), nullable=False, index=True),
    Column("type", String, nullable=False),
    Column("name", String, nullable=False),
    Column("settings", JSON, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String, primary_key=True),
    Column("org_id", String, ForeignKey("organizations.id"), nullable=False),
    Column("blueprint_id", String, ForeignKey("blueprints.id"), nullable=False),
    Column("blueprint_version", Integer, nullable=False),
    Column("channel_id", String, ForeignKey("channels.id"), nullable=True),
    Column("connector_id", String, nullable=True),
    Column("participant", JSON, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("status", String, nullable=False),
    Column("end_reason", String, nullable=True),
    Column("join_token", String, nullable=False, unique=True),
    Column("position", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("join_expires_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("ended_at", Float, nullable=True),
    Column("idle_since", Float, nullable=True),
    Column("last_seq", Integer, nullable=False),
    # LLM use, interview and analysis together (cost_usd NULL once a price was unknown)
    Column("llm_calls", Integer, nullable=False, server_default="0"),
    Column("input_tokens", Integer, nullable=False, server_default="0"),
    Column("output_tokens", Integer, nullable=False, server_default="0"),
    Column("cached_tokens", Integer, nullable=False, server_default="0"),
    Column("cost_usd", Float, nullable=True, server_default="0"),
    # what the analysis job made of the finished run
    Column("summary", JSON, nullable=True),
    Column("result", JSON, nullable=True),
    Column("result_error", Text, nullable=True),
    Column("analysed_at", Float, nullable=True),
    # erasure (runtime/storage/erasure.py): the row stays as a tombstone, with who asked and when
    Column("erased_at", Float, nullable=True),
    Column("erased_by", String, nullable=True),
    # telephony (migration 0007): what a caller keys in to reach the run
    Column("pin", String, nullable=True),
    # the lease (runtime/storage/leases.py): the process acting for the run in progress, and the fencing token
    # every write of that process checks; neither is indexed, so taking a run over is a HOT update
    Column("owner_id", String, nullable=True),
    Column("lease_epoch", Integer, nullable=False, server_default="0"),
    Index("ix_runs_org_id_id", "org_id", "id"),
    Index("ix_runs_ended_at", "ended_at"),
    Index("ix_runs_status_join_expires_at", "status", "join_expires_at"),
    Index("ix_runs_channel_id_pin", "channel_id", "pin"),
)

run_metadata = Table(
    "run_metadata",
    metadata,
    Column("run_id", String, ForeignKey("runs.id"), primary_key=True),
    Column("key", String, primary_key=True),
    Column("value", String, nullable=False),
    Index("ix_run_metadata_key_value", "key", "value"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String, primary_key=True),
    Column("run_id", String, ForeignKey("runs.id"), nullable=False, index=True),
    Column("type", String, nullable=False),
    Column("status", String, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
    Column("end_reason", String, nullable=True),
    Column("user_number", String, nullable=True),  # a phone call's caller or callee (migration 0006)
)

messages = Table(
    "messages",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),  # transcript order
    Column("id", String, nullable=False, unique=True),
    Column("run_id", String, ForeignKey("runs.id"), nullable=False),
    Column("session_id", String, nullable=True),
    Column("role", String, nullable=False),
    Column("content", Text, nullable=False),
    Column("question_id", String, nullable=True),
    Column("kind", String, nullable=True),
    Column("is_filler", Boolean, nullable=False),
    Column("is_interrupted", Boolean, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float, nullable=False),
    Column("latency", JSON, nullable=True),
    Column("client_id", String, nullable=True),
    Column("meta", JSON, nullable=True),  # how it was made (model, usage, fallback) or flags
    Index("ix_messages_run_id_pk", "run_id", "pk"),
    UniqueConstraint("run_id", "client_id", name="uq_messages_run_client_id"),
)

events = Table(
    "events",
    metadata,
    Column("run_id", String, ForeignKey("runs.id"), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("type", String, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("data", JSON, nullable=False),
)

# Durable work to do after the fact (the analysis of a finished run, ...): written in the
# transaction that makes it due, claimed with a lease so a dead claimant's job is taken again.
jobs = Table(
    "jobs",
    metadata,
    Column("id", String, primary_key=True),
    Column("kind", String, nullable=False),
    Column("run_id", String, ForeignKey("runs.id"), nullable=True, index=True),
    Column("status", String, nullable=False),  # pending, done, failed
    Column("attempts", Integer, nullable=False),
    Column("run_after", Float, nullable=False),
    Column("locked_until", Float, nullable=True),
    Column("locked_by", String, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_jobs_status_run_after", "status", "run_after"),
)

# --- webhooks (runtime/storage/webhooks.py) ---------------------------------------------------------------

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String, primary_key=True),
    Column("org_id", String, ForeignKey("organizations.id"), nullable=False, index=True),
    Column("url", String, nullable=False),
    Column("events", JSON, nullable=False),
    Column("description", String, nullable=True),
    Column("secret", String, nullable=False),  # needed to sign every delivery, so kept (shown to the user once)
    Column("created_at", Float, nullable=False),
)

# One row per (endpoint, event type) subscribed: the outbox insert beside every such event is an indexed join.
webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("endpoint_id", String, ForeignKey("webhook_endpoints.id"), primary_key=True),
    Column("event_type", String, primary_key=True),
    Column("org_id", String, nullable=False),
    Index("ix_webhook_subscriptions_org_id_event_type", "org_id", "event_type"),
)

# The outbox: written in the transaction of the event it carries; (endpoint, run, seq) is one delivery, ever.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String, primary_key=True),
    Column("endpoint_id", String, ForeignKey("webhook_endpoints.id"), nullable=False),
    Column("run_id", String, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("event_type", String, nullable=False),
    Column("payload", Text, nullable=False),
    Column("status", String, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("locked_until", Float, nullable=True),  # a claimed delivery's lease: past it, another worker may take it
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", String, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("delivered_at", Float, nullable=True),
    UniqueConstraint("endpoint_id", "run_id", "seq", name="uq_webhook_deliveries_endpoint_run_seq"),
    Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    Index("ix_webhook_deliveries_endpoint_id_id", "endpoint_id", "id"),
    Index("ix_webhook_deliveries_run_id", "run_id"),
)

# --- study links (runtime/storage/study_links.py) ---------------------------------------------------------

study_links = Table(
    "study_links",
    metadata,
    Column("id", String, primary_key=True),
    Column("org_id", String, ForeignKey("organizations.id"), nullable=False, index=True),
    Column("token", String, nullable=False, unique=True),  # the public link's secret part
    Column("blueprint_id", String, ForeignKey("blueprints.id"), nullable=False),
    Column("channel_id", String, ForeignKey("channels.id"), nullable=False),
    Column("participant_param", String, nullable=False),
    Column("metadata_params", JSON, nullable=False),
    Column("max_completes", Integer, nullable=True),
    Column("closes_at", Float, nullable=True),
    Column("active", Boolean, nullable=False),
    Column("completion_redirect_url", String, nullable=True),
    Column("screenout_redirect_url", String, nullable=True),
    Column("metadata", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
)

# One run per participant of a link: the primary key is what refuses the same participant twice.
study_link_participants = Table(
    "study_link_participants",
    metadata,
    Column("link_id", String, ForeignKey("study_links.id"), primary_key=True),
    Column("external_id", String, primary_key=True),
    Column("run_id", String, ForeignKey("runs.id"), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

# --- review (runtime/storage/review.py): a run's annotation and issues, erased with the run ---------------------

run_annotations = Table(
    "run_annotations",
    metadata,
    Column("run_id", String, ForeignKey("runs.id"), primary_key=True),
    Column("value", String, nullable=False),  # correct, incorrect, critical (a cleared annotation has no row)
    Column("annotated_by", String, nullable=False),
    Column("annotated_at", Float, nullable=False),
    Index("ix_run_annotations_value", "value"),
)

run_issues = Table(
    "run_issues",
    metadata,
    Column("id", String, primary_key=True),
    Column("run_id", String, ForeignKey("runs.id"), nullable=False),
    Column("type", String, nullable=False),
    Column("status", String, nullable=False),
    Column("priority", String, nullable=False),
    Column("message_id", String, nullable=True),  # no foreign key: erasure deletes messages before issues
    Column("correction", Text, nullable=True),
    Column("correction_reason", Text, nullable=True),
    Column("note", Text, nullable=True),
    Column("created_by", String, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_by", String, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("approved_by", String, nullable=True),
    Column("approved_at", Float, nullable=True),
    Index("ix_run_issues_run_id_id", "run_id", "id"),
)

# Server processes sharing the database, each holding the leases of the runs it acts for
# (runtime/storage/leases.py). One row per incarnation; ``alive_until`` is its heartbeat.
server_processes = Table(
    "server_processes",
    metadata,
    Column("id", String, primary_key=True),
    Column("slot", String, nullable=False, index=True),  # host:port:worker, what a restarted process replaces
    Column("host", String, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("alive_until", Float, nullable=False),
)
