"""This process among the processes sharing the store: its identity and its heartbeat (runtime/storage/leases.py).

:class:`Ownership` registers the process (one row of ``server_processes``), renews that
row every quarter of the lease period and says whether the process may still act for
the runs it holds (:meth:`Ownership.may_act`): not once a lease period less a margin has
passed since its last renewal was committed, which is before any other process may
take its runs (they wait for the whole period). A renewal that comes too late (the
process was paused, or cut off from the database) is not attempted: the incarnation is
over, its runs are let go, and the process registers again under a new id, so the runs
it held become orphans for whichever process claims them first (it may be this one).

On SQLite nothing expires: there is no other process to hand anything to.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable

from runtime.storage import LeaseStore
from runtime.storage.leases import ProcessInfo

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
        self.incarnations = 1

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
        return not self.shared or self._monotonic() - self._renewed_at < self.lease_s - self.margin

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

    async def retire(self) -> None:
        await self.leases.retire(self.id)
