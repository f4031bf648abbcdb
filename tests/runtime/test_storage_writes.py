"""The writer thread: savepoints per write inside a group commit, gapless event numbers, idempotent client ids."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from runtime.errors import StorageUnavailable
from runtime.serialize import message_json, message_text
from runtime.storage import NewMessage, Store, postgres
from runtime.storage import schema as t
from runtime.storage.database import Database, Transaction
from runtime.types import (
    BlueprintContent,
    EndReason,
    EventType,
    LatencyBreakdown,
    MessageRole,
    Participant,
    Position,
    Question,
    SessionType,
    UtteranceKind,
)
from tests.conftest import POSTGRES, UNIT, postgres_only


async def _store(url: str) -> tuple[Store, str, str]:
    store = Store(url)
    await store.open()
    org = await store.catalog.create_organization("org")
    content = BlueprintContent("guide", "Hello.", (Question("q1", "Why?", (), 1),), "Bye.")
    bp = await store.catalog.create_blueprint(org, content)
    return store, org, bp.id


async def _run(store: Store, org: str, bp_id: str) -> str:
    run = await store.runs.create_run(
        org,
        blueprint_id=bp_id,
        blueprint_version=1,
        channel_id=None,
        connector_id=None,
        participant=Participant(None, None, None, {}),
        metadata={},
        join_window_s=60.0,
    )
    assert await store.runs.start_session(run.id, SessionType.TEXT, time.time()) is not None
    return run.id


async def test_a_failing_write_is_undone_alone_and_the_batch_commits(database_url: str) -> None:
    store, org, bp_id = await _store(database_url)
    try:
        run_id = await _run(store, org, bp_id)
        before = (await store.runs.get_run(run_id)).last_seq

        def fails(tx: Transaction) -> None:
            tx.sql("UPDATE runs SET last_seq = last_seq + 100 WHERE id = ?", (run_id,))
            raise RuntimeError("boom")

        now = time.time()
        results = await asyncio.gather(
            store.messages.add_message(run_id, NewMessage(MessageRole.USER, "one", now, now, client_id="a")),
            store.db.write(fails),
            store.messages.add_message(run_id, NewMessage(MessageRole.USER, "two", now, now, client_id="b")),
            return_exceptions=True,
        )
        assert isinstance(results[1], RuntimeError)
        assert [m.content for m in await store.messages.list_messages(run_id)] == ["one", "two"]
        events = await store.runs.list_events(run_id)
        assert [e.seq for e in events] == list(range(1, before + 3))
        assert (await store.runs.get_run(run_id)).last_seq == before + 2
    finally:
        await store.close()


async def test_event_numbers_stay_gapless_under_concurrent_writes(database_url: str) -> None:
    store, org, bp_id = await _store(database_url)
    try:
        runs = [await _run(store, org, bp_id) for _ in range(5)]
        now = time.time()

        async def turns(run_id: str) -> None:
            for i in range(20):
                answer = NewMessage(MessageRole.USER, f"a{i}", now, now, client_id=f"c{i}")
                await store.messages.add_message(run_id, answer)
                await store.runs.save_state(run_id, Position(i, 0), now)

        await asyncio.gather(*(turns(r) for r in runs for _ in range(2)))  # the second pass only retries
        for run_id in runs:
            events = await store.runs.list_events(run_id)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert len([e for e in events if e.type is EventType.MESSAGE_CREATED]) == 20
            assert len(await store.messages.list_messages(run_id)) == 20
            assert (await store.runs.get_run(run_id)).position == Position(19, 0)
    finally:
        await store.close()


async def test_stored_rows_read_back_as_written(database_url: str) -> None:
    """Plain-SQL writes keep the column formats SQLAlchemy's types read (JSON text, booleans, NULL as 'null')."""
    store, org, bp_id = await _store(database_url)
    try:
        run_id = await _run(store, org, bp_id)
        now = time.time()
        latency = LatencyBreakdown(network=1.5, initial_wait=2.0, llm=3.25)
        new = NewMessage(
            MessageRole.ASSISTANT,
            "Why? \u00e9",
            now,
            now + 1,
            question_id="q1",
            kind=UtteranceKind.QUESTION,
            is_filler=True,
            latency=latency,
        )
        msg, created = await store.messages.add_message(run_id, new, position=Position(1, 1, True), idle_since=now)
        user, _ = await store.messages.add_message(run_id, NewMessage(MessageRole.USER, "x", now, now))
        assert created
        stored = await store.messages.list_messages(run_id)
        assert stored == [msg, user]
        assert stored[0].latency == latency and stored[0].is_filler is True and stored[1].latency is None
        run = await store.runs.get_run(run_id)
        assert run.position == Position(1, 1, True) and run.idle_since == now
        events = await store.runs.list_events(run_id)
        assert events[-2].data["message"]["id"] == msg.id
        assert events[-2].data["message"]["latency_breakdown"]["llm"] == 3.25
        ((raw,),) = await store.db.fetch("SELECT latency FROM messages WHERE id = ?", (user.id,))
        async with store.db.read() as conn:
            data = (await conn.execute(select(t.events.c.data).where(t.events.c.seq == events[-1].seq))).scalar()
        assert raw == "null"
        assert json.loads(json.dumps(data)) == events[-1].data
    finally:
        await store.close()


