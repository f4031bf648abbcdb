"""Leases of runs (runtime/storage/leases.py): take-over, fencing, orphans, release, the processes' heartbeats.

Two :class:`Store` objects on one PostgreSQL database are two processes as far as the database can tell
(each its own writer threads and connections); on SQLite the same statements run for one process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from runtime.errors import LeaseLost
from runtime.storage import NewMessage, Store
from runtime.storage.jobs import ANALYSIS, JobStore, add_job
from runtime.storage.leases import ProcessInfo
from runtime.types import (
    TERMINAL_EVENTS,
    BlueprintContent,
    EndReason,
    Lease,
    MessageRole,
    Participant,
    Position,
    Question,
    RunStatus,
    SessionEndReason,
    SessionType,
)
from tests.conftest import POSTGRES, postgres_only

LEASE_S = 30.0


def _process(name: str) -> ProcessInfo:
    return ProcessInfo(id=name, slot=f"host:8080:{name}", host="host", pid=1)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = Store(database_url)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def other(store: Store, database_url: str) -> AsyncIterator[Store]:
    """A second process on the same database (PostgreSQL only: a SQLite file is one process's)."""
    if not POSTGRES:
        pytest.skip("SQLite is a single-process store")
    second = Store(database_url)
    await second.open()
    yield second
    await second.close()


async def _run(store: Store, *, started: bool = True) -> str:
    org = await store.catalog.create_organization("org")
    content = BlueprintContent("guide", "Hello.", (Question("q1", "Why?", (), 1),), "Bye.")
    bp = await store.catalog.create_blueprint(org, content)
    run = await store.runs.create_run(
        org, blueprint_id=bp.id, blueprint_version=1, channel_id=None, connector_id=None,
        participant=Participant(None, None, None, {}), metadata={}, join_window_s=60.0,
    )  # fmt: skip
    if started:
        assert await store.runs.start_session(run.id, SessionType.TEXT, time.time()) is not None
    return run.id


def _answer(text: str) -> NewMessage:
    now = time.time()
    return NewMessage(MessageRole.USER, text, now, now, client_id=text)


async def test_a_write_under_a_lease_taken_over_since_is_refused_and_stores_nothing(store: Store) -> None:
    run_id = await _run(store)
    first = await store.leases.take_over(run_id, "a")
    assert first is not None
    message, _ = await store.messages.add_message(run_id, _answer("kept"), lease=first)
    second = await store.leases.take_over(run_id, "b")
    assert second is not None and second.epoch == first.epoch + 1
    before = (await store.runs.get_run(run_id)).last_seq

    with pytest.raises(LeaseLost):
        await store.messages.add_message(run_id, _answer("late"), lease=first)
    with pytest.raises(LeaseLost):
        await store.runs.save_state(run_id, Position(0, 1), time.time(), lease=first)
    with pytest.raises(LeaseLost):
        await store.messages.update_message(message.id, content="rewritten", lease=first)
    with pytest.raises(LeaseLost):
        await store.runs.start_session(run_id, SessionType.TEXT, time.time(), lease=first)
    with pytest.raises(LeaseLost):
        await store.runs.end_run(run_id, EndReason.COMPLETED, lease=first)

    run = await store.runs.get_run(run_id)
    assert run.status is RunStatus.IN_PROGRESS and run.last_seq == before and run.position == Position()
    assert [m.content for m in await store.messages.list_messages(run_id)] == ["kept"]
    # the holder's writes go through
    await store.messages.add_message(run_id, _answer("held"), lease=second)
    assert (await store.runs.end_run(run_id, EndReason.COMPLETED, lease=second)) is not None


async def test_a_refused_write_in_a_shared_commit_is_undone_alone(store: Store) -> None:
    run_id, other_run = await _run(store), await _run(store)
    stale = await store.leases.take_over(run_id, "a")
    assert stale is not None and await store.leases.take_over(run_id, "b") is not None
    held = await store.leases.take_over(other_run, "a")
    results = await asyncio.gather(
        store.messages.add_message(run_id, _answer("fenced"), lease=stale),
        store.messages.add_message(other_run, _answer("stored"), lease=held),
        return_exceptions=True,
    )
    assert isinstance(results[0], LeaseLost) and not isinstance(results[1], BaseException)
    assert await store.messages.list_messages(run_id) == []
    assert [m.content for m in await store.messages.list_messages(other_run)] == ["stored"]


async def test_an_ended_run_cannot_be_taken_over_and_ending_it_fences_its_holder(store: Store) -> None:
    run_id = await _run(store)
    lease = await store.leases.take_over(run_id, "a")
    assert lease is not None
    ended = await store.runs.end_run(run_id, EndReason.CANCELLED)  # e.g. a cancel on another process
    assert ended is not None and ended.status is RunStatus.CANCELLED
    assert await store.runs.end_run(run_id, EndReason.CANCELLED) is None  # once
    with pytest.raises(LeaseLost):
        await store.messages.add_message(run_id, _answer("after the end"), lease=lease)
    assert await store.leases.take_over(run_id, "b") is None
    assert await store.leases.holder(run_id) == (None, lease.epoch + 1, RunStatus.CANCELLED)


async def test_release_ends_the_live_session_and_leaves_the_run_to_anyone(store: Store) -> None:
    run_id = await _run(store)
    lease = await store.leases.take_over(run_id, "a")
    assert lease is not None
    assert await store.leases.release(lease)
    assert not await store.leases.release(lease)  # not held any more
    (session,) = await store.runs.list_sessions(run_id)
    assert session.end_reason is SessionEndReason.SERVER_RESTART
    await store.leases.register(_process("b"), lease_s=LEASE_S)
    (claimed,) = await store.leases.claim_orphans("b", limit=10)
    assert claimed == Lease(run_id, "b", lease.epoch + 2)


async def test_on_sqlite_every_run_held_by_an_earlier_incarnation_is_claimed_on_start(store: Store) -> None:
    if POSTGRES:
        pytest.skip("SQLite: one process, so whatever another incarnation held is this one's")
    runs = [await _run(store) for _ in range(3)]
    pending = await _run(store, started=False)
    for run_id in runs[:2]:
        assert await store.leases.take_over(run_id, "previous") is not None
    await store.leases.register(_process("now"), lease_s=LEASE_S)  # the previous one may look alive: no matter
    claimed = await store.leases.claim_orphans("now", limit=10)
    assert sorted(lease.run_id for lease in claimed) == sorted(runs) and pending not in runs
    for run_id in runs:  # their sessions were left live by the process that died: closed as after a crash
        (session,) = await store.runs.list_sessions(run_id)
        assert session.end_reason is SessionEndReason.SERVER_RESTART
    assert await store.leases.claim_orphans("now", limit=10) == []


@postgres_only("other processes' heartbeats")
async def test_a_run_is_an_orphan_only_once_its_holders_heartbeat_has_run_out(store: Store, other: Store) -> None:
    alive, dead, unowned = await _run(store), await _run(store), await _run(store)
    now = time.time()
    await store.leases.register(_process("alive"), lease_s=LEASE_S, now=now)
    await store.leases.register(_process("dead"), lease_s=1.0, now=now - 5)
    assert await store.leases.take_over(alive, "alive") is not None
    assert await store.leases.take_over(dead, "dead") is not None
    assert not await store.leases.renew("dead", lease_s=LEASE_S)  # too late: it must start over
    await other.leases.register(_process("claimer"), lease_s=LEASE_S)
    claimed = await other.leases.claim_orphans("claimer", limit=10)
    assert sorted(lease.run_id for lease in claimed) == sorted([dead, unowned])
    assert (await store.leases.holder(alive))[0] == "alive"  # type: ignore[index]
    assert await store.leases.renew("alive", lease_s=LEASE_S)


@postgres_only("two processes claiming at once")
async def test_two_processes_claiming_at_once_never_claim_the_same_run(store: Store, other: Store) -> None:
    runs = {await _run(store) for _ in range(40)}
    await store.leases.register(_process("a"), lease_s=LEASE_S)
    await other.leases.register(_process("b"), lease_s=LEASE_S)

    async def claim_all(s: Store, owner: str) -> list[str]:
        got: list[str] = []
        while batch := await s.leases.claim_orphans(owner, limit=3):
            got += [lease.run_id for lease in batch]
        return got

    a, b = await asyncio.gather(claim_all(store, "a"), claim_all(other, "b"))
    assert not set(a) & set(b) and set(a) | set(b) == runs
    for run_id in runs:  # each run's sessions were closed once, by its claimant
        assert [s.end_reason for s in await store.runs.list_sessions(run_id)] == [SessionEndReason.SERVER_RESTART]


@postgres_only("two processes ending one run at once")
async def test_a_run_ended_by_two_processes_at_once_ends_once(store: Store, other: Store) -> None:
    for _ in range(10):
        run_id = await _run(store)
        results = await asyncio.gather(
            store.runs.end_run(run_id, EndReason.IDLE_TIMEOUT), other.runs.end_run(run_id, EndReason.CANCELLED)
        )
        assert sum(r is not None for r in results) == 1
        terminal = [e for e in await store.runs.list_events(run_id) if e.type in TERMINAL_EVENTS]
        assert len(terminal) == 1
        assert len(await JobStore(store.db).for_run(run_id)) == 1  # one analysis


@postgres_only("two processes claiming jobs at once")
async def test_two_processes_claiming_jobs_at_once_take_each_job_once(store: Store, other: Store) -> None:
    run_id = await _run(store)
    now = time.time()

    def jobs(tx: object) -> None:
        for _ in range(30):
            add_job(tx, ANALYSIS, run_id, now)  # type: ignore[arg-type]

    await store.db.write(jobs)
    for name in ("a", "b"):
        await store.leases.register(_process(name), lease_s=LEASE_S)
    a, b = JobStore(store.db, owner="a"), JobStore(other.db, owner="b")
    claims = await asyncio.gather(*(s.claim(now, lease_s=60, limit=4) for s in (a, b, a, b, a, b)))
    ids = [job.id for claim in claims for job in claim]
    assert len(ids) == len(set(ids)) == 24
    assert await b.claim(now, lease_s=60, limit=30) != []  # the 6 left
    assert await b.claim(now, lease_s=60, limit=30) == []  # a's claims hold while a is alive...
    await store.leases.retire("a")
    assert len(await b.claim(now, lease_s=60, limit=30)) == 12  # ...and end with it, before their own lease


async def test_a_restarted_process_replaces_its_predecessor_in_its_slot(store: Store) -> None:
    run_id = await _run(store)
    await store.leases.register(ProcessInfo("old", "host:8080:0", "host", 1), lease_s=LEASE_S)
    assert await store.leases.take_over(run_id, "old") is not None
    await store.leases.register(ProcessInfo("new", "host:8080:0", "host", 2), lease_s=LEASE_S)
    assert [p[0] for p in await store.leases.processes()] == ["new"]
    assert not await store.leases.renew("old", lease_s=LEASE_S)  # it is over, were it still running
    (claimed,) = await store.leases.claim_orphans("new", limit=10)  # at once, not a lease period later
    assert claimed.run_id == run_id
