"""Sending webhooks: the delivery worker, and the guard that keeps deliveries off private networks.

The worker claims due deliveries from the outbox (:mod:`runtime.storage.webhooks`),
POSTs each signed body, and records the outcome: delivered on a 2xx, otherwise
retried with backoff (:class:`runtime.webhooks.RetryPolicy`) until the retry window
has passed. It wakes when an event that can have deliveries is committed, and
polls besides, for retries that came due and for rows another process left.

Server-side request forgery: a webhook URL must not make this server talk to
its own network. :class:`AddressGuard` resolves the host and refuses the URL if
*any* address is loopback, private, link-local, multicast, reserved or otherwise
not global (an attacker who controls DNS could otherwise add a private address
beside a public one). Against DNS rebinding (a name that resolves to a public
address when checked and a private one when connected), the connection is made to
the addresses that were checked: they are handed to aiohttp by its resolver, so
there is no second lookup. Redirects are not followed and no proxy is used. An
operator can allow private addresses (``--webhooks-allow-private``) for local
development and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from runtime.errors import InvalidRequest
from runtime.storage.webhooks import ClaimedDelivery, WebhookStore
from runtime.types import Event
from runtime.webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, WEBHOOK_EVENT_SET, RetryPolicy, sign

log = logging.getLogger("vivavoce.webhooks")

GetAddrInfo = Callable[[str, int], Awaitable[list[tuple[Any, ...]]]]
USER_AGENT = "vivavoce-webhooks/0.1"
MAX_URL = 2048


class UnsafeAddress(Exception):
    """The URL's host is, or resolves to, an address deliveries may not go to."""


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class AddressGuard:
    """Resolves webhook hosts and checks every address (unless private ones are allowed)."""

    def __init__(self, *, allow_private: bool, getaddrinfo: GetAddrInfo | None = None) -> None:
        self.allow_private = allow_private
        self._getaddrinfo = getaddrinfo or _system_getaddrinfo

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses ``host`` may be reached at; raises :class:`UnsafeAddress` if it may not be."""
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            found = [str(literal)]
        else:
            try:
                infos = await self._getaddrinfo(host, port)
            except OSError as exc:
                raise UnsafeAddress(f"{host} does not resolve ({exc.strerror or exc})") from None
            except ValueError as exc:  # no name a resolver takes: a NUL, a label IDNA refuses ("=±é")
                raise UnsafeAddress(f"{host!r} is not a host name ({exc})") from None
            found = list(dict.fromkeys(str(info[4][0]) for info in infos))
            if not found:
                raise UnsafeAddress(f"{host} does not resolve")
        if not self.allow_private:
            refused = [a for a in found if not _is_public(a)]
            if refused:
                raise UnsafeAddress(
                    f"{host} is or resolves to a non-public address ({', '.join(refused)}); webhooks go only to"
                    " public addresses unless the server runs with --webhooks-allow-private"
                )
        return found

    async def check_url(self, url: str) -> None:
        """A URL webhooks may be created with: http(s), a host, no credentials, a deliverable address."""
        if len(url) > MAX_URL:
            raise InvalidRequest(f"url is longer than {MAX_URL} characters", param="url")
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise InvalidRequest(f"url is not a valid URL: {exc}", param="url") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequest("url must be an http:// or https:// URL with a host", param="url")
        if parts.username is not None or parts.password is not None:
            raise InvalidRequest("url must not carry credentials; verify deliveries by their signature", param="url")
        try:
            await self.addresses(parts.hostname, port)
        except UnsafeAddress as exc:
            raise InvalidRequest(f"url: {exc}", param="url") from None


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


async def _system_getaddrinfo(host: str, port: int) -> list[tuple[Any, ...]]:
    loop = asyncio.get_running_loop()
    return await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)


class _GuardedResolver(AbstractResolver):
    """aiohttp's resolver for deliveries: it connects to exactly the addresses the guard checked."""

    def __init__(self, guard: AddressGuard) -> None:
        self.guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            addresses = await self.guard.addresses(host, port)
        except UnsafeAddress as exc:
            raise OSError(str(exc)) from None
        results: list[ResolveResult] = []
        for address in addresses:
            ip = ipaddress.ip_address(address)
            fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            results.append({"hostname": host, "host": address, "port": port, "family": fam, "proto": 0, "flags": 0})
        return results

    async def close(self) -> None:
        return None


