"""Webhooks against a real receiving HTTP server: signed, retried, durable across a SIGKILL, never doubled."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from api.webhooks import AddressGuard, UnsafeAddress
from runtime.webhooks import RetryPolicy, verify
from tests.api.test_rest import assert_error
from tests.conftest import UNIT, Server, ServerFactory, eventually

ROOT = Path(__file__).resolve().parents[2]
FAST = {"time_scale": 0.001, "webhooks_allow_private": True, "webhook_timeout_s": 1.0 * UNIT}


@dataclass
class Received:
    delivery_id: str
    event: str
    signature: str
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP server that records every delivery and answers as told (a status, or a stall)."""

    sock: socket.socket
    answers: list[int | str] = field(default_factory=list)  # consumed in order; then 200
    received: list[Received] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}/hooks"

    async def start(self) -> None:
        """Start listening (until then, connections to the address are refused)."""
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append(
            Received(
                request.headers["Vivavoce-Delivery"],
                request.headers["Vivavoce-Event"],
                request.headers["Vivavoce-Signature"],
                body,
                time.time(),
            )
        )
        answer = self.answers.pop(0) if self.answers else 200
        if answer == "stall":
            await asyncio.sleep(30 * UNIT)  # longer than the server's timeout
            answer = 200
        return web.Response(status=int(answer), text="nope" if int(answer) >= 300 else "ok")

    def ids_of(self, event: str) -> list[str]:
        return [r.delivery_id for r in self.received if r.event == event]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # bound, not listening: connection refused until start()
    r = Receiver(sock)
    yield r
    await r.stop()
    sock.close()


async def subscribe(server: Server, url: str, *events: str) -> dict[str, Any]:
    status, hook = await server.request("POST", "/v1/webhooks", json={"url": url, "events": list(events)})
    assert status == 201, hook
    return dict(hook)


async def deliveries(server: Server, hook_id: str) -> list[dict[str, Any]]:
    status, page = await server.request("GET", f"/v1/webhooks/{hook_id}/deliveries?limit=100")
    assert status == 200, page
    return list(page["data"])


async def cancelled_run(server: Server) -> dict[str, Any]:
    run = await server.create_run()
    status, body = await server.request("POST", f"/v1/runs/{run['id']}/cancel")
    assert status == 200, body
    return run


async def test_a_delivery_is_signed_over_timestamp_and_raw_body(server_factory: ServerFactory, receiver: Receiver):
    await receiver.start()
    server = await server_factory(**FAST)
    hook = await subscribe(server, receiver.url, "run.created", "run.cancelled")
    secret = hook["secret"]
    assert secret.startswith("whsec_")
    status, shown = await server.request("GET", f"/v1/webhooks/{hook['id']}")
    assert status == 200 and "secret" not in shown  # shown once, at creation

    run = await cancelled_run(server)
    got = await eventually(lambda: _async(len(receiver.received) >= 2 and receiver.received))
    assert [r.event for r in got] == ["run.created", "run.cancelled"]
    for r in got:
        assert verify(secret, r.signature, r.body, now=time.time())
        assert not verify("whsec_other", r.signature, r.body, now=time.time())
        assert not verify(secret, r.signature, r.body + b" ", now=time.time())  # the raw body is signed
        assert not verify(secret, r.signature, r.body, now=time.time() + 3600)  # and its timestamp
        body = r.json
        assert body["id"] == r.delivery_id and body["type"] == r.event and body["run_id"] == run["id"]
        assert body["object"] == "webhook_event" and body["webhook_id"] == hook["id"]
    assert got[1].json["data"]["status"] == "cancelled" and got[1].json["data"]["end_reason"] == "cancelled"
    log = await eventually(lambda: _all_delivered(server, hook["id"], 2))
    assert {d["id"] for d in log} == {r.delivery_id for r in got}
    assert all(d["attempts"] == 1 and d["last_status_code"] == 200 for d in log)


async def test_only_subscribed_events_of_the_own_organization_are_delivered(
    server_factory: ServerFactory, receiver: Receiver
) -> None:
    await receiver.start()
    server = await server_factory(**FAST)
    await subscribe(server, receiver.url, "run.cancelled")
    other_org = await server.state.store.catalog.create_organization("other")
    other_key = await server.state.store.catalog.create_api_key(other_org)
    status, _ = await server.request(
        "POST", "/v1/webhooks", key=other_key, json={"url": receiver.url, "events": ["run.created"]}
    )
    assert status == 201
    run = await cancelled_run(server)  # created and cancelled in the first organization
    await eventually(lambda: _async(receiver.ids_of("run.cancelled")))
    await asyncio.sleep(0.3 * UNIT)  # nothing else is on its way
    assert [(r.event, r.json["run_id"]) for r in receiver.received] == [("run.cancelled", run["id"])]


