"""The AI interviewer by voice: sentences spoken as they are written, replies composed in the pause, and a
barge-in that the next request sees as the participant heard it. Real aiortc caller, real time."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from media.caller import VoiceCaller
from tests.conftest import ANSWERS, UNIT, Server, ServerFactory, spoken_answer
from tests.fakes.openai_server import FakeOpenAI, Reply, respond

GUIDE: dict[str, Any] = {
    "name": "Voice, with the AI interviewer",
    "greeting": "Hello.",
    "questions": [
        {"id": "work", "text": "What do you do?", "max_probes": 1, "objective": "Their work and what it is like"},
        {"id": "home", "text": "Where do you live?", "max_probes": 0},
    ],
    "closing": "Thank you, goodbye.",
    "interviewer": {"type": "llm"},
}
STAGES = ("eos", "eos_wait", "transcriber", "llm", "tts", "initial_wait")
LONG_ACK = (
    "So your days are spent working with many different people in a busy place, with a lot going on "
    "around you from the early morning until the evening."
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


async def voice_ai_server(server_factory: ServerFactory, fake: FakeOpenAI) -> tuple[Server, dict[str, Any]]:
    server = await server_factory(ice_host_addresses=("127.0.0.1",), llm_base_url=fake.base_url, llm_model="fake-model")
    blueprint_id = await server.create_blueprint(GUIDE)
    status, channel = await server.request("POST", "/v1/channels", json={"type": "webrtc_voice", "name": "voice"})
    assert status == 201
    return server, await server.create_run(blueprint_id=blueprint_id, channel_id=channel["id"])


def interviewer_requests(fake: FakeOpenAI) -> list[dict[str, Any]]:
    return [b for b in fake.requests if not b["messages"][0]["content"].startswith(("You summarise", "You extract"))]


def is_message(kind: str, question_id: str | None = None) -> Any:
    def match(ev: dict[str, Any]) -> bool:
        m = ev.get("message", {})
        return ev.get("type") == "message" and m.get("kind") == kind and question_id in (None, m.get("question_id"))

    return match


async def listening(caller: VoiceCaller, after: int) -> None:
    is_listening = lambda ev: ev.get("type") == "state" and ev.get("state") == "listening"  # noqa: E731
    await caller.wait_event(is_listening, 20 * UNIT, after=after)


async def test_a_voice_ai_interview_speaks_sentence_by_sentence_and_composes_in_the_pause(
    server_factory: ServerFactory, fake: FakeOpenAI
) -> None:
    def moderate(body: dict[str, Any]) -> Reply:
        actions = body["tools"][0]["function"]["parameters"]["properties"]["action"]["enum"]
        if "follow_up" in actions:
            return respond("follow_up", "I see, you work with people. What is a typical day like?")
        return respond("next_question", "Okay, thank you.")

    fake.responder = moderate
    server, run = await voice_ai_server(server_factory, fake)
    caller = VoiceCaller()
    await caller.join(server.http, run["join_url"], timeout=10 * UNIT)
    try:
        await caller.wait_event(is_message("question", "work"), 20 * UNIT)
        for answer_id, next_message in (
            ("job", is_message("probe", "work")),
            ("breakfast", is_message("question", "home")),
            ("home", is_message("closing")),
        ):
            n = len(caller.events)
            await listening(caller, n)
            await caller.say(spoken_answer(answer_id))
            await caller.wait_event(next_message, 30 * UNIT, after=n)
        await caller.wait_event(lambda ev: ev.get("type") == "run.ended", 30 * UNIT)
    finally:
        await caller.close()

    transcript = (await server.get_run(run["id"], "transcript", "responses"))["transcript"]
    said = [(m["kind"], m["content"]) for m in transcript if m["role"] == "assistant"]
    assert ("acknowledgement", "I see, you work with people.") in said
    assert ("probe", "What is a typical day like?") in said  # its own message, spoken after the first
    assert ("question", "Where do you live?") in said and said[-1][0] == "closing"
    assert len(interviewer_requests(fake)) == 3 and server.state.live.speculation.used >= 1

    # the breakdown still adds up to what was measured, with the reply composed during the pause
    checked = 0
    for before, message in itertools.pairwise(transcript):
        lat = message["latency_breakdown"]
        if message["role"] != "assistant" or before["role"] != "user" or lat is None or lat["eos"] is None:
            continue
        measured = (message["start_offset_s"] - before["end_offset_s"]) * 1000
        assert abs(sum(lat[s] for s in STAGES) - measured) <= 2.0, (lat, measured)
        checked += 1
    assert checked >= 2


async def test_a_barge_in_enters_the_next_request_cut_to_what_was_played(
    server_factory: ServerFactory, fake: FakeOpenAI
) -> None:
    replies = iter(
        [
            respond("follow_up", f"{LONG_ACK} What is a typical day like for you?"),
            respond("next_question", "Okay."),
            respond("next_question", "Thanks."),
        ]
    )
    fake.responder = lambda body: next(replies, Reply(status=500))
    server, run = await voice_ai_server(server_factory, fake)
    caller = VoiceCaller()
    await caller.join(server.http, run["join_url"], timeout=10 * UNIT)
    try:
        await caller.wait_event(is_message("question", "work"), 20 * UNIT)
        await listening(caller, 0)
        n = len(caller.events)
        await caller.say(spoken_answer("job"))
        await caller.wait_event(is_message("acknowledgement", "work"), 30 * UNIT, after=n)
        await asyncio.sleep(1.5 * UNIT)  # part of the long sentence has been heard
        n = len(caller.events)
        await caller.say(spoken_answer("breakfast"))  # talks over it
        await caller.wait_event(is_message("question", "home"), 30 * UNIT, after=n)
    finally:
        await caller.close()

    transcript = (await server.get_run(run["id"], "transcript"))["transcript"]
    ack = next(m for m in transcript if m["kind"] == "acknowledgement")
    assert ack["is_interrupted"] is True and 0 < len(ack["content"]) < len(LONG_ACK)
    second = interviewer_requests(fake)[1]
    lines = [m["content"] for m in second["messages"][1:]]
    assert any(ack["content"] in line for line in lines), lines  # what was played...
    assert not any(LONG_ACK in line for line in lines)  # ...not what was written
    assert not any("typical day" in line for line in lines)  # the follow-up itself was never heard
    heard = " ".join(ANSWERS["breakfast"]["text"].split()[:2]).lower()
    assert heard.split()[0] in second["messages"][-1]["content"].lower()
