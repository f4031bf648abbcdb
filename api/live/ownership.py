"""This process among the processes sharing the store: its identity and its heartbeat (runtime/storage/leases.py).

:class:`Ownership` registers the process (one row of ``server_processes``), renews that
row every quarter of the lease period and says whether the process may still act for
the runs it holds (:meth:`Ownership.may_act`): not once a lease period less a margin has
passed since its last renewal was committed, which is before any other process may
take its runs (they wait for the whole period). A renewal that comes too late (the
process was paused, or cut off from the database) is not attempted: the incarnation is
over, its runs are let go, and the process registers again under a new id, so the runs
it held become orphans for whichever process claims them first (it may be this one).

On PostgreSQL the renewals are sent from a thread of their own over a connection of their own
(:class:`~runtime.storage.leases.HeartbeatLine`): a process that is only slow (its event loop busy, its
writes queued) keeps its runs; one that is paused or cut off does not.

On SQLite nothing expires: there is no other process to hand anything to.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable

from runtime.storage import LeaseStore
from runtime.storage.leases import HeartbeatLine, ProcessInfo

log = logging.getLogger("vivavoce.live")

LEASE_S = 10.0  # a process unheard of for this long is presumed dead and its runs are claimed
RENEWALS_PER_LEASE = 4  # the heartbeat: three may fail before the process stops acting
MARGIN_FRACTION = 0.25  # it stops acting this fraction of the lease before others may take over


def process_name(worker: int | None) -> str:
    """How logs and ``server_processes`` name this process: the host, the worker number, the pid."""
    host = socket.gethostname()
    return f"{host}/{'main' if worker is None else f'worker-{worker}'}/{os.getpid()}"


class Ownership:
    def __init__(
        self,
        leases: LeaseStore,
        *,
        shared: bool,
        slot: str | None = None,
        lease_s: float = LEASE_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.leases = leases
        self.shared = shared  # other processes may hold runs of this store (PostgreSQL)
        self.lease_s = lease_s
        self.renew_every = lease_s / RENEWALS_PER_LEASE
        self.margin = lease_s * MARGIN_FRACTION
        self._slot = slot
        self._monotonic = monotonic
        self.info = self._new_identity()
        self._renewed_at = monotonic()  # when the last committed renewal was sent
        self._expired = False  # this incarnation's row had run out when a renewal came (it must start over)
        self.incarnations = 1
        self._beating: threading.Thread | None = None
        self._stop_beating = threading.Event()

    @property
    def id(self) -> str:
        return self.info.id

    def _new_identity(self) -> ProcessInfo:
        host = socket.gethostname()
        own = f"{host}-{os.getpid()}-{secrets.token_hex(3)}"
        # a slot names what a restart of this process would take the place of; without a port of its own
        # (tests, port 0) a process replaces nothing
        return ProcessInfo(id=own, slot=self._slot or own, host=host, pid=os.getpid())

    def lapses_in(self) -> float:
        """Seconds until :meth:`may_act` turns False without a renewal (infinite on a store of its own)."""
        if not self.shared:
            return float("inf")
        return self._renewed_at + self.lease_s - self.margin - self._monotonic()

    def may_act(self) -> bool:
        """Whether this process may still act for the runs it holds (always, on a store it has alone)."""
        if not self.shared:
            return True
        return not self._expired and self._monotonic() - self._renewed_at < self.lease_s - self.margin

    @property
    def beating(self) -> bool:
        """Renewals are sent by the heartbeat thread (:meth:`beat_in_thread`), not by :meth:`renew`."""
        return self._beating is not None

    def beat_in_thread(self, line: HeartbeatLine) -> None:
        """Renew every quarter lease from a thread of its own, over ``line``; :meth:`may_act` turns False when
        renewals stop coming (the database is out of reach) or one finds this incarnation's row run out."""
        if self._beating is not None:
            return
        self._stop_beating.clear()
        self._beating = threading.Thread(target=self._beat, args=(line,), name="vivavoce-heartbeat", daemon=True)
        self._beating.start()

    def stop_beating(self) -> None:
        thread, self._beating = self._beating, None
        if thread is not None:
            self._stop_beating.set()
            thread.join()

    def _beat(self, line: HeartbeatLine) -> None:
        try:
            while not self._stop_beating.wait(self.renew_every):
                if not self.may_act():
                    continue  # too late: the event loop lets this incarnation's runs go and registers again
                process_id, sent = self.id, self._monotonic()  # the lease runs from when the renewal was sent
                try:
                    renewed = line.renew(process_id, lease_s=self.lease_s)
                except Exception as exc:  # the database is out of reach: the next beat tries again
                    log.warning("lease renewal failed (%r)", exc)
                    continue
                if process_id != self.id:
                    continue  # the renewal of an incarnation that has been replaced meanwhile
                if renewed:
                    self._renewed_at = sent
                else:
                    self._expired = True
        finally:
            line.close()

    async def register(self) -> None:
        sent = self._monotonic()
        await self.leases.register(self.info, lease_s=self.lease_s)
        self._renewed_at = sent

    async def renew(self) -> bool:
        """Extend the heartbeat; False if this incarnation is over (too late, or the row had run out)."""
        if not self.may_act():
            return False
        sent = self._monotonic()  # the lease runs from when the renewal was sent, not from when it returned
        if not await self.leases.renew(self.id, lease_s=self.lease_s):
            return False
        self._renewed_at = sent
        return True

    async def reincarnate(self) -> None:
        """Start over under a new id (the runs of the old one are orphans now, even if a late renewal of it
        went through)."""
        previous, self.info = self.info.id, self._new_identity()
        self.incarnations += 1
        sent = self._monotonic()
        await self.leases.register(self.info, lease_s=self.lease_s, replaces=previous)
        self._renewed_at = sent
        self._expired = False

    async def retire(self) -> None:
        await self.leases.retire(self.id)