async def test_receiver_down_then_up_500s_and_timeouts_are_retried_under_one_id(
    server_factory: ServerFactory, receiver: Receiver
) -> None:
    server = await server_factory(**FAST)
    hook = await subscribe(server, receiver.url, "run.cancelled")
    await cancelled_run(server)
    # down: connections refused, recorded, retried
    failed = await eventually(lambda: _pending_with(server, hook["id"], attempts=2))
    assert failed["last_status_code"] is None and "connect" in failed["last_error"]
    # up, but failing: two 500s, then a stall past the timeout, then it takes the delivery
    receiver.answers = [500, 500, "stall"]
    await receiver.start()
    log = await eventually(lambda: _all_delivered(server, hook["id"], 1), timeout=30)
    (delivery,) = log
    assert delivery["attempts"] >= 5 and delivery["last_status_code"] == 200 and delivery["last_error"] is None
    assert len(receiver.received) == 4  # the 500, the 500, the stalled one, the one that succeeded
    assert set(receiver.ids_of("run.cancelled")) == {delivery["id"]}  # every attempt under the same id
    assert len({r.body for r in receiver.received}) == 1  # and the same body


async def test_a_delivery_that_never_succeeds_fails_after_the_retry_window(
    server_factory: ServerFactory, receiver: Receiver
) -> None:
    receiver.answers = [503] * 1000
    await receiver.start()
    # window 24 h * 0.0001 = 8.6 s; retries from 3 ms doubling, at most 0.36 s apart
    server = await server_factory(**{**FAST, "time_scale": 0.0001})
    hook = await subscribe(server, receiver.url, "run.cancelled")
    await cancelled_run(server)

    async def failed() -> dict[str, Any] | None:
        (d,) = await deliveries(server, hook["id"])
        return d if d["status"] == "failed" else None

    delivery = await eventually(failed, timeout=60)
    assert delivery["last_status_code"] == 503 and delivery["last_error"].startswith("HTTP 503")
    assert delivery["next_attempt_at"] is None and delivery["attempts"] == len(receiver.received) > 10


def test_the_backoff_doubles_is_capped_and_lasts_at_least_24_hours() -> None:
    import random

    policy = RetryPolicy(jitter=0.0)
    rng, created, now, attempts, waits = random.Random(1), 0.0, 0.0, 0, []
    while True:
        attempts += 1
        retry = policy.next_attempt(attempts=attempts, created_at=created, now=now, rng=rng)
        if retry is None:
            break
        waits.append(retry - now)
        now = retry
    assert waits[:4] == [30.0, 60.0, 120.0, 240.0] and max(waits) == 3600.0
    assert now >= 24 * 3600 and 30 <= attempts <= 40


async def test_sigkill_between_commit_and_delivery_loses_nothing(tmp_path: Path, receiver: Receiver) -> None:
    """A real server process is killed with the delivery committed but not sent; restarted, it sends it."""
    data = tmp_path / "data"
    first = await _spawn(data)
    try:
        key = first.key
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
            hook = await _post(http, f"{first.url}/v1/webhooks", {"url": receiver.url, "events": ["run.cancelled"]})
            bp = await _post(http, f"{first.url}/v1/blueprints", _blueprint())
            await _post(http, f"{first.url}/v1/blueprints/{bp['id']}/publish", None)
            channel = await _post(http, f"{first.url}/v1/channels", {"type": "chat", "name": "c"})
            run = await _post(http, f"{first.url}/v1/runs", {"blueprint_id": bp["id"], "channel_id": channel["id"]})
            await _post(http, f"{first.url}/v1/runs/{run['id']}/cancel", None)
            async with http.get(f"{first.url}/v1/webhooks/{hook['id']}/deliveries") as resp:
                (before,) = (await resp.json())["data"]
        assert before["status"] == "pending"  # committed with the event; the receiver is not listening yet
    finally:
        await first.stop(signal.SIGKILL)
    await receiver.start()
    second = await _spawn(data, port=first.port)
    try:
        got = await eventually(lambda: _async(receiver.received), timeout=20)
        assert got[0].delivery_id == before["id"] and got[0].json["run_id"] == run["id"]
        assert verify(hook["secret"], got[0].signature, got[0].body, now=time.time())
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:

            async def delivered() -> Any:
                async with http.get(f"{second.url}/v1/webhooks/{hook['id']}/deliveries") as resp:
                    (d,) = (await resp.json())["data"]
                return d if d["status"] == "delivered" else None

            after = await eventually(delivered, timeout=20)
        assert after["id"] == before["id"]
        await asyncio.sleep(0.3 * UNIT)
        assert set(receiver.ids_of("run.cancelled")) == {before["id"]}  # one event, one id, however often sent
    finally:
        await second.stop(signal.SIGTERM)


