"""Events across processes on PostgreSQL: NOTIFY in the committing transaction, LISTEN in every process.

Every group commit that stored events also sends, inside the same transaction,
``pg_notify('vivavoce_events', …)`` naming the committing process and, per run,
the first and last seq it stored. PostgreSQL delivers a notification only once
its transaction has committed, and in commit order, so a hint never announces
an event that could still roll back. A notification carries no event data (its
payload is limited to 8000 bytes): a process that has SSE readers for a run
fetches the rows the hint names after the last seq it published for that run,
and publishes them to its :class:`~runtime.events.EventHub`. Hints for runs
nobody here reads are dropped unread, and a process ignores its own (its own
commits reach its hub directly, with their data).

The listener connection reconnects by itself (backing off to 2 s) when the
database drops it; once LISTENing again it asks every subscriber to re-read the
stored events (:meth:`EventHub.resync`), since hints sent meanwhile are gone. A
``SELECT 1`` every few seconds notices a connection that died silently; events
themselves are never polled for.

The same connection listens on the other channels a process asks for (``channels``: name to handler),
e.g. the lease changes of :mod:`runtime.storage.leases`; their handlers are told when a gap in listening
ended (``on_gap``), since what was sent meanwhile is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from runtime.events import EventHub
from runtime.storage import postgres
from runtime.types import Event

CHANNEL = "vivavoce_events"
MAX_PAYLOAD = 7900  # bytes; PostgreSQL refuses a payload of 8000 or more
NOTIFY = "SELECT pg_notify(?, ?)"
KEEPALIVE_S = 5.0
RETRY_S = (0.1, 0.2, 0.5, 1.0, 2.0)

Span = tuple[str, int, int]  # run id, first seq, last seq
FetchEvents = Callable[[str, int, int], Awaitable[list[Event]]]  # run id, after seq, up to seq
ChannelHandler = Callable[[str], None]  # a notification's payload
log = logging.getLogger(__name__)


def spans(events: Iterable[Event]) -> list[Span]:
    """Per run, the first and last seq among ``events``, in the order the runs first appear."""
    seen: dict[str, list[int]] = {}
    for ev in events:
        span = seen.get(ev.run_id)
        if span is None:
            seen[ev.run_id] = [ev.seq, ev.seq]
        else:
            span[0], span[1] = min(span[0], ev.seq), max(span[1], ev.seq)
    return [(run, first, last) for run, (first, last) in seen.items()]


def payloads(origin: str, committed: Sequence[Span]) -> list[str]:
    """The notification texts for one commit: ``origin`` then one ``run first last`` line per run, split to fit."""
    out: list[str] = []
    lines: list[str] = []
    size = len(origin)
    for run, first, last in committed:
        line = f"{run} {first} {last}"
        if lines and size + 1 + len(line) > MAX_PAYLOAD:
            out.append("\n".join([origin, *lines]))
            lines, size = [], len(origin)
        lines.append(line)
        size += 1 + len(line)
    if lines:
        out.append("\n".join([origin, *lines]))
    return out


def parse(payload: str) -> tuple[str, list[Span]]:
    origin, *lines = payload.split("\n")
    out: list[Span] = []
    for line in lines:
        run, first, last = line.split(" ")
        out.append((run, int(first), int(last)))
    return origin, out


class EventFollower:
    """One process's LISTEN connection, and the task that turns hints into published events."""

    def __init__(
        self,
        url: str,
        origin: str,
        hub: EventHub,
        fetch: FetchEvents,
        *,
        channels: dict[str, ChannelHandler] | None = None,
        on_gap: Callable[[], None] | None = None,
    ) -> None:
        self._pg = postgres.drivers()
        self.channels = dict(channels or {})
        self.on_gap = on_gap
        self.dsn = postgres.dsn(url)
        self.origin = origin
        self.hub = hub
        self.fetch = fetch
        self.listening = asyncio.Event()  # set while LISTENing (tests wait for it)
        self.reconnects = 0
        self._hints: asyncio.Queue[Span] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start listening; returns once the first LISTEN is in place (or its first attempt failed)."""
        self._tasks = [
            asyncio.create_task(self._listen(), name="vivavoce-event-listener"),
            asyncio.create_task(self._deliver(), name="vivavoce-event-delivery"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listening.wait(), postgres.CONNECT_TIMEOUT_S)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # --- the connection ----------------------------------------------------------------

    async def _listen(self) -> None:
        attempt = 0
        while True:
            try:
                conn = await self._pg.connect(
                    self.dsn, timeout=postgres.CONNECT_TIMEOUT_S, server_settings=postgres.LISTENER
                )
            except (OSError, TimeoutError, self._pg.PostgresError, self._pg.InterfaceError) as exc:
                log.warning("event listener cannot connect (%r); retrying", exc)
                await asyncio.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])
                attempt += 1
                continue
            try:
                await self._follow(conn)
            except (OSError, TimeoutError, self._pg.PostgresError, self._pg.InterfaceError) as exc:
                log.warning("event listener lost its connection (%r); reconnecting", exc)
            finally:
                self.listening.clear()
                conn.terminate()
            attempt = 0
            self.reconnects += 1

    async def _follow(self, conn: Any) -> None:
        """LISTEN on ``conn`` until it is lost."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(CHANNEL, self._on_notification)
        for channel, handler in self.channels.items():
            await conn.add_listener(channel, lambda _c, _p, _ch, payload, handler=handler: handler(payload))
        for run in self.hub.watched_runs():  # hints sent while not listening are gone: read the rows again
            self.hub.resync(run)
        if self.reconnects and self.on_gap is not None:
            self.on_gap()
        self.listening.set()
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), KEEPALIVE_S)
                return
            await asyncio.wait_for(conn.execute("SELECT 1"), postgres.CONNECT_TIMEOUT_S)

    def _on_notification(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            origin, committed = parse(payload)
        except ValueError:  # not one of ours (another version, or a hand-sent NOTIFY): readers re-read instead
            log.warning("unreadable event notification %r", payload[:200])
            for run in self.hub.watched_runs():
                self.hub.resync(run)
            return
        if origin == self.origin:
            return
        for span in committed:
            if self.hub.subscriber_count(span[0]):
                self._hints.put_nowait(span)

    # --- hints to events -----------------------------------------------------------------

    async def _deliver(self) -> None:
        """Fetch and publish what the hints name, one run at a time, in order."""
        while True:
            pending = [await self._hints.get()]
            while not self._hints.empty():
                pending.append(self._hints.get_nowait())
            wanted: dict[str, int] = {}
            for run, _first, last in pending:
                wanted[run] = max(last, wanted.get(run, 0))
            firsts = {run: min(f for r, f, _ in pending if r == run) for run in wanted}
            for run, last in wanted.items():
                await self._publish(run, firsts[run], last)

    async def _publish(self, run: str, first: int, last: int) -> None:
        if not self.hub.subscriber_count(run):
            return
        mark = self.hub.last_seq(run)
        after = first - 1 if mark is None else mark
        if after >= last:
            return
        try:
            events = await self.fetch(run, after, last)
        except Exception as exc:  # the subscribers read the stored events themselves
            log.warning("could not fetch the events of %s after %d (%r)", run, after, exc)
            self.hub.resync(run)
            return
        for ev in events:
            self.hub.publish(ev)
