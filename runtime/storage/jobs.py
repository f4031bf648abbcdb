"""Durable jobs: work that must happen after the fact even if the process dies first.

A job is written in the same transaction as whatever makes it due (a run's end
writes its analysis job), so it exists exactly when its cause does. A worker claims
due jobs with a lease (``locked_until``): a claimant that dies mid-job simply lets
the lease run out and the job is claimed again, by this process after a restart or
by another (a claim skips the rows another process is claiming: ``FOR UPDATE SKIP
LOCKED``). Failures are retried with exponential backoff until ``max_attempts``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.ids import new_id
from runtime.storage.database import Database, Transaction
from runtime.types import StrEnum

ANALYSIS = "analysis"  # summarise a finished run and extract its structured result


class JobStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"  # gave up after max_attempts


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    run_id: str | None
    status: JobStatus
    attempts: int
    run_after: float
    last_error: str | None


_JOB_COLUMNS = "id, kind, run_id, status, attempts, run_after, last_error"


def _job(row: Sequence[Any]) -> Job:
    return Job(row[0], row[1], row[2], JobStatus(row[3]), int(row[4]), float(row[5]), row[6])


def add_job(tx: Transaction, kind: str, run_id: str | None, now: float, *, run_after: float | None = None) -> str:
    """Make a job due, inside the caller's transaction."""
    job_id = new_id("job", now=now)
    tx.sql(
        "INSERT INTO jobs (id, kind, run_id, status, attempts, run_after, locked_until, locked_by, last_error,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, 0, ?, NULL, NULL, NULL, ?, ?)",
        (job_id, kind, run_id, JobStatus.PENDING.value, now if run_after is None else run_after, now, now),
    )
    return job_id


class JobStore:
    """``owner`` names the claimant: a server process's id (runtime/storage/leases.py), or a function giving
    it (a process's id changes if it must register again). A job claimed by a process whose heartbeat has
    run out is claimable at once, not only when the claim's own lease ends: a restarted server takes back
    its predecessor's jobs as soon as it starts."""

    def __init__(self, db: Database, *, owner: str | Callable[[], str] | None = None) -> None:
        self.db = db
        self._owner = owner or new_id("worker")
        # PostgreSQL: several servers claim at once; each skips the jobs another is claiming, so a job is
        # claimed by one of them (SQLite's single writer makes the claim atomic by itself).
        self._claim_lock = " FOR UPDATE SKIP LOCKED" if db.shared else ""
        # ... and a claim by a process whose heartbeat ran out is void (SQLite: see release_claims)
        self._claimant_gone = (
            " OR NOT EXISTS (SELECT 1 FROM server_processes p WHERE p.id = jobs.locked_by AND p.alive_until >= ?)"
            if db.shared
            else ""
        )

    @property
    def owner(self) -> str:
        return self._owner() if callable(self._owner) else self._owner

    async def claim(self, now: float, *, lease_s: float, limit: int = 10) -> list[Job]:
        """Take up to ``limit`` due jobs for ``lease_s`` seconds (each claim counts as an attempt)."""
        owner = self.owner

        def write(tx: Transaction) -> Any:
            rows = tx.sql(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = ? AND run_after <= ?"
                f" AND (locked_until IS NULL OR locked_until < ?{self._claimant_gone}) ORDER BY run_after LIMIT ?"
                + self._claim_lock,
                (JobStatus.PENDING.value, now, now, *((now,) if self._claimant_gone else ()), limit),
            )
            jobs = [_job(r) for r in rows]
            for job in jobs:
                tx.sql(
                    "UPDATE jobs SET locked_until = ?, locked_by = ?, attempts = attempts + 1, updated_at = ?"
                    " WHERE id = ?",
                    (now + lease_s, owner, now, job.id),
                )
            return [Job(j.id, j.kind, j.run_id, j.status, j.attempts + 1, j.run_after, j.last_error) for j in jobs]

        return await self.db.write(write)  # type: ignore[no-any-return]

    async def retry(self, job: Job, error: str, *, now: float, max_attempts: int, base_delay_s: float) -> bool:
        """A claimed job failed: due again after a backoff, or given up. Returns whether it will be retried."""
        again = job.attempts < max_attempts
        status = JobStatus.PENDING if again else JobStatus.FAILED
        run_after = now + base_delay_s * 2 ** (job.attempts - 1)

        def write(tx: Transaction) -> None:
            tx.sql(
                "UPDATE jobs SET status = ?, run_after = ?, locked_until = NULL, locked_by = NULL, last_error = ?,"
                " updated_at = ? WHERE id = ?",
                (status.value, run_after, error[:2000], now, job.id),
            )

        await self.db.write(write)
        return again

    async def release_claims(self, now: float) -> int:
        """Take back every claim on pending jobs: for a store only this process uses (SQLite), after a
        restart nobody else can still be working on them, so they need not wait for their leases."""

        def write(tx: Transaction) -> int:
            return tx.change(
                "UPDATE jobs SET locked_until = NULL, locked_by = NULL, updated_at = ? WHERE status = ?"
                " AND locked_until IS NOT NULL",
                (now, JobStatus.PENDING.value),
            )

        return await self.db.write(write)

    async def next_due(self) -> float | None:
        """When the next pending job falls due (a claimed one: when its lease runs out)."""
        rows = await self.db.fetch(
            "SELECT MIN(CASE WHEN locked_until IS NOT NULL AND locked_until > run_after THEN locked_until"
            " ELSE run_after END) FROM jobs WHERE status = ?",
            (JobStatus.PENDING.value,),
        )
        value = rows[0][0] if rows else None
        return None if value is None else float(value)

    async def get(self, job_id: str) -> Job | None:
        rows = await self.db.fetch(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    async def for_run(self, run_id: str) -> list[Job]:
        rows = await self.db.fetch(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE run_id = ? ORDER BY created_at", (run_id,))
        return [_job(r) for r in rows]


def complete_job(tx: Transaction, job_id: str, now: float | None = None) -> bool:
    """Mark a job done, inside the transaction that stores what it produced. False if it was done already
    (a claimant slower than its lease, whose job another finished meanwhile): store nothing then."""
    now = time.time() if now is None else now
    return bool(
        tx.change(
            "UPDATE jobs SET status = ?, locked_until = NULL, locked_by = NULL, updated_at = ? WHERE id = ?"
            " AND status != ?",
            (JobStatus.DONE.value, now, job_id, JobStatus.DONE.value),
        )
    )
