"""Runs and their sessions: an interview from its creation to its end and analysis.

Every change is written with its event(s) in one transaction (:mod:`runtime.storage.run_log`); what
was said is in :mod:`runtime.storage.messages`; rows become dataclasses in :mod:`runtime.storage.run_rows`.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, select

from runtime.errors import NotFound
from runtime.ids import new_id, new_join_token
from runtime.serialize import run_event_json, session_json
from runtime.storage import schema as t
from runtime.storage.database import Database, Transaction
from runtime.storage.jobs import ANALYSIS, add_job, complete_job
from runtime.storage.leases import CHANNEL as LEASES_CHANNEL
from runtime.storage.leases import LeaseChange, notice_text
from runtime.storage.run_log import add_usage, check_lease, emit, insert_event, save_state
from runtime.storage.run_rows import (
    RUN_SELECT,
    SESSION_SELECT,
    event_from_row,
    json_value,
    position_json,
    run_from_row,
    run_from_values,
    session_from_row,
    session_from_values,
)
from runtime.types import (
    JSON,
    EndReason,
    Event,
    EventType,
    Lease,
    Participant,
    Position,
    Run,
    RunStatus,
    Session,
    SessionEndReason,
    SessionStatus,
    SessionType,
)


@dataclass(frozen=True)
class RunFilter:
    blueprint_id: str | None = None
    status: RunStatus | None = None
    metadata: Mapping[str, str] | None = None
    annotation: str | None = None  # a reviewer's verdict (runtime/review.py)


class RunStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- events -------------------------------------------------------------------

    async def list_events(self, run_id: str, *, after_seq: int = 0, limit: int = 1000) -> list[Event]:
        query = (
            select(t.events)
            .where(and_(t.events.c.run_id == run_id, t.events.c.seq > after_seq))
            .order_by(t.events.c.seq)
            .limit(limit)
        )
        async with self.db.read() as conn:
            return [event_from_row(r) for r in await conn.execute(query)]

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
                    position=position_json(Position()),
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
            emit(
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
            f"SELECT {RUN_SELECT} FROM runs WHERE channel_id = ? AND pin = ? AND status IN (?, ?)",
            (channel_id, pin, RunStatus.PENDING.value, RunStatus.IN_PROGRESS.value),
        )
        return run_from_values(rows[0]) if rows else None

    async def get_run(self, run_id: str, *, org_id: str | None = None) -> Run:
        if org_id is None:
            rows = await self.db.fetch(f"SELECT {RUN_SELECT} FROM runs WHERE id = ?", (run_id,))
        else:
            rows = await self.db.fetch(f"SELECT {RUN_SELECT} FROM runs WHERE id = ? AND org_id = ?", (run_id, org_id))
        if not rows:
            raise NotFound(f"No run {run_id!r}", param="id")
        return run_from_values(rows[0])

    async def run_by_token(self, token: str) -> Run | None:
        rows = await self.db.fetch(f"SELECT {RUN_SELECT} FROM runs WHERE join_token = ?", (token,))
        return run_from_values(rows[0]) if rows else None

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
        return [run_from_row(r) for r in rows[:limit]], len(rows) > limit

    async def runs_with_status(self, status: RunStatus) -> list[Run]:
        async with self.db.read() as conn:
            rows = await conn.execute(select(t.runs).where(t.runs.c.status == status.value))
            return [run_from_row(r) for r in rows]

    async def expired_pending_runs(self, now: float) -> list[str]:
        query = select(t.runs.c.id).where(
            and_(t.runs.c.status == RunStatus.PENDING.value, t.runs.c.join_expires_at <= now)
        )
        async with self.db.read() as conn:
            return [r.id for r in await conn.execute(query)]

    async def save_state(
        self, run_id: str, position: Position, idle_since: float | None, *, lease: Lease | None = None
    ) -> None:
        await self.db.write(lambda tx: save_state(tx, run_id, position, idle_since, lease), run_id=run_id)

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
            check_lease(run_id, lease, holder, epoch)
            self._end_sessions(tx, run_id, SessionEndReason.RUN_ENDED, now)
            rows = tx.sql(
                "UPDATE runs SET status = ?, end_reason = ?, ended_at = ?, idle_since = NULL, last_seq = last_seq + 1,"
                f" owner_id = NULL, lease_epoch = lease_epoch + 1 WHERE id = ? RETURNING {RUN_SELECT}",
                (status.value, reason.value, now, run_id),
            )
            run = run_from_values(rows[0])
            if holder is not None and lease is None:
                tx.notify(LEASES_CHANNEL, notice_text(LeaseChange.ENDED, run_id, epoch + 1))
            insert_event(tx, run_id, run.last_seq, EventType.for_terminal(status), run_event_json(run), now)
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
            check_lease(run_id, lease, rows[0][1], rows[0][2])
            self._end_sessions(tx, run_id, SessionEndReason.REPLACED, now)
            if rows[0][0] == RunStatus.PENDING.value:
                started = tx.sql(
                    "UPDATE runs SET status = ?, started_at = ?, last_seq = last_seq + 1"
                    f" WHERE id = ? RETURNING {RUN_SELECT}",
                    (RunStatus.IN_PROGRESS.value, now, run_id),
                )
                run = run_from_values(started[0])
                insert_event(tx, run_id, run.last_seq, EventType.RUN_STARTED, run_event_json(run), now)
            session = Session(
                new_id("session", now=now), run_id, type, SessionStatus.ACTIVE, now, None, None, user_number
            )
            tx.sql(
                "INSERT INTO sessions (id, run_id, type, status, started_at, ended_at, end_reason, user_number)"
                " VALUES (?, ?, ?, ?, ?, NULL, NULL, ?)",
                (session.id, run_id, type.value, session.status.value, now, user_number),
            )
            numbered = tx.sql(f"UPDATE runs SET last_seq = last_seq + 1 WHERE id = ? RETURNING {RUN_SELECT}", [run_id])
            run = run_from_values(numbered[0])
            data = {"session": session_json(session)}
            insert_event(tx, run_id, run.last_seq, EventType.SESSION_STARTED, data, now)
            return run, session

        return await self.db.write(write, run_id=run_id)  # type: ignore[no-any-return]

    async def end_session(
        self, session_id: str, reason: SessionEndReason, now: float, *, lease: Lease | None = None
    ) -> None:
        def write(tx: Transaction) -> Any:
            rows = tx.sql(f"SELECT {SESSION_SELECT} FROM sessions WHERE id = ?", (session_id,))
            if rows and rows[0][3] == SessionStatus.ACTIVE.value:
                self._close_session(tx, session_from_values(rows[0]), reason, now, lease=lease)

        await self.db.write(write, run_id=None if lease is None else lease.run_id)

    def _end_sessions(self, tx: Transaction, run_id: str, reason: SessionEndReason, now: float) -> None:
        rows = tx.sql(
            f"SELECT {SESSION_SELECT} FROM sessions WHERE run_id = ? AND status = ?",
            (run_id, SessionStatus.ACTIVE.value),
        )
        for row in rows:
            self._close_session(tx, session_from_values(row), reason, now)

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
        emit(tx, session.run_id, EventType.SESSION_ENDED, {"session": session_json(closed)}, now, lease)

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
            session = session_from_row(row)
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
            return [session_from_row(r) for r in rows]

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
                (json.dumps(summary), json.dumps(result) if result is not None else None, result_error, now, run_id),
            )
            if not stored:  # erased while it was being analysed: nothing of it may come back
                return
            if usage is not None:
                add_usage(tx, run_id, usage)
            data = {"run_id": run_id, "has_result": result is not None, "result_error": result_error}
            emit(tx, run_id, EventType.RUN_RESULT_READY, data, now)

        await self.db.write(write, run_id=run_id)

    async def analysis(self, run_id: str) -> tuple[JSON | None, JSON | None, str | None, float | None]:
        """(summary, result, result_error, analysed_at) of a run; all None before the analysis."""
        rows = await self.db.fetch(
            "SELECT summary, result, result_error, analysed_at FROM runs WHERE id = ?", (run_id,)
        )
        if not rows:
            raise NotFound(f"No run {run_id!r}", param="id")
        summary, result, error, at = rows[0]
        return json_value(summary), json_value(result), error, at
