"""This process's heartbeat (api/live/ownership.py): a slow process keeps its runs, a silent one lets them go.

Two :class:`Store` objects on one PostgreSQL database stand for two processes. The event loop is stalled on
purpose (``time.sleep`` inside a coroutine: no task runs), as it is in a process saturated by joins.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from api.live import Ownership
from runtime.storage import Store
from runtime.storage.leases import HeartbeatLine, ProcessInfo
from tests.conftest import UNIT, postgres_only
from tests.runtime.test_leases import _run

pytestmark = postgres_only("other processes' heartbeats")

LEASE_S = 1.0 * UNIT


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[tuple[Store, Store]]:
    first, second = Store(database_url), Store(database_url)
    await first.open()
    await second.open()
    yield first, second
    await first.close()
    await second.close()


async def test_a_process_whose_event_loop_is_stuck_keeps_its_runs_while_its_heartbeat_thread_beats(
    stores: tuple[Store, Store], database_url: str
) -> None:
    store, other = stores
    ownership = Ownership(store.leases, shared=True, lease_s=LEASE_S)
    await ownership.register()
    run_id = await _run(store)
    assert await store.leases.take_over(run_id, ownership.id) is not None
    await other.leases.register(ProcessInfo("claimer", "host:1:0", "host", 1), lease_s=30.0)

    ownership.beat_in_thread(HeartbeatLine(database_url, timeout_s=ownership.renew_every))
    time.sleep(3 * LEASE_S)  # the loop does nothing for three lease periods: renewals still go out
    assert ownership.may_act()
    assert await other.leases.claim_orphans("claimer", limit=10) == []

    ownership.stop_beating()  # now silent, as a paused or cut-off process is
    time.sleep(1.2 * LEASE_S)
    assert not ownership.may_act()  # it stopped acting before the others may take over ...
    claimed = await other.leases.claim_orphans("claimer", limit=10)
    assert [lease.run_id for lease in claimed] == [run_id]  # ... and then they do


async def test_a_renewal_that_finds_the_row_run_out_ends_the_incarnation(
    stores: tuple[Store, Store], database_url: str
) -> None:
    store, _ = stores
    ownership = Ownership(store.leases, shared=True, lease_s=LEASE_S)
    await ownership.register()
    await store.leases.retire(ownership.id)  # as if another process had declared it dead
    ownership.beat_in_thread(HeartbeatLine(database_url, timeout_s=ownership.renew_every))
    time.sleep(0.6 * LEASE_S)  # one beat (every quarter lease) has found the row gone
    assert not ownership.may_act()
    ownership.stop_beating()
    await ownership.reincarnate()
    assert ownership.may_act() and ownership.incarnations == 2
