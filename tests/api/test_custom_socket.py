"""The custom media socket (custom channels): a real websocket client sends PCM16 at 16 or 24 kHz in real time
and receives the pipeline's events and our audio at its rate (protocol: docs/protocol.md)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
import pytest
import websockets

from media.resample import resample
from tests.conftest import UNIT, VOICE_BLUEPRINT, Server, ServerFactory, spoken_answer, ws_url

AUDIBLE_RMS = 200.0


@pytest.fixture
async def custom_server(server_factory: ServerFactory) -> Server:
    server = await server_factory()
    server.extra["blueprint_id"] = await server.create_blueprint(VOICE_BLUEPRINT)
    status, channel = await server.request("POST", "/v1/channels", json={"type": "custom", "name": "bridge"})
    assert status == 201
    server.extra["custom_channel"] = channel["id"]
    return server


def media_url(run: dict[str, Any]) -> str:
    return ws_url(run)[: -len("/ws")] + "/media"


class MediaClient:
    """A bridge on the custom socket: sends its microphone as binary PCM16 in real time (silence between
    utterances), keeps every event and notes when our audio is audible."""

    def __init__(self, ws: websockets.ClientConnection, rate: int) -> None:
        self.ws = ws
        self.rate = rate
        self.events: list[dict[str, Any]] = []
        self.audio_bytes = 0
        self.heard_at: list[float] = []
        self._speech: asyncio.Queue[np.ndarray] = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._send())]

    @classmethod
    async def join(cls, run: dict[str, Any], rate: int) -> MediaClient:
        ws = await websockets.connect(media_url(run), open_timeout=5 * UNIT, max_size=2**22)
        await ws.send(json.dumps({"type": "start", "format": {"encoding": "pcm_s16le", "sample_rate": rate}}))
        return cls(ws, rate)

    def say(self, pcm16k: np.ndarray) -> None:
        self._speech.put_nowait(np.asarray(resample(pcm16k, 16_000, self.rate), dtype=np.int16))

    async def _send(self) -> None:
        frame = self.rate // 50
        current = np.zeros(0, dtype=np.int16)
        start, n = time.monotonic(), 0
        while True:
            if not len(current) and not self._speech.empty():
                current = self._speech.get_nowait()
            chunk, current = (
                (current[:frame], current[frame:]) if len(current) else (np.zeros(frame, np.int16), current)
            )
            try:
                await self.ws.send(chunk.astype("<i2").tobytes())
            except websockets.ConnectionClosed:
                return
            n += 1
            await asyncio.sleep(max(start + n * 0.02 - time.monotonic(), 0))

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                if isinstance(data, bytes):
                    self.audio_bytes += len(data)
                    pcm = np.frombuffer(data, dtype="<i2").astype(np.float64)
                    if len(pcm) and np.sqrt(np.mean(pcm**2)) > AUDIBLE_RMS:
                        self.heard_at.append(time.time())
                else:
                    event = json.loads(data)
                    self.events.append(event)
                    if event.get("type") == "ping":
                        await self.ws.send(json.dumps({"type": "pong", "t": event["t"]}))
        except websockets.ConnectionClosed:
            pass

    async def wait_event(self, type: str, timeout: float = 30.0, **match: Any) -> dict[str, Any]:
        async def poll() -> dict[str, Any]:
            while True:
                for event in self.events:
                    fields = event["message"] if isinstance(event.get("message"), dict) else event
                    if event.get("type") == type and all(fields.get(k) == v for k, v in match.items()):
                        return event
                await asyncio.sleep(0.02)

        return await asyncio.wait_for(poll(), timeout * UNIT)

    async def wait_listening(self, after: int) -> None:
        async def poll() -> None:
            while not any(e == {"type": "state", "state": "listening"} for e in self.events[after:]):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(poll(), 20 * UNIT)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.ws.close()


@pytest.mark.parametrize("rate", [16_000, 24_000])
async def test_a_bridge_is_interviewed_over_the_media_socket(custom_server: Server, rate: int) -> None:
    server = custom_server
    run = await server.create_run(channel_id=server.extra["custom_channel"])
    client = await MediaClient.join(run, rate)
    try:
        ready = await client.wait_event("session.ready")
        assert ready["run_id"] == run["id"]
        question = await client.wait_event("message", kind="question", question_id="work")
        await client.wait_listening(client.events.index(question))
        assert client.heard_at and client.audio_bytes % 2 == 0  # our speech came back, as PCM16
        assert client.audio_bytes > rate * 2 * 0.5  # at the client's rate: at least half a second of it
        n = len(client.events)
        client.say(spoken_answer("job"))
        caption = await client.wait_event("caption", role="user", final=True)
        assert client.events.index(caption) >= n and caption["text"].strip()
        home = await client.wait_event("message", kind="question", question_id="home")
        await client.wait_listening(client.events.index(home))
    finally:
        await client.close()
    done = await server.get_run(run["id"], "transcript", "sessions")
    assert [s["type"] for s in done["sessions"]] == ["voice"] and done["sessions"][0]["user_number"] is None
    users = [m for m in done["transcript"] if m["role"] == "user"]
    assert len(users) == 1 and users[0]["content"] == caption["text"]
    after = done["transcript"][done["transcript"].index(users[0]) + 1]  # the first reply to the answer
    assert after["role"] == "assistant" and after["latency_breakdown"]["eos"] is not None


async def test_control_frames_are_validated(custom_server: Server) -> None:
    server = custom_server
    run = await server.create_run(channel_id=server.extra["custom_channel"])
    for start, said in [
        ({"type": "start", "format": {"encoding": "pcm_s16le", "sample_rate": 8000}}, "sample_rate"),
        ({"type": "start", "format": {"encoding": "opus", "sample_rate": 16000}}, "encoding"),
        ({"type": "hello"}, "first frame"),
        ("not json", "JSON"),
    ]:
        async with websockets.connect(media_url(run), open_timeout=5 * UNIT) as ws:
            await ws.send(start if isinstance(start, str) else json.dumps(start))
            error = json.loads(await asyncio.wait_for(ws.recv(), 5 * UNIT))
            assert error["type"] == "error" and error["code"] == "invalid_start" and said in error["message"]
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5 * UNIT)
            assert ws.close_code == 1008
    assert (await server.get_run(run["id"]))["status"] == "pending"  # no session was started by any of them

    client = await MediaClient.join(run, 16_000)
    try:
        await client.wait_event("session.ready")
        for frame, code in [(b"\x01\x02\x03", "invalid_audio"), ('{"type": "dance"}', "unknown_type"),
                            ("[1, 2]", "invalid_frame"), ('{"type": "start"}', "invalid_frame")]:  # fmt: skip
            await client.ws.send(frame)
            await client.wait_event("error", code=code, timeout=5)
        await client.ws.send(json.dumps({"type": "ping", "t": 7}))
        await client.wait_event("pong", t=7, timeout=5)
        await client.wait_event("message", kind="question", question_id="work")  # the session went on
        await client.ws.send(json.dumps({"type": "stop"}))

        async def session_ended() -> bool:
            sessions = (await server.get_run(run["id"], "sessions"))["sessions"]
            return bool(sessions) and sessions[0]["status"] == "ended"

        for _ in range(200):
            if await session_ended():
                break
            await asyncio.sleep(0.05)
        assert await session_ended()
    finally:
        await client.close()


async def test_custom_runs_say_how_to_connect_and_never_fall_back_to_chat(custom_server: Server) -> None:
    server = custom_server
    run = await server.create_run(channel_id=server.extra["custom_channel"])
    async with server.http.get(run["join_url"]) as resp:
        page = await resp.text()
        assert resp.status == 200 and media_url(run) in page and "/ws" not in page.replace("/media", "")
    async with server.http.get(run["join_url"] + "/info") as resp:
        assert (await resp.json())["mode"] == "custom"
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(ws_url(run), open_timeout=5 * UNIT)
    assert refused.value.response.status_code == 409
    chat_run = await server.create_run()
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(media_url(chat_run), open_timeout=5 * UNIT)
    assert refused.value.response.status_code == 409
