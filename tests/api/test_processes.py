"""Several server processes on one PostgreSQL database: an SSE reader on one sees what the others commit.

Real ``vivavoce serve`` processes; the interview runs on B over the participant
websocket while the reader follows the run's events on A.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
import websockets

from tests.api.server_process import ServerProcess, free_port
from tests.api.test_events import SseReader, answer_all, join_until_q1
from tests.conftest import LONG_ANSWER, UNIT, ServerFactory, database_url_for, postgres_only

pytestmark = postgres_only("SQLite is a single-process store")


@dataclass
class Endpoint:
    """What :class:`SseReader` needs of a server: its URL, a client and the API key's header."""

    url: str
    http: aiohttp.ClientSession
    auth: dict[str, str]


@pytest.fixture
async def processes(tmp_path: Path) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    a = ServerProcess(tmp_path / "a", free_port())
    b = ServerProcess(tmp_path / "b", free_port(), database_of=tmp_path / "a")
    try:
        await a.start()  # first: it migrates the database and creates the organization and its key
        await b.start()
        yield a, b
    finally:
        await asyncio.gather(a.stop(), b.stop())


class Interviewee:
    """Answers every question on the websocket of the process the run was created on."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.answers = 0

    async def next_question(self) -> dict[str, Any] | None:
        """The next question-like message, or None when the run has ended."""
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), 10 * UNIT))
            if frame["type"] == "run.ended":
                return None
            if frame["type"] == "message" and frame["message"]["kind"] in ("question", "probe", "resume"):
                return dict(frame["message"])

    async def answer(self) -> None:
        self.answers += 1
        body = {"type": "message", "content": f"{LONG_ANSWER} {self.answers}", "client_id": f"a{self.answers}"}
        await self.ws.send(json.dumps(body))


async def _create_run(http: aiohttp.ClientSession, on: ServerProcess, auth: dict[str, str]) -> dict[str, Any]:
    async with http.post(f"{on.url}/v1/runs", json=on.banner, headers=auth) as resp:
        assert resp.status == 201, await resp.text()
        return dict(await resp.json())


async def _stored(http: aiohttp.ClientSession, on: ServerProcess, run_id: str, auth: dict[str, str]) -> list[Any]:
    headers = {**auth, "Accept": "application/json"}
    async with http.get(f"{on.url}/v1/runs/{run_id}/events", headers=headers) as resp:
        assert resp.status == 200
        return list((await resp.json())["data"])


def _has_message(reader: SseReader, message_id: str) -> bool:
    return any(e["type"] == "message.created" and e["data"]["message"]["id"] == message_id for e in reader.events)


async def _seen(reader: SseReader, message_id: str) -> None:
    async def poll() -> None:
        while not _has_message(reader, message_id):
            await asyncio.sleep(0.01 * UNIT)

    await asyncio.wait_for(poll(), 5 * UNIT)


async def test_a_reader_on_one_process_sees_every_event_of_an_interview_on_another_once_in_order(
    processes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = processes
    auth = {"Authorization": f"Bearer {a.api_key}"}
    async with aiohttp.ClientSession() as http:
        run = await _create_run(http, b, auth)
        reader = SseReader(Endpoint(a.url, http, auth), run["id"])  # type: ignore[arg-type]
        reading = reader.start()  # until the server ends the stream (after run.result_ready)
        await reader.wait_for(1)
        async with websockets.connect(run["join_url"].replace("http://", "ws://") + "/ws") as ws:
            interviewee = Interviewee(ws)
            while (question := await interviewee.next_question()) is not None:
                await _seen(reader, question["id"])  # live, while the interview waits on B: nothing polls
                await interviewee.answer()
        await asyncio.wait_for(reading, 10 * UNIT)
        stored = await _stored(http, a, run["id"], auth)
    assert interviewee.answers >= 3
    assert reader.seqs == list(range(1, len(stored) + 1))  # every event once, in order
    assert reader.events == stored
    assert reader.types[-2:] == ["run.completed", "run.result_ready"] and reader.ended


async def test_a_reader_whose_process_restarts_mid_stream_resumes_with_last_event_id_without_a_gap(
    processes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = processes
    auth = {"Authorization": f"Bearer {a.api_key}"}
    async with aiohttp.ClientSession() as http:
        run = await _create_run(http, b, auth)
        first = SseReader(Endpoint(a.url, http, auth), run["id"])  # type: ignore[arg-type]
        reading = first.start()
        async with websockets.connect(run["join_url"].replace("http://", "ws://") + "/ws") as ws:
            interviewee = Interviewee(ws)
            question = await interviewee.next_question()
            assert question is not None
            await _seen(first, question["id"])
            a.kill()  # mid-stream
            with pytest.raises(aiohttp.ClientError):
                await asyncio.wait_for(reading, 10 * UNIT)
            await a.wait()
            await interviewee.answer()  # events committed on B while A is down
            question = await interviewee.next_question()
            assert question is not None
            await a.start()
            second = SseReader(Endpoint(a.url, http, auth), run["id"], headers={"Last-Event-ID": str(first.seqs[-1])})  # type: ignore[arg-type]
            resumed = second.start()  # until the server ends the stream (after run.result_ready)
            await _seen(second, question["id"])  # what was committed while A was down
            await interviewee.answer()
            while await interviewee.next_question() is not None:
                await interviewee.answer()
        await asyncio.wait_for(resumed, 10 * UNIT)
        stored = await _stored(http, b, run["id"], auth)
    assert first.seqs + second.seqs == list(range(1, len(stored) + 1))
    assert first.events + second.events == stored


async def test_a_notification_that_is_not_ours_makes_readers_read_back_and_breaks_nothing(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = await server_factory(data_dir=tmp_path / "one")
    run = await server.create_run()
    reader = SseReader(server, run["id"])
    reading = reader.start()  # until the server ends the stream (after run.result_ready)
    await reader.wait_for(1)
    url = database_url_for(tmp_path / "one")
    assert url is not None
    with psycopg.connect(url, autocommit=True) as conn:  # e.g. a newer version's format, or a hand-sent NOTIFY
        conn.execute("NOTIFY vivavoce_events, 'not a hint'")
        names = {
            r[0]
            for r in conn.execute(
                "SELECT application_name FROM pg_stat_activity WHERE datname = %s", [url.rsplit("/", 1)[1]]
            )
        }
    assert {"vivavoce writes", "vivavoce join reads", "vivavoce events"} <= names  # what an operator sees
    await answer_all(await join_until_q1(server, run))
    await asyncio.wait_for(reading, 10 * UNIT)
    assert reader.seqs == list(range(1, len(reader.seqs) + 1))
    assert reader.types[-2:] == ["run.completed", "run.result_ready"] and reader.ended
