"""Several server processes on one PostgreSQL database: runs owned by leases, taken over, fenced, handed over.

Real ``vivavoce serve`` processes and real participants' websockets; faults are real too: SIGKILL,
SIGSTOP/SIGCONT, SIGTERM (drain), and the database cut off from one process by a TCP proxy. The lease
period of these processes is ``LEASE`` (a process unheard of for that long is presumed dead).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
import websockets

from tests.api.server_process import ServerProcess, free_port
from tests.api.tcp_proxy import TcpProxy
from tests.conftest import LONG_ANSWER, UNIT, Participant, database_url_for, postgres_only

pytestmark = postgres_only("SQLite is a single-process store")

LEASE = 3.0 * UNIT
ASKING = ("question", "probe", "resume", "reask", "rephrase", "reminder")


def blueprint(questions: int) -> dict[str, Any]:
    return {
        "name": "Cluster test",
        "greeting": "Hello.",
        "questions": [{"id": f"q{i}", "text": f"Question {i}?", "max_probes": 0} for i in range(1, questions + 1)],
        "closing": "Thank you, goodbye.",
    }


@dataclass
class Cluster:
    a: ServerProcess
    b: ServerProcess
    http: aiohttp.ClientSession
    database_url: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.a.api_key}"}

    async def call(self, on: ServerProcess, method: str, path: str, body: Any = None) -> Any:
        headers = {**self.auth, "Accept": "application/json"}  # the event log as a page, not a stream
        async with self.http.request(method, on.url + path, json=body, headers=headers) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json()

    async def run(self, *, questions: int = 3, on: ServerProcess | None = None, **settings: Any) -> dict[str, Any]:
        """A run created through ``on`` (default A) on a chat channel with ``settings``."""
        on = on or self.a
        bp = await self.call(on, "POST", "/v1/blueprints", blueprint(questions))
        await self.call(on, "POST", f"/v1/blueprints/{bp['id']}/publish")
        channel = await self.call(on, "POST", "/v1/channels", {"type": "chat", "name": "c", "settings": settings})
        return dict(await self.call(on, "POST", "/v1/runs", {"blueprint_id": bp["id"], "channel_id": channel["id"]}))

    async def join(self, on: ServerProcess, run: dict[str, Any]) -> Participant:
        token = run["join_url"].rsplit("/", 1)[1]
        ws = await websockets.connect(f"ws://127.0.0.1:{on.port}/join/{token}/ws", open_timeout=10 * UNIT)
        return Participant(ws)

    async def get_run(self, run_id: str, *expand: str, on: ServerProcess | None = None) -> dict[str, Any]:
        query = "&".join(f"expand={e}" for e in expand)
        return dict(await self.call(on or self.b, "GET", f"/v1/runs/{run_id}?{query}"))

    async def ended(self, run_id: str, timeout: float, on: ServerProcess | None = None) -> dict[str, Any]:
        async def poll() -> dict[str, Any]:
            while True:
                run = await self.get_run(run_id, "transcript", "sessions", on=on)
                if run["status"] not in ("pending", "in_progress"):
                    return run
                await asyncio.sleep(0.05 * UNIT)

        return await asyncio.wait_for(poll(), timeout)

    async def process(self, on: ServerProcess) -> str:
        async with self.http.get(on.url + "/healthz") as resp:
            return str((await resp.json())["process"])

    def holder(self, run_id: str) -> str | None:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute("SELECT owner_id FROM runs WHERE id = %s", [run_id]).fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]

    async def held_by(self, run_id: str, on: ServerProcess, timeout: float) -> float:
        """Wait until ``on`` holds the run; returns when it was seen to."""
        process = await self.process(on)

        async def poll() -> float:
            while self.holder(run_id) != process:
                await asyncio.sleep(0.02 * UNIT)
            return time.monotonic()

        return await asyncio.wait_for(poll(), timeout)


def process_on(tmp_path: Path, name: str, **env: str) -> ServerProcess:
    return ServerProcess(
        tmp_path / name, free_port(), database_of=tmp_path / "a", env={"VIVAVOCE_LEASE_S": str(LEASE), **env}
    )


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    a, b = process_on(tmp_path, "a"), process_on(tmp_path, "b")
    url = database_url_for(tmp_path / "a")
    assert url is not None
    async with aiohttp.ClientSession() as http:
        try:
            await a.start()  # first: it creates the organization and its key
            await b.start()
            yield Cluster(a, b, http, url)
        finally:
            await asyncio.gather(a.stop(), b.stop())


async def next_asking(p: Participant, timeout: float = 10.0) -> dict[str, Any]:
    """The next message that asks something (or ``run.ended``)."""
    while True:
        frame = await p.recv(timeout)
        if frame["type"] == "run.ended" or (frame["type"] == "message" and frame["message"]["kind"] in ASKING):
            return frame


def answers_by_question(run: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in run["transcript"]:
        if m["role"] == "user":
            out.setdefault(m["question_id"], []).append(m["client_id"])
    return out


async def test_owner_killed_mid_answer_the_participant_goes_on_through_the_other_with_nothing_lost_or_doubled(
    cluster: Cluster,
) -> None:
    max_s = 10 * UNIT
    run = await cluster.run(questions=12, max_duration_s=max_s, idle_timeout_s=600)
    p = await cluster.join(cluster.a, run)
    await p.until("message", kind="question", question_id="q1")
    acked = [(await p.say(f"{LONG_ANSWER} one", client_id="a1"))["client_id"]]
    await p.until("message", kind="question", question_id="q2")
    await p.send({"type": "message", "content": f"{LONG_ANSWER} two", "client_id": "a2"})  # in flight...
    cluster.a.kill()  # ...when the process that owns the run dies
    await cluster.a.wait()

    again = await cluster.join(cluster.b, run)  # the page reconnects; the balancer sends it to B
    ready = await again.until("session.ready")
    if "a2" not in {m["client_id"] for m in ready["messages"]}:  # not stored: the page sends it again
        await again.say(f"{LONG_ANSWER} two", client_id="a2")
    acked.append("a2")
    # it resumes where the interview stood: at the question after the last stored answer
    frame = await next_asking(again)
    assert frame["message"]["question_id"] == "q3", frame
    n = 3
    while frame["type"] != "run.ended":  # answer at a human pace until the time limit ends it
        try:  # typing for a second (the time limit may strike meanwhile)
            frame = await asyncio.wait_for(next_asking(again), 1.0 * UNIT)
            continue
        except TimeoutError:
            pass
        await again.send({"type": "message", "content": f"{LONG_ANSWER} {n}", "client_id": f"a{n}"})
        frame = await again.recv()  # its ack, or the run's end
        if frame["type"] == "message.ack":
            acked.append(frame["client_id"])
            frame = await next_asking(again)
        n += 1
    assert frame["reason"] == "max_duration"

    done = await cluster.ended(run["id"], 10 * UNIT)
    by_question = answers_by_question(done)
    stored = [client for clients in by_question.values() for client in clients]
    assert sorted(stored) == sorted(acked)  # every acknowledged answer stored, each once
    assert all(len(clients) == 1 for clients in by_question.values()), by_question  # no question answered twice
    # the time limit held at its original time (from the run's start on A), not a fresh one on B
    assert max_s <= done["duration_s"] < max_s + 2 * UNIT


async def test_owner_killed_while_nobody_is_connected_the_run_still_ends_on_time_once(cluster: Cluster) -> None:
    grace = 2 * LEASE  # longer than a dead process takes to be noticed, so the timer can fire on time
    run = await cluster.run(idle_timeout_s=grace)
    p = await cluster.join(cluster.a, run)
    await p.until("message", kind="question", question_id="q1")
    cluster.a.kill()  # the participant is cut off with it, and never comes back
    await cluster.a.wait()

    done = await cluster.ended(run["id"], grace + 3 * LEASE)
    assert (done["status"], done["end_reason"]) == ("completed", "participant_left")
    (asked,) = [m for m in done["transcript"] if m["kind"] == "question"]
    ended_after = done["duration_s"] - asked["end_offset_s"]  # one grace after the participant was last seen
    assert grace <= ended_after < grace + 1.5 * UNIT
    assert [s["end_reason"] for s in done["sessions"]] == ["server_restart"]  # closed by the claimant, as after a crash
    events = await cluster.call(cluster.b, "GET", f"/v1/runs/{run['id']}/events")
    assert [e["type"] for e in events["data"]].count("run.completed") == 1


async def test_a_second_connection_through_another_process_takes_over_and_the_first_is_replaced(
    cluster: Cluster,
) -> None:
    run = await cluster.run()
    first = await cluster.join(cluster.a, run)
    await first.until("message", kind="question", question_id="q1")
    second = await cluster.join(cluster.b, run)
    ready = await second.until("session.ready")
    assert ready["resumed"]
    error = await first.until("error")
    assert error["code"] == "replaced"
    await asyncio.wait_for(first.ws.wait_closed(), 5 * UNIT)
    assert first.ws.close_code == 4001
    assert (await next_asking(second))["message"]["question_id"] == "q1"
    await second.say(LONG_ANSWER)
    await second.until("message", kind="question", question_id="q2")
    assert cluster.holder(run["id"]) == await cluster.process(cluster.b)


async def test_a_cancel_through_another_process_ends_the_interview_where_the_participant_is(
    cluster: Cluster,
) -> None:
    run = await cluster.run()
    p = await cluster.join(cluster.a, run)
    await p.until("message", kind="question", question_id="q1")
    cancelled = await cluster.call(cluster.b, "POST", f"/v1/runs/{run['id']}/cancel")
    assert cancelled["status"] == "cancelled"
    ended = await p.until("run.ended")
    assert (ended["status"], ended["reason"]) == ("cancelled", "cancelled")
    await asyncio.wait_for(p.ws.wait_closed(), 5 * UNIT)
    assert p.ws.close_code == 1000
    events = await cluster.call(cluster.a, "GET", f"/v1/runs/{run['id']}/events")
    assert [e["type"] for e in events["data"]].count("run.cancelled") == 1


async def test_a_paused_owner_is_fenced_when_it_wakes_and_delivers_nothing(cluster: Cluster) -> None:
    run = await cluster.run()
    stale = await cluster.join(cluster.a, run)
    await stale.until("message", kind="question", question_id="q1")
    cluster.a.signal(signal.SIGSTOP)  # paused (a long GC, a frozen VM): its lease runs out
    await stale.send({"type": "message", "content": f"{LONG_ANSWER} stale", "client_id": "stale"})  # waits in A
    await cluster.held_by(run["id"], cluster.b, 3 * LEASE)  # B claimed the run of the process presumed dead

    p = await cluster.join(cluster.b, run)  # the participant's page reconnects, to B
    await p.until("session.ready")
    assert (await next_asking(p))["message"]["question_id"] == "q1"
    await p.say(f"{LONG_ANSWER} fresh", client_id="fresh")
    await p.until("message", kind="question", question_id="q2")

    cluster.a.signal(signal.SIGCONT)  # it wakes with the stale answer to handle: it must not act on it
    got: list[dict[str, Any]] = []
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            got.append(json.loads(await asyncio.wait_for(stale.ws.recv(), 10 * UNIT)))
    said = [f for f in got if f["type"] != "typing"]  # (the end of a slow first reply's indicator may trail it)
    assert [f["type"] for f in said] == ["error"] and said[0]["code"] in ("server_restart", "replaced"), got
    await p.say(f"{LONG_ANSWER} two", client_id="two")
    await p.until("message", kind="question", question_id="q3")
    run_now = await cluster.get_run(run["id"], "transcript")
    assert answers_by_question(run_now) == {"q1": ["fresh"], "q2": ["two"]}  # nothing of the stale process
    asked = [(m["kind"], m["question_id"]) for m in run_now["transcript"] if m["role"] == "assistant"]
    assert asked == [("greeting", None), ("question", "q1"), ("resume", "q1"), ("question", "q2"), ("question", "q3")]


async def test_an_owner_cut_off_from_the_database_stops_acting_before_another_takes_its_runs(
    tmp_path: Path,
) -> None:
    url = database_url_for(tmp_path / "a")
    assert url is not None
    proxy = TcpProxy.to_url(url)
    await proxy.start()
    a = process_on(tmp_path, "a", VIVAVOCE_DATABASE_URL=proxy.url(url))
    b = process_on(tmp_path, "b")
    async with aiohttp.ClientSession() as http:
        try:
            await a.start()
            await b.start()
            cluster = Cluster(a, b, http, url)
            run = await cluster.run()
            p = await cluster.join(a, run)
            await p.until("message", kind="question", question_id="q1")

            proxy.cut()  # A runs on, but can reach the database no more: it cannot renew its lease
            error = await p.until("error", timeout=3 * LEASE)
            told = time.monotonic()
            assert error["code"] == "server_restart"  # reconnect: the run will be acted for elsewhere
            await asyncio.wait_for(p.ws.wait_closed(), 5 * UNIT)
            claimed = await cluster.held_by(run["id"], b, 3 * LEASE)
            assert told < claimed  # A had let go before B could take it

            again = await cluster.join(b, run)
            await again.until("session.ready")
            assert (await next_asking(again))["message"]["question_id"] == "q1"
            await again.say(LONG_ANSWER)
            await again.until("message", kind="question", question_id="q2")
            proxy.restore()
        finally:
            await asyncio.gather(a.stop(), b.stop())
            await proxy.close()


async def test_a_draining_process_hands_its_runs_over_and_exits(cluster: Cluster) -> None:
    run, idle = await cluster.run(), await cluster.run(idle_timeout_s=600)
    p = await cluster.join(cluster.a, run)
    await p.until("message", kind="question", question_id="q1")
    await p.say(LONG_ANSWER, client_id="one")
    await p.until("message", kind="question", question_id="q2")
    away = await cluster.join(cluster.a, idle)  # a participant who left: the run waits for them on A
    await away.until("message", kind="question", question_id="q1")
    await away.close()

    cluster.a.signal(signal.SIGTERM)  # drain (an upgrade)
    error = await p.until("error")
    assert error["code"] == "server_restart"
    await asyncio.wait_for(p.ws.wait_closed(), 5 * UNIT)
    assert p.ws.close_code == 1001  # the page reconnects by itself
    assert await asyncio.wait_for(cluster.a.wait(), 10 * UNIT) == 0
    # the run nobody is connected to is taken on by B at once, not a lease period later
    await cluster.held_by(idle["id"], cluster.b, LEASE / 2)

    again = await cluster.join(cluster.b, run)
    await again.until("session.ready")
    assert (await next_asking(again))["message"]["question_id"] == "q2"
    await again.say(LONG_ANSWER, client_id="two")
    await again.until("message", kind="question", question_id="q3")
    await again.say(LONG_ANSWER, client_id="three")
    assert (await again.until("run.ended"))["reason"] == "completed"
    done = await cluster.ended(run["id"], 5 * UNIT)
    assert answers_by_question(done) == {"q1": ["one"], "q2": ["two"], "q3": ["three"]}
    assert [s["end_reason"] for s in done["sessions"]] == ["server_restart", "run_ended"]
