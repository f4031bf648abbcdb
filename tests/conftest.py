"""Shared fixtures: a real server on 127.0.0.1 with a real SQLite file, and real clients.

Every wait in the suite is a multiple of ``UNIT`` seconds (env ``VIVAVOCE_TEST_UNIT``,
default 1.0): raise it on a slow machine instead of editing timeouts.
Server-side durations are shrunk with the server's ``time_scale`` so that, say,
a 5 s idle timeout fires after ``5 * time_scale`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import soundfile as sf
import websockets
from aiohttp import web

from api.app import create_app
from api.bootstrap import bootstrap
from api.config import ServerConfig
from api.state import STATE, AppState
from runtime.errors import StorageUnavailable
from runtime.interviewer import Interviewer
from runtime.storage import NewMessage
from runtime.types import MessageRole

UNIT = float(os.environ.get("VIVAVOCE_TEST_UNIT", "1.0"))

BLUEPRINT = {
    "name": "Test interview",
    "greeting": "Hello and welcome.",
    "questions": [
        {"id": "q1", "text": "What do you do for a living?", "probes": ["What do you like about it?"], "max_probes": 1},
        {"id": "q2", "text": "Where do you live?", "max_probes": 0},
        {"id": "q3", "text": "What did you eat today?", "max_probes": 2},
    ],
    "closing": "Thank you, goodbye.",
}
LONG_ANSWER = "This is a long enough answer with many words in it"

# Voice: a short interview, and the spoken fixture answers (fixtures/answers, 16 kHz mono WAV with their text)
VOICE_BLUEPRINT = {
    "name": "Voice test",
    "greeting": "Hello.",
    "questions": [
        {"id": "work", "text": "What do you do?", "max_probes": 0},
        {"id": "home", "text": "Where do you live?", "max_probes": 0},
    ],
    "closing": "Thank you, goodbye.",
}
ANSWERS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "answers"
ANSWERS: dict[str, dict[str, Any]] = {a["id"]: a for a in json.loads((ANSWERS_DIR / "answers.json").read_text())}


def spoken_answer(answer_id: str) -> np.ndarray:
    """A fixture answer's audio: 16 kHz mono int16."""
    pcm, rate = sf.read(ANSWERS_DIR / ANSWERS[answer_id]["file"], dtype="int16")
    assert rate == 16_000
    return pcm


@dataclass(frozen=True)
class HumanClip:
    """A real human recording (fixtures/fetch_speech.py) with what was said."""

    id: str
    text: str
    group: str
    pcm: np.ndarray  # 16 kHz mono int16
    alignment: Path | None


def load_human_speech() -> list[HumanClip]:
    """The fetched real-speech set, fetching it if missing. Without it the tests that need it skip, but not
    in CI (``CI`` set), where they fail: .ci/run fetches it first."""
    from fixtures.fetch_speech import load

    try:
        folder, entries = load()
    except Exception as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"real speech not fetched (make speech): {exc}")
    clips = []
    for e in entries:
        pcm, rate = sf.read(folder / e["file"], dtype="int16")
        assert rate == 16_000 and pcm.ndim == 1
        alignment = folder / e["alignment"] if "alignment" in e else None
        clips.append(HumanClip(e["id"], e["text"], e["group"], pcm, alignment))
    return clips


@pytest.fixture(scope="session")
def human_speech() -> list[HumanClip]:
    return load_human_speech()


@dataclass
class Server:
    """A running server plus an authenticated API client for its first organization."""

    url: str
    config: ServerConfig
    app: web.Application
    api_key: str
    http: aiohttp.ClientSession
    chat_channel_id: str
    runner: web.AppRunner
    extra: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False

    async def stop(self) -> None:
        """Shut the server down gracefully (live runs stay in progress in the database)."""
        if not self.stopped:
            self.stopped = True
            await self.runner.cleanup()

    @property
    def state(self) -> AppState:
        return self.app[STATE]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    async def request(self, method: str, path: str, *, key: str | None = None, **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key or self.api_key}", **kwargs.pop("headers", {})}
        async with self.http.request(method, self.url + path, headers=headers, **kwargs) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except json.JSONDecodeError:
                return resp.status, text

    async def create_blueprint(self, body: dict[str, Any] | None = None, *, publish: bool = True) -> str:
        status, bp = await self.request("POST", "/v1/blueprints", json=body or BLUEPRINT)
        assert status == 201, bp
        if publish:
            status, bp = await self.request("POST", f"/v1/blueprints/{bp['id']}/publish")
            assert status == 200, bp
        return str(bp["id"])

    async def create_channel(self, **settings: Any) -> str:
        body = {"type": "chat", "name": "test chat", "settings": settings}
        status, ch = await self.request("POST", "/v1/channels", json=body)
        assert status == 201, ch
        return str(ch["id"])

    async def create_run(
        self, *, blueprint_id: str | None = None, channel_id: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        if blueprint_id is None:
            blueprint_id = self.extra.get("blueprint_id") or await self.create_blueprint()
            self.extra["blueprint_id"] = blueprint_id
        body = {"blueprint_id": blueprint_id, "channel_id": channel_id or self.chat_channel_id, **extra}
        status, run = await self.request("POST", "/v1/runs", json=body)
        assert status == 201, run
        return dict(run)

    async def get_run(self, run_id: str, *expand: str) -> dict[str, Any]:
        query = "&".join(f"expand={e}" for e in expand)
        status, run = await self.request("GET", f"/v1/runs/{run_id}?{query}")
        assert status == 200, run
        return dict(run)

    async def join(self, run: dict[str, Any]) -> Participant:
        ws = await websockets.connect(ws_url(run), open_timeout=5 * UNIT, max_size=2**22)
        return Participant(ws)

    async def wait_status(self, run_id: str, *statuses: str, timeout: float = 5.0) -> dict[str, Any]:
        async def poll() -> dict[str, Any]:
            while True:
                run = await self.get_run(run_id)
                if run["status"] in statuses:
                    return run
                await asyncio.sleep(0.02 * UNIT)

        return await asyncio.wait_for(poll(), timeout * UNIT)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 5.0) -> Any:
    """Poll ``check`` until it returns a truthy value (server-side effects of a client close are asynchronous)."""

    async def poll() -> Any:
        while True:
            value = await check()
            if value:
                return value
            await asyncio.sleep(0.02 * UNIT)

    return await asyncio.wait_for(poll(), timeout * UNIT)


