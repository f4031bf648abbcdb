"""The database handle: reads on the async engine, writes batched by one writer thread, and after-commit notification.

Durability rule: an event or message reaches a listener (websocket, SSE) only
after the transaction holding it has committed. Each write is a plain
function of a :class:`Transaction`; :meth:`Database.write` hands it to the
writer thread and resolves once it is committed, after the events it created
have been announced.

Why a writer thread (measured, see docs/benchmarks.md): with async writes,
each statement of a transaction was a round trip through aiosqlite's thread
and back through the event loop, and a busy loop made every hop wait, while
the write lock was held: at a few hundred chat sessions the lock was
saturated and turns took seconds. Here a whole transaction runs in the
writer thread without touching the loop, and all writes that queued up
meanwhile share one transaction and one ``COMMIT`` (group commit). One failing
write does not undo the others: should one fail, the batch is rolled back and
run again with each write in its own savepoint (savepoints are not used
otherwise: they would double the statements of a turn). The statements of
every turn go to the driver's cursor as plain SQL (:meth:`Transaction.sql`).

SQLite runs in WAL mode: readers (the async engine, over aiosqlite) never
wait for the writer. ``synchronous`` defaults to ``FULL`` (a commit survives
power loss); ``NORMAL`` survives a killed process. Per-run sequence numbers
stay gapless because only the writer thread writes.

PostgreSQL (:mod:`runtime.storage.postgres`): writes over psycopg, reads over
asyncpg. There a write spends its time waiting on round trips, not on the CPU,
so there are several writer threads (each its own connection and group commit);
a run's writes always go to the same one, so they commit in the order they were
made. Several processes may write too: a run's next number
comes from ``UPDATE runs SET last_seq = last_seq + 1 … RETURNING``, whose row
lock is held until commit, so numbers stay gapless and commit in order. A
writer whose connection broke connects again; it runs the batch again if the
batch cannot have committed (the connection had died while idle), and refuses
it with ``StorageUnavailable`` otherwise. Each group commit that stored events tells the
other processes which (:mod:`runtime.storage.notifications`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import secrets
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import URL, Connection, create_engine, event, make_url
from sqlalchemy.engine import Engine, RootTransaction
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from runtime.errors import StorageUnavailable
from runtime.events import EventHub
from runtime.storage import migrations, notifications, postgres
from runtime.storage.readers import SQLiteReaders
from runtime.types import Event, EventType

EventListener = Callable[[Event], None]
T = TypeVar("T")

MAX_BATCH = 500  # writes per group commit
CONFLICT_TRIES = 4  # a batch that lost a deadlock to another writer thread (PostgreSQL) is run again, this often
log = logging.getLogger(__name__)


class _Retry(Exception):
    """A write failed in a batch run without savepoints: roll it all back and run it again with them."""


class _RolledBack(Exception):
    """The only write of a batch failed: its transaction is rolled back, its error goes to its caller."""


class _ConnectionLost(Exception):
    """The writer's connection broke during a batch: connect again, and run the batch again if it cannot have
    committed (a connection that died while idle is found out by the next batch), else refuse it."""

    def __init__(self, *, committing: bool) -> None:
        super().__init__("committing" if committing else "before commit")
        self.committing = committing


class Transaction:
    """A write in progress: the (sync) connection, plus the events it will announce after commit.

    ``conn`` takes SQLAlchemy statements. :meth:`sql` runs a plain SQL string
    (``?`` placeholders) on the driver's own cursor, for the statements of every
    turn: SQLAlchemy Core spends far longer building, caching and compiling a
    statement than SQLite spends running it (measured, docs/benchmarks.md).
    """

    def __init__(self, scope: _Scope, placeholder: Callable[[str], str]) -> None:
        self.events: list[Event] = []
        self._scope = scope
        self._cursor = scope.cursor
        self._placeholder = placeholder

    @property
    def conn(self) -> Connection:
        return self._scope.connection()

    def sql(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run one statement on the driver's cursor; returns the rows it produced (RETURNING, SELECT)."""
        cur = self._cursor
        cur.execute(self._placeholder(statement), params)
        return cur.fetchall() if cur.description else []

    @property
    def row_lock(self) -> str:
        """`` FOR UPDATE`` on PostgreSQL, where other processes write too; nothing on SQLite (one writer)."""
        return self._scope.db.row_lock

    def notify(self, channel: str, payload: str) -> None:
        """PostgreSQL: NOTIFY ``channel`` with ``payload`` when (and only if) this transaction commits.
        Nothing on SQLite: no other process shares the store."""
        if self._scope.db.shared:
            self.sql(notifications.NOTIFY, (channel, payload))

    def change(self, statement: str, params: Sequence[Any] = ()) -> int:
        """Run one INSERT, UPDATE or DELETE on the driver's cursor; returns how many rows it changed."""
        cur = self._cursor
        cur.execute(self._placeholder(statement), params)
        return int(cur.rowcount)


