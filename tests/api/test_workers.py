"""``vivavoce serve --workers N``: a supervisor and N worker processes sharing one port and one PostgreSQL database."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import websockets

from tests.api.server_process import ROOT, ServerProcess, free_port
from tests.conftest import LONG_ANSWER, UNIT, Participant, postgres_only


def test_workers_on_sqlite_are_refused_with_the_reason(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VIVAVOCE_DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "serve", "--workers", "2", "--data-dir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60 * UNIT,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--workers needs PostgreSQL" in done.stderr and "SQLite is a single-process store" in done.stderr
    assert not (tmp_path / "vivavoce.db").exists()  # refused before anything started


def _workers(output: list[str]) -> dict[int, int]:
    """Worker number -> pid, from the ready lines printed so far (a restarted worker's latest)."""
    found: dict[int, int] = {}
    for line in output:
        if m := re.search(r"vivavoce worker ready: worker (\d+), pid (\d+)", line):
            found[int(m.group(1))] = int(m.group(2))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _processes_answering(url: str, tries: int = 40) -> set[str]:
    """The processes that answer ``/healthz`` on new connections (the kernel spreads them over the workers)."""
    seen: set[str] = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(tries):
            async with http.get(url + "/healthz") as resp:
                seen.add((await resp.json())["process"])
    return seen


@postgres_only("several processes need PostgreSQL")
async def test_workers_share_the_port_a_dead_one_is_replaced_and_sigterm_stops_them_all(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", free_port(), "--workers", "2", ready="vivavoce: 2 worker processes")
    await server.start()
    try:
        assert server.api_key is not None  # printed once, by the supervisor
        assert sum("API key" in line for line in server.output) == 1
        first = _workers(server.output)
        assert sorted(first) == [1, 2]
        assert len(await _processes_answering(server.url)) == 2  # both take connections on the one port

        headers = {"Authorization": f"Bearer {server.api_key}"}
        async with aiohttp.ClientSession(headers=headers) as http:  # an interview through the shared port
            async with http.post(f"{server.url}/v1/runs", json=server.banner) as resp:
                run = await resp.json()
            ws_url = run["join_url"].replace("http://", "ws://") + "/ws"
            p = Participant(await websockets.connect(ws_url, open_timeout=10 * UNIT))
            await p.until("message", kind="question", question_id="wake")
            for question in ("breakfast", "change"):
                await p.say(LONG_ANSWER)
                await p.until("message", kind="question", question_id=question)
            await p.say(LONG_ANSWER)
            assert (await p.until("run.ended"))["reason"] == "completed"

        os.kill(first[1], signal.SIGKILL)  # a worker dies: the supervisor starts it again

        async def replaced() -> dict[int, int]:
            while (now := _workers(server.output)).get(1) == first[1]:
                await asyncio.sleep(0.05 * UNIT)
            return now

        again = await asyncio.wait_for(replaced(), 30 * UNIT)
        assert again[2] == first[2] and _alive(again[1]) and not _alive(first[1])
        # the supervisor says so, in a line naming the process that wrote it
        assert any(re.search(r"\[main/\d+\] vivavoce.supervisor: worker 1 \(pid \d+\) exited with signal 9", line)
                   for line in server.output), server.output  # fmt: skip

        server.signal(signal.SIGTERM)  # all of them drain and exit, then the supervisor
        assert await asyncio.wait_for(server.wait(), 40 * UNIT) == 0
        assert not any(_alive(pid) for pid in again.values())
    finally:
        await server.stop()
