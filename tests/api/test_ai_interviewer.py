"""The AI interviewer in real chat interviews, against a protocol-faithful OpenAI-compatible server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import UNIT, Participant, Server, ServerFactory, eventually
from tests.fakes.openai_server import FakeOpenAI, Reply, respond

GUIDE: dict[str, Any] = {
    "name": "Commuting",
    "greeting": "Hello, and thank you for taking part.",
    "questions": [
        {
            "id": "q1",
            "text": "How do you usually get to work?",
            "max_probes": 2,
            "objective": "Why people choose their way of commuting",
        },
        {"id": "q2", "text": "What is the hardest part of your commute?", "max_probes": 0},
        {"id": "q3", "text": "If you could change one thing, what would it be?", "max_probes": 1},
    ],
    "closing": "That is all. Thank you for your time.",
    "interviewer": {"type": "llm", "instructions": "Warm and brief.", "avoid": ["salary"]},
}
PRICES = {"fake-model": {"input": 2.0, "output": 8.0}}
ANSWERS = iter(f"Answer number {n}, with enough words in it to be a real answer." for n in range(1, 100))


def kind_of(body: dict[str, Any]) -> str:
    system = body["messages"][0]["content"]
    if system.startswith("You summarise"):
        return "summary"
    if system.startswith("You extract"):
        return "result"
    return "interviewer"


class Moderator:
    """A model that probes whenever it is allowed to and answers the analysis prompts."""

    def __init__(self, result: dict[str, Any] | None = None) -> None:
        self.result = result or {}
        self.probes = 0

    def __call__(self, body: dict[str, Any]) -> Reply:
        kind = kind_of(body)
        if kind == "summary":
            return Reply(json.dumps({"overall": "They commute by train and dislike delays.", "questions": []}))
        if kind == "result":
            return Reply(json.dumps(self.result))
        actions = body["tools"][0]["function"]["parameters"]["properties"]["action"]["enum"]
        if "follow_up" in actions:
            self.probes += 1
            return respond("follow_up", f"Could you tell me about a time that happened, example {self.probes}?")
        return respond("next_question", "Thanks for explaining.")


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


async def ai_server(server_factory: ServerFactory, fake: FakeOpenAI, **options: Any) -> Server:
    return await server_factory(
        llm_base_url=fake.base_url, llm_model="fake-model", llm_prices=json.dumps(PRICES), **options
    )


async def interview(server: Server, guide: dict[str, Any] = GUIDE) -> tuple[dict[str, Any], Participant]:
    """Answer every question and probe until the run ends; returns the run and the participant's socket."""
    run = await server.create_run(blueprint_id=await server.create_blueprint(guide))
    participant = await server.join(run)
    await participant.until("session.ready")
    while True:
        frame = await participant.recv(10)
        if frame["type"] == "run.ended":
            return run, participant
        if frame["type"] == "message" and frame["message"]["kind"] in ("question", "probe", "rephrase", "reask"):
            await participant.say(next(ANSWERS))


async def analysed(server: Server, run_id: str) -> dict[str, Any]:
    async def ready() -> dict[str, Any] | None:
        run = await server.get_run(run_id, "result")
        return run if run["result"]["status"] != "pending" else None

    return dict(await eventually(ready, timeout=10))