def ws_url(run: dict[str, Any]) -> str:
    return str(run["join_url"]).replace("http://", "ws://", 1) + "/ws"


class Participant:
    """A participant's websocket with helpers to read frames by type.

    Frames skipped while looking for one type stay in a backlog that later
    lookups search first, so the order of ``until`` calls need not match the
    order frames arrive in.
    """

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []  # everything received, in order
        self.backlog: list[dict[str, Any]] = []
        self._n = 0

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout * UNIT))
        self.frames.append(frame)
        return dict(frame)

    @staticmethod
    def _matches(frame: dict[str, Any], type: str, match: dict[str, Any]) -> bool:
        fields = frame.get("message", frame)
        return frame["type"] == type and all(fields.get(k) == v for k, v in match.items())

    async def until(self, type: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        """The first unconsumed frame of ``type`` (for messages: with message fields equal to ``match``)."""
        for i, frame in enumerate(self.backlog):
            if self._matches(frame, type, match):
                return self.backlog.pop(i)

        async def find() -> dict[str, Any]:
            while True:
                frame = await self.recv(timeout)
                if self._matches(frame, type, match):
                    return frame
                self.backlog.append(frame)

        return await asyncio.wait_for(find(), timeout * UNIT)

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def say(self, content: str, *, client_id: str | None = None) -> dict[str, Any]:
        """Send an answer and return its ack."""
        self._n += 1
        client_id = client_id or f"c{self._n}-{id(self)}"
        await self.send({"type": "message", "content": content, "client_id": client_id})
        return await self.until("message.ack", client_id=client_id)

    async def close(self) -> None:
        await self.ws.close()


def refuse_first_answer(server: Server, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the database refuse the next participant answer once, as the writer does when the disk is gone.

    Returns the list the refused answer's text is put in. Messages from the interviewer are stored as usual.
    """
    runs = server.state.store.runs
    store_message = runs.add_message
    refused: list[str] = []

    async def disk_gone_once(run_id: str, new: NewMessage, **kwargs: Any) -> Any:
        if not refused and new.role is MessageRole.USER:
            refused.append(new.content)
            raise StorageUnavailable("the database could not be written: OSError('disk I/O error')")
        return await store_message(run_id, new, **kwargs)

    monkeypatch.setattr(runs, "add_message", disk_gone_once)
    return refused


ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def server_factory(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """Start servers on free ports; ``time_scale`` etc. are ServerConfig fields."""
    servers: list[Server] = []

    async def start(*, api_key: str | None = None, interviewer: Interviewer | None = None, **options: Any) -> Server:
        """A new server; pass the ``data_dir`` and ``api_key`` of a stopped one to restart it."""
        options.setdefault("data_dir", tmp_path / f"data{len(servers)}")
        options.setdefault("heartbeat_s", 5.0)
        config = ServerConfig(host="127.0.0.1", port=0, **options)
        app = create_app(config, interviewer=interviewer)
        runner = web.AppRunner(app, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        config = ServerConfig(**{**config.__dict__, "port": port})
        app[STATE].config = config
        boot = await bootstrap(app[STATE].store, config)
        key = boot.api_key or api_key
        assert key is not None, "restarting on an existing data dir needs the api_key of the first start"
        http = aiohttp.ClientSession()
        server = Server(f"http://127.0.0.1:{port}", config, app, key, http, boot.chat_channel_id, runner)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.http.close()
        await server.stop()


@pytest.fixture
async def server(server_factory: ServerFactory) -> Server:
    return await server_factory()