async def test_one_event_is_one_delivery_even_if_the_outbox_is_written_twice(
    server_factory: ServerFactory, receiver: Receiver
) -> None:
    """(endpoint, run, seq) is unique: storing the same event's deliveries again adds no second id."""
    from runtime.storage import webhooks as outbox

    await receiver.start()
    server = await server_factory(**FAST)
    hook = await subscribe(server, receiver.url, "run.cancelled")
    run = await cancelled_run(server)
    (event,) = [e for e in await server.state.store.runs.list_events(run["id"]) if e.type.value == "run.cancelled"]
    await server.state.store.db.write(lambda tx: outbox.enqueue(tx, event))
    log = await eventually(lambda: _all_delivered(server, hook["id"], 1))
    await asyncio.sleep(0.3 * UNIT)
    assert len(log) == 1 and receiver.ids_of("run.cancelled") == [log[0]["id"]]


# --- the guard against server-side request forgery ---------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://localhost/x",
        "http://[::1]/x",
        "http://10.1.2.3/x",
        "http://192.168.0.10/x",
        "http://172.16.5.5/x",
        "http://169.254.169.254/latest/meta-data",  # cloud metadata
        "http://100.64.0.1/x",  # carrier-grade NAT
        "http://0.0.0.0/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://[fe80::1]/x",
        "http://224.0.0.1/x",
    ],
)
async def test_private_loopback_and_link_local_urls_are_refused(server: Server, url: str) -> None:
    status, body = await server.request("POST", "/v1/webhooks", json={"url": url, "events": ["run.completed"]})
    assert_error(status, body, 400, "invalid_request", "url")
    assert "--webhooks-allow-private" in body["error"]["message"]


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://example.com/x", "http"),
        ("http://user:pw@example.com/x", "credentials"),
        ("https:///nohost", "host"),
        ("http://example.com:99999/x", "valid URL"),
        ("http://a\U000fc76f.example/x", "not a host name"),  # IDNA refuses it (a ValueError, not an OSError)
    ],
)
async def test_malformed_webhook_urls_are_refused(server: Server, url: str, words: str) -> None:
    status, body = await server.request("POST", "/v1/webhooks", json={"url": url, "events": ["run.completed"]})
    assert status == 400 and words in body["error"]["message"], body


async def test_a_name_is_refused_if_any_of_its_addresses_is_private() -> None:
    async def dns(host: str, port: int) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in ("93.184.215.14", "10.0.0.7")]

    guard = AddressGuard(allow_private=False, getaddrinfo=dns)
    with pytest.raises(UnsafeAddress, match=r"10\.0\.0\.7"):
        await guard.addresses("hooks.example.test", 443)


async def test_a_name_that_rebinds_to_a_private_address_after_the_check_is_not_delivered_to(
    server_factory: ServerFactory, receiver: Receiver
) -> None:
    """DNS rebinding: public when the webhook is made, loopback when it is delivered. Nothing is sent."""
    await receiver.start()
    port = receiver.sock.getsockname()[1]
    answers = ["93.184.215.14"]  # then 127.0.0.1 for ever

    async def dns(host: str, p: int) -> list[tuple[Any, ...]]:
        address = answers.pop(0) if answers else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, p))]

    server = await server_factory(time_scale=0.001, webhook_timeout_s=1.0 * UNIT)
    server.state.webhook_guard._getaddrinfo = dns
    hook = await subscribe(server, f"http://rebind.example.test:{port}/hooks", "run.cancelled")
    await cancelled_run(server)
    d = await eventually(lambda: _pending_with(server, hook["id"], attempts=2))
    assert "non-public" in d["last_error"] and "127.0.0.1" in d["last_error"]
    assert receiver.received == []


async def test_deliveries_connect_to_the_address_that_was_checked(
    server_factory: ServerFactory, receiver: Receiver
) -> None:
    """The name exists only in the guard's resolver: the delivery arriving shows no second lookup was made."""
    await receiver.start()
    port = receiver.sock.getsockname()[1]
    looked_up: list[str] = []

    async def dns(host: str, p: int) -> list[tuple[Any, ...]]:
        looked_up.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", p))]

    server = await server_factory(**FAST)
    server.state.webhook_guard._getaddrinfo = dns
    await subscribe(server, f"http://only-in-the-guard.invalid:{port}/hooks", "run.cancelled")
    await cancelled_run(server)
    await eventually(lambda: _async(receiver.received))
    assert looked_up == ["only-in-the-guard.invalid"] * 2  # at creation, and for the one delivery


