"""A few SQLite connections for the hottest reads, used through aiosqlite directly.

Why not SQLAlchemy's async engine: checking a connection out of its pool and back
runs through greenlets and ``asyncio.shield`` and costs several times the query
(measured under 2000 joins: the checkout was ~3/4 of every run lookup). These
connections are opened once and handed out from a queue; a read waits for a free
one (queries take well under a millisecond). WAL mode: readers never wait for the
writer. They only read (``PRAGMA query_only``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import aiosqlite


class SQLiteReaders:
    def __init__(self, path: str, *, size: int = 4) -> None:
        self.path = path
        self.size = size
        self._free: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all: list[aiosqlite.Connection] = []
        self._opening = asyncio.Lock()

    async def fetch(self, statement: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """Run one read (``?`` placeholders) and return its rows."""
        if len(self._all) < self.size and self._free.empty():
            await self._open_one()
        conn = await self._free.get()
        try:
            return list(await conn.execute_fetchall(statement, params))
        finally:
            self._free.put_nowait(conn)

    async def _open_one(self) -> None:
        async with self._opening:
            if len(self._all) >= self.size or not self._free.empty():
                return
            conn = await aiosqlite.connect(self.path)
            for pragma in ("PRAGMA query_only=ON", "PRAGMA busy_timeout=10000"):
                await conn.execute(pragma)
            self._all.append(conn)
            self._free.put_nowait(conn)

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()
        self._all.clear()
        self._free = asyncio.Queue()
