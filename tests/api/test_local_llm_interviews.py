"""Whole interviews moderated by a real local model: llama.cpp's server with SmolLM2-135M, no key, no network.

SmolLM2 is tiny and does not reliably follow instructions: these tests show that the runtime makes it safe
(the guide kept, every reply checked, a spoken next step every turn, the record complete) whatever it writes.
``make local-llm`` installs it; locally the tests skip without it, in CI (``CI`` set) they must run.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from api.local_llm import LocalLLM, LocalLLMSettings
from api.local_llm.locate import MODEL_PACKAGE, SERVER_MODULES
from media.caller import VoiceCaller
from runtime.interviewer import speech
from tests.conftest import UNIT, Server, ServerFactory, eventually, spoken_answer

INSTALLED = all(importlib.util.find_spec(m) for m in (*SERVER_MODULES, MODEL_PACKAGE))
if not INSTALLED and os.environ.get("CI"):
    raise RuntimeError(
        "CI must run the local LLM interviews, but the local LLM is missing: .ci/run runs make local-llm"
    )
pytestmark = pytest.mark.skipif(not INSTALLED, reason="the local LLM is not installed (make local-llm)")

GUIDE: dict[str, Any] = {
    "name": "Work and home",
    "greeting": "Hello, and thank you for taking part.",
    "questions": [
        {"id": "work", "text": "What do you do for a living?", "max_probes": 1, "objective": "Their work"},
        {"id": "home", "text": "Where do you live?", "max_probes": 0, "objective": "Where they live and why"},
    ],
    "closing": "That is all, thank you for your time.",
    "interviewer": {"type": "llm", "instructions": "Be brief and friendly."},
    "result_schema": {"type": "object", "properties": {"job": {"type": "string"}}},
}
ODD = re.compile(r"[{}\[\]<>`*#|\\]|respond|action|\bjson\b", re.IGNORECASE)


@pytest.fixture
async def local_llm(tmp_path: Path) -> AsyncIterator[LocalLLM]:
    log = tmp_path / "local-llm.log"
    async with LocalLLM(log, LocalLLMSettings(start_timeout_s=120 * UNIT)) as llm:
        yield llm


async def ai_server(server_factory: ServerFactory, llm: LocalLLM, **options: Any) -> Server:
    return await server_factory(
        llm_base_url=llm.base_url,
        llm_model=llm.model,
        llm_warm_up=True,
        llm_timeout_s=90 * UNIT,  # a first turn reads ~700 tokens: seconds of one core, more under load
        llm_voice_timeout_s=30 * UNIT,
        **options,
    )


def assert_safe(transcript: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Nothing odd was said; every reply to an answer has its record; returns the model-written ones."""
    said = [m for m in transcript if m["role"] == "assistant"]
    for m in said:
        assert not ODD.search(m["content"]), m["content"]
        assert not speech.problems(m["content"], max_words=80), m["content"]
    replies = [m for m in said if m["generation"] is not None]
    assert replies, "no reply went through the AI interviewer"
    for m in replies:
        assert m["generation"]["model"] and m["generation"]["prompt_version"]
    return [m for m in replies if not m["generation"]["fallback"] and m["generation"]["action"]]


async def test_a_chat_interview_with_the_local_model(server_factory: ServerFactory, local_llm: LocalLLM) -> None:
    server = await ai_server(server_factory, local_llm)
    run = await server.create_run(blueprint_id=await server.create_blueprint(GUIDE))
    participant = await server.join(run)
    answers = iter(
        [
            "I work as a nurse at the city hospital, mostly night shifts on the children's ward.",
            "The hardest part is sleeping during the day, but I love the children and my colleagues.",
            "I live in a small town near the coast, about half an hour from the hospital.",
            "It is quiet and close to my family.",
        ]
    )
    while True:
        frame = await participant.recv(120)
        if frame["type"] == "run.ended":
            break
        if frame["type"] == "message" and frame["message"]["kind"] in ("question", "probe", "rephrase", "reask"):
            await participant.say(next(answers, "That is all I can say about it."))

    done = await server.get_run(run["id"], "transcript", "responses")
    assert done["status"] == "completed" and done["end_reason"] == "completed"
    asked = [m["question_id"] for m in done["transcript"] if m["kind"] == "question"]
    assert asked == ["work", "home"]  # the guide, in order, whatever the model proposed
    assert done["transcript"][-1]["kind"] == "closing"
    assert all(r["answer"] for r in done["responses"]) and done["responses"][1]["probes_asked"] == 0
    written = assert_safe(done["transcript"])
    assert done["usage"]["llm_calls"] >= 3  # one per answer at least (the warm-up is not a turn)
    analysed = await eventually(lambda: _result(server, run["id"]), timeout=240)
    assert analysed["summary"]["method"] in ("llm", "extractive")
    print(f"local model wrote {len(written)} of the replies; the rest fell back to the script")


async def test_a_voice_interview_with_the_local_model(server_factory: ServerFactory, local_llm: LocalLLM) -> None:
    server = await ai_server(server_factory, local_llm, ice_host_addresses=("127.0.0.1",))
    blueprint_id = await server.create_blueprint({**GUIDE, "result_schema": None})
    status, channel = await server.request("POST", "/v1/channels", json={"type": "webrtc_voice", "name": "voice"})
    assert status == 201
    run = await server.create_run(blueprint_id=blueprint_id, channel_id=channel["id"])
    caller = VoiceCaller()
    await caller.join(server.http, run["join_url"], timeout=20 * UNIT)
    answers = ["job", "favorite", "home", "yes", "yes", "yes"]
    asking = ("question", "probe", "rephrase", "reask", "redirect", "reminder")

    def asked_or_ended(ev: dict[str, Any]) -> bool:
        message = ev.get("message") or {}
        return ev.get("type") == "run.ended" or (ev.get("type") == "message" and message.get("kind") in asking)

    def listening(ev: dict[str, Any]) -> bool:
        return ev.get("type") == "state" and ev.get("state") == "listening"

    try:
        n = 0
        for answer in answers:  # bounded: a guide of two questions and one follow-up needs three or four
            ev = await caller.wait_event(asked_or_ended, 180 * UNIT, after=n)
            if ev.get("type") == "run.ended":
                break
            n = len(caller.events)
            await caller.wait_event(listening, 60 * UNIT, after=n)  # the interviewer finished speaking
            n = len(caller.events)
            await caller.say(spoken_answer(answer))
        await caller.wait_event(lambda ev: ev.get("type") == "run.ended", 180 * UNIT)
    finally:
        await caller.close()
    done = await server.wait_status(run["id"], "completed", timeout=60)
    done = await server.get_run(run["id"], "transcript", "responses")
    assert [m["question_id"] for m in done["transcript"] if m["kind"] == "question"] == ["work", "home"]
    assert done["transcript"][-1]["kind"] == "closing"
    assert_safe(done["transcript"])
    assert any(m["role"] == "user" and m["content"] for m in done["transcript"])


async def _result(server: Server, run_id: str) -> dict[str, Any] | None:
    run = await server.get_run(run_id, "result")
    return dict(run["result"]) if run["result"]["status"] == "ready" else None