async def test_a_retried_client_id_returns_the_stored_message(database_url: str) -> None:
    store, org, bp_id = await _store(database_url)
    try:
        run_id = await _run(store, org, bp_id)
        now = time.time()
        new = NewMessage(MessageRole.USER, "a", now, now, client_id="k")
        first, created = await store.messages.add_message(run_id, new)
        again, created_again = await store.messages.add_message(
            run_id, NewMessage(MessageRole.USER, "a", now + 5, now + 5, client_id="k")
        )
        assert created and not created_again and again == first
        assert len(await store.messages.list_messages(run_id)) == 1
        with pytest.raises(Exception):  # noqa: B017 - no such run: the foreign key refuses it
            await store.messages.add_message("run_missing", NewMessage(MessageRole.USER, "a", now, now))
    finally:
        await store.close()


async def test_sessions_and_the_end_of_a_run_number_their_events_in_order(database_url: str) -> None:
    store, org, bp_id = await _store(database_url)
    try:
        run_id = await _run(store, org, bp_id)  # created, started, first session
        started = await store.runs.start_session(run_id, SessionType.TEXT, time.time())  # replaces the first
        assert started is not None
        run, session = started
        assert run.status.value == "in_progress" and run.last_seq == 5
        assert run.participant == Participant(None, None, None, {}) and run.position == Position()
        ended = await store.runs.end_run(run_id, EndReason.CANCELLED, time.time())
        assert ended is not None and ended.status.value == "cancelled" and ended.end_reason is EndReason.CANCELLED
        assert await store.runs.end_run(run_id, EndReason.CANCELLED) is None
        assert await store.runs.start_session(run_id, SessionType.TEXT, time.time()) is None
        events = await store.runs.list_events(run_id)
        assert [(e.seq, e.type.value) for e in events] == [
            (1, "run.created"),
            (2, "run.started"),
            (3, "session.started"),
            (4, "session.ended"),
            (5, "session.started"),
            (6, "session.ended"),
            (7, "run.cancelled"),
        ]
        assert events[3].data["session"]["end_reason"] == "replaced"
        assert events[5].data["session"]["id"] == session.id
        assert events[6].data["status"] == "cancelled"
        assert (await store.runs.get_run(run_id)).last_seq == 7
        assert [s.status.value for s in await store.runs.list_sessions(run_id)] == ["ended", "ended"]
    finally:
        await store.close()


async def test_one_batch_with_a_failing_write_commits_the_others_and_undoes_it(database_url: str) -> None:
    store, org, bp_id = await _store(database_url)
    try:
        run_id = await _run(store, org, bp_id)
        before = (await store.runs.get_run(run_id)).last_seq
        gate = threading.Event()

        def hold(tx: Transaction) -> None:  # keeps the writer busy until everything below has queued
            gate.wait(5)

        def fails(tx: Transaction) -> None:
            tx.sql("UPDATE runs SET last_seq = last_seq + 100 WHERE id = ?", (run_id,))
            raise RuntimeError("boom")

        now = time.time()
        held = asyncio.ensure_future(store.db.write(hold, run_id=run_id))  # the run's writer thread
        await asyncio.sleep(0.05)
        commits = store.db.commits
        writes = [
            store.messages.add_message(run_id, NewMessage(MessageRole.USER, f"m{i}", now, now, client_id=f"c{i}"))
            for i in range(3)
        ]
        failing = store.db.write(fails, run_id=run_id)
        batch = asyncio.gather(writes[0], failing, writes[1], writes[2], return_exceptions=True)
        await asyncio.sleep(0.05)
        gate.set()
        await held
        results = await batch
        assert isinstance(results[1], RuntimeError)
        assert store.db.commits == commits + 2  # the held write, then the three others in one batch
        assert [m.content for m in await store.messages.list_messages(run_id)] == ["m0", "m1", "m2"]
        assert [e.seq for e in await store.runs.list_events(run_id)] == list(range(1, before + 4))

        with pytest.raises(RuntimeError):  # alone in its batch: rolled back all the same
            await store.db.write(fails)
        assert (await store.runs.get_run(run_id)).last_seq == before + 3
    finally:
        await store.close()