class DeliveryWorker:
    """Claims due deliveries, sends them, and records what happened."""

    def __init__(
        self,
        store: WebhookStore,
        guard: AddressGuard,
        *,
        policy: RetryPolicy,
        timeout_s: float,
        poll_s: float,
        batch: int = 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.guard = guard
        self.policy = policy
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.batch = batch
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._rng = random.Random()
        self._stopping = False

    def on_event(self, event: Event) -> None:
        """A database listener: an event that may have deliveries was committed; look at once."""
        if event.type.value in WEBHOOK_EVENT_SET:
            self._wake.set()

    def start(self) -> None:
        connector = aiohttp.TCPConnector(resolver=_GuardedResolver(self.guard), use_dns_cache=False, limit=50)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            headers={"User-Agent": USER_AGENT},
            trust_env=False,  # no proxy from the environment: the guard checks where the request really goes
        )
        self._task = asyncio.create_task(self._run(), name="webhook-deliveries")

    async def close(self) -> None:
        """Stop after the round in progress (cancelling a database read midway would leak its connection);
        attempts still waiting for an answer after a moment are cut off, and retried after the restart."""
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            done, _ = await asyncio.wait({self._task}, timeout=min(self.timeout_s, 2.0))
            if not done:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while not self._stopping:
            try:
                sent = await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook delivery round failed")
                sent = 0
            if sent or self._stopping:
                continue  # there may be more due
            await self._sleep()

    async def _sleep(self) -> None:
        self._wake.clear()
        wait = self.poll_s
        try:
            due = await self.store.next_due()
        except Exception:
            due = None
        if self._stopping:
            return
        if due is not None:
            wait = min(wait, max(due - self.clock(), 0.0))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), wait)

    async def deliver_due(self) -> int:
        """One round: claim what is due and attempt each; returns how many were attempted."""
        # long enough for any attempt to finish; a worker killed mid-attempt leaves its row for this long
        lease = 2 * self.timeout_s + self.poll_s
        claimed = await self.store.claim(now=self.clock(), limit=self.batch, lease_s=lease)
        if claimed:
            await asyncio.gather(*(self._attempt(d) for d in claimed))
        return len(claimed)

    async def _attempt(self, delivery: ClaimedDelivery) -> None:
        assert self._session is not None
        body = delivery.payload.encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(delivery.secret, int(self.clock()), body),
            DELIVERY_HEADER: delivery.id,
            EVENT_HEADER: delivery.event_type,
        }
        status: int | None = None
        try:
            host = urlsplit(delivery.url).hostname or ""
            if _is_literal(host):  # aiohttp connects to an address literal without asking the resolver
                await self.guard.addresses(host, 0)
            async with self._session.post(delivery.url, data=body, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                detail = (await resp.content.read(300)).decode("utf-8", "replace").strip()
            if 200 <= status < 300:
                await self.store.delivered(delivery.id, now=self.clock(), status_code=status)
                return
            error = f"HTTP {status}" + (f": {detail}" if detail else "")
        except TimeoutError:
            error = f"no answer within {self.timeout_s:g} s"
        except aiohttp.ClientConnectorError as exc:
            error = f"could not connect: {exc.os_error or exc}"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except UnsafeAddress as exc:
            error = str(exc)
        now = self.clock()
        retry_at = self.policy.next_attempt(
            attempts=delivery.attempts, created_at=delivery.created_at, now=now, rng=self._rng
        )
        log.info("webhook %s to %s failed (attempt %d): %s", delivery.id, delivery.url, delivery.attempts, error)
        await self.store.attempt_failed(delivery.id, status_code=status, error=error, retry_at=retry_at)