class _Scope:
    """One transaction of the writer thread.

    On SQLite it is begun and committed on the driver's cursor, and SQLAlchemy's
    connection is told of it only when a write uses ``tx.conn``: its begin and
    commit cost more than a turn's statements. Other databases: SQLAlchemy's.
    """

    def __init__(self, db: Database, conn: Connection, cursor: Any) -> None:
        self.db, self.conn, self.cursor = db, conn, cursor
        self._sa: RootTransaction | None = None

    def begin(self) -> None:
        if self.db._raw_transactions:
            self.cursor.execute("BEGIN IMMEDIATE")
        else:
            self._sa = self.conn.begin()

    def connection(self) -> Connection:
        if self._sa is None:  # adopt the transaction already open on the driver's connection
            self.db._adopting = True
            try:
                self._sa = self.conn.begin()
            finally:
                self.db._adopting = False
        return self.conn

    def commit(self) -> None:
        if self._sa is not None:
            self._sa.commit()
        else:
            self.cursor.execute("COMMIT")

    def rollback(self) -> None:
        if self._sa is not None:
            self._sa.rollback()
        else:
            self.cursor.execute("ROLLBACK")


@dataclass
class _Job:
    fn: Callable[[Transaction], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    events: list[Event]
    result: Any = None
    error: BaseException | None = None


READ_CONNECTIONS = 4  # SQLite readers (WAL: they never wait for the writer); one aiosqlite thread each


def _read_pool(url: str) -> dict[str, Any]:
    """The reading pool: on SQLite a fixed set of connections, kept open.

    SQLAlchemy's default keeps 5 and opens up to 10 more under load, closing each
    again after one query: at a few hundred joins a second every read paid for a
    new connection, its thread and its PRAGMAs (measured: joins took seconds). A
    read waits for a free connection instead (queries take well under a
    millisecond). Nothing is reset on return: reads never open a transaction.
    """
    if postgres.is_postgres(url):
        return postgres.async_engine_options()
    if make_url(url).get_backend_name() != "sqlite":
        return {}
    return {"pool_size": READ_CONNECTIONS, "max_overflow": 0, "pool_reset_on_return": None}


def _async_url(url: str) -> str | URL:
    return postgres.with_driver(url, "asyncpg") if postgres.is_postgres(url) else url


def sync_url(url: str) -> str | URL:
    """The URL the writer thread (and the migrations) connect with: the blocking driver of the same database."""
    return postgres.with_driver(url, "psycopg") if postgres.is_postgres(url) else url.replace("+aiosqlite", "", 1)


def shown_url(url: str) -> str:
    """``url`` fit to print: its password masked."""
    return make_url(url).render_as_string(hide_password=True)


def sync_engine(url: str) -> Engine:
    """A blocking engine for ``url`` (the migrations use it; the writer thread's is set up in :class:`Database`)."""
    return create_engine(sync_url(url), **(postgres.sync_engine_options() if postgres.is_postgres(url) else {}))


def _placeholders(paramstyle: str) -> Callable[[str], str]:
    """Rewrite ``?`` placeholders for the driver's paramstyle (SQLite's own is ``?``); memoized per statement."""
    if paramstyle == "qmark":
        return lambda statement: statement
    cache: dict[str, str] = {}

    def convert(statement: str) -> str:
        out = cache.get(statement)
        if out is None:
            parts = statement.split("?")
            if paramstyle in ("format", "pyformat"):
                marks = ["%s"] * (len(parts) - 1)
            elif paramstyle == "numeric":
                marks = [f":{i}" for i in range(1, len(parts))]
            else:
                raise NotImplementedError(f"driver paramstyle {paramstyle!r}")
            out = cache[statement] = "".join(p + m for p, m in zip(parts, marks, strict=False)) + parts[-1]
        return out

    return convert


class Database:
    def __init__(self, url: str, *, synchronous: str = "FULL") -> None:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"unknown SQLite synchronous mode {synchronous!r}")
        self.url = url
        self.engine: AsyncEngine = create_async_engine(_async_url(url), **_read_pool(url))
        self.sync_engine: Engine = sync_engine(url)
        self._listeners: list[EventListener] = []
        # One writer thread per lane; a run's writes always take the same lane, so they commit in order.
        lanes = postgres.WRITERS if postgres.is_postgres(url) else 1  # SQLite: one writer at a time anyway
        self._lanes: list[queue.SimpleQueue[_Job | None]] = [queue.SimpleQueue() for _ in range(lanes)]
        self._writers: list[threading.Thread] = []
        self.commits = 0  # group commits so far (and writes, below): for benchmarks
        self.writes = 0
        self._raw_transactions = self.sync_engine.dialect.name == "sqlite"
        self._adopting = False  # SQLAlchemy is joining a transaction the writer began itself
        self._placeholder = _placeholders(self.sync_engine.dialect.paramstyle)
        path = make_url(url).database  # the hottest reads skip SQLAlchemy on a SQLite file (readers.py)
        on_file = self._raw_transactions and path not in (None, "", ":memory:")
        self._readers: SQLiteReaders | postgres.PostgresReaders | None = None
        if on_file:
            self._readers = SQLiteReaders(str(path), size=READ_CONNECTIONS)
        elif postgres.is_postgres(url):
            self._readers = postgres.PostgresReaders(url)
        # Other processes may share a PostgreSQL database: commits tell them which events they stored.
        self.origin = secrets.token_hex(6)
        self._hints = self._placeholder(notifications.NOTIFY) if postgres.is_postgres(url) else None
        self._follower: notifications.EventFollower | None = None
        self.shared = postgres.is_postgres(url)  # other processes may write to this store at the same time
        self.row_lock = " FOR UPDATE" if self.shared else ""
        if self.engine.dialect.name == "sqlite":
            mode = synchronous.upper()
            for engine in (self.engine.sync_engine, self.sync_engine):

                @event.listens_for(engine, "connect")
                def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                    cur = dbapi_conn.cursor()
                    cur.execute("PRAGMA journal_mode=WAL")
                    cur.execute(f"PRAGMA synchronous={mode}")
                    cur.execute("PRAGMA foreign_keys=ON")
                    cur.execute("PRAGMA busy_timeout=10000")
                    cur.execute("PRAGMA secure_delete=ON")  # erased data is overwritten, not left in free pages
                    cur.close()

            # pysqlite's own transaction handling breaks SAVEPOINT: take it over (SQLAlchemy's documented recipe)
            @event.listens_for(self.sync_engine, "connect")
            def _autocommit_driver(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.isolation_level = None

            @event.listens_for(self.sync_engine, "begin")
            def _begin(conn: Connection) -> None:
                if not self._adopting:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")

    @property
    def single_process(self) -> bool:
        """Whether only this process can be using the store (a SQLite file is served by one process)."""
        return self._raw_transactions

    async def create_schema(self) -> None:
        """Bring the schema to the newest migration (a new database is created from the migrations)."""
        await asyncio.to_thread(migrations.upgrade, self.sync_engine)

    async def checkpoint(self) -> None:
        """SQLite: copy the write-ahead log into the database and empty it, so that the page images it kept
        of deleted rows (an erasure's) are gone from the disk too. A no-op on other databases."""
        path = make_url(self.url).database
        if self.sync_engine.dialect.name != "sqlite" or path in (None, "", ":memory:"):
            return

        def run() -> None:
            conn = sqlite3.connect(str(path), timeout=10)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            finally:
                conn.close()

        await asyncio.to_thread(run)

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """Hold a lock named ``name`` across every process sharing the store (PostgreSQL: a session advisory
        lock on a connection of its own); on SQLite this process is the only one, so nothing to wait for.
        For what must happen once however many processes start at the same moment (the first start's
        organization and API key)."""
        if not self.shared:
            yield
            return
        pg = postgres.drivers()
        conn = await pg.connect(postgres.dsn(self.url), timeout=postgres.CONNECT_TIMEOUT_S)
        try:
            await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"vivavoce {name}")
            yield
        finally:
            await conn.close()  # the lock goes with the session

    async def follow_other_processes(
        self,
        hub: EventHub,
        *,
        channels: dict[str, notifications.ChannelHandler] | None = None,
        on_gap: Callable[[], None] | None = None,
    ) -> None:
        """Publish to ``hub`` the events other processes commit (PostgreSQL; on SQLite there are none), and
        pass the notifications of ``channels`` to their handlers (``on_gap``: some may have been missed)."""
        if self._hints is not None and self._follower is None:
            self._follower = notifications.EventFollower(
                self.url, self.origin, hub, self._events_between, channels=channels, on_gap=on_gap
            )
            await self._follower.start()

    async def close(self) -> None:
        if self._follower is not None:
            await self._follower.close()
            self._follower = None
        if self._readers is not None:
            await self._readers.close()
        for jobs in self._lanes if self._writers else ():
            jobs.put(None)
        for writer in self._writers:
            await asyncio.to_thread(writer.join)
        self._writers = []
        self.sync_engine.dispose()
        await self.engine.dispose()

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> None:
        self._listeners.remove(listener)

    # --- writes -----------------------------------------------------------------------------

    async def write(self, fn: Callable[[Transaction], T], *, run_id: str | None = None) -> T:
        """Run ``fn`` in a write transaction; return its result once committed and announced.

        Writes of one ``run_id`` are committed in the order they were made (they share a writer thread);
        on PostgreSQL, writes of different runs may commit side by side, in several writer threads.
        """
        if not self._writers:
            self._writers = [
                threading.Thread(target=self._write_loop, args=(jobs,), name=f"vivavoce-db-writer-{i}", daemon=True)
                for i, jobs in enumerate(self._lanes)
            ]
            for writer in self._writers:
                writer.start()
        loop = asyncio.get_running_loop()
        job = _Job(fn, loop.create_future(), loop, [])
        lanes = self._lanes
        lanes[0 if run_id is None or len(lanes) == 1 else hash(run_id) % len(lanes)].put(job)
        result: T = await job.future
        return result

    def _write_loop(self, jobs: queue.SimpleQueue[_Job | None]) -> None:
        """Serve jobs until told to stop. Nothing a write or the database does may end this thread: a
        job that queued behind a dead writer would wait forever. If the connection fails (the file
        cannot be opened, the disk went away) or a bug escapes a batch, that batch's writers get
        :class:`StorageUnavailable` and the next job opens a fresh connection."""
        stop = False
        again: list[_Job] = []  # a batch to run once more, on a new connection
        while not stop:
            batch: list[_Job] = []
            try:
                with self.sync_engine.connect() as conn:
                    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                    if self.sync_engine.dialect.name == "postgresql":
                        postgres.text_json(cursor)
                    while True:
                        if again:  # found its first connection dead: once more, on this new one
                            batch, again, retried = again, [], True
                        else:
                            batch, retried = self._next_batch(jobs), False
                        if not batch:
                            stop = True
                            break
                        try:
                            self._run_batch(conn, cursor, self._placeholder, batch)
                        except _ConnectionLost as lost:
                            conn.invalidate()  # not back to the pool: the next batch connects afresh
                            if lost.committing or retried:
                                raise
                            again, batch = batch, []  # nothing of it was committed: run it again
                            break
                        batch = []
            except BaseException as exc:  # reported to every writer of the batch
                log.exception("database writer failed; its batch is refused")
                if not batch:  # the connection could not be opened: refuse the next job, not a later one
                    batch, again = again or self._next_batch(jobs), []
                    stop = not batch
                error = StorageUnavailable(f"the database could not be written: {exc!r}")
                for job in batch:
                    job.error, job.events = error, []
                if batch:
                    self._announce(batch)

    def _next_batch(self, jobs: queue.SimpleQueue[_Job | None]) -> list[_Job]:
        """Block for the next job, then take whatever else queued meanwhile; [] means stop."""
        first = jobs.get()
        if first is None:
            return []
        batch = [first]
        while len(batch) < MAX_BATCH:
            try:
                job = jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                jobs.put(None)  # finish this batch, then stop
                break
            batch.append(job)
        return batch

    def _run_batch(self, conn: Connection, cursor: Any, placeholder: Callable[[str], str], batch: list[_Job]) -> None:
        # Optimistic: the whole batch in one transaction. Only if a write fails is the batch run again,
        # each write in its own savepoint, so the failing one is undone alone and the others commit:
        # a SAVEPOINT and a RELEASE per write would be more statements than most writes have.
        #
        # Writer threads commit side by side on PostgreSQL, so two of them can deadlock (e.g. an erasure
        # locking a run's row while that run's turn, in another thread, holds a key-share lock on it and
        # then wants to update it). PostgreSQL undoes one transaction; nothing of it was committed, so the
        # whole batch runs again, in the same order (a write's error is not the participant's to see).
        for tries in range(1, CONFLICT_TRIES + 1):
            failed = self._attempt(conn, cursor, placeholder, batch, savepoints=False)
            if not any(postgres.is_conflict(job.error) for job in batch):
                break
            if tries < CONFLICT_TRIES:
                log.info("a write lost a lock conflict with another writer; its batch of %d runs again", len(batch))
        if failed:
            self._attempt(conn, cursor, placeholder, batch, savepoints=True)
        for job in batch:
            if postgres.is_conflict(job.error):  # still losing, every time: busy, not broken
                busy = f"the database was too busy to take this write; try again ({job.error!r})"
                job.error = StorageUnavailable(busy)
        self._announce(batch)

    def _attempt(
        self, conn: Connection, cursor: Any, placeholder: Callable[[str], str], batch: list[_Job], *, savepoints: bool
    ) -> bool:
        """Run and commit ``batch``. Returns True if a write failed without savepoints (nothing was committed)."""
        alone = len(batch) == 1  # nothing else to protect: its error rolls back its own transaction
        scope = _Scope(self, conn, cursor)
        committing = False
        try:
            scope.begin()
            try:
                for job in batch:
                    job.result, job.error, job.events = None, None, []
                    tx = Transaction(scope, placeholder)
                    if savepoints:
                        cursor.execute("SAVEPOINT vv_write")
                    try:
                        job.result = job.fn(tx)
                    except Exception as exc:
                        job.error = exc
                        if alone:
                            raise _RolledBack from exc
                        if not savepoints:
                            raise _Retry from exc
                        # an error inside a transaction leaves it open: undo just this write
                        cursor.execute("ROLLBACK TO SAVEPOINT vv_write")
                        cursor.execute("RELEASE SAVEPOINT vv_write")
                        continue
                    if savepoints:
                        cursor.execute("RELEASE SAVEPOINT vv_write")
                    job.events = tx.events
                if self._hints is not None:
                    self._send_hints(cursor, batch)
                committing = True
                scope.commit()
            except BaseException as exc:
                if postgres.is_broken(getattr(cursor, "connection", None)):
                    raise _ConnectionLost(committing=committing) from exc
                with contextlib.suppress(Exception):
                    scope.rollback()
                raise
        except _Retry:
            return True
        except _RolledBack:
            pass
        except _ConnectionLost:
            raise
        except Exception as exc:  # the commit itself failed: nothing in the batch happened
            for job in batch:
                job.error = job.error or exc
                job.events = []
        return False

    def _send_hints(self, cursor: Any, batch: list[_Job]) -> None:
        """In the committing transaction: NOTIFY the runs and seqs it stored (delivered only if it commits)."""
        committed = notifications.spans(ev for job in batch for ev in job.events)
        for payload in notifications.payloads(self.origin, committed):
            cursor.execute(self._hints, (notifications.CHANNEL, payload))

    def _announce(self, batch: list[_Job]) -> None:
        self.commits += 1
        self.writes += len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        for job in batch:
            by_loop.setdefault(job.loop, []).append(job)
        for loop, jobs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
                loop.call_soon_threadsafe(self._complete, jobs)

    def _complete(self, jobs: list[_Job]) -> None:
        """On the event loop, after COMMIT: announce the events, then wake the writers, in commit order."""
        for job in jobs:
            for ev in job.events:
                for listener in list(self._listeners):
                    listener(ev)
            if job.future.done():
                continue
            if job.error is not None:
                job.future.set_exception(job.error)
            else:
                job.future.set_result(job.result)

    # --- reads ------------------------------------------------------------------------------

    async def fetch(self, statement: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """One plain-SQL read (``?`` placeholders), for the reads of every join and turn.

        On a SQLite file it goes to :class:`SQLiteReaders` (aiosqlite, no SQLAlchemy): a small query
        through SQLAlchemy's async engine took ~1.4 ms against ~0.4 ms straight to the driver
        (measured, docs/benchmarks.md), and joins make several.
        """
        if self._readers is not None:
            return await self._readers.fetch(statement, params)
        async with self.engine.connect() as conn:
            result = await conn.exec_driver_sql(self._placeholder(statement), tuple(params))
            return [tuple(row) for row in result]

    async def _events_between(self, run_id: str, after: int, upto: int) -> list[Event]:
        rows = await self.fetch(
            "SELECT seq, type, created_at, data FROM events WHERE run_id = ? AND seq > ? AND seq <= ? ORDER BY seq",
            (run_id, after, upto),
        )
        return [Event(run_id, seq, EventType(kind), created, json.loads(data)) for seq, kind, created, data in rows]

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection of the async engine. A database that cannot be reached (or dropped the connection)
        answers :class:`StorageUnavailable` (503), as a refused write does, not an internal error."""
        try:
            async with self.engine.connect() as conn:
                yield conn
        except (OperationalError, InterfaceError, OSError, TimeoutError) as exc:
            raise StorageUnavailable(f"the database could not be read: {exc!r}") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise StorageUnavailable(f"the database could not be read: {exc!r}") from exc
            raise
