"""Shared fixtures: a real server on 127.0.0.1 with a real database, and real clients.

Every wait in the suite is a multiple of ``UNIT`` seconds (env ``VIVAVOCE_TEST_UNIT``,
default 1.0): raise it on a slow machine instead of editing timeouts.
Server-side durations are shrunk with the server's ``time_scale`` so that, say,
a 5 s idle timeout fires after ``5 * time_scale`` seconds.

The database is a SQLite file in the server's data dir, or with
``VIVAVOCE_TEST_DATABASE=postgresql`` (``make test-postgres``) a PostgreSQL
database of its own for each server's data dir, made for the test from a
migrated template and dropped after it (server ``VIVAVOCE_TEST_POSTGRES``,
default 127.0.0.1:5432, user postgres). Tests that only make sense on SQLite
(a file's durability, upgrading an old file) are marked ``sqlite_only``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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
from runtime.storage import NewMessage, migrations
from runtime.storage.database import sync_engine
from runtime.types import MessageRole

UNIT = float(os.environ.get("VIVAVOCE_TEST_UNIT", "1.0"))
TEST_DATABASE = os.environ.get("VIVAVOCE_TEST_DATABASE", "sqlite")
assert TEST_DATABASE in ("sqlite", "postgresql"), f"VIVAVOCE_TEST_DATABASE={TEST_DATABASE!r}: sqlite or postgresql"
POSTGRES = TEST_DATABASE == "postgresql"
POSTGRES_SERVER = os.environ.get("VIVAVOCE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def sqlite_only(why: str) -> pytest.MarkDecorator:
    """Mark a test that is about SQLite itself (it runs in the SQLite pass of the suite only)."""
    return pytest.mark.skipif(POSTGRES, reason=f"SQLite only: {why}")


def postgres_only(why: str) -> pytest.MarkDecorator:
    """Mark a test of what only a PostgreSQL store does (it runs in the PostgreSQL pass of the suite only)."""
    return pytest.mark.skipif(not POSTGRES, reason=f"PostgreSQL only: {why}")


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
    messages = server.state.store.messages
    store_message = messages.add_message
    refused: list[str] = []

    async def disk_gone_once(run_id: str, new: NewMessage, **kwargs: Any) -> Any:
        if not refused and new.role is MessageRole.USER:
            refused.append(new.content)
            raise StorageUnavailable("the database could not be written: OSError('disk I/O error')")
        return await store_message(run_id, new, **kwargs)

    monkeypatch.setattr(messages, "add_message", disk_gone_once)
    return refused


class ScratchDatabases:
    """PostgreSQL databases made for one test, one per key (a server's data dir), dropped after it.

    Each is a copy of a template this test process migrated once (``CREATE
    DATABASE … TEMPLATE``: ~30 ms against ~180 ms to create and migrate). Names
    carry a random token, so test runs of other checkouts sharing the server
    never touch them.
    """

    def __init__(self, server: str) -> None:
        self.server = server.rstrip("/")
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self.prefix = f"vv_test_{secrets.token_hex(3)}_{worker}"
        self.template: str | None = None
        self.made: dict[str, str] = {}  # key -> database name, this test's
        self._n = 0

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(f"{self.server}/postgres", autocommit=True) as conn:
            conn.execute(statement)

    def url(self, name: str) -> str:
        return f"{self.server}/{name}"

    def for_key(self, key: str, *, migrated: bool = True) -> str:
        """The database URL for ``key``, made on first use in this test (``migrated=False``: with no tables)."""
        if key not in self.made and not migrated:
            self._n += 1
            self.made[key] = f"{self.prefix}_{self._n}"
            self._admin(f"CREATE DATABASE {self.made[key]}")
        if key not in self.made:
            if self.template is None:
                template = f"{self.prefix}_template"
                self._admin(f"DROP DATABASE IF EXISTS {template}")
                self._admin(f"CREATE DATABASE {template}")
                engine = sync_engine(self.url(template))
                try:
                    migrations.upgrade(engine)
                finally:
                    engine.dispose()
                self.template = template
            self._n += 1
            name = f"{self.prefix}_{self._n}"
            self._admin(f"CREATE DATABASE {name} TEMPLATE {self.template}")
            self.made[key] = name
        return self.url(self.made[key])

    def drop_made(self) -> None:
        for name in self.made.values():
            self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.made.clear()

    def drop_template(self) -> None:
        if self.template is not None:
            self._admin(f"DROP DATABASE IF EXISTS {self.template} WITH (FORCE)")
            self.template = None


DATABASES = ScratchDatabases(POSTGRES_SERVER)


@pytest.fixture(autouse=True, scope="session")
def _drop_the_template() -> Iterator[None]:
    yield
    if POSTGRES:
        DATABASES.drop_template()


@pytest.fixture(autouse=True)
def _drop_test_databases() -> Iterator[None]:
    yield
    if POSTGRES:
        DATABASES.drop_made()


def database_url_for(data_dir: Path) -> str | None:
    """The database a server with ``data_dir`` uses: None on SQLite (its file in the data dir), else its own."""
    return DATABASES.for_key(str(data_dir.resolve())) if POSTGRES else None


def database_env(data_dir: Path) -> dict[str, str]:
    """Environment for a ``vivavoce`` subprocess using ``data_dir``: where its database is."""
    url = database_url_for(data_dir)
    return {} if url is None else {"VIVAVOCE_DATABASE_URL": url}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """A fresh database for a test that opens a Store itself."""
    return database_url_for(tmp_path / "store") or f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"


@pytest.fixture
def empty_database_url(tmp_path: Path) -> str:
    """A database with no tables yet (its migrations not run)."""
    if POSTGRES:
        return DATABASES.for_key(str(tmp_path / "empty"), migrated=False)
    return f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"


ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def server_factory(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """Start servers on free ports; ``time_scale`` etc. are ServerConfig fields."""
    servers: list[Server] = []

    async def start(*, api_key: str | None = None, interviewer: Interviewer | None = None, **options: Any) -> Server:
        """A new server; pass the ``data_dir`` and ``api_key`` of a stopped one to restart it."""
        options.setdefault("data_dir", tmp_path / f"data{len(servers)}")
        options.setdefault("heartbeat_s", 5.0)
        if "database_url" not in options:
            options["database_url"] = database_url_for(options["data_dir"])
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
