"""Durability: the server process is killed with SIGKILL mid-interview and restarted on the same database.

Whatever either side had been sent before the kill must be in the transcript;
the run must still be joinable and finish. The participant resends answers it
got no ack for, with the same ``client_id``, so nothing is lost or doubled.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets

from tests.api.server_process import ServerProcess, free_port
from tests.conftest import LONG_ANSWER, UNIT


@pytest.fixture
async def proc(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(tmp_path / "data", free_port())
    yield server
    await server.stop()


class Participant:
    """Records what it was sent and which answers were acknowledged."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.acked: dict[str, str] = {}
        self.unacked: dict[str, str] = {}
        self.ws: websockets.ClientConnection | None = None

    async def connect(self, url: str) -> dict[str, Any]:
        self.ws = await websockets.connect(url, open_timeout=10 * UNIT)
        return await self.next("session.ready")

    async def next(self, *types: str) -> dict[str, Any]:
        assert self.ws is not None
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), 10 * UNIT))
            if frame["type"] == "message":
                self.received.append(frame["message"])
            if frame["type"] == "message.ack":
                self.acked[frame["client_id"]] = self.unacked.pop(frame["client_id"])
            if frame["type"] in types:
                return dict(frame)

    async def answer(self, client_id: str, text: str) -> None:
        assert self.ws is not None
        self.unacked[client_id] = text
        await self.ws.send(json.dumps({"type": "message", "content": text, "client_id": client_id}))


async def test_sigkill_mid_interview_loses_nothing_and_the_interview_finishes(proc: ServerProcess) -> None:
    await proc.start()
    headers = {"Authorization": f"Bearer {proc.api_key}"}
    async with aiohttp.ClientSession(proc.url, headers=headers) as http:
        async with http.post("/v1/runs", json={**proc.banner, "participant": {"name": "K"}}) as resp:
            assert resp.status == 201
            run = await resp.json()
        ws_url = run["join_url"].replace("http://", "ws://") + "/ws"

        p = Participant()
        await p.connect(ws_url)
        await p.next("message")  # greeting
        await p.next("message")  # first question
        await p.answer("a1", LONG_ANSWER + " first")
        await p.next("message.ack")
        await p.next("message")  # second question
        await p.answer("a2", LONG_ANSWER + " second")  # in flight when the server dies
        proc.kill()
        await proc.wait()
        with pytest.raises((websockets.ConnectionClosed, TimeoutError)):
            await p.next("never")

        await proc.start()
        assert proc.api_key is None  # the secret is printed only on the first start
        async with http.get(f"/v1/runs/{run['id']}", params={"expand": ["transcript", "sessions"]}) as resp:
            after_restart = await resp.json()
        assert after_restart["status"] == "in_progress"
        stored_ids = {m["id"] for m in after_restart["transcript"]}
        assert {m["id"] for m in p.received} <= stored_ids, "a message sent before the kill is missing"
        stored_client_ids = {m["client_id"] for m in after_restart["transcript"] if m["role"] == "user"}
        assert set(p.acked) <= stored_client_ids, "an acknowledged answer is missing"
        assert after_restart["sessions"][0]["end_reason"] == "server_restart"

        # rejoin: resend unacknowledged answers with the same client_id, then finish
        ready = await p.connect(ws_url)
        have = {m["client_id"] for m in ready["messages"] if m["client_id"]}
        for client_id, text in list(p.unacked.items()):
            if client_id in have:
                p.acked[client_id] = p.unacked.pop(client_id)
            else:
                await p.answer(client_id, text)
        n = 3
        while True:
            frame = await p.next("message", "run.ended")
            if frame["type"] == "run.ended":
                assert frame["reason"] == "completed"
                break
            if frame["message"]["kind"] in ("question", "resume", "probe"):
                await p.answer(f"a{n}", f"{LONG_ANSWER} number {n}")
                n += 1

        async with http.get(f"/v1/runs/{run['id']}", params={"expand": ["transcript", "responses"]}) as resp:
            done = await resp.json()
        assert done["status"] == "completed"
        users = [m for m in done["transcript"] if m["role"] == "user"]
        assert sorted(m["client_id"] for m in users) == sorted(p.acked), "every answer stored exactly once"
        assert all(r["answer"] for r in done["responses"])
        async with http.get(f"/v1/runs/{run['id']}/events", headers={"Accept": "application/json"}) as resp:
            seqs = [e["seq"] for e in (await resp.json())["data"]]
        assert seqs == list(range(1, len(seqs) + 1))
