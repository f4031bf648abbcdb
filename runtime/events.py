"""In-process fan-out of committed events to live subscribers (SSE streams).

The database calls :meth:`EventHub.publish` only after a commit, so a
subscriber never sees an event that could still roll back. Subscribers get a
bounded queue; one that falls too far behind is dropped (its queue gets
``None``) rather than letting a slow reader grow memory without limit: the
SSE handler then reconnects the reader to the stored events.

Race guarded against: an SSE client must subscribe *before* reading stored
events, then skip live events with ``seq`` at or below the last one it sent;
otherwise an event committed between the read and the subscription is lost.
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

    def subscribe(self, run_id: str) -> Subscription:
        sub = Subscription(self, run_id, self.queue_size)
        self._subs[run_id].add(sub)
        return sub

    def publish(self, event: Event) -> None:
        for sub in list(self._subs.get(event.run_id, ())):
            if sub.overflowed:
                continue
            if sub.queue.qsize() >= self.queue_size - 1:
                sub.overflowed = True
                sub.queue.put_nowait(None)
            else:
                sub.queue.put_nowait(event)

    def subscriber_count(self, run_id: str) -> int:
        return len(self._subs.get(run_id, ()))

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.run_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.run_id]
