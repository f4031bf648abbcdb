"""A participant interviewed over the chat websocket, from join to the end of the run."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from tests.conftest import LONG_ANSWER, UNIT, Server, ServerFactory, eventually, refuse_first_answer, ws_url


async def complete_interview(server: Server, run: dict) -> list[str]:
    """Answer every question (one short answer to trigger the probe); return what the participant said."""
    participant = await server.join(run)
    said = []
    ready = await participant.until("session.ready")
    assert ready["run_id"] == run["id"] and ready["messages"] == []
    await participant.until("message", kind="greeting")
    await participant.until("message", kind="question", question_id="q1")
    for text, expect in [
        ("I teach", ("probe", "q1")),
        (LONG_ANSWER + " one", ("question", "q2")),
        (LONG_ANSWER + " two", ("question", "q3")),
        (LONG_ANSWER + " three", ("closing", None)),
    ]:
        ack = await participant.say(text)
        assert ack["message"]["role"] == "user" and ack["message"]["content"] == text
        said.append(text)
        kind, qid = expect
        await participant.until("message", kind=kind, question_id=qid)
    ended = await participant.until("run.ended")
    assert ended["reason"] == "completed" and ended["status"] == "completed"
    await participant.close()
    return said


async def test_full_chat_interview_completes_with_transcript_responses_and_events(server: Server) -> None:
    run = await server.create_run(participant={"external_id": "p-1", "name": "Ada"}, metadata={"cohort": "a"})
    assert run["status"] == "pending" and run["join_url"].startswith(server.url + "/join/")
    said = await complete_interview(server, run)

    done = await server.get_run(run["id"], "transcript", "responses", "sessions", "blueprint", "channel")
    assert done["status"] == "completed" and done["end_reason"] == "completed"
    assert done["started_at"] and done["ended_at"] and done["duration_s"] >= 0
    transcript = done["transcript"]
    assert [m["content"] for m in transcript if m["role"] == "user"] == said
    assert transcript[0]["kind"] == "greeting" and transcript[-1]["kind"] == "closing"
    for m in transcript:
        assert m["start_offset_s"] >= 0
        if m["role"] == "assistant":
            lat = m["latency_breakdown"]
            assert lat["initial_wait"] >= 0 and lat["llm"] >= 0
            assert lat["eos"] is None and lat["tts"] is None and lat["transcriber"] is None
    # after the first pong the network stage is measured
    assert any(m["latency_breakdown"]["network"] is not None for m in transcript if m["role"] == "assistant")
    assert done["latency"]["llm"]["count"] == sum(1 for m in transcript if m["role"] == "assistant")

    responses = {r["question_id"]: r for r in done["responses"]}
    assert responses["q1"]["answer"] == f"I teach {said[1]}" and responses["q1"]["probes_asked"] == 1
    assert responses["q3"]["answer"] == said[3]
    assert [s["end_reason"] for s in done["sessions"]] == ["run_ended"]
    assert done["blueprint"]["id"] == run["blueprint_id"] and done["channel"]["id"] == run["channel_id"]

    async def analysed() -> Any:
        path = f"/v1/runs/{run['id']}/events"
        status, body = await server.request("GET", path, headers={"Accept": "application/json"})
        return body if status == 200 and body["data"][-1]["type"] == "run.result_ready" else None

    events = await eventually(analysed)  # the finished run's analysis job announces its result last
    seqs = [e["seq"] for e in events["data"]]
    assert seqs == list(range(1, len(seqs) + 1))
    types = [e["type"] for e in events["data"]]
    assert types[:3] == ["run.created", "run.started", "session.started"]
    assert types[-3:] == ["session.ended", "run.completed", "run.result_ready"]
    assert types.count("message.created") == len(transcript)


async def test_transcript_exports_in_all_formats(server: Server) -> None:
    run = await server.create_run()
    said = await complete_interview(server, run)
    for fmt, ctype, marker in [
        ("json", "application/json", '"object": "transcript"'),
        ("txt", "text/plain", "Participant: "),
        ("vtt", "text/vtt", "WEBVTT"),
        ("srt", "application/x-subrip", " --> "),
    ]:
        async with server.http.get(
            f"{server.url}/v1/runs/{run['id']}/transcript?format={fmt}", headers=server.auth
        ) as resp:
            assert resp.status == 200, fmt
            assert resp.content_type == ctype
            body = await resp.text()
        assert marker in body
        for text in said:
            assert text in body, (fmt, text)
    status, err = await server.request("GET", f"/v1/runs/{run['id']}/transcript?format=pdf")
    assert status == 400 and err["error"]["param"] == "format"


async def test_bad_frames_get_error_frames_and_the_session_goes_on(server: Server) -> None:
    run = await server.create_run()
    p = await server.join(run)
    await p.until("message", kind="question", question_id="q1")
    cases = [
        ("not json", "invalid_frame"),
        ("[1, 2]", "invalid_frame"),
        (json.dumps({"type": "dance"}), "unknown_type"),
        (json.dumps({"type": "message"}), "invalid_frame"),
        (json.dumps({"type": "message", "content": "   "}), "empty_content"),
        (json.dumps({"type": "message", "content": "x" * (32 * 1024 + 1)}), "content_too_large"),
        (json.dumps({"type": "message", "content": "hi", "client_id": "bad id!"}), "invalid_frame"),
        (b"\x00\x01binary", "invalid_frame"),
        (json.dumps({"type": "message", "content": "a\u0000b", "client_id": "c-nul"}), "invalid_frame"),
        (json.dumps({"type": "message", "content": "lone \ud800 surrogate"}), "invalid_frame"),
    ]
    for frame, code in cases:
        await p.send(frame)
        err = await p.until("error")
        assert err["code"] == code, frame[:40]
        assert err["message"]
        if "c-nul" in str(frame):  # no database stores a NUL: refused, naming the answer, never a failed write
            assert err["client_id"] == "c-nul" and "/content" in err["message"] and "NUL" in err["message"]
    await p.send({"type": "ping", "t": 42})
    assert (await p.until("pong"))["t"] == 42
    # the session still works: a 32 KB answer (exactly the limit) is accepted
    ack = await p.say("y" * (32 * 1024))
    assert len(ack["message"]["content"]) == 32 * 1024
    await p.close()
    run = await server.get_run(run["id"], "transcript")
    assert [m["role"] for m in run["transcript"]].count("user") == 1


async def test_second_join_takes_over_and_first_is_told_why(server: Server) -> None:
    run = await server.create_run()
    first = await server.join(run)
    await first.until("message", kind="question", question_id="q1")
    second = await server.join(run)
    ready = await second.until("session.ready")
    assert ready["resumed"] is True and len(ready["messages"]) == 2
    err = await first.until("error")
    assert err["code"] == "replaced"
    try:
        await asyncio.wait_for(first.ws.recv(), 5 * UNIT)
        raise AssertionError("the first connection should be closed")
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 4001
    await second.until("message", kind="resume", question_id="q1")
    await second.say(LONG_ANSWER)
    await second.until("message", kind="question", question_id="q2")
    await second.close()

    async def ended_sessions() -> list[str | None]:
        sessions = (await server.get_run(run["id"], "sessions"))["sessions"]
        return [s["end_reason"] for s in sessions] if sessions[-1]["status"] == "ended" else []

    assert await eventually(ended_sessions) == ["replaced", "participant_left"]


async def test_retried_message_with_same_client_id_is_stored_once(server: Server) -> None:
    run = await server.create_run()
    p = await server.join(run)
    await p.until("message", kind="question", question_id="q1")
    first = await p.say(LONG_ANSWER, client_id="same")
    again = await p.say(LONG_ANSWER, client_id="same")
    assert first["message"]["id"] == again["message"]["id"]
    await p.until("message", kind="question", question_id="q2")
    await p.close()
    transcript = (await server.get_run(run["id"], "transcript"))["transcript"]
    assert [m["content"] for m in transcript if m["role"] == "user"] == [LONG_ANSWER]


async def test_join_page_and_unknown_token(server: Server) -> None:
    run = await server.create_run()
    async with server.http.get(run["join_url"]) as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        page = await resp.text()
    assert "Test interview" in page and "/ws" in page
    async with server.http.get(server.url + "/join/not-a-token") as resp:
        assert resp.status == 404 and "not valid" in await resp.text()
    try:
        await websockets.connect(ws_url({"join_url": server.url + "/join/not-a-token"}), open_timeout=5 * UNIT)
        raise AssertionError("unknown token must be refused")
    except websockets.InvalidStatus as exc:
        assert exc.response.status_code == 404


async def test_join_after_the_run_ended_gets_run_ended(server_factory: ServerFactory) -> None:
    server = await server_factory()
    run = await server.create_run()
    status, _ = await server.request("POST", f"/v1/runs/{run['id']}/cancel")
    assert status == 200
    p = await server.join(run)
    ended = await p.until("run.ended")
    assert ended == {"type": "run.ended", "status": "cancelled", "reason": "cancelled"}
    async with server.http.get(run["join_url"]) as resp:
        assert resp.status == 200 and "cancelled" in await resp.text()


async def test_an_answer_the_database_refuses_is_reported_and_stored_when_sent_again(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = refuse_first_answer(server, monkeypatch)
    run = await server.create_run()
    p = await server.join(run)
    await p.until("message", kind="question", question_id="q1")
    await p.send({"type": "message", "content": LONG_ANSWER, "client_id": "a1"})
    error = await p.until("error")
    assert (error["code"], error["client_id"]) == ("storage_unavailable", "a1")
    ack = await p.say(LONG_ANSWER, client_id="a1")  # what the page does 2 s later
    assert ack["message"]["content"] == LONG_ANSWER
    await p.until("message", kind="question", question_id="q2")
    await p.close()
    transcript = (await server.get_run(run["id"], "transcript"))["transcript"]
    assert [m["content"] for m in transcript if m["role"] == "user"] == [LONG_ANSWER]
    assert refused == [LONG_ANSWER]  # refused once, then stored once
