"""Durability: the server process is killed with SIGKILL mid-interview and restarted on the same database.

Whatever either side had been sent before the kill must be in the transcript;
the run must still be joinable and finish. The participant resends answers it
got no ack for, with the same ``client_id``, so nothing is lost or doubled.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets

from tests.conftest import LONG_ANSWER, UNIT

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, data_dir: Path, port: int, *args: str) -> None:
        self.data_dir, self.port, self.args = data_dir, port, args
        self.url = f"http://127.0.0.1:{port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.api_key: str | None = None
        self.banner: dict[str, str] = {}

    async def start(self) -> None:
        self.api_key = None
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "api.cli", "serve", "--data-dir", str(self.data_dir), "--port", str(self.port),
            "--log-level", "WARNING", *self.args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert self.proc.stdout is not None
        while True:
            line = (await asyncio.wait_for(self.proc.stdout.readline(), 30 * UNIT)).decode()
            assert line, "server exited before it was ready"
            if m := re.search(r"API key \(shown once, store it now\): (\S+)", line):
                self.api_key = m.group(1)
            if m := re.search(r"Demo blueprint (\S+); chat channel (\S+);", line):
                self.banner = {"blueprint_id": m.group(1), "channel_id": m.group(2)}
            if line.startswith("Demo interview"):
                return

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def wait(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 10 * UNIT)


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
