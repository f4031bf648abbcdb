"""A run's events over Server-Sent Events (live, resumable, with heartbeats) and as a JSON list."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from runtime.ids import new_id
from runtime.storage.messages import NewMessage
from runtime.types import MessageRole
from tests.conftest import LONG_ANSWER, UNIT, Participant, Server, ServerFactory, eventually

TERMINAL = {"run.completed", "run.failed", "run.cancelled"}
# what the participant says after q1, and the assistant message each answer leads to
ANSWERS = [
    ("I teach", ("probe", "q1")),
    (LONG_ANSWER + " one", ("question", "q2")),
    (LONG_ANSWER + " two", ("question", "q3")),
    (LONG_ANSWER + " three", ("closing", None)),
]


class SseReader:
    """Reads ``GET /v1/runs/{id}/events`` as text/event-stream, keeping events and comments as they arrive."""

    def __init__(self, server: Server, run_id: str, *, query: str = "", headers: dict[str, str] | None = None):
        self.url = f"{server.url}/v1/runs/{run_id}/events{query}"
        self.server = server
        self.headers = {**server.auth, **(headers or {})}
        self.events: list[dict[str, Any]] = []  # the parsed ``data`` of each event
        self.comments: list[str] = []
        self.ended = False  # the server closed the stream

    async def read(self, stop: Callable[[SseReader], bool] | None = None) -> SseReader:
        """Read until the server ends the stream, or until ``stop(self)`` holds (then disconnect)."""
        async with self.server.http.get(self.url, headers=self.headers) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.content_type == "text/event-stream"
            fields: dict[str, str] = {}
            while True:
                raw = await resp.content.readline()
                if not raw:
                    assert not fields, f"stream ended inside an event: {fields}"
                    self.ended = True
                    return self
                line = raw.decode().rstrip("\n").rstrip("\r")
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                elif line:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
                elif fields:
                    self._dispatch(fields)
                    fields = {}
                if stop is not None and stop(self):
                    return self

    def _dispatch(self, fields: dict[str, str]) -> None:
        data = json.loads(fields["data"])
        assert data["object"] == "event"
        assert fields["id"] == str(data["seq"]) and fields["event"] == data["type"], fields
        self.events.append(data)

    @property
    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.events]

    @property
    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def start(self, stop: Callable[[SseReader], bool] | None = None) -> asyncio.Task[SseReader]:
        return asyncio.create_task(self.read(stop))

    async def wait_for(self, n: int, timeout: float = 5.0) -> None:
        """Wait (while a ``start``-ed read runs) until ``n`` events have arrived."""

        async def poll() -> None:
            while len(self.events) < n:
                await asyncio.sleep(0.01 * UNIT)

        await asyncio.wait_for(poll(), timeout * UNIT)


async def stored_events(server: Server, run_id: str, query: str = "") -> list[dict[str, Any]]:
    status, body = await server.request(
        "GET", f"/v1/runs/{run_id}/events{query}", headers={"Accept": "application/json"}
    )
    assert status == 200, body
    assert body["object"] == "list" and body["has_more"] is False
    return list(body["data"])


async def join_until_q1(server: Server, run: dict[str, Any]) -> Participant:
    participant = await server.join(run)
    await participant.until("message", kind="question", question_id="q1")
    return participant


async def answer_all(participant: Participant) -> None:
    for text, (kind, qid) in ANSWERS:
        await participant.say(text)
        await participant.until("message", kind=kind, question_id=qid)
    assert (await participant.until("run.ended"))["status"] == "completed"
    await participant.close()


async def completed_run(server: Server) -> tuple[str, list[dict[str, Any]]]:
    run = await server.create_run()
    await answer_all(await join_until_q1(server, run))
    await server.wait_status(run["id"], "completed")
    await eventually(lambda: _analysed(server, run["id"]))
    return run["id"], await stored_events(server, run["id"])


async def _analysed(server: Server, run_id: str) -> bool:
    return any(e["type"] == "run.result_ready" for e in await stored_events(server, run_id))


def assert_sensible(events: list[dict[str, Any]], run_id: str, last: str = "run.completed") -> None:
    """Gapless from 1; the run's terminal event once, followed only by the analysis' run.result_ready."""
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    types = [e["type"] for e in events]
    assert types[:3] == ["run.created", "run.started", "session.started"]
    assert types[-2:] == [last, "run.result_ready"] and sum(t in TERMINAL for t in types) == 1
    assert types.index("session.ended") < types.index(last)
    assert all(e["run_id"] == run_id and e["created_at"] for e in events)


async def test_live_stream_follows_a_whole_interview_and_matches_the_stored_list(server: Server) -> None:
    run = await server.create_run()
    reader = SseReader(server, run["id"])
    task = reader.start()
    await reader.wait_for(1)  # connected and replayed run.created before anything else happens
    assert reader.types == ["run.created"] and not task.done()
    await asyncio.wait_for(answer_all(await join_until_q1(server, run)), 10 * UNIT)
    await asyncio.wait_for(task, 5 * UNIT)  # ends by itself after run.completed and the analysis' result
    assert reader.ended
    assert_sensible(reader.events, run["id"])
    assert reader.types.count("message.created") == 2 * len(ANSWERS) + 2  # greeting, q1, answers and replies
    assert reader.events == await stored_events(server, run["id"])


async def test_resume_mid_interview_with_last_event_id_or_after_seq_loses_and_repeats_nothing(
    server: Server,
) -> None:
    run = await server.create_run()
    participant = await join_until_q1(server, run)
    k = 3
    first = await asyncio.wait_for(SseReader(server, run["id"]).read(lambda r: len(r.events) == k), 5 * UNIT)
    assert first.seqs == [1, 2, 3] and not first.ended
    by_header = SseReader(server, run["id"], headers={"Last-Event-ID": str(k)})
    by_query = SseReader(server, run["id"], query=f"?after_seq={k}")
    tasks = [by_header.start(), by_query.start()]
    await by_header.wait_for(1)
    await by_query.wait_for(1)
    await asyncio.wait_for(answer_all(participant), 10 * UNIT)  # the interview goes on while they listen
    await asyncio.wait_for(asyncio.gather(*tasks), 5 * UNIT)
    stored = await stored_events(server, run["id"])
    assert_sensible(stored, run["id"])
    for resumed in (by_header, by_query):
        assert resumed.ended and resumed.seqs[0] == k + 1
        assert first.events + resumed.events == stored


async def test_resume_after_the_run_ended_replays_the_rest_then_closes(server: Server) -> None:
    run_id, stored = await completed_run(server)
    n = len(stored)
    k = n // 2
    for options in ({"query": f"?after_seq={k}"}, {"headers": {"Last-Event-ID": str(k)}}):
        rest = await asyncio.wait_for(SseReader(server, run_id, **options).read(), 2 * UNIT)  # type: ignore[arg-type]
        assert rest.ended and rest.events == stored[k:], options
    assert (await asyncio.wait_for(SseReader(server, run_id).read(), 2 * UNIT)).events == stored
    for after in (n, n + 10):  # nothing left to send: closes at once rather than waiting for a heartbeat
        empty = await asyncio.wait_for(SseReader(server, run_id, query=f"?after_seq={after}").read(), 1 * UNIT)
        assert empty.ended and empty.events == []
    assert await stored_events(server, run_id, f"?after_seq={k}") == stored[k:]
    assert await stored_events(server, run_id, f"?after_seq={n}") == []


async def test_heartbeat_comments_keep_an_idle_stream_alive(server_factory: ServerFactory) -> None:
    server = await server_factory(heartbeat_s=5.0, time_scale=0.02)  # a heartbeat every 0.1 s
    run = await server.create_run()
    reader = SseReader(server, run["id"])
    await asyncio.wait_for(reader.read(lambda r: r.comments.count("heartbeat") >= 2), 1 * UNIT)
    assert not reader.ended and reader.types == ["run.created"]
    assert set(reader.comments) == {"heartbeat"}
    assert (await server.get_run(run["id"]))["status"] == "pending"


async def test_cancelling_a_run_ends_a_connected_stream_with_run_cancelled(server: Server) -> None:
    run = await server.create_run()
    participant = await join_until_q1(server, run)
    reader = SseReader(server, run["id"])
    task = reader.start()
    await reader.wait_for(5)  # run.created, run.started, session.started, greeting, q1
    status, body = await server.request("POST", f"/v1/runs/{run['id']}/cancel")
    assert status == 200 and body["status"] == "cancelled", body
    await asyncio.wait_for(task, 5 * UNIT)
    assert reader.ended
    assert_sensible(reader.events, run["id"], last="run.cancelled")
    assert reader.events == await stored_events(server, run["id"])
    assert (await participant.until("run.ended"))["status"] == "cancelled"
    await participant.close()


async def test_bad_resume_points_and_foreign_or_unknown_runs_are_refused(server: Server) -> None:
    run = await server.create_run()
    path = f"/v1/runs/{run['id']}/events"
    for accept in ("text/event-stream", "application/json"):
        for query, headers, param in [
            ("?after_seq=abc", {}, "after_seq"),
            ("?after_seq=-1", {}, "after_seq"),
            ("", {"Last-Event-ID": "abc"}, "Last-Event-ID"),
        ]:
            status, body = await server.request("GET", path + query, headers={"Accept": accept, **headers})
            assert status == 400, (accept, query, headers, body)
            assert body["error"]["param"] == param
    status, body = await server.request("GET", path + "?after_seq=1&after_seq=2")
    assert status == 400 and body["error"]["param"] == "after_seq"

    status, body = await server.request("GET", f"/v1/runs/{new_id('run')}/events")
    assert status == 404, body
    status, _ = await server.request("GET", "/v1/runs/not-a-run/events")
    assert status == 404

    catalog = server.state.store.catalog
    other_key = await catalog.create_api_key(await catalog.create_organization("Other org"))
    for accept in ("text/event-stream", "application/json"):
        status, body = await server.request("GET", path, key=other_key, headers={"Accept": accept})
        assert status == 404, (accept, body)
    # the owner still sees the run
    assert [e["type"] for e in await stored_events(server, run["id"])] == ["run.created"]


async def test_many_concurrent_readers_all_get_the_same_complete_sequence(server: Server) -> None:
    run = await server.create_run()
    readers = [SseReader(server, run["id"]) for _ in range(20)]
    tasks = [r.start() for r in readers]
    for reader in readers:
        await reader.wait_for(1)
    await asyncio.wait_for(answer_all(await join_until_q1(server, run)), 10 * UNIT)
    await asyncio.wait_for(asyncio.gather(*tasks), 10 * UNIT)
    stored = await stored_events(server, run["id"])
    assert_sensible(stored, run["id"])
    for reader in readers:
        assert reader.ended and reader.events == stored
    assert server.state.hub.subscriber_count(run["id"]) == 0


async def test_resume_points_that_are_not_plain_small_integers_are_a_400(server: Server) -> None:
    run = await server.create_run()
    path = f"/v1/runs/{run['id']}/events"
    for value in ("\u00b2", "9" * 23):
        for accept in ("application/json", "text/event-stream"):
            for query, headers, param in [
                (f"?after_seq={value}", {}, "after_seq"),
                ("", {"Last-Event-ID": value}, "Last-Event-ID"),
            ]:
                request = server.request("GET", path + query, headers={"Accept": accept, **headers})
                status, body = await asyncio.wait_for(request, 2 * UNIT)
                assert status == 400 and body["error"]["param"] == param, (value, accept, param, status, body)


async def long_run(server_factory: ServerFactory, n_messages: int = 1001) -> tuple[Server, str]:
    """A run with more events than one page of the server's replay (500) or list query (1000)."""
    server = await server_factory(sqlite_synchronous="OFF")
    run = await server.create_run()
    for i in range(n_messages):
        now = time.time()
        await server.state.store.messages.add_message(run["id"], NewMessage(MessageRole.ASSISTANT, f"m{i}", now, now))
    return server, run["id"]


async def test_stream_replays_a_long_run_across_pages(server_factory: ServerFactory) -> None:
    server, run_id = await long_run(server_factory)
    reader = SseReader(server, run_id)
    await asyncio.wait_for(reader.read(lambda r: len(r.events) >= 1002), 5 * UNIT)
    assert reader.seqs == list(range(1, 1003))
    resumed = await asyncio.wait_for(
        SseReader(server, run_id, query="?after_seq=700").read(lambda r: len(r.events) >= 302), 5 * UNIT
    )
    assert resumed.seqs == list(range(701, 1003))


async def test_json_list_of_a_long_run_pages_with_after_seq(server_factory: ServerFactory) -> None:
    server, run_id = await long_run(server_factory)
    path = f"/v1/runs/{run_id}/events"
    status, first = await server.request("GET", path, headers={"Accept": "application/json"})
    assert status == 200 and first["has_more"] is True
    assert [e["seq"] for e in first["data"]] == list(range(1, 1001))
    status, rest = await server.request("GET", path + "?after_seq=1000", headers={"Accept": "application/json"})
    assert status == 200 and rest["has_more"] is False
    assert [e["seq"] for e in rest["data"]] == list(range(1001, 1003))
