"""Webhooks without I/O: which events go out, how a delivery is signed, and when a failed one is tried again.

A delivery is the stored JSON body of one event for one endpoint. Its id
(``whd_…``) is made once, when the event is stored, and every attempt sends the
same id and body: a receiver that saw it already can drop it. The signature
covers the attempt's timestamp and the raw body::

    Vivavoce-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>

so a receiver checks that the body is ours and recent (see docs/api.md#webhooks).

Retries back off exponentially (doubling from ``base``, at most ``cap`` apart,
with a little jitter so a receiver coming back up is not hit by every delivery
at once) until ``window`` has passed since the event; the next failure after that
marks the delivery failed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from dataclasses import dataclass
from typing import Any

from runtime.serialize import iso
from runtime.types import Event, StrEnum

# What an endpoint can subscribe to: the run's life, its sessions, its result, and its review (per-message events
# stay on the run's event stream: a receiver wants to hear that a run finished, not every line of it).
WEBHOOK_EVENTS = (
    "run.created",
    "run.started",
    "run.completed",
    "run.failed",
    "run.cancelled",
    "run.result_ready",
    "run.erased",
    "session.started",
    "session.ended",
    "run.annotated",
    "run.issue.created",
    "run.issue.updated",
)
WEBHOOK_EVENT_SET = frozenset(WEBHOOK_EVENTS)

SIGNATURE_HEADER = "Vivavoce-Signature"
DELIVERY_HEADER = "Vivavoce-Delivery"
EVENT_HEADER = "Vivavoce-Event"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


def payload(delivery_id: str, event: Event, webhook_id: str) -> str:
    """The body every attempt of this delivery sends (compact JSON, stored as text)."""
    body: dict[str, Any] = {
        "id": delivery_id,
        "object": "webhook_event",
        "webhook_id": webhook_id,
        "type": event.type.value,
        "created_at": iso(event.created_at),
        "run_id": event.run_id,
        "seq": event.seq,
        "data": event.data,
    }
    return json.dumps(body, separators=(",", ":"))


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for one attempt."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, *, now: float, tolerance_s: float = 300.0) -> bool:
    """What a receiver does (and the tests): the signature matches and its timestamp is recent."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float = 30.0  # after the first failure
    cap_s: float = 3600.0  # never further apart than this
    window_s: float = 24 * 3600.0  # keep trying this long after the event
    jitter: float = 0.1  # +-10 %

    def next_attempt(self, *, attempts: int, created_at: float, now: float, rng: random.Random) -> float | None:
        """When to try again after the ``attempts``-th attempt failed; None once the window has passed."""
        if now - created_at >= self.window_s:
            return None
        delay: float = min(self.base_s * 2.0 ** max(attempts - 1, 0), self.cap_s)
        delay *= 1 + rng.uniform(-self.jitter, self.jitter)
        return now + delay
