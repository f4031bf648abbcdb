"""Runs, sessions, messages and events: everything that happens during interviews.

Every state change writes its event(s) in the same transaction, numbered from
the run's ``last_seq`` counter, so a run's events are gapless from 1 and each
one is committed before any listener hears of it. The webhook deliveries of an
event (:mod:`runtime.storage.webhooks`) are written beside it, in that transaction.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON as JSONType
from sqlalchemy import and_, func, select, update

from runtime.errors import LeaseLost, NotFound
from runtime.ids import new_id, new_join_token
from runtime.serialize import message_json, remember_text, run_event_json, session_json
from runtime.storage import schema as t
from runtime.storage import webhooks
from runtime.storage.database import Database, Transaction
from runtime.storage.jobs import ANALYSIS, add_job, complete_job
from runtime.storage.leases import CHANNEL as LEASES_CHANNEL
from runtime.storage.leases import LeaseChange, notice_text
from runtime.types import (
    JSON,
    EndReason,
    Event,
    EventType,
    LatencyBreakdown,
    Lease,
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
from runtime.webhooks import WEBHOOK_EVENT_SET


def _run(row: Any) -> Run:
    return _run_from(row._mapping)


def _run_from(m: Mapping[str, Any]) -> Run:
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


_RUN_COLUMNS = tuple(c.name for c in t.runs.columns)
_RUN_JSON = frozenset(c.name for c in t.runs.columns if isinstance(c.type, JSONType))
_RUN_SELECT = ", ".join(_RUN_COLUMNS)


def _run_raw(values: Sequence[Any]) -> Run:
    """A run from a plain-SQL row of ``_RUN_SELECT`` (JSON columns still text)."""
    m = dict(zip(_RUN_COLUMNS, values, strict=True))
    for k in _RUN_JSON:
        if m[k] is not None:
            m[k] = json.loads(m[k])
    return _run_from(m)


def _session(row: Any) -> Session:
    return _session_raw(tuple(row._mapping[k] for k in _SESSION_COLUMNS))


_SESSION_COLUMNS = ("id", "run_id", "type", "status", "started_at", "ended_at", "end_reason", "user_number")
_SESSION_SELECT = ", ".join(_SESSION_COLUMNS)


def _session_raw(v: Sequence[Any]) -> Session:
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


def _message(row: Any) -> Message:
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


def _event(row: Any) -> Event:
    m = row._mapping
    return Event(m["run_id"], m["seq"], EventType(m["type"]), m["created_at"], m["data"])


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
_INSERT_MESSAGE = (
    "INSERT INTO messages (id, run_id, session_id, role, content, question_id, kind, is_filler, is_interrupted,"
    " started_at, ended_at, latency, client_id, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (run_id, client_id) DO NOTHING"
)
_dumps = json.dumps


def _json_value(value: Any) -> Any:
    """A JSON column read with plain SQL: text on SQLite, already decoded by some drivers."""
    return json.loads(value) if isinstance(value, str) else value


def _position_json(pos: Position) -> JSON:
    return {"question_index": pos.question_index, "probes_used": pos.probes_used, "reminded": pos.reminded}


def unanswered(messages: list[Message]) -> list[Message]:
    """Participant messages after the last assistant message: answers still owed a reply."""
    tail: list[Message] = []
    for msg in reversed(messages):
        if msg.role is MessageRole.ASSISTANT:
            break
        if msg.role is MessageRole.USER:
            tail.append(msg)
    return list(reversed(tail))


@dataclass(frozen=True)
class RunFilter:
    blueprint_id: str | None = None
    status: RunStatus | None = None
    metadata: Mapping[str, str] | None = None
    annotation: str | None = None  # a reviewer's verdict (runtime/review.py)


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


def emit(tx: Transaction, run_id: str, type: EventType, data: JSON, now: float) -> Event:
    """Store one event of a run, numbered next, in ``tx`` (for writers of other modules: review, ...)."""
    seq, _ = RunStore._next_seq(tx, run_id)
    return RunStore._insert_event(tx, run_id, seq, type, data, now)


class RunStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- events -------------------------------------------------------------------

    def _emit(
        self, tx: Transaction, run_id: str, type: EventType, data: JSON, now: float, lease: Lease | None = None
    ) -> Event:
        seq, _ = self._next_seq(tx, run_id, lease=lease)
        return self._insert_event(tx, run_id, seq, type, data, now)

    @staticmethod
    def _next_seq(
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
            rows = tx.sql(statement, (_dumps(_position_json(position)), idle_since, run_id, *held))
        if len(rows) != 1:
            RunStore._refuse(tx, run_id, lease)
        seq, started_at = rows[0]
        return int(seq), started_at

    @staticmethod
    def _refuse(tx: Transaction, run_id: str, lease: Lease | None) -> None:
        """A statement matched no run: it does not exist, or (under a lease) another process holds it now."""
        if lease is not None and tx.sql("SELECT 1 FROM runs WHERE id = ?", (run_id,)):
            raise LeaseLost(f"run {run_id} is held by another process now (this one held epoch {lease.epoch})")
        raise NotFound(f"No run {run_id!r}", param="id")

    @staticmethod
    def _check_lease(run_id: str, lease: Lease | None, owner: str | None, epoch: int) -> None:
        if lease is not None and (owner, epoch) != (lease.owner, lease.epoch):
            raise LeaseLost(f"run {run_id} is held by another process now (this one held epoch {lease.epoch})")

    @staticmethod
    def _insert_event(
        tx: Transaction, run_id: str, seq: int, type: EventType, data: JSON, now: float, *, text: str | None = None
    ) -> Event:
        """Store an event; ``text`` is ``data`` already as JSON, if the caller has it."""
        tx.change(_INSERT_EVENT, (run_id, seq, type.value, now, _dumps(data) if text is None else text))
        ev = Event(run_id, seq, type, now, data)
        tx.events.append(ev)
        if type.value in WEBHOOK_EVENT_SET:  # its webhook deliveries commit with it (or not at all)
            webhooks.enqueue(tx, ev)
        return ev

    async def list_events(self, run_id: str, *, after_seq: int = 0, limit: int = 1000) -> list[Event]:
        query = (
            select(t.events)
            .where(and_(t.events.c.run_id == run_id, t.events.c.seq > after_seq))
            .order_by(t.events.c.seq)
            .limit(limit)
        )
        async with self.db.read() as conn:
            return [_event(r) for r in await conn.execute(query)]

    # --- runs -----------------------------------------------------------------------

    async def create_run(
        self,
        org_id: str,
        *,
        blueprint_id: str,
        blueprint_version: int,
        channel_id: str | None,
        connector_id: str | None,
        participant: Participant,
        metadata: dict[str, str],
        join_window_s: float,
        also: Callable[[Transaction, str], None] | None = None,
        with_pin: bool = False,
    ) -> Run:
        """``also`` writes more in the same transaction (given the new run's id); if it raises, no run is made.
        ``with_pin``: give it a PIN unique among the channel's open runs (a telephony channel's callers key it in).
        """
        now = time.time()
        run_id = new_id("run", now=now)

        def write(tx: Transaction) -> Any:
            pin = self._free_pin(tx, channel_id) if with_pin and channel_id is not None else None
            tx.conn.execute(
                t.runs.insert().values(
                    id=run_id,
                    org_id=org_id,
                    blueprint_id=blueprint_id,
                    blueprint_version=blueprint_version,
                    channel_id=channel_id,
                    connector_id=connector_id,
                    participant={
                        "external_id": participant.external_id,
                        "name": participant.name,
                        "email": participant.email,
                        "metadata": participant.metadata,
                        **({"phone": participant.phone} if participant.phone else {}),
                    },
                    metadata=metadata,
                    status=RunStatus.PENDING.value,
                    end_reason=None,
                    join_token=new_join_token(),
                    position=_position_json(Position()),
                    created_at=now,
                    join_expires_at=now + join_window_s,
                    last_seq=0,
                    pin=pin,
                )
            )
            if metadata:
                tx.conn.execute(
                    t.run_metadata.insert(), [{"run_id": run_id, "key": k, "value": v} for k, v in metadata.items()]
                )
            self._emit(
                tx,
                run_id,
                EventType.RUN_CREATED,
                {"run_id": run_id, "status": RunStatus.PENDING.value, "blueprint_id": blueprint_id},
                now,
            )
            if also is not None:
                also(tx, run_id)

        await self.db.write(write, run_id=run_id)
        return await self.get_run(run_id)

    @staticmethod
    def _free_pin(tx: Transaction, channel_id: str) -> str:
        """Six random digits no open run of the channel has (a caller keys them in to reach the run)."""
        open_statuses = (RunStatus.PENDING.value, RunStatus.IN_PROGRESS.value)
        while True:
            pin = f"{secrets.randbelow(1_000_000):06d}"
            taken = tx.sql(
                "SELECT 1 FROM runs WHERE channel_id = ? AND pin = ? AND status IN (?, ?)",
                (channel_id, pin, *open_statuses),
            )
            if not taken:
                return pin

    async def run_by_pin(self, channel_id: str, pin: str) -> Run | None:
        """The open run of ``channel_id`` with this PIN, if any."""
        rows = await self.db.fetch(
            f"SELECT {_RUN_SELECT} FROM runs WHERE channel_id = ? AND pin = ? AND status IN (?, ?)",
            (channel_id, pin, RunStatus.PENDING.value, RunStatus.IN_PROGRESS.value),
        )
        return _run_raw(rows[0]) if rows else None

    async def get_run(self, run_id: str, *, org_id: str | None = None) -> Run:
        if org_id is None:
            rows = await self.db.fetch(f"SELECT {_RUN_SELECT} FROM runs WHERE id = ?", (run_id,))
        else:
            rows = await self.db.fetch(f"SELECT {_RUN_SELECT} FROM runs WHERE id = ? AND org_id = ?", (run_id, org_id))
        if not rows:
            raise NotFound(f"No run {run_id!r}", param="id")
        return _run_raw(rows[0])

    async def run_by_token(self, token: str) -> Run | None:
        rows = await self.db.fetch(f"SELECT {_RUN_SELECT} FROM runs WHERE join_token = ?", (token,))
        return _run_raw(rows[0]) if rows else None

    async def list_runs(
        self, org_id: str, *, limit: int, starting_after: str | None, where: RunFilter
    ) -> tuple[list[Run], bool]:
        query = select(t.runs).where(t.runs.c.org_id == org_id)
        if starting_after:
            query = query.where(t.runs.c.id < starting_after)
        if where.blueprint_id:
            query = query.where(t.runs.c.blueprint_id == where.blueprint_id)
        if where.status:
            query = query.where(t.runs.c.status == where.status.value)
        for key, value in (where.metadata or {}).items():
            query = query.where(
                t.runs.c.id.in_(
                    select(t.run_metadata.c.run_id).where(
                        and_(t.run_metadata.c.key == key, t.run_metadata.c.value == value)
                    )
                )
            )
        if where.annotation:
            annotated = select(t.run_annotations.c.run_id).where(t.run_annotations.c.value == where.annotation)
            query = query.where(t.runs.c.id.in_(annotated))
        async with self.db.read() as conn:
            rows = list(await conn.execute(query.order_by(t.runs.c.id.desc()).limit(limit + 1)))
        return [_run(r) for r in rows[:limit]], len(rows) > limit

    async def runs_with_status(self, status: RunStatus) -> list[Run]:
        async with self.db.read() as conn:
            rows = await conn.execute(select(t.runs).where(t.runs.c.status == status.value))
            return [_run(r) for r in rows]

    async def expired_pending_runs(self, now: float) -> list[str]:
        query = select(t.runs.c.id).where(
            and_(t.runs.c.status == RunStatus.PENDING.value, t.runs.c.join_expires_at <= now)
        )
        async with self.db.read() as conn:
            return [r.id for r in await conn.execute(query)]

    async def save_state(
        self, run_id: str, position: Position, idle_since: float | None, *, lease: Lease | None = None
    ) -> None:
        def write(tx: Transaction) -> Any:
            state = (_dumps(_position_json(position)), idle_since, run_id)
            if lease is None:
                tx.change(_SAVE_STATE, state)
            elif not tx.change(_SAVE_STATE_HELD, (*state, lease.owner, lease.epoch)):
                self._refuse(tx, run_id, lease)

        await self.db.write(write, run_id=run_id)

    async def end_run(
        self, run_id: str, reason: EndReason, now: float | None = None, *, lease: Lease | None = None
    ) -> Run | None:
        """End the run and any live session. Returns None if the run had already ended.

        Exactly once, whichever processes try at the same moment: the run's row is locked first. The run's
        lease ends with it; a holder other than ``lease`` (None: the caller holds none, e.g. a cancel on
        another process) is fenced and told (:mod:`runtime.storage.leases`)."""
        now = time.time() if now is None else now
        status = reason.run_status

        def write(tx: Transaction) -> Any:
            rows = tx.sql(f"SELECT status, owner_id, lease_epoch FROM runs WHERE id = ?{tx.row_lock}", (run_id,))
            if not rows or RunStatus(rows[0][0]).is_terminal:
                return None
            holder, epoch = rows[0][1], rows[0][2]
            self._check_lease(run_id, lease, holder, epoch)
            self._end_sessions(tx, run_id, SessionEndReason.RUN_ENDED, now)
            rows = tx.sql(
                "UPDATE runs SET status = ?, end_reason = ?, ended_at = ?, idle_since = NULL, last_seq = last_seq + 1,"
                f" owner_id = NULL, lease_epoch = lease_epoch + 1 WHERE id = ? RETURNING {_RUN_SELECT}",
                (status.value, reason.value, now, run_id),
            )
            run = _run_raw(rows[0])
            if holder is not None and lease is None:
                tx.notify(LEASES_CHANNEL, notice_text(LeaseChange.ENDED, run_id, epoch + 1))
            self._insert_event(tx, run_id, run.last_seq, EventType.for_terminal(status), run_event_json(run), now)
            if run.started_at is not None:  # an interview took place: analyse it (runtime/storage/jobs.py)
                add_job(tx, ANALYSIS, run_id, now)
            return run

        return await self.db.write(write, run_id=run_id)  # type: ignore[no-any-return]

    # --- sessions -----------------------------------------------------------------------

    async def start_session(
        self,
        run_id: str,
        type: SessionType,
        now: float,
        *,
        user_number: str | None = None,
        lease: Lease | None = None,
    ) -> tuple[Run, Session] | None:
        """Open a session (ending any live one as replaced); None if the run has ended.
        ``user_number``: a phone call's caller or callee."""

        def write(tx: Transaction) -> Any:
            rows = tx.sql(f"SELECT status, owner_id, lease_epoch FROM runs WHERE id = ?{tx.row_lock}", (run_id,))
            if not rows or RunStatus(rows[0][0]).is_terminal:
                return None
            self._check_lease(run_id, lease, rows[0][1], rows[0][2])
            self._end_sessions(tx, run_id, SessionEndReason.REPLACED, now)
            if rows[0][0] == RunStatus.PENDING.value:
                started = tx.sql(
                    "UPDATE runs SET status = ?, started_at = ?, last_seq = last_seq + 1"
                    f" WHERE id = ? RETURNING {_RUN_SELECT}",
                    (RunStatus.IN_PROGRESS.value, now, run_id),
                )
                run = _run_raw(started[0])
                self._insert_event(tx, run_id, run.last_seq, EventType.RUN_STARTED, run_event_json(run), now)
            session = Session(
                new_id("session", now=now), run_id, type, SessionStatus.ACTIVE, now, None, None, user_number
            )
            tx.sql(
                "INSERT INTO sessions (id, run_id, type, status, started_at, ended_at, end_reason, user_number)"
                " VALUES (?, ?, ?, ?, ?, NULL, NULL, ?)",
                (session.id, run_id, type.value, session.status.value, now, user_number),
            )
            numbered = tx.sql(f"UPDATE runs SET last_seq = last_seq + 1 WHERE id = ? RETURNING {_RUN_SELECT}", [run_id])
            run = _run_raw(numbered[0])
            data = {"session": session_json(session)}
            self._insert_event(tx, run_id, run.last_seq, EventType.SESSION_STARTED, data, now)
            return run, session

        return await self.db.write(write, run_id=run_id)  # type: ignore[no-any-return]

    async def end_session(
        self, session_id: str, reason: SessionEndReason, now: float, *, lease: Lease | None = None
    ) -> None:
        def write(tx: Transaction) -> Any:
            rows = tx.sql(f"SELECT {_SESSION_SELECT} FROM sessions WHERE id = ?", (session_id,))
            if rows and rows[0][3] == SessionStatus.ACTIVE.value:
                self._close_session(tx, _session_raw(rows[0]), reason, now, lease=lease)

        await self.db.write(write, run_id=None if lease is None else lease.run_id)

    def _end_sessions(self, tx: Transaction, run_id: str, reason: SessionEndReason, now: float) -> None:
        rows = tx.sql(
            f"SELECT {_SESSION_SELECT} FROM sessions WHERE run_id = ? AND status = ?",
            (run_id, SessionStatus.ACTIVE.value),
        )
        for row in rows:
            self._close_session(tx, _session_raw(row), reason, now)

    def _close_session(
        self, tx: Transaction, session: Session, reason: SessionEndReason, now: float, *, lease: Lease | None = None
    ) -> None:
        ended_at = max(now, session.started_at)
        tx.sql(
            "UPDATE sessions SET status = ?, ended_at = ?, end_reason = ? WHERE id = ?",
            (SessionStatus.ENDED.value, ended_at, reason.value, session.id),
        )
        closed = Session(
            session.id,
            session.run_id,
            session.type,
            SessionStatus.ENDED,
            session.started_at,
            ended_at,
            reason,
            session.user_number,
        )
        self._emit(tx, session.run_id, EventType.SESSION_ENDED, {"session": session_json(closed)}, now, lease)

    def close_orphaned_sessions(self, tx: Transaction, run_id: str) -> int:
        """The run's process died (or handed it over) with sessions live: end them, each at the last moment it
        was seen alive (its last message, else its start). In ``tx``, the transaction taking the run over."""
        rows = list(
            tx.conn.execute(
                select(t.sessions).where(
                    and_(t.sessions.c.run_id == run_id, t.sessions.c.status == SessionStatus.ACTIVE.value)
                )
            )
        )
        for row in rows:
            session = _session(row)
            last = (
                tx.conn.execute(select(func.max(t.messages.c.ended_at)).where(t.messages.c.session_id == session.id))
            ).scalar()
            self._close_session(tx, session, SessionEndReason.SERVER_RESTART, last or session.started_at)
        return len(rows)

    def end_sessions_now(self, tx: Transaction, run_id: str, reason: SessionEndReason, now: float) -> None:
        """End the run's live sessions at ``now`` (in ``tx``)."""
        self._end_sessions(tx, run_id, reason, now)

    async def list_sessions(self, run_id: str) -> list[Session]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(t.sessions).where(t.sessions.c.run_id == run_id).order_by(t.sessions.c.started_at)
            )
            return [_session(r) for r in rows]

    # --- messages -------------------------------------------------------------------------

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
                    _dumps(msg.latency.as_dict() if msg.latency else None),
                    msg.client_id,
                    _dumps(new.meta) if new.meta else None,
                ),
            )
            if not inserted:  # this client_id was stored already: the participant retried
                same = and_(t.messages.c.run_id == run_id, t.messages.c.client_id == new.client_id)
                row = tx.conn.execute(select(t.messages).where(same)).one()
                return _message(row), False
            usage = (new.meta or {}).get("usage")
            if isinstance(usage, Mapping):
                add_usage(tx, run_id, usage)
            if position is not None:
                seq, started_at = self._next_seq(tx, run_id, position=position, idle_since=idle_since, lease=lease)
            else:
                seq, started_at = self._next_seq(tx, run_id, lease=lease)
            body, text = remember_text(msg, started_at)  # the frames that send it reuse the text
            data, stored = {"message": body}, f'{{"message":{text}}}'
            self._insert_event(tx, run_id, seq, EventType.MESSAGE_CREATED, data, new.ended_at, text=stored)
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
                current = _json_value(rows[0][0]) if rows and rows[0][0] else {}
                values["meta"] = {**current, **meta}
                if rows and isinstance(meta.get("usage"), Mapping) and "usage" not in current:
                    add_usage(tx, rows[0][1], meta["usage"])
            tx.conn.execute(update(t.messages).where(t.messages.c.id == message_id).values(**values))
            msg = _message((tx.conn.execute(select(t.messages).where(t.messages.c.id == message_id))).one())
            seq, started = self._next_seq(tx, msg.run_id, lease=lease)
            now = max(msg.ended_at, msg.started_at)
            self._insert_event(
                tx, msg.run_id, seq, EventType.MESSAGE_UPDATED, {"message": message_json(msg, started)}, now
            )
            return msg

        return await self.db.write(write, run_id=None if lease is None else lease.run_id)  # type: ignore[no-any-return]

    async def list_messages(self, run_id: str) -> list[Message]:
        async with self.db.read() as conn:
            rows = await conn.execute(select(t.messages).where(t.messages.c.run_id == run_id).order_by(t.messages.c.pk))
            return [_message(r) for r in rows]

    async def last_seen(self, run_id: str) -> float | None:
        """The last moment the participant was known to be there (message or session)."""
        async with self.db.read() as conn:
            last_message = (
                await conn.execute(select(func.max(t.messages.c.ended_at)).where(t.messages.c.run_id == run_id))
            ).scalar()
            last_session = (
                await conn.execute(
                    select(func.max(func.coalesce(t.sessions.c.ended_at, t.sessions.c.started_at))).where(
                        t.sessions.c.run_id == run_id
                    )
                )
            ).scalar()
        seen: Iterable[float] = [v for v in (last_message, last_session) if v is not None]
        return max(seen, default=None)

    # --- analysis -----------------------------------------------------------------------------

    async def store_analysis(
        self,
        run_id: str,
        *,
        job_id: str,
        summary: JSON,
        result: JSON | None,
        result_error: str | None,
        usage: Mapping[str, Any] | None,
        now: float,
    ) -> None:
        """Keep what the analysis job made of the run, count its LLM use, announce it, and close the job:
        one transaction, so a result is never stored twice (not even by two claimants) nor its job left pending."""

        def write(tx: Transaction) -> Any:
            if not complete_job(tx, job_id, now):  # another process finished it first (this one was too slow)
                return
            stored = tx.change(
                "UPDATE runs SET summary = ?, result = ?, result_error = ?, analysed_at = ?"
                " WHERE id = ? AND erased_at IS NULL",
                (_dumps(summary), _dumps(result) if result is not None else None, result_error, now, run_id),
            )
            if not stored:  # erased while it was being analysed: nothing of it may come back
                return
            if usage is not None:
                add_usage(tx, run_id, usage)
            data = {"run_id": run_id, "has_result": result is not None, "result_error": result_error}
            self._emit(tx, run_id, EventType.RUN_RESULT_READY, data, now)

        await self.db.write(write, run_id=run_id)

    async def analysis(self, run_id: str) -> tuple[JSON | None, JSON | None, str | None, float | None]:
        """(summary, result, result_error, analysed_at) of a run; all None before the analysis."""
        rows = await self.db.fetch(
            "SELECT summary, result, result_error, analysed_at FROM runs WHERE id = ?", (run_id,)
        )
        if not rows:
            raise NotFound(f"No run {run_id!r}", param="id")
        summary, result, error, at = rows[0]
        return _json_value(summary), _json_value(result), error, at
