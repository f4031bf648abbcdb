"""Voice interviews through hosted speech engines (local services speaking their real protocols,
tests/speech_services.py), and the interview going on when one fails mid-interview."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from media.caller import VoiceCaller
from media.stt.wer import word_error_rate
from tests.conftest import ANSWERS, UNIT, VOICE_BLUEPRINT, Server, ServerFactory, spoken_answer
from tests.speech_services import KEY, SpeechServices, start_services

WER = 0.35


@pytest.fixture
async def services(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[SpeechServices, str]]:
    monkeypatch.setenv("HOSTED_SPEECH_KEY", KEY)
    fake = SpeechServices()
    runner, url = await start_services(fake)
    yield fake, url
    await runner.cleanup()


async def hosted_server(server_factory: ServerFactory, url: str, stt: str) -> Server:
    stt_url = url.replace("http://", "ws://") + "/v1/listen" if stt == "deepgram" else f"{url}/v1"
    server = await server_factory(
        ice_host_addresses=("127.0.0.1",),
        hosted_stt=stt,
        hosted_stt_url=stt_url,
        hosted_stt_key_env="HOSTED_SPEECH_KEY",
        hosted_tts="openai",
        hosted_tts_url=f"{url}/v1",
        hosted_tts_key_env="HOSTED_SPEECH_KEY",
        hosted_timeout_s=5.0,
    )
    server.extra["blueprint_id"] = await server.create_blueprint(VOICE_BLUEPRINT)
    status, channel = await server.request("POST", "/v1/channels", json={"type": "webrtc_voice", "name": "voice"})
    assert status == 201
    server.extra["voice_channel"] = channel["id"]
    return server


def is_message(kind: str, question_id: str | None = None) -> Any:
    def match(ev: dict[str, Any]) -> bool:
        m = ev.get("message", {})
        return ev.get("type") == "message" and m.get("kind") == kind and question_id in (None, m.get("question_id"))

    return match


async def interview(server: Server) -> tuple[dict[str, Any], VoiceCaller]:
    """Answer both questions; returns the finished run and the caller (closed)."""
    run = await server.create_run(channel_id=server.extra["voice_channel"])
    caller = VoiceCaller()
    await caller.join(server.http, run["join_url"], timeout=10 * UNIT)
    try:
        await caller.wait_event(is_message("question", "work"), 30 * UNIT)
        for answer_id, next_message in (("job", is_message("question", "home")), ("home", is_message("closing"))):
            await caller.wait_event(lambda ev: ev.get("type") == "state" and ev.get("state") == "listening",
                                    30 * UNIT, after=len(caller.events) - 1)  # fmt: skip
            n = len(caller.events)
            await caller.say(spoken_answer(answer_id))
            await caller.wait_event(next_message, 40 * UNIT, after=n)
        await caller.wait_event(lambda ev: ev.get("type") == "run.ended", 40 * UNIT)
    finally:
        await caller.close()
    done = await server.wait_status(run["id"], "completed", timeout=10)
    return await server.get_run(done["id"], "transcript"), caller


def answers(run: dict[str, Any]) -> str:
    return " ".join(m["content"] for m in run["transcript"] if m["role"] == "user")


async def test_an_interview_through_hosted_engines(
    server_factory: ServerFactory, services: tuple[SpeechServices, str]
) -> None:
    fake, url = services
    server = await hosted_server(server_factory, url, "openai")
    run, caller = await interview(server)
    said = " ".join(ANSWERS[a]["text"] for a in ("job", "home"))
    assert word_error_rate(said, answers(run)) <= WER
    assert all(m["content"].endswith(".") for m in run["transcript"] if m["role"] == "user")  # the service's text
    routes = [r["route"] for r in fake.requests]
    assert routes.count("transcriptions") == 2
    spoken = [r["input"] for r in fake.requests if r["route"] == "speech"]
    assert "What do you do?" in spoken and "Thank you, goodbye." in spoken  # the replies, sentence by sentence
    assert caller.heard.last_audible() is not None


async def test_hosted_engines_failing_mid_interview_fall_back_and_the_interview_goes_on(
    server_factory: ServerFactory, services: tuple[SpeechServices, str], caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = services
    server = await hosted_server(server_factory, url, "openai")
    fake.fail_next("transcriptions", 503)  # the first answer
    for _ in range(2):
        fake.fail_next("speech", 0)  # greeting and first question: fine
    fake.fail_next("speech", 500)  # then the next reply fails
    with caplog.at_level(logging.WARNING, logger="vivavoce.hosted"):
        run, _ = await interview(server)
    said = " ".join(ANSWERS[a]["text"] for a in ("job", "home"))
    assert word_error_rate(said, answers(run)) <= WER
    assert "HTTP 503" in caplog.text and "recognised by the embedded engine" in caplog.text
    assert "HTTP 500" in caplog.text and "embedded voice speaks the rest" in caplog.text
    assert KEY not in caplog.text
    assert run["status"] == "completed"


async def test_an_interview_through_deepgram_with_live_captions(
    server_factory: ServerFactory, services: tuple[SpeechServices, str]
) -> None:
    fake, url = services
    server = await hosted_server(server_factory, url, "deepgram")
    run, caller = await interview(server)
    said = " ".join(ANSWERS[a]["text"] for a in ("job", "home"))
    assert word_error_rate(said, answers(run)) <= WER
    interim = [e for e in caller.events if e.get("type") == "caption" and e.get("role") == "user" and not e["final"]]
    assert interim, "no live caption from the interim results"
    assert all(r["model"] == "nova-3" for r in fake.requests if r["route"] == "listen")