async def test_a_chat_interview_keeps_the_guide_streams_follow_ups_and_adds_up_usage(
    server_factory: ServerFactory, fake: FakeOpenAI
) -> None:
    fake.responder = Moderator()
    server = await ai_server(server_factory, fake)
    run, participant = await interview(server)

    done = await server.get_run(run["id"], "transcript", "responses", "blueprint")
    assert done["end_reason"] == "completed"
    said = [m for m in done["transcript"] if m["role"] == "assistant"]
    asked = [m for m in said if m["kind"] in ("question",)]
    # every question, in order, word for word (after an acknowledgement)
    texts = [q["text"] for q in GUIDE["questions"]]
    assert [m["question_id"] for m in asked] == ["q1", "q2", "q3"]
    assert all(m["content"].endswith(t) for m, t in zip(asked, texts, strict=True))
    assert said[-1]["kind"] == "closing" and said[-1]["content"].endswith(GUIDE["closing"])
    probes = {q["question_id"]: q["probes_asked"] for q in done["responses"]}
    assert probes == {"q1": 2, "q2": 0, "q3": 1}  # as many as allowed, never more
    assert all(r["answer"] for r in done["responses"])

    # every reply the model wrote was previewed as it streamed, and its deltas add up to the stored message
    deltas: dict[str, str] = {}
    for frame in participant.frames:
        if frame["type"] == "message.delta":  # as the page does: a restart drops the draft so far
            kept = "" if frame.get("restart") else deltas.get(frame["turn"], "")
            deltas[frame["turn"]] = kept + frame["delta"]
    written = [m for m in said if m["generation"] and m["generation"]["action"]]
    assert len(written) == 6 and sorted(deltas.values()) == sorted(m["content"] for m in written)
    follow_ups = [m for m in said if m["kind"] == "probe"]

    # the record: which model and prompt made each message, and what it cost
    frozen = done["blueprint"]["interviewer"]
    assert frozen["model"] == "fake-model" and frozen["prompt_version"]
    for m in follow_ups:
        assert m["generation"]["model"] == "fake-model" and m["generation"]["action"] == "follow_up"
        assert m["generation"]["prompt_version"] == frozen["prompt_version"] and not m["generation"]["fallback"]
    turns = [m["usage"] for m in said if m["usage"]]
    interviewer_calls = sum(1 for body in fake.requests if kind_of(body) == "interviewer")
    assert sum(u["calls"] for u in turns) == interviewer_calls == 3 + 1 + 2  # one per answer
    finished = await analysed(server, run["id"])
    usage = finished["usage"]
    assert usage["llm_calls"] == len(fake.requests)  # the interview's calls and the summary's
    summary_tokens = usage["input_tokens"] - sum(u["input_tokens"] for u in turns)
    assert summary_tokens > 0
    expected_cost = (usage["input_tokens"] * 2.0 + usage["output_tokens"] * 8.0) / 1e6
    assert usage["cost_usd"] == pytest.approx(expected_cost)
    assert finished["result"]["summary"]["method"] == "llm"
    assert finished["result"]["summary"]["overall"] == "They commute by train and dislike delays."


async def test_publishing_an_ai_guide_on_a_server_without_a_model_is_refused(server: Server) -> None:
    status, bp = await server.request("POST", "/v1/blueprints", json=GUIDE)
    assert status == 201
    status, body = await server.request("POST", f"/v1/blueprints/{bp['id']}/publish")
    assert status == 409 and "--llm-base-url" in body["error"]["message"]
    assert body["error"]["param"] == "interviewer.type"
    scripted = {**GUIDE, "interviewer": {"type": "scripted"}}
    status, _ = await server.request("PATCH", f"/v1/blueprints/{bp['id']}", json=scripted)
    assert status == 200
    status, _ = await server.request("POST", f"/v1/blueprints/{bp['id']}/publish")
    assert status == 200


@pytest.mark.parametrize(
    "bad",
    [
        {"result_schema": {"type": "object", "properties": {"age": {"type": "banana"}}}},
        {"result_schema": {"type": "array"}},
        {"interviewer": {"type": "oracle"}},
        {"interviewer": {"type": "llm", "temperature": 7}},
        {"questions": [{"id": "q1", "text": "Why?", "verbatim": "sometimes"}]},
    ],
)
async def test_bad_ai_settings_are_refused_with_the_field(server: Server, bad: dict[str, Any]) -> None:
    status, body = await server.request("POST", "/v1/blueprints", json={**GUIDE, **bad})
    assert status == 400, body
    assert body["error"]["type"] == "invalid_request"


async def test_a_model_that_always_fails_never_stalls_the_interview(
    server_factory: ServerFactory, fake: FakeOpenAI
) -> None:
    fake.responder = lambda body: Reply(status=500, error_message="The server had an error")
    server = await ai_server(server_factory, fake, llm_timeout_s=1.0 * UNIT)
    run, _ = await interview(server)
    done = await server.get_run(run["id"], "transcript", "responses")
    assert done["status"] == "completed" and all(r["answer"] for r in done["responses"])
    replies = [m for m in done["transcript"] if m["role"] == "assistant" and m["generation"]]
    assert replies and all(m["generation"]["fallback"] for m in replies)
    assert all("500" in m["generation"]["fallback_reason"] for m in replies)
    finished = await analysed(server, run["id"])
    assert finished["result"]["summary"]["method"] == "extractive"  # the summary fell back too


