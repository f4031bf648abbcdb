"""Piloting a guide with synthetic participants: loadtest chat callers answering as an LLM persona."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from rich.console import Console

from api.loadtest import LoadtestConfig, Persona
from api.loadtest.cli import execute
from api.loadtest.config import ConfigError, Delay
from tests.conftest import UNIT, ServerFactory
from tests.fakes.openai_server import FakeOpenAI, Reply, respond

GUIDE: dict[str, Any] = {
    "name": "Commuting",
    "greeting": "Hello.",
    "questions": [
        {"id": "q1", "text": "How do you get to work?", "max_probes": 1},
        {"id": "q2", "text": "What is the hardest part?", "max_probes": 0},
    ],
    "closing": "Thank you, goodbye.",
    "interviewer": {"type": "llm"},
}
NURSE = "A night-shift nurse in Leeds who takes the bus and is tired of it being late."


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


async def test_synthetic_participants_answer_as_their_persona_and_the_pilot_completes(
    server_factory: ServerFactory, fake: FakeOpenAI
) -> None:
    answers = iter(f"I take the number {n} bus, and on night shifts it is often late." for n in range(1, 100))

    def model(body: dict[str, Any]) -> Reply:
        system = body["messages"][0]["content"]
        if system.startswith("You are taking part in a research interview"):  # the synthetic participant
            assert NURSE in system and body["messages"][-1]["role"] == "user"  # the interviewer's last line
            return Reply(next(answers))
        if system.startswith(("You summarise", "You extract")):
            return Reply(json.dumps({"overall": "A nurse who commutes by bus.", "questions": []}))
        actions = body["tools"][0]["function"]["parameters"]["properties"]["action"]["enum"]
        return respond("follow_up" if "follow_up" in actions else "next_question", "Why the bus?")

    fake.responder = model
    server = await server_factory(llm_base_url=fake.base_url, llm_model="fake-model")
    await server.create_blueprint(GUIDE)
    persona = Persona(typing_delay_ms=Delay(distribution="fixed", value=10.0), description=NURSE, name="nurse")
    config = LoadtestConfig(
        url=server.url,
        api_key=server.api_key,
        channel_id=server.chat_channel_id,
        persona=persona,
        callers=2,
        runs=2,
        deadline_s=60 * UNIT,
        llm_base_url=fake.base_url,
        llm_model="fake-model",
    )
    report = await execute(config, console=Console(file=io.StringIO(), width=160))
    assert report["exit_code"] == 0, report["problems"]
    assert report["summary"]["completed"] == 2
    assert report["summary"]["synthetic_answers"] == {"model": 6, "canned": 0}  # 3 answers a run: q1, probe, q2
    for session in report["sessions"]:
        run = await server.get_run(session["run_id"], "transcript", "responses")
        said = [m["content"] for m in run["transcript"] if m["role"] == "user"]
        assert len(said) == 3 and all("bus" in s for s in said)
        assert all(r["answer"] for r in run["responses"])


def test_a_persona_description_must_be_text() -> None:
    with pytest.raises(ConfigError, match="description"):
        Persona.from_json({"description": ""})
    assert Persona.from_json({"description": NURSE}).description == NURSE
