"""Erasing a participant's data, by request or when the organization's retention period has passed.

What goes: the transcript (messages), the sessions, the events (they carry the
messages' text), the analysis (summary and structured result), the participant
(external id, name, email, metadata), the run's metadata, the webhook deliveries
that carried its events, its annotations and issues, and its study-link entry.
The recording is a file: the caller deletes it after the commit. What stays is a
tombstone: the run's id, blueprint, channel, status, end reason and times, usage
counters, and ``erased_at`` / ``erased_by`` (the API key that asked, or
``retention``); one ``run.erased`` event is written after the deletion, so event
readers and webhooks learn of it.

One transaction per run: a run is erased whole or not at all. The analysis job
of a run being erased is closed in the same transaction, and the job's own
write refuses an erased run (:meth:`RunStore.store_analysis`), so nothing comes back.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from runtime.errors import NotFound
from runtime.serialize import iso
from runtime.storage import webhooks
from runtime.storage.database import Database, Transaction
from runtime.storage.jobs import JobStatus
from runtime.types import Event, EventType

RETENTION = "retention"  # erased_by for runs erased by their organization's retention period
DAY_S = 86400.0

# Tables holding a run's data by run_id, deleted on erasure (those another feature adds register here).
_RUN_DATA = ["messages", "sessions", "events", "run_metadata", "webhook_deliveries"]


def erases(table: str) -> None:
    """Register a table of per-run data (with a ``run_id`` column) that erasure must delete too."""
    if table not in _RUN_DATA:
        _RUN_DATA.append(table)


@dataclass(frozen=True)
class Organization:
    id: str
    name: str
    created_at: float
    retention_days: int | None


def _erase(tx: Transaction, run_id: str, by: str, now: float) -> bool:
    """Erase one run (in ``tx``); False if it was erased already."""
    rows = tx.sql(f"SELECT erased_at FROM runs WHERE id = ?{tx.row_lock}", (run_id,))  # once, across processes
    if not rows:
        raise NotFound(f"No run {run_id!r}", param="id")
    if rows[0][0] is not None:
        return False
    for table in _RUN_DATA:
        tx.change(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))  # table names come from _RUN_DATA only
    tx.change(
        "UPDATE jobs SET status = ?, last_error = ?, locked_until = NULL, updated_at = ?"
        " WHERE run_id = ? AND status = ?",
        (JobStatus.FAILED.value, "the run was erased", now, run_id, JobStatus.PENDING.value),
    )
    seq = tx.sql(
        "UPDATE runs SET participant = ?, metadata = ?, summary = NULL, result = NULL, result_error = NULL,"
        " analysed_at = NULL, erased_at = ?, erased_by = ?, last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq",
        ('{"external_id": null, "name": null, "email": null, "metadata": {}}', "{}", now, by, run_id),
    )[0][0]
    data = {"run_id": run_id, "erased_at": iso(now), "erased_by": by}
    tx.change(
        "INSERT INTO events (run_id, seq, type, created_at, data) VALUES (?, ?, ?, ?, ?)",
        (run_id, seq, EventType.RUN_ERASED.value, now, json.dumps(data)),
    )
    event = Event(run_id, seq, EventType.RUN_ERASED, now, data)
    tx.events.append(event)
    webhooks.enqueue(tx, event)
    return True


class Erasure:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def erase(self, run_id: str, *, by: str, now: float | None = None) -> bool:
        """Erase a run's data; False if it had been erased already. The caller deletes its recording."""
        when = time.time() if now is None else now
        erased = await self.db.write(lambda tx: _erase(tx, run_id, by, when), run_id=run_id)  # after its turns
        if erased:
            await self.db.checkpoint()  # SQLite: the log's copies of the deleted pages go too
        return erased

    async def due(self, *, now: float, limit: int, day_s: float = DAY_S) -> list[str]:
        """Ended, unerased runs of organizations with a retention period, ended longer ago than it."""
        rows = await self.db.fetch(
            "SELECT r.id FROM runs r JOIN organizations o ON o.id = r.org_id"
            " WHERE o.retention_days IS NOT NULL AND r.erased_at IS NULL AND r.ended_at IS NOT NULL"
            " AND r.ended_at <= ? - o.retention_days * ? ORDER BY r.ended_at LIMIT ?",
            (now, day_s, limit),
        )
        return [r[0] for r in rows]

    async def organization(self, org_id: str) -> Organization:
        rows = await self.db.fetch(
            "SELECT id, name, created_at, retention_days FROM organizations WHERE id = ?", (org_id,)
        )
        if not rows:
            raise NotFound(f"No organization {org_id!r}")
        return Organization(*rows[0])

    async def set_retention(self, org_id: str, days: int | None) -> Organization:
        def write(tx: Transaction) -> None:
            tx.change("UPDATE organizations SET retention_days = ? WHERE id = ?", (days, org_id))

        await self.db.write(write)
        return await self.organization(org_id)