async def test_the_result_is_extracted_and_validated_against_the_schema(
    server_factory: ServerFactory, fake: FakeOpenAI
) -> None:
    schema = {
        "type": "object",
        "properties": {"mode": {"enum": ["train", "car", "bike"]}, "minutes": {"type": "integer"}},
        "required": ["mode", "minutes"],
        "additionalProperties": False,
    }
    fake.responder = Moderator(result={"mode": "train", "minutes": 35})
    server = await ai_server(server_factory, fake)
    run, _ = await interview(server, {**GUIDE, "result_schema": schema})
    finished = await analysed(server, run["id"])
    assert finished["result"]["status"] == "ready"
    assert finished["result"]["result"] == {"mode": "train", "minutes": 35}
    status, events = await server.request("GET", f"/v1/runs/{run['id']}/events", headers={"Accept": "application/json"})
    assert status == 200
    assert events["data"][-1]["type"] == "run.result_ready" and events["data"][-1]["data"]["has_result"] is True


async def test_an_invalid_result_is_retried_once_with_the_errors_then_recorded_as_an_error(
    server_factory: ServerFactory, fake: FakeOpenAI
) -> None:
    schema = {"type": "object", "properties": {"minutes": {"type": "integer"}}, "required": ["minutes"]}
    fake.responder = Moderator(result={"minutes": "about half an hour"})
    server = await ai_server(server_factory, fake)
    run, _ = await interview(server, {**GUIDE, "result_schema": schema})
    finished = await analysed(server, run["id"])
    assert finished["result"]["result"] is None
    assert "minutes" in finished["result"]["result_error"] and "integer" in finished["result"]["result_error"]
    extractions = [b for b in fake.requests if kind_of(b) == "result"]
    assert len(extractions) == 2
    assert "not valid against the schema" in extractions[1]["messages"][-1]["content"]


async def test_a_reconnecting_participant_gets_the_stored_message_never_half_a_delta_stream(
    server_factory: ServerFactory, fake: FakeOpenAI
) -> None:
    slow = "Could you walk me through what happens on a typical morning, step by step?"
    fake.responder = lambda body: (
        Reply(tool={"name": "respond", "arguments": {"action": "follow_up", "text": slow}}, piece=4, token_delay=0.05)
        if kind_of(body) == "interviewer"
        else Reply(json.dumps({"overall": "x", "questions": []}))
    )
    server = await ai_server(server_factory, fake)
    run = await server.create_run(blueprint_id=await server.create_blueprint(GUIDE))
    first = await server.join(run)
    await first.until("message", kind="question")
    await first.say("I drive, mostly, because the train is unreliable around here.")
    await first.until("message.delta")  # the follow-up has started streaming
    await first.close()
    second = await server.join(run)
    ready = await second.until("session.ready")
    follow_up = await second.until("message", kind="probe", timeout=10)
    assert follow_up["message"]["content"] == slow
    assert not any(f["type"] == "message.delta" for f in second.frames)  # none of the old stream
    stored = [m["content"] for m in ready["messages"]]
    assert slow not in stored or stored.count(slow) == 1


async def test_the_api_key_is_used_but_never_stored_logged_or_returned(
    server_factory: ServerFactory, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    secret = "sk-test-secret-0123456789"
    fake.responder = Moderator()
    caplog.set_level("DEBUG")
    server = await server_factory(llm_base_url=fake.base_url, llm_model="fake-model", llm_api_key=secret)
    run, _ = await interview(server)
    await analysed(server, run["id"])
    seen = fake.seen_headers
    assert seen and all(h.get("Authorization") == f"Bearer {secret}" for h in seen)  # sent to the model server
    assert secret not in caplog.text and secret not in repr(server.config)
    for path in ("/v1/runs", f"/v1/runs/{run['id']}?expand=transcript&expand=blueprint&expand=result", "/openapi.json"):
        status, body = await server.request("GET", path)
        assert status == 200 and secret not in json.dumps(body)
    for stored in server.config.data_dir.rglob("*"):
        if stored.is_file():
            assert secret.encode() not in stored.read_bytes(), stored


def test_serve_refuses_prices_it_cannot_use() -> None:
    import subprocess
    import sys

    bad = subprocess.run(
        [sys.executable, "-m", "api.cli", "serve", "--llm-prices", "/nonexistent/prices.json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "cannot read the LLM prices file" in bad.stderr and "Traceback" not in bad.stderr
