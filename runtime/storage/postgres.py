"""PostgreSQL: which drivers, how their connections are set up, and the hottest reads straight to asyncpg.

Two drivers, because :class:`~runtime.storage.database.Database` reads on the event
loop and writes from a thread (measured on this machine, docs/benchmarks.md):

- asyncpg for everything on the event loop (SQLAlchemy's async engine, the run
  lookups of every join, the LISTEN connection): it cost about half the loop CPU
  per read that psycopg's async connection did;
- psycopg 3 for the writer thread and the migrations: asyncpg has no blocking
  API, and psycopg's (libpq) releases the GIL while it waits on the network.

Any ``postgresql://`` URL (with or without a driver) is accepted; the async side
always uses asyncpg and the sync side psycopg.

JSON columns stay PostgreSQL ``json`` (text, checked on insert), not ``jsonb``:
nothing queries inside them (metadata filters use ``run_metadata``), writes are
the hot path, and ``json`` keeps the stored text byte for byte (an event's
payload is stored as the text its frame was sent with).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import URL, make_url

from runtime.errors import StorageUnavailable

CONNECT_TIMEOUT_S = 5  # a database that does not answer is refused quickly (503), not waited for a minute
READ_CONNECTIONS = 4  # asyncpg connections for the hottest reads
WRITERS = 4  # writer threads, each with its connection: a write waits on network round trips, not on the CPU
POOL_SIZE = 4  # SQLAlchemy's async engine (the other reads), and its overflow
POOL_OVERFLOW = 4
RECYCLE_S = 1800  # connections are replaced after this long (a proxy or server may drop idle ones)
APPLICATION = "vivavoce"  # pg_stat_activity.application_name: "vivavoce <role>" tells an operator what each one is


JOIN_READS = {"application_name": f"{APPLICATION} join reads"}
LISTENER = {"application_name": f"{APPLICATION} events"}


def is_postgres(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def drivers() -> Any:
    """Import the drivers (an optional install: ``vivavoce[postgres]``); returns the asyncpg module."""
    try:
        importlib.import_module("psycopg")
        return importlib.import_module("asyncpg")
    except ImportError as exc:
        raise RuntimeError(f"PostgreSQL needs its drivers: pip install 'vivavoce[postgres]' ({exc})") from exc


def with_driver(url: str, driver: str) -> URL:
    """``url`` (any PostgreSQL URL) with the SQLAlchemy driver name ``driver`` (asyncpg or psycopg)."""
    return make_url(url).set(drivername=f"postgresql+{driver}")


def dsn(url: str) -> str:
    """The libpq-style DSN asyncpg connects with (``postgresql://user@host:port/db``)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def async_engine_options() -> dict[str, Any]:
    """The async engine's pool: pre-pinged, so a connection the server dropped is replaced, not used.

    It only reads, so it runs in autocommit: no ``BEGIN`` before a query and no ``ROLLBACK`` when the
    connection goes back to the pool (two round trips of every read otherwise).
    """
    return {
        "isolation_level": "AUTOCOMMIT",
        "pool_reset_on_return": None,
        "pool_size": POOL_SIZE,
        "max_overflow": POOL_OVERFLOW,
        "pool_pre_ping": True,
        "pool_recycle": RECYCLE_S,
        "connect_args": {"timeout": CONNECT_TIMEOUT_S, "server_settings": {"application_name": f"{APPLICATION} reads"}},
    }


def sync_engine_options() -> dict[str, Any]:
    """The writer thread's engine (and the migrations'): libpq keepalives notice a silent network."""
    return {
        "pool_pre_ping": True,
        "pool_recycle": RECYCLE_S,
        "connect_args": {
            "application_name": f"{APPLICATION} writes",
            "connect_timeout": CONNECT_TIMEOUT_S,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        },
    }


def text_json(cursor: Any) -> None:
    """Make ``cursor`` (psycopg) return JSON columns as text, as SQLite does: plain-SQL callers parse them."""
    from psycopg.types.string import TextLoader

    for name in ("json", "jsonb"):
        cursor.adapters.register_loader(name, TextLoader)


CONFLICTS = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure: undone, and safe to run again


def is_conflict(exc: BaseException | None) -> bool:
    """``exc`` is PostgreSQL undoing a transaction that lost a lock conflict with another (raw, or wrapped)."""
    state = getattr(exc, "sqlstate", None) or getattr(getattr(exc, "orig", None), "sqlstate", None)
    return state in CONFLICTS


def is_broken(dbapi_connection: Any) -> bool:
    """The driver connection cannot be used again (psycopg: the server or the network went away)."""
    return bool(getattr(dbapi_connection, "broken", False) or getattr(dbapi_connection, "closed", False))


def dollar_placeholders(statement: str) -> str:
    """``?`` placeholders as asyncpg's ``$1, $2, …`` (no statement of ours has a ``?`` in a literal)."""
    parts = statement.split("?")
    return "".join(f"{p}${i}" for i, p in enumerate(parts[:-1], 1)) + parts[-1]


class PostgresReaders:
    """A few asyncpg connections for the hottest reads, as :class:`~runtime.storage.readers.SQLiteReaders` does.

    asyncpg prepares each statement once per connection and keeps it (its statement
    cache), so a run lookup is one round trip. A connection that fails is closed
    and replaced on the next read; the read itself is refused with
    :class:`StorageUnavailable` (503), as a refused write is.
    """

    def __init__(self, url: str, *, size: int = READ_CONNECTIONS) -> None:
        self._pg = drivers()
        self.dsn = dsn(url)
        self.size = size
        self._free: asyncio.Queue[Any] = asyncio.Queue()  # asyncpg connections
        self._open = 0
        self._opening = asyncio.Lock()
        self._statements: dict[str, str] = {}

    async def fetch(self, statement: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        sql = self._statements.get(statement)
        if sql is None:
            sql = self._statements[statement] = dollar_placeholders(statement)
        pg = self._pg
        for attempt in (1, 2):  # a connection the server dropped meanwhile is replaced, and the read tried again
            conn = await self._checkout()
            try:
                rows = await conn.fetch(sql, *params)
            except (OSError, pg.PostgresConnectionError, pg.InterfaceError) as exc:
                self._discard(conn)
                if attempt == 2:
                    raise StorageUnavailable(f"the database could not be read: {exc!r}") from exc
                continue
            except pg.PostgresError:  # the query was refused; the connection is fine
                self._free.put_nowait(conn)
                raise
            except BaseException:  # cancelled mid-query: the connection's state is unknown
                self._discard(conn)
                raise
            self._free.put_nowait(conn)
            return [tuple(r) for r in rows]
        raise AssertionError("unreachable")

    async def _checkout(self) -> Any:
        while True:
            if self._open < self.size and self._free.empty():
                await self._open_one()
            conn = await self._free.get()
            if not conn.is_closed():
                return conn
            self._discard(conn)  # the server or the network closed it while it waited here

    async def _open_one(self) -> None:
        async with self._opening:
            if self._open >= self.size or not self._free.empty():
                return
            pg = self._pg
            try:
                conn = await pg.connect(self.dsn, timeout=CONNECT_TIMEOUT_S, server_settings=JOIN_READS)
            except (OSError, pg.PostgresError, pg.InterfaceError, TimeoutError) as exc:
                raise StorageUnavailable(f"the database could not be reached: {exc!r}") from exc
            self._open += 1
            self._free.put_nowait(conn)

    def _discard(self, conn: Any) -> None:
        self._open -= 1
        conn.terminate()

    async def close(self) -> None:
        while not self._free.empty():
            await self._free.get_nowait().close()
        self._open = 0
