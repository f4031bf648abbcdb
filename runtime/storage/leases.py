"""Which server process acts for a run in progress: leases, heartbeats, takeover and fencing.

Several processes may serve one PostgreSQL database. A run in progress is acted for (its
timers, its interviewer, its participant's connection) by exactly one of them: the one its
row names in ``runs.owner_id``. That is the run's lease; ``runs.lease_epoch`` is its fencing
token, raised by every change of hands.

* Expiry is held per process, not per run: each process renews one row of
  ``server_processes`` (``alive_until``) on a timer, so a heartbeat costs one UPDATE however
  many runs the process holds. A run whose owner's row has expired (or that has no owner) is
  an orphan, and any process may claim it (:meth:`LeaseStore.claim_orphans`, ``FOR UPDATE
  SKIP LOCKED``: two processes never claim the same one).
* A participant may join through any process: that process takes the run over at once
  (:meth:`LeaseStore.take_over`), whether its owner is alive or not, and the owner is told by
  a notification (``vivavoce_leases``) to let its connection go.
* Fencing: every write a process makes for a run it acts for names the lease it believes it
  holds (:class:`~runtime.types.Lease`), and the statement that numbers the write's event
  matches the run's row only while it still names that owner and epoch
  (:mod:`runtime.storage.run_log`); otherwise :class:`~runtime.errors.LeaseLost`, and nothing of
  the write is stored. So a process that was paused or cut off, and whose run was taken over
  meanwhile, cannot store (and so cannot send: every message is stored before it is sent)
  anything for it once it wakes up. On top of that a process stops acting for all its runs
  when its own heartbeat has not been renewed for a lease period less a margin
  (api/live/ownership.py), before anyone else may claim them.
* A process whose heartbeat row has expired never renews it (the renewal only extends a row
  still alive): it lets its runs go and registers again as a new incarnation, so the runs it
  held are orphans that some process claims, never runs held by a live-looking owner that
  acts for none of them.

On SQLite the store is one process's: the same statements run (a join claims, writes are
fenced), but every run not held by this very incarnation is its to claim on start, and
nothing expires.

Expiry compares wall clocks of different machines (as the runs' timers already do): keep them
synchronised (NTP); the margin absorbs a skew well under a second.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime.storage import postgres
from runtime.storage.database import Database, Transaction
from runtime.types import Lease, RunStatus, SessionEndReason, StrEnum

if TYPE_CHECKING:
    from runtime.storage.runs import RunStore

CHANNEL = "vivavoce_leases"
FORGET_AFTER_S = 3600.0  # rows of processes dead for this long are deleted


class LeaseChange(StrEnum):
    """What a lease notification says about a run (``<change> <run id> <new epoch>``)."""

    TAKEN = "taken"  # a participant joined through another process, which took the run over
    CLAIMED = "claimed"  # claimed by another process after its owner's heartbeat ran out
    ENDED = "ended"  # ended by a process that did not hold it (a cancel, an erasure)
    RELEASED = "released"  # its owner let it go (draining): any process may claim it now


@dataclass(frozen=True)
class Notice:
    change: LeaseChange
    run_id: str
    epoch: int


def notice_text(change: LeaseChange, run_id: str, epoch: int) -> str:
    return f"{change} {run_id} {epoch}"


def parse_notice(payload: str) -> Notice:
    """A lease notification's payload (:class:`ValueError` if it is not one)."""
    change, run_id, epoch = payload.split(" ")
    return Notice(LeaseChange(change), run_id, int(epoch))


@dataclass(frozen=True)
class ProcessInfo:
    """One server process: ``id`` is this incarnation's, ``slot`` what a restart of it would share
    (host, port and worker number), so a restarted process need not wait for its predecessor's lease."""

    id: str
    slot: str
    host: str
    pid: int


