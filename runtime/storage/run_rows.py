"""Rows of runs, sessions, messages and events, read back as the runtime's dataclasses.

Two ways in: SQLAlchemy rows (``*_from_row``) and plain-SQL rows of the ``*_SELECT`` column lists
(``*_from_values``), which the hottest reads and the writers' ``RETURNING`` clauses use; there JSON
columns arrive as text (SQLite, and psycopg told so: :func:`runtime.storage.postgres.text_json`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import JSON as JSONType

from runtime.storage import schema as t
from runtime.types import (
    JSON,
    EndReason,
    Event,
    EventType,
    LatencyBreakdown,
    Message,
    MessageRole,
    Participant,
    Position,
    Run,
    RunStatus,
    RunUsage,
    Session,
    SessionEndReason,
    SessionStatus,
    SessionType,
    UtteranceKind,
)


def run_from_row(row: Any) -> Run:
    return run_from_mapping(row._mapping)


def run_from_mapping(m: Mapping[str, Any]) -> Run:
    p = m["participant"]
    pos = m["position"]
    return Run(
        id=m["id"],
        org_id=m["org_id"],
        blueprint_id=m["blueprint_id"],
        blueprint_version=m["blueprint_version"],
        channel_id=m["channel_id"],
        connector_id=m["connector_id"],
        participant=Participant(
            p.get("external_id"), p.get("name"), p.get("email"), p.get("metadata") or {}, p.get("phone")
        ),
        metadata=m["metadata"],
        status=RunStatus(m["status"]),
        end_reason=EndReason(m["end_reason"]) if m["end_reason"] else None,
        join_token=m["join_token"],
        position=Position(pos["question_index"], pos["probes_used"], pos.get("reminded", False)),
        created_at=m["created_at"],
        join_expires_at=m["join_expires_at"],
        started_at=m["started_at"],
        ended_at=m["ended_at"],
        idle_since=m["idle_since"],
        last_seq=m["last_seq"],
        usage=RunUsage(m["llm_calls"], m["input_tokens"], m["output_tokens"], m["cached_tokens"], m["cost_usd"]),
        analysed_at=m["analysed_at"],
        erased_at=m.get("erased_at"),
        erased_by=m.get("erased_by"),
        pin=m.get("pin"),
    )


RUN_COLUMNS = tuple(c.name for c in t.runs.columns)
RUN_JSON = frozenset(c.name for c in t.runs.columns if isinstance(c.type, JSONType))
RUN_SELECT = ", ".join(RUN_COLUMNS)


def run_from_values(values: Sequence[Any]) -> Run:
    """A run from a plain-SQL row of ``RUN_SELECT`` (JSON columns still text)."""
    m = dict(zip(RUN_COLUMNS, values, strict=True))
    for k in RUN_JSON:
        if m[k] is not None:
            m[k] = json.loads(m[k])
    return run_from_mapping(m)


def session_from_row(row: Any) -> Session:
    return session_from_values(tuple(row._mapping[k] for k in SESSION_COLUMNS))


SESSION_COLUMNS = ("id", "run_id", "type", "status", "started_at", "ended_at", "end_reason", "user_number")
SESSION_SELECT = ", ".join(SESSION_COLUMNS)


def session_from_values(v: Sequence[Any]) -> Session:
    return Session(
        id=v[0],
        run_id=v[1],
        type=SessionType(v[2]),
        status=SessionStatus(v[3]),
        started_at=v[4],
        ended_at=v[5],
        end_reason=SessionEndReason(v[6]) if v[6] else None,
        user_number=v[7],
    )


def message_from_row(row: Any) -> Message:
    m = row._mapping
    lat = m["latency"]
    return Message(
        id=m["id"],
        run_id=m["run_id"],
        session_id=m["session_id"],
        role=MessageRole(m["role"]),
        content=m["content"],
        question_id=m["question_id"],
        kind=UtteranceKind(m["kind"]) if m["kind"] else None,
        is_filler=bool(m["is_filler"]),
        is_interrupted=bool(m["is_interrupted"]),
        started_at=m["started_at"],
        ended_at=m["ended_at"],
        latency=LatencyBreakdown(**lat) if lat else None,
        client_id=m["client_id"],
        meta=m["meta"] or {},
    )


def event_from_row(row: Any) -> Event:
    m = row._mapping
    return Event(m["run_id"], m["seq"], EventType(m["type"]), m["created_at"], m["data"])


def json_value(value: Any) -> Any:
    """A JSON column read with plain SQL: text on SQLite, already decoded by some drivers."""
    return json.loads(value) if isinstance(value, str) else value


def position_json(pos: Position) -> JSON:
    return {"question_index": pos.question_index, "probes_used": pos.probes_used, "reminded": pos.reminded}
