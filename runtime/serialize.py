"""Domain records as JSON-ready dicts: the one shape used by the REST API, events and the websocket.

Timestamps are ISO 8601 UTC strings with milliseconds; offsets are seconds from
the run's start (the first session's start), so transcript lines can be placed
on the recording.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from runtime.types import Blueprint, BlueprintContent, Channel, ChannelSettings, Message, Run, Session


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def offset(ts: float, origin: float | None) -> float | None:
    return None if origin is None else round(ts - origin, 3)


def message_json(message: Message, run_started_at: float | None) -> dict[str, Any]:
    return {
        "id": message.id,
        "object": "message",
        "run_id": message.run_id,
        "session_id": message.session_id,
        "role": message.role.value,
        "content": message.content,
        "question_id": message.question_id,
        "kind": message.kind.value if message.kind else None,
        "is_filler": message.is_filler,
        "is_interrupted": message.is_interrupted,
        "started_at": iso(message.started_at),
        "ended_at": iso(message.ended_at),
        "start_offset_s": offset(message.started_at, run_started_at),
        "end_offset_s": offset(message.ended_at, run_started_at),
        "latency_breakdown": message.latency.as_dict() if message.latency else None,
        "client_id": message.client_id,
        "generation": generation_json(message.meta),
        "usage": message.meta.get("usage"),
        "flags": list(message.meta.get("flags", ())),
        "original_content": message.original_content,
        "correction_id": message.correction_id,
    }


_GENERATION_FIELDS = ("model", "prompt_version", "action", "rule", "fallback", "fallback_reason", "attempts", "ttft_ms")


def generation_json(meta: dict[str, Any]) -> dict[str, Any] | None:
    """How an assistant message was made, for the record: which model and prompt, what it decided,
    and whether the runtime fell back to the script (and why). None for messages no model was asked for."""
    if not any(k in meta for k in ("model", "rule", "fallback")):
        return None
    out = {k: meta.get(k) for k in _GENERATION_FIELDS}
    out["fallback"] = bool(out["fallback"])
    return out


def message_text(message: Message, run_started_at: float | None) -> str:
    """:func:`message_json` as compact JSON text, as frames carry it.

    The storage layer serializes each message once when it stores it (see
    :func:`remember_text`); sending that same message object again (the ack, the
    delivery) reuses the text instead of building and encoding the dict again.
    """
    known = _texts.get(message.id)
    if known is not None and known[0] is message and known[1] == run_started_at:
        return known[2]
    return json.dumps(message_json(message, run_started_at), separators=(",", ":"))


def remember_text(
    message: Message, run_started_at: float | None, *, now: float | None = None
) -> tuple[dict[str, Any], str]:
    """Serialize a message just stored, and keep its text for :func:`message_text`; returns (dict, text).

    Called from the database writer thread only (the only thread that adds or evicts entries;
    readers only look up, which is safe beside it). A text is wanted only for the moment between
    storing and sending its message, so it is kept for ``_TEXT_KEPT_S`` and at most
    ``_TEXTS_KEPT`` are kept: the cache holds about one window of traffic, not the last few
    thousand messages (a plain size cap made a soak's memory grow until it was full).
    """
    body = message_json(message, run_started_at)
    text = json.dumps(body, separators=(",", ":"))
    now = time.monotonic() if now is None else now
    _texts[message.id] = (message, run_started_at, text, now)
    while True:  # insertion order is storing order: drop expired texts from the front
        oldest = next(iter(_texts.values()))
        if len(_texts) <= _TEXTS_KEPT and oldest[3] > now - _TEXT_KEPT_S:
            break
        _texts.popitem(last=False)
    return body, text


_TEXTS_KEPT = 4096
_TEXT_KEPT_S = 10.0
_texts: OrderedDict[str, tuple[Message, float | None, str, float]] = OrderedDict()


def session_json(session: Session) -> dict[str, Any]:
    duration = session.duration_s
    return {
        "id": session.id,
        "object": "session",
        "run_id": session.run_id,
        "type": session.type.value,
        "status": session.status.value,
        "started_at": iso(session.started_at),
        "ended_at": iso(session.ended_at),
        "duration_s": None if duration is None else round(duration, 3),
        "end_reason": session.end_reason.value if session.end_reason else None,
        "user_number": session.user_number,
    }


def run_json(run: Run, *, join_url: str) -> dict[str, Any]:
    p = run.participant
    return {
        "id": run.id,
        "object": "run",
        "blueprint_id": run.blueprint_id,
        "blueprint_version": run.blueprint_version,
        "channel_id": run.channel_id,
        "connector_id": run.connector_id,
        "participant": {
            "external_id": p.external_id,
            "name": p.name,
            "email": p.email,
            "phone": p.phone,
            "metadata": p.metadata,
        },
        "metadata": run.metadata,
        "status": run.status.value,
        "end_reason": run.end_reason.value if run.end_reason else None,
        "join_url": join_url,
        "created_at": iso(run.created_at),
        "join_expires_at": iso(run.join_expires_at),
        "started_at": iso(run.started_at),
        "ended_at": iso(run.ended_at),
        "duration_s": None
        if run.started_at is None or run.ended_at is None
        else round(run.ended_at - run.started_at, 3),
        "usage": {
            **dataclasses.asdict(run.usage),
            "cost_usd": None if run.usage.cost_usd is None else round(run.usage.cost_usd, 8),
        },
        "erased_at": iso(run.erased_at),
        "erased_by": run.erased_by,
        "pin": run.pin,
    }


def run_event_json(run: Run) -> dict[str, Any]:
    """What run.* events carry: enough to act on without a second request."""
    return {
        "run_id": run.id,
        "status": run.status.value,
        "end_reason": run.end_reason.value if run.end_reason else None,
        "started_at": iso(run.started_at),
        "ended_at": iso(run.ended_at),
    }


def blueprint_content_json(c: BlueprintContent) -> dict[str, Any]:
    """One version of a guide; also how it is stored."""
    return {
        "name": c.name,
        "greeting": c.greeting,
        "questions": [
            {
                "id": q.id,
                "text": q.text,
                "probes": list(q.probes),
                "max_probes": q.max_probes,
                "objective": q.objective,
                "verbatim": q.verbatim,
                "probe_instructions": q.probe_instructions,
            }
            for q in c.questions
        ],
        "closing": c.closing,
        "language": c.language,
        "interviewer": {
            "type": c.interviewer.type.value,
            "model": c.interviewer.model,
            "instructions": c.interviewer.instructions,
            "avoid": list(c.interviewer.avoid),
            "temperature": c.interviewer.temperature,
            "prompt_version": c.interviewer.prompt_version,
        },
        "result_schema": c.result_schema,
    }


def blueprint_json(bp: Blueprint) -> dict[str, Any]:
    return {
        "id": bp.id,
        "object": "blueprint",
        "version": bp.version,
        "status": bp.status.value,
        "published_version": bp.published_version,
        **blueprint_content_json(bp.content),
        "created_at": iso(bp.created_at),
        "updated_at": iso(bp.updated_at),
    }


def channel_settings_json(s: ChannelSettings) -> dict[str, Any]:
    """Channel settings; also how they are stored."""
    return dataclasses.asdict(s)


def channel_json(ch: Channel) -> dict[str, Any]:
    return {
        "id": ch.id,
        "object": "channel",
        "type": ch.type.value,
        "name": ch.name,
        "settings": channel_settings_json(ch.settings),
        "metadata": ch.metadata,
        "created_at": iso(ch.created_at),
    }
