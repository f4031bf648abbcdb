"""Webhook endpoints and the delivery outbox.

The outbox rows of an event are written by :func:`enqueue`, which
:func:`runtime.storage.run_log.insert_event` calls in
the very transaction that stores the event: if the event is committed, so are its
deliveries, and a process killed right after the commit delivers them after its
restart. ``(endpoint, run, seq)`` is unique, so one event can never become two
deliveries with two ids.

Delivery workers :meth:`WebhookStore.claim` due rows with a lease
(``locked_until``): a claimed row is not claimed again until its lease has passed,
so a worker that dies mid-attempt leaves it to be retried, not lost. On SQLite the
single writer makes the claim atomic; on PostgreSQL the claim's SELECT takes
``FOR UPDATE SKIP LOCKED``, so several servers can share one outbox.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from runtime.errors import NotFound
from runtime.ids import new_id, new_webhook_secret
from runtime.storage.database import Database, Transaction
from runtime.types import Event
from runtime.webhooks import WEBHOOK_EVENT_SET, DeliveryStatus, payload


@dataclass(frozen=True)
class WebhookEndpoint:
    id: str
    org_id: str
    url: str
    events: tuple[str, ...]
    description: str | None
    created_at: float


@dataclass(frozen=True)
class Delivery:
    id: str
    endpoint_id: str
    run_id: str
    seq: int
    event_type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float | None  # None once delivered or failed
    last_status_code: int | None
    last_error: str | None
    created_at: float
    delivered_at: float | None


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery a worker holds the lease of: everything it needs to send one attempt."""

    id: str
    endpoint_id: str
    url: str
    secret: str
    payload: str
    event_type: str
    attempts: int  # including this one
    created_at: float


_FIND_SUBSCRIBERS = (
    "SELECT s.endpoint_id FROM webhook_subscriptions s JOIN runs r ON r.org_id = s.org_id"
    " WHERE r.id = ? AND s.event_type = ?"
)
_INSERT_DELIVERY = (
    "INSERT INTO webhook_deliveries (id, endpoint_id, run_id, seq, event_type, payload, status, attempts,"
    " next_attempt_at, locked_until, last_status_code, last_error, created_at, delivered_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, NULL, NULL, NULL, ?, NULL)"
    " ON CONFLICT (endpoint_id, run_id, seq) DO NOTHING"
)
_DELIVERY_COLUMNS = (
    "id, endpoint_id, run_id, seq, event_type, status, attempts, next_attempt_at, last_status_code, last_error,"
    " created_at, delivered_at"
)


def enqueue(tx: Transaction, event: Event) -> int:
    """Write the outbox rows of ``event`` (in the transaction storing it); returns how many."""
    if event.type.value not in WEBHOOK_EVENT_SET:
        return 0
    subscribers = tx.sql(_FIND_SUBSCRIBERS, (event.run_id, event.type.value))
    for (endpoint_id,) in subscribers:
        delivery_id = new_id("webhook_delivery", now=event.created_at)
        body = payload(delivery_id, event, endpoint_id)
        tx.change(
            _INSERT_DELIVERY,
            (
                delivery_id,
                endpoint_id,
                event.run_id,
                event.seq,
                event.type.value,
                body,
                DeliveryStatus.PENDING.value,
                event.created_at,
                event.created_at,
            ),
        )
    return len(subscribers)


def _delivery(v: Any) -> Delivery:
    status = DeliveryStatus(v[5])
    return Delivery(
        id=v[0],
        endpoint_id=v[1],
        run_id=v[2],
        seq=v[3],
        event_type=v[4],
        status=status,
        attempts=v[6],
        next_attempt_at=v[7] if status is DeliveryStatus.PENDING else None,
        last_status_code=v[8],
        last_error=v[9],
        created_at=v[10],
        delivered_at=v[11],
    )


def _endpoint(v: Any) -> WebhookEndpoint:
    events = v[3] if isinstance(v[3], list) else json.loads(v[3])
    return WebhookEndpoint(id=v[0], org_id=v[1], url=v[2], events=tuple(events), description=v[4], created_at=v[5])


_ENDPOINT_COLUMNS = "id, org_id, url, events, description, created_at"


class WebhookStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        # PostgreSQL: several servers may claim from one outbox at once; each skips the rows another holds.
        self._claim_lock = " FOR UPDATE SKIP LOCKED" if db.sync_engine.dialect.name == "postgresql" else ""

    # --- endpoints -------------------------------------------------------------------------

    async def create_endpoint(
        self, org_id: str, *, url: str, events: tuple[str, ...], description: str | None
    ) -> tuple[WebhookEndpoint, str]:
        """A new endpoint and its signing secret (returned once: the API shows it at creation only)."""
        now = time.time()
        endpoint = WebhookEndpoint(new_id("webhook", now=now), org_id, url, events, description, now)
        secret = new_webhook_secret()

        def write(tx: Transaction) -> None:
            tx.change(
                "INSERT INTO webhook_endpoints (id, org_id, url, events, description, secret, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (endpoint.id, org_id, url, json.dumps(list(events)), description, secret, now),
            )
            for event_type in events:
                tx.change(
                    "INSERT INTO webhook_subscriptions (endpoint_id, event_type, org_id) VALUES (?, ?, ?)",
                    (endpoint.id, event_type, org_id),
                )

        await self.db.write(write)
        return endpoint, secret

    async def get_endpoint(self, org_id: str, endpoint_id: str) -> WebhookEndpoint:
        rows = await self.db.fetch(
            f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ? AND org_id = ?", (endpoint_id, org_id)
        )
        if not rows:
            raise NotFound(f"No webhook {endpoint_id!r}", param="id")
        return _endpoint(rows[0])

    async def list_endpoints(
        self, org_id: str, *, limit: int, starting_after: str | None
    ) -> tuple[list[WebhookEndpoint], bool]:
        cursor = starting_after or "~"  # ids are lower-case: "~" sorts after all of them
        rows = await self.db.fetch(
            f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE org_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (org_id, cursor, limit + 1),
        )
        return [_endpoint(r) for r in rows[:limit]], len(rows) > limit

    async def delete_endpoint(self, org_id: str, endpoint_id: str) -> None:
        """The endpoint, its subscriptions and its deliveries (pending ones are not sent)."""

        def write(tx: Transaction) -> None:
            found = tx.sql("SELECT id FROM webhook_endpoints WHERE id = ? AND org_id = ?", (endpoint_id, org_id))
            if not found:
                raise NotFound(f"No webhook {endpoint_id!r}", param="id")
            tx.change("DELETE FROM webhook_deliveries WHERE endpoint_id = ?", (endpoint_id,))
            tx.change("DELETE FROM webhook_subscriptions WHERE endpoint_id = ?", (endpoint_id,))
            tx.change("DELETE FROM webhook_endpoints WHERE id = ?", (endpoint_id,))

        await self.db.write(write)

    # --- the delivery log ---------------------------------------------------------------------

    async def list_deliveries(
        self, org_id: str, endpoint_id: str, *, limit: int, starting_after: str | None, status: DeliveryStatus | None
    ) -> tuple[list[Delivery], bool]:
        await self.get_endpoint(org_id, endpoint_id)
        query = f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = ? AND id < ?"
        params: list[Any] = [endpoint_id, starting_after or "~"]
        if status is not None:
            query += " AND status = ?"
            params.append(status.value)
        rows = await self.db.fetch(query + " ORDER BY id DESC LIMIT ?", (*params, limit + 1))
        return [_delivery(r) for r in rows[:limit]], len(rows) > limit

    async def deliveries_of_run(self, run_id: str) -> list[Delivery]:
        rows = await self.db.fetch(
            f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE run_id = ? ORDER BY seq, id", (run_id,)
        )
        return [_delivery(r) for r in rows]

    # --- workers ------------------------------------------------------------------------------

    async def claim(self, *, now: float, limit: int, lease_s: float) -> list[ClaimedDelivery]:
        """Take up to ``limit`` due deliveries, counting the attempt and holding each for ``lease_s``."""

        def write(tx: Transaction) -> list[ClaimedDelivery]:
            due = tx.sql(
                "SELECT id FROM webhook_deliveries WHERE status = ? AND next_attempt_at <= ?"
                " AND (locked_until IS NULL OR locked_until <= ?) ORDER BY next_attempt_at LIMIT ?" + self._claim_lock,
                (DeliveryStatus.PENDING.value, now, now, limit),
            )
            claimed: list[ClaimedDelivery] = []
            for (delivery_id,) in due:
                rows = tx.sql(
                    "UPDATE webhook_deliveries SET locked_until = ?, attempts = attempts + 1 WHERE id = ?"
                    " RETURNING id, endpoint_id, payload, event_type, attempts, created_at",
                    (now + lease_s, delivery_id),
                )
                did, endpoint_id, body, event_type, attempts, created_at = rows[0]
                url, secret = tx.sql("SELECT url, secret FROM webhook_endpoints WHERE id = ?", (endpoint_id,))[0]
                claimed.append(ClaimedDelivery(did, endpoint_id, url, secret, body, event_type, attempts, created_at))
            return claimed

        return await self.db.write(write)

    async def delivered(self, delivery_id: str, *, now: float, status_code: int) -> None:
        def write(tx: Transaction) -> None:
            tx.change(
                "UPDATE webhook_deliveries SET status = ?, delivered_at = ?, last_status_code = ?, last_error = NULL,"
                " locked_until = NULL WHERE id = ?",
                (DeliveryStatus.DELIVERED.value, now, status_code, delivery_id),
            )

        await self.db.write(write)

    async def attempt_failed(
        self, delivery_id: str, *, status_code: int | None, error: str, retry_at: float | None
    ) -> None:
        """Record a failed attempt: try again at ``retry_at``, or (None) give up: the delivery has failed."""

        def write(tx: Transaction) -> None:
            if retry_at is None:
                tx.change(
                    "UPDATE webhook_deliveries SET status = ?, last_status_code = ?, last_error = ?,"
                    " locked_until = NULL WHERE id = ?",
                    (DeliveryStatus.FAILED.value, status_code, error[:500], delivery_id),
                )
            else:
                tx.change(
                    "UPDATE webhook_deliveries SET next_attempt_at = ?, last_status_code = ?, last_error = ?,"
                    " locked_until = NULL WHERE id = ?",
                    (retry_at, status_code, error[:500], delivery_id),
                )

        await self.db.write(write)

    async def next_due(self) -> float | None:
        """When the next pending delivery is due (or its lease runs out), if there is one."""
        rows = await self.db.fetch(
            "SELECT min(CASE WHEN locked_until IS NOT NULL AND locked_until > next_attempt_at"
            " THEN locked_until ELSE next_attempt_at END) FROM webhook_deliveries WHERE status = ?",
            (DeliveryStatus.PENDING.value,),
        )
        return rows[0][0] if rows and rows[0][0] is not None else None
