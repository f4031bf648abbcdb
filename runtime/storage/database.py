"""The database handle: one async engine, serialized writes, and after-commit notification.

Durability rule: an event or message reaches a listener (websocket, SSE) only
after the transaction holding it has committed. :meth:`Database.write` collects
the events a transaction creates and hands them to listeners after ``COMMIT``.

SQLite runs in WAL mode. ``synchronous`` defaults to ``FULL`` (a commit survives
power loss); ``NORMAL`` is faster and still survives a killed process.
Writes go through one asyncio lock, so SQLite never answers "database is locked"
to a second writer in this process, and per-run sequence numbers stay gapless.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from runtime.storage.schema import metadata
from runtime.types import Event

EventListener = Callable[[Event], None]


class Transaction:
    """A write transaction: the connection, plus the events it will announce after commit."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.events: list[Event] = []


class Database:
    def __init__(self, url: str, *, synchronous: str = "FULL") -> None:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"unknown SQLite synchronous mode {synchronous!r}")
        self.url = url
        self.engine: AsyncEngine = create_async_engine(url)
        self._write_lock = asyncio.Lock()
        self._listeners: list[EventListener] = []
        if self.engine.dialect.name == "sqlite":
            mode = synchronous.upper()

            @event.listens_for(self.engine.sync_engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute(f"PRAGMA synchronous={mode}")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=10000")
                cur.close()

    async def create_schema(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    async def close(self) -> None:
        await self.engine.dispose()

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> None:
        self._listeners.remove(listener)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Transaction]:
        async with self._write_lock:
            async with self.engine.begin() as conn:
                tx = Transaction(conn)
                yield tx
            # committed: only now may anyone hear about it
            for ev in tx.events:
                for listener in list(self._listeners):
                    listener(ev)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn
