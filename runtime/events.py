"""In-process fan-out of committed events to live subscribers (SSE streams).

The database calls :meth:`EventHub.publish` only after a commit, so a
subscriber never sees an event that could still roll back. Subscribers get a
bounded queue; one that falls too far behind is dropped (its queue gets
``None``) rather than letting a slow reader grow memory without limit: the
SSE handler then reconnects the reader to the stored events.

Race guarded against: an SSE client must subscribe *before* reading stored
events, then skip live events with ``seq`` at or below the last one it sent;
otherwise an event committed between the read and the subscription is lost.

Events committed by other processes (PostgreSQL) arrive through
:mod:`runtime.storage.notifications`, which asks the hub which runs have
subscribers and the last seq it published for each, and publishes the rows it
fetched; when it may have missed some (its connection dropped) it calls
:meth:`EventHub.resync`, and every subscriber reads the stored events again.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from runtime.types import Event


class Subscription:
    def __init__(self, hub: EventHub, run_id: str, maxsize: int) -> None:
        self.hub = hub
        self.run_id = run_id
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self.overflowed = False

    def close(self) -> None:
        self.hub._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventHub:
    def __init__(self, *, queue_size: int = 1000) -> None:
        self.queue_size = queue_size
        self._subs: dict[str, set[Subscription]] = defaultdict(set)
        self._last: dict[str, int] = {}  # the last seq published, for runs with subscribers

    def subscribe(self, run_id: str) -> Subscription:
        sub = Subscription(self, run_id, self.queue_size)
        self._subs[run_id].add(sub)
        return sub

    def publish(self, event: Event) -> None:
        subs = self._subs.get(event.run_id)
        if not subs:
            return
        self._last[event.run_id] = max(event.seq, self._last.get(event.run_id, 0))
        for sub in list(subs):
            if sub.overflowed:
                continue
            if sub.queue.qsize() >= self.queue_size - 1:
                sub.overflowed = True
                sub.queue.put_nowait(None)
            else:
                sub.queue.put_nowait(event)

    def resync(self, run_id: str) -> None:
        """Events of this run may have been missed: every subscriber reads the stored ones again."""
        for sub in list(self._subs.get(run_id, ())):
            if not sub.overflowed:
                sub.overflowed = True
                sub.queue.put_nowait(None)  # the queue always keeps a place for it (see publish)

    def subscriber_count(self, run_id: str) -> int:
        return len(self._subs.get(run_id, ()))

    def watched_runs(self) -> list[str]:
        """Runs that have subscribers."""
        return list(self._subs)

    def last_seq(self, run_id: str) -> int | None:
        """The last seq published to the run's subscribers since it had any; None if none yet."""
        return self._last.get(run_id)

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.run_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.run_id]
                self._last.pop(sub.run_id, None)