async def test_a_stored_message_is_sent_as_the_text_it_was_stored_with(database_url: str) -> None:
    store, org, bp_id = await _store(database_url)
    try:
        run_id = await _run(store, org, bp_id)
        started = (await store.runs.get_run(run_id)).started_at
        now = time.time()
        msg, _ = await store.messages.add_message(run_id, NewMessage(MessageRole.USER, "caf\u00e9 \u2615", now, now))
        expected = json.dumps(message_json(msg, started), separators=(",", ":"))
        assert message_text(msg, started) == expected  # remembered by the writer
        assert message_text(msg, None) == json.dumps(message_json(msg, None), separators=(",", ":"))
        (copy,) = await store.messages.list_messages(run_id)
        assert copy is not msg and message_text(copy, started) == expected  # not remembered: encoded again
        event = (await store.runs.list_events(run_id))[-1]
        assert event.data == {"message": message_json(msg, started)}
        frame = f'{{"type":"message.ack","client_id":{json.dumps(None)},"message":{expected}}}'
        assert frame == json.dumps(
            {"type": "message.ack", "client_id": None, "message": message_json(msg, started)}, separators=(",", ":")
        )
    finally:
        await store.close()


class _Escapes(BaseException):
    """A failure that is not an ``Exception``: it gets past a write's own error handling."""


async def test_a_database_that_cannot_be_opened_refuses_writes_instead_of_hanging(tmp_path: Path) -> None:
    if POSTGRES:  # nothing listens on that port
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            url = f"postgresql://postgres@127.0.0.1:{s.getsockname()[1]}/absent"
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'db.sqlite'}"
    db = Database(url)
    try:
        for _ in range(2):  # and again: the writer is still there to answer
            with pytest.raises(StorageUnavailable, match="could not be written"):
                await asyncio.wait_for(db.write(lambda tx: tx.sql("SELECT 1")), 5 * UNIT)
    finally:
        await asyncio.wait_for(db.close(), 5 * UNIT)


async def test_a_failure_that_escapes_a_write_refuses_its_batch_and_the_next_write_commits(database_url: str) -> None:
    store, org, bp_id = await _store(database_url)
    try:
        run_id = await _run(store, org, bp_id)

        def escape(tx: Transaction) -> None:
            tx.sql('UPDATE runs SET metadata = \'{"lost": "yes"}\' WHERE id = ?', (run_id,))
            raise _Escapes

        with pytest.raises(StorageUnavailable):
            await asyncio.wait_for(store.db.write(escape), 5 * UNIT)
        new = NewMessage(MessageRole.USER, "still here", started_at=time.time(), ended_at=time.time())
        _, created = await asyncio.wait_for(store.messages.add_message(run_id, new), 5 * UNIT)
        assert created
        assert [m.content for m in await store.messages.list_messages(run_id)] == ["still here"]
        assert (await store.runs.get_run(run_id)).metadata == {}  # the escaped write was rolled back
    finally:
        await store.close()


@postgres_only("writes of different runs commit side by side in several writer threads")
async def test_two_writers_that_deadlock_both_commit(database_url: str) -> None:
    """Two writes, in two writer threads, lock two runs' rows in opposite orders. PostgreSQL breaks the
    deadlock by undoing one of them; it runs again by itself, so both writers get their result, not an
    error, and each change is made once."""
    store, org, bp_id = await _store(database_url)
    try:
        one, other = await _run(store, org, bp_id), await _run(store, org, bp_id)
        lanes = postgres.WRITERS
        keys = {hash(f"lane-{i}") % lanes: f"lane-{i}" for i in range(50)}  # the lane a write's run id takes
        assert len(keys) >= 2
        key_a, key_b = list(keys.values())[:2]
        both_locked = threading.Barrier(2)
        tries = {"a": 0, "b": 0}

        def cross(name: str, first: str, then: str) -> Any:
            def write(tx: Transaction) -> int:
                tries[name] += 1
                tx.change("UPDATE runs SET metadata = ? WHERE id = ?", (json.dumps({name: "first"}), first))
                if tries[name] == 1:
                    both_locked.wait(timeout=10 * UNIT)  # each holds one row; now each wants the other's
                tx.change("UPDATE runs SET cached_tokens = cached_tokens + 1 WHERE id = ?", (then,))
                return tries[name]

            return write

        results = await asyncio.gather(
            store.db.write(cross("a", one, other), run_id=key_a),
            store.db.write(cross("b", other, one), run_id=key_b),
        )
        assert sorted(results) == [1, 2]  # one went through; the one PostgreSQL undid ran a second time
        for run_id in (one, other):
            rows = await store.db.fetch("SELECT cached_tokens FROM runs WHERE id = ?", (run_id,))
            assert rows[0][0] == 1  # once each, not twice: the undone try left nothing
    finally:
        await store.close()