class HeartbeatLine:
    """The heartbeat's own connection to PostgreSQL, used from the heartbeat's thread only.

    Why not a write like the others: a renewal that queues behind a backlog of data writes, or waits for an
    event loop busy with thousands of joins, arrives late, and a process that is merely slow lets every run
    it holds go at once, for another process (as loaded) to claim: measured with 5000 chat participants
    joining two processes on two cores, a lapse dropped 1490 interviews. A process that is paused, or cut
    off from the database, still stops renewing: its threads stop too, or its connection fails.
    """

    def __init__(self, url: str, *, timeout_s: float) -> None:
        self._url = url
        self._timeout_s = timeout_s
        self._conn: Any = None

    def renew(self, process_id: str, *, lease_s: float, now: float | None = None) -> bool:
        """:meth:`LeaseStore.renew`, blocking; raises the driver's error if the database cannot be reached."""
        import psycopg  # the PostgreSQL drivers are an optional install

        now = time.time() if now is None else now
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(
                    postgres.dsn(self._url),
                    autocommit=True,
                    application_name=f"{postgres.APPLICATION} heartbeat",
                    connect_timeout=max(2, round(self._timeout_s)),  # libpq's least
                    options=f"-c statement_timeout={round(self._timeout_s * 1000)}",
                    keepalives=1,
                    keepalives_idle=10,
                    keepalives_interval=5,
                    keepalives_count=3,
                )
            cursor = self._conn.execute(
                "UPDATE server_processes SET alive_until = %s WHERE id = %s AND alive_until >= %s",
                (now + lease_s, process_id, now),
            )
            return bool(cursor.rowcount)
        except psycopg.Error:
            self.close()  # the next beat connects afresh
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


