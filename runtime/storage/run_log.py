"""A run's log: its numbered events, and the fenced statements every turn makes.

Every state change writes its event(s) in the same transaction, numbered from the run's ``last_seq``
counter, so a run's events are gapless from 1 and each one is committed before any listener hears of it
(:mod:`runtime.storage.notifications`). The webhook deliveries of an event (:mod:`runtime.storage.webhooks`)
are written beside it, in that transaction. Writes made under a lease match only while it is held.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from runtime.errors import LeaseLost, NotFound
from runtime.storage import webhooks
from runtime.storage.database import Transaction
from runtime.storage.run_rows import position_json
from runtime.types import JSON, Event, EventType, Lease, Position
from runtime.webhooks import WEBHOOK_EVENT_SET

# The statements of every turn, in plain SQL on the driver's cursor (see Transaction.sql).
# JSON columns hold json.dumps text, as SQLAlchemy's JSON type writes it (None is 'null').
_NEXT_SEQ = "UPDATE runs SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq, started_at"
_NEXT_SEQ_WITH_STATE = (
    "UPDATE runs SET last_seq = last_seq + 1, position = ?, idle_since = ? WHERE id = ? RETURNING last_seq, started_at"
)
_SAVE_STATE = "UPDATE runs SET position = ?, idle_since = ? WHERE id = ?"
# Fencing (runtime/storage/leases.py): the same statements made under a lease match only while the run's row
# still names its owner and epoch. The row lock the UPDATE takes holds until commit, so a takeover committed
# first makes it match nothing, and one committed after it sees everything it wrote. No extra statement.
_HELD = " AND owner_id = ? AND lease_epoch = ?"
_NEXT_SEQ_HELD = _NEXT_SEQ.replace(" RETURNING", _HELD + " RETURNING")
_NEXT_SEQ_WITH_STATE_HELD = _NEXT_SEQ_WITH_STATE.replace(" RETURNING", _HELD + " RETURNING")
_SAVE_STATE_HELD = _SAVE_STATE + _HELD
# NULL cost (an unknown price) makes the total NULL: a sum with an unknown part is unknown
_ADD_USAGE = (
    "UPDATE runs SET llm_calls = llm_calls + ?, input_tokens = input_tokens + ?, output_tokens = output_tokens + ?,"
    " cached_tokens = cached_tokens + ?, cost_usd = cost_usd + ? WHERE id = ?"
)
_INSERT_EVENT = "INSERT INTO events (run_id, seq, type, created_at, data) VALUES (?, ?, ?, ?, ?)"


def add_usage(tx: Transaction, run_id: str, usage: Mapping[str, Any]) -> None:
    """Count one turn's (or one analysis') LLM use into the run's totals."""
    tx.change(
        _ADD_USAGE,
        (
            int(usage.get("calls", 1)),
            int(usage.get("input_tokens", 0)),
            int(usage.get("output_tokens", 0)),
            int(usage.get("cached_tokens", 0)),
            usage.get("cost_usd"),
            run_id,
        ),
    )


def emit(tx: Transaction, run_id: str, type: EventType, data: JSON, now: float, lease: Lease | None = None) -> Event:
    """Store one event of a run, numbered next, in ``tx`` (under ``lease``, only while it is held)."""
    seq, _ = next_seq(tx, run_id, lease=lease)
    return insert_event(tx, run_id, seq, type, data, now)


def next_seq(
    tx: Transaction,
    run_id: str,
    *,
    position: Position | None = None,
    idle_since: float | None = None,
    lease: Lease | None = None,
) -> tuple[int, float | None]:
    """Take the run's next event number (saving ``position`` too); returns it with the run's start.

    Under a ``lease``, only while it is still held (:class:`LeaseLost` otherwise: the write is undone)."""
    held = () if lease is None else (lease.owner, lease.epoch)
    if position is None:
        rows = tx.sql(_NEXT_SEQ if lease is None else _NEXT_SEQ_HELD, (run_id, *held))
    else:
        statement = _NEXT_SEQ_WITH_STATE if lease is None else _NEXT_SEQ_WITH_STATE_HELD
        rows = tx.sql(statement, (json.dumps(position_json(position)), idle_since, run_id, *held))
    if len(rows) != 1:
        refuse(tx, run_id, lease)
    seq, started_at = rows[0]
    return int(seq), started_at


def refuse(tx: Transaction, run_id: str, lease: Lease | None) -> None:
    """A statement matched no run: it does not exist, or (under a lease) another process holds it now."""
    if lease is not None and tx.sql("SELECT 1 FROM runs WHERE id = ?", (run_id,)):
        raise LeaseLost(f"run {run_id} is held by another process now (this one held epoch {lease.epoch})")
    raise NotFound(f"No run {run_id!r}", param="id")


def check_lease(run_id: str, lease: Lease | None, owner: str | None, epoch: int) -> None:
    if lease is not None and (owner, epoch) != (lease.owner, lease.epoch):
        raise LeaseLost(f"run {run_id} is held by another process now (this one held epoch {lease.epoch})")


def insert_event(
    tx: Transaction, run_id: str, seq: int, type: EventType, data: JSON, now: float, *, text: str | None = None
) -> Event:
    """Store an event; ``text`` is ``data`` already as JSON, if the caller has it."""
    tx.change(_INSERT_EVENT, (run_id, seq, type.value, now, json.dumps(data) if text is None else text))
    ev = Event(run_id, seq, type, now, data)
    tx.events.append(ev)
    if type.value in WEBHOOK_EVENT_SET:  # its webhook deliveries commit with it (or not at all)
        webhooks.enqueue(tx, ev)
    return ev


def save_state(tx: Transaction, run_id: str, position: Position, idle_since: float | None, lease: Lease | None) -> None:
    """Keep where the interview is (and since when the participant is idle) without an event."""
    state = (json.dumps(position_json(position)), idle_since, run_id)
    if lease is None:
        tx.change(_SAVE_STATE, state)
    elif not tx.change(_SAVE_STATE_HELD, (*state, lease.owner, lease.epoch)):
        refuse(tx, run_id, lease)
