"""The analysis of a finished run is a durable job: a server killed while it runs finishes it after a restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import websockets

from tests.api.server_process import ServerProcess, free_port
from tests.conftest import UNIT
from tests.fakes.openai_server import FakeOpenAI, Reply, respond

GUIDE: dict[str, Any] = {
    "name": "Short AI interview",
    "greeting": "Hello.",
    "questions": [
        {"id": "q1", "text": "What do you do?", "max_probes": 0},
        {"id": "q2", "text": "Where do you live?", "max_probes": 0},
    ],
    "closing": "Thank you, goodbye.",
    "interviewer": {"type": "llm"},
    "result_schema": {"type": "object", "properties": {"job": {"type": "string"}}, "required": ["job"]},
}


async def test_a_result_job_killed_mid_flight_is_done_after_the_restart(tmp_path: Path) -> None:
    analysing = asyncio.Event()
    stall = True

    def model(body: dict[str, Any]) -> Reply:
        system = body["messages"][0]["content"]
        if system.startswith(("You summarise", "You extract")):
            analysing.set()
            if stall:
                return Reply("{}", ttft=3600)  # the server is killed while it waits for this
            if system.startswith("You extract"):
                return Reply(json.dumps({"job": "nurse"}))
            return Reply(json.dumps({"overall": "A nurse who lives by the sea.", "questions": []}))
        return respond("next_question", "Okay.")

    async with FakeOpenAI(responder=model) as fake:
        args = ("--llm-base-url", fake.base_url, "--llm-model", "fake-model")
        server = ServerProcess(tmp_path / "data", free_port(), *args)
        await server.start()
        key = server.api_key
        headers = {"Authorization": f"Bearer {key}"}
        try:
            async with aiohttp.ClientSession(headers=headers) as http:
                async with http.post(server.url + "/v1/blueprints", json=GUIDE) as resp:
                    bp = await resp.json()
                async with http.post(server.url + f"/v1/blueprints/{bp['id']}/publish") as resp:
                    assert resp.status == 200
                body = {"blueprint_id": bp["id"], "channel_id": server.banner["channel_id"]}
                async with http.post(server.url + "/v1/runs", json=body) as resp:
                    run = await resp.json()
                ws_url = run["join_url"].replace("http://", "ws://") + "/ws"
                async with websockets.connect(ws_url) as ws:
                    n = 0
                    while True:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 10 * UNIT))
                        if frame["type"] == "run.ended":
                            break
                        if frame["type"] == "message" and frame["message"]["kind"] == "question":
                            n += 1
                            answer = {"type": "message", "content": f"Answer {n}, a full one.", "client_id": f"c{n}"}
                            await ws.send(json.dumps(answer))
                await asyncio.wait_for(analysing.wait(), 10 * UNIT)
                server.kill()
                await server.wait()
                stall = False
                await server.start()
                server.api_key = key

                async def result() -> dict[str, Any]:
                    while True:
                        async with http.get(server.url + f"/v1/runs/{run['id']}?expand=result") as resp:
                            got = await resp.json()
                        if got["result"]["status"] == "ready":
                            return dict(got)
                        await asyncio.sleep(0.1 * UNIT)

                done = await asyncio.wait_for(result(), 20 * UNIT)
                assert done["result"]["result"] == {"job": "nurse"}
                assert done["result"]["summary"]["overall"] == "A nurse who lives by the sea."
                async with http.get(
                    server.url + f"/v1/runs/{run['id']}/events", headers={"Accept": "application/json"}
                ) as resp:
                    events = (await resp.json())["data"]
                assert [e["type"] for e in events].count("run.result_ready") == 1  # done once
                assert events[-1]["type"] == "run.result_ready"
        finally:
            await server.stop()