# --- the API ---------------------------------------------------------------------------------------------------


async def test_webhooks_are_listed_deleted_and_scoped_to_the_organization(server_factory: ServerFactory) -> None:
    server = await server_factory(webhooks_allow_private=True)
    a = await subscribe(server, "http://127.0.0.1:9/a", "run.completed")
    b = await subscribe(server, "http://127.0.0.1:9/b", "run.failed", "session.ended")
    status, page = await server.request("GET", "/v1/webhooks")
    assert status == 200 and [h["id"] for h in page["data"]] == [b["id"], a["id"]]
    assert all("secret" not in h for h in page["data"])
    other = await server.state.store.catalog.create_api_key(await server.state.store.catalog.create_organization("o"))
    assert (await server.request("GET", f"/v1/webhooks/{a['id']}", key=other))[0] == 404
    assert (await server.request("DELETE", f"/v1/webhooks/{a['id']}", key=other))[0] == 404
    status, gone = await server.request("DELETE", f"/v1/webhooks/{a['id']}")
    assert status == 200 and gone == {"id": a["id"], "object": "webhook", "deleted": True}
    assert (await server.request("GET", f"/v1/webhooks/{a['id']}"))[0] == 404
    assert (await server.request("GET", f"/v1/webhooks/{a['id']}/deliveries"))[0] == 404


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"url": "http://127.0.0.1/x", "events": []}, "events"),
        ({"url": "http://127.0.0.1/x", "events": ["message.created"]}, "events.0"),
        ({"url": "http://127.0.0.1/x", "events": ["run.failed", "run.failed"]}, "events"),
        ({"url": "http://127.0.0.1/x"}, "events"),
        ({"events": ["run.failed"]}, "url"),
    ],
)
async def test_webhook_bodies_are_checked(server_factory: ServerFactory, body: dict, param: str) -> None:
    server = await server_factory(webhooks_allow_private=True)
    assert_error(*await server.request("POST", "/v1/webhooks", json=body), 400, "invalid_request", param)


# --- helpers -----------------------------------------------------------------------------------------------------


async def _async(value: Any) -> Any:
    return value


async def _all_delivered(server: Server, hook_id: str, n: int) -> list[dict[str, Any]] | None:
    log = await deliveries(server, hook_id)
    return log if len(log) == n and all(d["status"] == "delivered" for d in log) else None


async def _pending_with(server: Server, hook_id: str, *, attempts: int) -> dict[str, Any] | None:
    log = await deliveries(server, hook_id)
    return log[0] if log and log[0]["status"] == "pending" and log[0]["attempts"] >= attempts else None


@dataclass
class _Spawned:
    proc: subprocess.Popen[str]
    url: str
    port: int
    key: str
    drain: asyncio.Future[str]

    async def stop(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)
        await asyncio.get_running_loop().run_in_executor(None, self.proc.wait, 20)
        await self.drain
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _spawn(data: Path, *, port: int | None = None) -> _Spawned:
    """`vivavoce serve` as its own process; waits until it answers. The key is kept in data/key."""
    port = port or _free_port()
    args = [sys.executable, "-m", "api.cli", "serve", "--data-dir", str(data), "--port", str(port)]
    args += ["--webhooks-allow-private", "--time-scale", "0.001", "--event-loop", "asyncio"]
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "VIVAVOCE_WEBHOOK_TIMEOUT_S": str(1.0 * UNIT), "PYTHONTRACEMALLOC": ""},
    )
    assert proc.stdout is not None
    key_file = data / "key"
    deadline = time.monotonic() + 60 * UNIT
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, proc.stdout.readline)
            if "API key (shown once" in line:
                key_file.write_text(line.rsplit(" ", 1)[1].strip())
            if "Demo interview" in line:
                break
            assert line and time.monotonic() < deadline, f"server did not start: {line!r}"
    except BaseException:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise
    drain = loop.run_in_executor(None, proc.stdout.read)  # keep its pipe drained
    return _Spawned(proc, f"http://127.0.0.1:{port}", port, key_file.read_text(), drain)


async def _post(http: aiohttp.ClientSession, url: str, body: Any) -> dict[str, Any]:
    async with http.post(url, json=body) as resp:
        answer = await resp.json()
        assert resp.status in (200, 201), answer
        return dict(answer)


def _blueprint() -> dict[str, Any]:
    from tests.conftest import BLUEPRINT

    return BLUEPRINT