class LeaseStore:
    def __init__(self, db: Database, runs: RunStore) -> None:
        self.db = db
        self.runs = runs
        self._skip_locked = " FOR UPDATE SKIP LOCKED" if db.shared else ""

    # --- the processes' heartbeats ----------------------------------------------------------

    async def register(
        self, process: ProcessInfo, *, lease_s: float, replaces: str | None = None, now: float | None = None
    ) -> None:
        """Start this incarnation's heartbeat; earlier incarnations in its slot (the port and worker number
        are this one's now) and the one it ``replaces`` are dead, so their runs are orphans at once."""
        now = time.time() if now is None else now

        def write(tx: Transaction) -> None:
            tx.change(
                "UPDATE server_processes SET alive_until = 0"
                " WHERE (slot = ? OR id = ?) AND id != ? AND alive_until > 0",
                (process.slot, replaces or "", process.id),
            )
            tx.change("DELETE FROM server_processes WHERE alive_until < ?", (now - FORGET_AFTER_S,))
            tx.change(
                "INSERT INTO server_processes (id, slot, host, pid, started_at, alive_until) VALUES (?, ?, ?, ?, ?, ?)",
                (process.id, process.slot, process.host, process.pid, now, now + lease_s),
            )

        await self.db.write(write)

    async def renew(self, process_id: str, *, lease_s: float, now: float | None = None) -> bool:
        """Extend this incarnation's heartbeat; False if it had already run out (its runs may be claimed:
        it must let them go and register again)."""
        now = time.time() if now is None else now

        def write(tx: Transaction) -> int:
            return tx.change(
                "UPDATE server_processes SET alive_until = ? WHERE id = ? AND alive_until >= ?",
                (now + lease_s, process_id, now),
            )

        return bool(await self.db.write(write))

    async def retire(self, process_id: str) -> None:
        """This incarnation is gone (it has handed its runs over)."""

        def write(tx: Transaction) -> None:
            tx.change("UPDATE server_processes SET alive_until = 0 WHERE id = ?", (process_id,))

        await self.db.write(write)

    async def processes(self, *, now: float | None = None) -> list[tuple[str, str, int, float]]:
        """The live processes: (id, slot, pid, alive_until), for operators and tests."""
        now = time.time() if now is None else now
        rows = await self.db.fetch(
            "SELECT id, slot, pid, alive_until FROM server_processes WHERE alive_until >= ? ORDER BY slot", (now,)
        )
        return [(r[0], r[1], int(r[2]), float(r[3])) for r in rows]

    # --- runs changing hands ------------------------------------------------------------------

    async def take_over(self, run_id: str, owner: str) -> Lease | None:
        """Take the run (pending or in progress) for ``owner``, from whoever holds it; None if it has ended.

        The previous holder, if any, is fenced from this commit on and told (``taken``)."""

        def write(tx: Transaction) -> Lease | None:
            rows = tx.sql(f"SELECT status, owner_id, lease_epoch FROM runs WHERE id = ?{tx.row_lock}", (run_id,))
            if not rows or RunStatus(rows[0][0]).is_terminal:
                return None
            previous, epoch = rows[0][1], int(rows[0][2]) + 1
            tx.change("UPDATE runs SET owner_id = ?, lease_epoch = ? WHERE id = ?", (owner, epoch, run_id))
            if previous is not None and previous != owner:
                tx.notify(CHANNEL, notice_text(LeaseChange.TAKEN, run_id, epoch))
            return Lease(run_id, owner, epoch)

        return await self.db.write(write, run_id=run_id)

    async def claim_orphans(self, owner: str, *, limit: int, now: float | None = None) -> list[Lease]:
        """Claim up to ``limit`` runs in progress whose owner is gone (none, or its heartbeat ran out; on
        SQLite: any owner but this incarnation). Their live sessions are closed as ``server_restart`` at
        the moment they were last seen, as after a crash; their previous owners, were they to wake up, are
        fenced and told (``claimed``)."""
        now = time.time() if now is None else now

        def write(tx: Transaction) -> list[Lease]:
            if self.db.shared:
                rows = tx.sql(
                    "SELECT id, owner_id, lease_epoch FROM runs WHERE status = ? AND (owner_id IS NULL OR NOT EXISTS"
                    " (SELECT 1 FROM server_processes p WHERE p.id = runs.owner_id AND p.alive_until >= ?))"
                    " ORDER BY id LIMIT ?" + self._skip_locked,
                    (RunStatus.IN_PROGRESS.value, now, limit),
                )
            else:
                rows = tx.sql(
                    "SELECT id, owner_id, lease_epoch FROM runs WHERE status = ?"
                    " AND (owner_id IS NULL OR owner_id != ?) ORDER BY id LIMIT ?",
                    (RunStatus.IN_PROGRESS.value, owner, limit),
                )
            leases = []
            for run_id, previous, epoch in rows:
                lease = Lease(run_id, owner, int(epoch) + 1)
                tx.change("UPDATE runs SET owner_id = ?, lease_epoch = ? WHERE id = ?", (owner, lease.epoch, run_id))
                self.runs.close_orphaned_sessions(tx, run_id)
                if previous is not None:
                    tx.notify(CHANNEL, notice_text(LeaseChange.CLAIMED, run_id, lease.epoch))
                leases.append(lease)
            return leases

        return await self.db.write(write)

    async def release(self, lease: Lease, *, now: float | None = None) -> bool:
        """Let the run go (draining): its live session ends now as ``server_restart`` and any process may
        claim it (they are told: ``released``). False if ``lease`` was no longer held."""
        now = time.time() if now is None else now

        def write(tx: Transaction) -> bool:
            rows = tx.sql(f"SELECT status, owner_id, lease_epoch FROM runs WHERE id = ?{tx.row_lock}", (lease.run_id,))
            if not rows or (rows[0][1], rows[0][2]) != (lease.owner, lease.epoch):
                return False
            if not RunStatus(rows[0][0]).is_terminal:
                self.runs.end_sessions_now(tx, lease.run_id, SessionEndReason.SERVER_RESTART, now)
            epoch = lease.epoch + 1
            tx.change("UPDATE runs SET owner_id = NULL, lease_epoch = ? WHERE id = ?", (epoch, lease.run_id))
            tx.notify(CHANNEL, notice_text(LeaseChange.RELEASED, lease.run_id, epoch))
            return True

        return await self.db.write(write, run_id=lease.run_id)

    async def held(self, owner: str) -> dict[str, int]:
        """The runs in progress ``owner`` holds, with their epochs (to find leases lost unnoticed)."""
        rows = await self.db.fetch(
            "SELECT id, lease_epoch FROM runs WHERE owner_id = ? AND status = ?", (owner, RunStatus.IN_PROGRESS.value)
        )
        return {r[0]: int(r[1]) for r in rows}

    async def holder(self, run_id: str) -> tuple[str | None, int, RunStatus] | None:
        """Who holds the run now (owner, epoch, status); None if there is no such run."""
        rows = await self.db.fetch("SELECT owner_id, lease_epoch, status FROM runs WHERE id = ?", (run_id,))
        return (rows[0][0], int(rows[0][1]), RunStatus(rows[0][2])) if rows else None
