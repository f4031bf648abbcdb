"""PostgreSQL unreachable for a while: writes are refused with ``storage_unavailable``, nothing acknowledged is
lost, and the server recovers by itself when the database is back (its pools reconnect, its listener too).

The database is cut off for one server only, by a TCP proxy between that server and PostgreSQL: the shared
PostgreSQL server keeps running for everything else.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.tcp_proxy import TcpProxy
from tests.api.test_events import SseReader
from tests.conftest import (
    BLUEPRINT,
    LONG_ANSWER,
    UNIT,
    Participant,
    Server,
    ServerFactory,
    database_url_for,
    eventually,
    postgres_only,
)

pytestmark = postgres_only("the database is reached over the network only on PostgreSQL")


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A proxy to this test's database, and the database's URL through it."""
    url = database_url_for(tmp_path / "db")
    assert url is not None
    proxy = TcpProxy.to_url(url)
    await proxy.start()
    yield proxy, proxy.url(url)
    await proxy.close()


async def say_until_stored(p: Participant, text: str, client_id: str) -> tuple[dict[str, Any], int]:
    """What the page does: send the answer, and send it again (same client_id) while it is refused.
    Returns the ack and how many times it was refused."""
    refused = 0
    while True:
        await p.send({"type": "message", "content": text, "client_id": client_id})
        while True:
            frame = await p.recv(10)
            if frame["type"] == "message.ack" and frame["client_id"] == client_id:
                return frame, refused
            if frame["type"] == "error":
                assert (frame["code"], frame["client_id"]) == ("storage_unavailable", client_id), frame
                refused += 1
                break
        await asyncio.sleep(0.2 * UNIT)


async def test_writes_are_refused_while_the_database_is_cut_off_and_the_server_recovers_by_itself(
    server_factory: ServerFactory, proxy: tuple[TcpProxy, str]
) -> None:
    cutter, url = proxy
    server = await server_factory(database_url=url)
    run = await server.create_run()
    p = await server.join(run)
    await p.until("message", kind="question", question_id="q1")
    await p.say("I teach")
    await p.until("message", kind="probe", question_id="q1")
    await eventually(lambda: turn_saved(server, run["id"]))  # the interviewer is done writing: it waits for us

    cutter.cut()
    await p.send({"type": "message", "content": LONG_ANSWER + " one", "client_id": "a2"})
    error = await p.until("error", timeout=10)
    assert (error["code"], error["client_id"]) == ("storage_unavailable", "a2")
    status, body = await server.request("POST", "/v1/blueprints", json=BLUEPRINT)
    assert status == 503 and body["error"]["type"] == "storage_unavailable", body
    status, body = await server.request("GET", f"/v1/runs/{run['id']}")
    assert status == 503 and body["error"]["type"] == "storage_unavailable", body

    cutter.restore()  # nothing restarts the server: its connections come back by themselves
    ack, _ = await say_until_stored(p, LONG_ANSWER + " one", "a2")
    assert ack["message"]["content"] == LONG_ANSWER + " one"
    await p.until("message", kind="question", question_id="q2")
    for n, qid in (("two", "q3"), ("three", None)):
        await p.say(f"{LONG_ANSWER} {n}")
        await p.until("message", kind="closing" if qid is None else "question", question_id=qid)
    assert (await p.until("run.ended"))["reason"] == "completed"
    done = await server.get_run(run["id"], "transcript")
    said = [m["content"] for m in done["transcript"] if m["role"] == "user"]
    assert said == ["I teach", *(f"{LONG_ANSWER} {n}" for n in ("one", "two", "three"))]  # each once
    status, _ = await server.request("POST", "/v1/blueprints", json=BLUEPRINT)
    assert status == 201


async def test_a_reader_on_a_process_cut_off_from_the_database_gets_what_was_committed_meanwhile(
    server_factory: ServerFactory, proxy: tuple[TcpProxy, str], tmp_path: Path
) -> None:
    cutter, url = proxy
    direct = database_url_for(tmp_path / "db")
    writer = await server_factory(database_url=direct)  # runs the interview
    cut_off = await server_factory(database_url=url, api_key=writer.api_key, data_dir=tmp_path / "reader")
    run = await writer.create_run()
    reader = SseReader(cut_off, run["id"])
    reading = reader.start()  # until the server ends the stream (after run.result_ready)
    await reader.wait_for(1)
    p = await writer.join(run)
    await p.until("message", kind="question", question_id="q1")
    await reader.wait_for(len(await stored(writer, run["id"])))

    cutter.cut()  # the reader's process loses its listener: what is committed now is not announced to it
    await p.say("I teach")
    await p.until("message", kind="probe", question_id="q1")
    await p.say(LONG_ANSWER + " one")
    await p.until("message", kind="question", question_id="q2")
    seen = len(reader.events)
    await asyncio.sleep(0.5 * UNIT)
    assert len(reader.events) == seen  # (it really is cut off)

    cutter.restore()
    await reader.wait_for(len(await stored(writer, run["id"])), timeout=10)  # read back once it listens again
    for n, kind in (("two", "question"), ("three", "closing")):
        await p.say(f"{LONG_ANSWER} {n}")
        await p.until("message", kind=kind)
    await asyncio.wait_for(reading, 10 * UNIT)
    assert reader.seqs == list(range(1, len(reader.seqs) + 1))
    assert reader.events == await stored(writer, run["id"])  # the same stream, with no gap and nothing twice


async def turn_saved(server: Server, run_id: str) -> bool:
    """The probe's turn has ended and its state is stored (the idle timer runs from it)."""
    run = await server.state.store.runs.get_run(run_id)
    return run.position.probes_used == 1 and run.idle_since is not None


async def stored(server: Any, run_id: str) -> list[dict[str, Any]]:
    status, body = await server.request("GET", f"/v1/runs/{run_id}/events", headers={"Accept": "application/json"})
    assert status == 200, body
    return list(body["data"])
