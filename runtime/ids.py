"""Identifiers: prefixed, time-ordered, and unguessable where they must be.

Object ids (``run_…``, ``msg_…``) sort by creation time, so cursor pagination is a
plain ``id < cursor`` comparison. Within one millisecond they are made
monotonic, like ULIDs, so that two objects created in the same millisecond
still sort in creation order in this process.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_RANDOM_BITS = 64
_lock = threading.Lock()
_last: tuple[int, int] = (0, 0)

PREFIXES = {
    "organization": "org",
    "api_key": "key",
    "blueprint": "bp",
    "channel": "chn",
    "connector": "con",
    "run": "run",
    "session": "ses",
    "message": "msg",
    "job": "job",
    "worker": "wrk",
    "webhook": "wh",
    "webhook_delivery": "whd",
    "study_link": "sl",
    "issue": "iss",
}
ID_RE = re.compile(r"^(" + "|".join(PREFIXES.values()) + r")_[0-9a-hjkmnp-tv-z]{26}$")


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(kind: str, *, now: float | None = None) -> str:
    """A new id for an object of ``kind`` (a key of :data:`PREFIXES`)."""
    global _last
    ms = int((time.time() if now is None else now) * 1000)
    with _lock:
        last_ms, last_rand = _last
        if ms <= last_ms:
            ms, rand = last_ms, last_rand + 1
        else:
            rand = secrets.randbits(_RANDOM_BITS - 1)  # headroom for increments
        _last = (ms, rand)
    # 48 bits of milliseconds (10 chars) + 80 bits, of which 64 random (16 chars)
    return f"{PREFIXES[kind]}_{_encode(ms, 10)}{_encode(rand, 16)}"


def id_pattern(kind: str) -> str:
    """The regular expression an id of ``kind`` matches (for documents that describe ids)."""
    return f"^{PREFIXES[kind]}_[0-9a-hjkmnp-tv-z]{{26}}$"


def is_id(value: str, kind: str) -> bool:
    return value.startswith(PREFIXES[kind] + "_") and ID_RE.match(value) is not None


def new_join_token() -> str:
    """The participant's only credential: 192 random bits, URL-safe."""
    return secrets.token_urlsafe(24)


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def new_api_key() -> str:
    return "vv_" + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """API keys are stored as SHA-256: they are long random strings, so no slow KDF is needed."""
    return hashlib.sha256(secret.encode()).hexdigest()
