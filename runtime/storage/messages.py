"""Messages: what the interviewer and the participant said, each stored with its event."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, select, update

from runtime.ids import new_id
from runtime.serialize import message_json, remember_text
from runtime.storage import schema as t
from runtime.storage.database import Database, Transaction
from runtime.storage.run_log import add_usage, insert_event, next_seq
from runtime.storage.run_rows import json_value, message_from_row
from runtime.types import JSON, EventType, LatencyBreakdown, Lease, Message, MessageRole, Position, UtteranceKind

_INSERT_MESSAGE = (
    "INSERT INTO messages (id, run_id, session_id, role, content, question_id, kind, is_filler, is_interrupted,"
    " started_at, ended_at, latency, client_id, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (run_id, client_id) DO NOTHING"
)


@dataclass(frozen=True)
class NewMessage:
    role: MessageRole
    content: str
    started_at: float
    ended_at: float
    session_id: str | None = None
    question_id: str | None = None
    kind: UtteranceKind | None = None
    is_filler: bool = False
    is_interrupted: bool = False
    latency: LatencyBreakdown | None = None
    client_id: str | None = None
    meta: JSON | None = None


def unanswered(messages: list[Message]) -> list[Message]:
    """Participant messages after the last assistant message: answers still owed a reply."""
    tail: list[Message] = []
    for msg in reversed(messages):
        if msg.role is MessageRole.ASSISTANT:
            break
        if msg.role is MessageRole.USER:
            tail.append(msg)
    return list(reversed(tail))


class MessageStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add_message(
        self,
        run_id: str,
        new: NewMessage,
        *,
        position: Position | None = None,
        idle_since: float | None = None,
        lease: Lease | None = None,
    ) -> tuple[Message, bool]:
        """Store a message (and optionally the interview's position). Returns (message, created).

        A message whose ``client_id`` was already stored for this run is not stored
        again: the participant retried after a dropped connection.
        """

        def write(tx: Transaction) -> Any:
            msg = Message(
                id=new_id("message", now=new.started_at),
                run_id=run_id,
                session_id=new.session_id,
                role=new.role,
                content=new.content,
                question_id=new.question_id,
                kind=new.kind,
                is_filler=new.is_filler,
                is_interrupted=new.is_interrupted,
                started_at=new.started_at,
                ended_at=new.ended_at,
                latency=new.latency,
                client_id=new.client_id,
                meta=new.meta or {},
            )
            inserted = tx.change(
                _INSERT_MESSAGE,
                (
                    msg.id,
                    run_id,
                    msg.session_id,
                    msg.role.value,
                    msg.content,
                    msg.question_id,
                    msg.kind.value if msg.kind else None,
                    msg.is_filler,
                    msg.is_interrupted,
                    msg.started_at,
                    msg.ended_at,
                    json.dumps(msg.latency.as_dict() if msg.latency else None),
                    msg.client_id,
                    json.dumps(new.meta) if new.meta else None,
                ),
            )
            if not inserted:  # this client_id was stored already: the participant retried
                same = and_(t.messages.c.run_id == run_id, t.messages.c.client_id == new.client_id)
                row = tx.conn.execute(select(t.messages).where(same)).one()
                return message_from_row(row), False
            usage = (new.meta or {}).get("usage")
            if isinstance(usage, Mapping):
                add_usage(tx, run_id, usage)
            if position is not None:
                seq, started_at = next_seq(tx, run_id, position=position, idle_since=idle_since, lease=lease)
            else:
                seq, started_at = next_seq(tx, run_id, lease=lease)
            body, text = remember_text(msg, started_at)  # the frames that send it reuse the text
            data, stored = {"message": body}, f'{{"message":{text}}}'
            insert_event(tx, run_id, seq, EventType.MESSAGE_CREATED, data, new.ended_at, text=stored)
            return msg, True

        return await self.db.write(write, run_id=run_id)  # type: ignore[no-any-return]

    async def update_message(
        self,
        message_id: str,
        *,
        content: str | None = None,
        started_at: float | None = None,
        ended_at: float | None = None,
        is_interrupted: bool | None = None,
        latency: LatencyBreakdown | None = None,
        meta: JSON | None = None,
        lease: Lease | None = None,
    ) -> Message:
        """Complete a message after it was sent (voice: when it started and stopped playing, what was heard).

        ``meta`` is merged into the message's (e.g. flags on a participant message found after storing it).
        """
        values: dict[str, Any] = {}
        if content is not None:
            values["content"] = content
        if started_at is not None:
            values["started_at"] = started_at
        if ended_at is not None:
            values["ended_at"] = ended_at
        if is_interrupted is not None:
            values["is_interrupted"] = is_interrupted
        if latency is not None:
            values["latency"] = latency.as_dict()

        def write(tx: Transaction) -> Any:
            if meta:
                rows = tx.sql("SELECT meta, run_id FROM messages WHERE id = ?", (message_id,))
                current = json_value(rows[0][0]) if rows and rows[0][0] else {}
                values["meta"] = {**current, **meta}
                if rows and isinstance(meta.get("usage"), Mapping) and "usage" not in current:
                    add_usage(tx, rows[0][1], meta["usage"])
            tx.conn.execute(update(t.messages).where(t.messages.c.id == message_id).values(**values))
            msg = message_from_row((tx.conn.execute(select(t.messages).where(t.messages.c.id == message_id))).one())
            seq, started = next_seq(tx, msg.run_id, lease=lease)
            now = max(msg.ended_at, msg.started_at)
            insert_event(tx, msg.run_id, seq, EventType.MESSAGE_UPDATED, {"message": message_json(msg, started)}, now)
            return msg

        return await self.db.write(write, run_id=None if lease is None else lease.run_id)  # type: ignore[no-any-return]

    async def list_messages(self, run_id: str) -> list[Message]:
        async with self.db.read() as conn:
            rows = await conn.execute(select(t.messages).where(t.messages.c.run_id == run_id).order_by(t.messages.c.pk))
            return [message_from_row(r) for r in rows]
