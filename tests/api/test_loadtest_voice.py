"""``vivavoce loadtest`` with voice callers: real WebRTC peers speaking fixture answers to a real server.

The load test runs in-process, through its command line (:func:`api.loadtest.cli.main`) or its async
entry point. Servers offer 127.0.0.1 ICE candidates, like tests/api/test_voice.py.

A spoken answer counts as stored when a user message's words are within the load test's
``VOICE_MATCH_MAX_WER`` (0.6) of the fixture's text: the recogniser (Whisper tiny.en) got single answers
to 0.25 at worst through an Opus round trip (fixtures/make_fixtures.py), while any two different fixtures
are at least 0.78 apart.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from api.loadtest import ConfigError, LoadtestConfig, Persona, run_loadtest
from api.loadtest.callers import Counters
from api.loadtest.cli import execute, main
from api.loadtest.report import build_report
from api.loadtest.runner import VOICE_MATCH_MAX_WER, VOICE_STAGES
from media.stt.wer import corpus_word_error_rate, word_error_rate
from tests.conftest import UNIT, Server, ServerFactory

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "answers"
MANIFEST = {a["id"]: a for a in json.loads((FIXTURES / "answers.json").read_text())}
# long enough questions that a caller can start speaking over them
VOICE_BLUEPRINT = {
    "name": "Voice loadtest",
    "greeting": "Hello.",
    "questions": [
        {"id": "work", "text": "To begin with, could you tell me what you do for a living, and for how long?",
         "max_probes": 0},
        {"id": "home", "text": "Thank you. Now could you tell me where you live, and what you like about it?",
         "max_probes": 0},
        {"id": "food", "text": "And lastly, what did you eat this morning, and is that what you usually eat?",
         "max_probes": 0},
    ],
    "closing": "Thank you, goodbye.",
}  # fmt: skip
# answers are long fixtures only (no probes: three answers a run); one answer in two speaks over the question
PERSONA = {
    "voice_answers": ["job", "home", "breakfast", "commute"],
    "short_answer_ratio": 0,
    "think_ms": {"distribution": "uniform", "min": 100, "max": 400},
    "pause_probability": 0.25,
    "pause_ms": {"distribution": "uniform", "min": 600, "max": 1200},
    "barge_in_probability": 0.5,
    "barge_in_after_ms": {"distribution": "uniform", "min": 600, "max": 1200},
}


def quiet() -> Console:
    return Console(file=io.StringIO(), width=160)


# the mixed test is about routing callers by channel kind: short questions keep it quick
SHORT_BLUEPRINT = {
    "name": "Short voice loadtest",
    "greeting": "Hello.",
    "questions": [{"id": "work", "text": "What do you do?", "max_probes": 0},
                  {"id": "home", "text": "Where do you live?", "max_probes": 0}],
    "closing": "Goodbye.",
}  # fmt: skip


async def voice_server(
    server_factory: ServerFactory, blueprint: dict[str, Any] = VOICE_BLUEPRINT, **options: Any
) -> tuple[Server, str]:
    server = await server_factory(ice_host_addresses=("127.0.0.1",), **options)
    server.extra["blueprint_id"] = await server.create_blueprint(blueprint)
    status, channel = await server.request("POST", "/v1/channels", json={"type": "webrtc_voice", "name": "voice"})
    assert status == 201, channel
    return server, str(channel["id"])


def cli_args(server: Server, channel: str, persona: Path, **extra: Any) -> list[str]:
    args = [
        "--url", server.url, "--api-key", server.api_key, "--channel", channel, "--persona", str(persona),
        "--connect-timeout-s", str(10 * UNIT), "--request-timeout-s", str(10 * UNIT),
        "--read-timeout-s", str(30 * UNIT), "--media-timeout-s", str(5 * UNIT), "--deadline-s", str(120 * UNIT),
        "--seed", "3", "--no-progress", "--no-uvloop",
    ]  # fmt: skip
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


async def run_main(args: list[str]) -> int:
    """The CLI in a thread: it runs its own event loop (the server keeps running on this one)."""
    return await asyncio.wait_for(asyncio.to_thread(main, args), 150 * UNIT)


async def test_two_voice_callers_complete_and_agree_with_the_servers_records(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server, channel = await voice_server(server_factory)
    persona = tmp_path / "persona.json"
    persona.write_text(json.dumps(PERSONA))
    report_path, plot_path = tmp_path / "r.json", tmp_path / "p.png"
    code = await run_main(cli_args(server, channel, persona, callers=2, runs=2, report=report_path, plot=plot_path))
    report = json.loads(report_path.read_text())
    assert code == 0, report["problems"]
    assert report["exit_code"] == 0 and report["problems"] == []
    assert report["summary"]["kinds"] == {"voice": 2}
    assert report["summary"]["completed"] == 2 and report["summary"]["failed"] == 0
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("join_ms", "first_message_ms", "first_audio_ms", "turn_ms", "ack_ms", "server_turn_ms"):
        assert report["measures"][name]["count"] > 0, name
    verification = report["verification"]
    assert verification["missing"] == 0 and verification["content_mismatch"] == 0
    assert verification["utterances"] == 6 and verification["voice_runs_checked"] == 2
    assert verification["turns_caller_faster_than_server"] == 0

    # the callers spoke over the interviewer sometimes (the persona's 50 %), and it stopped for them
    barge_ins = [b for s in report["sessions"] for b in s["barge_ins"]]
    assert barge_ins, "no caller barged in"
    stopped = [b for b in barge_ins if b["outcome"] == "stopped"]
    assert stopped and report["measures"]["barge_in_ms"]["count"] == len(stopped)
    assert any(not t["barge_in"] for s in report["sessions"] for t in s["turns"])

    # independently, from the server's records: every spoken answer is in the transcript, in order
    said, stored = [], []
    for session in report["sessions"]:
        run = await server.get_run(session["run_id"], "transcript")
        assert run["status"] == "completed" and run["metadata"]["loadtest"] == report["tag"]
        users = [m for m in run["transcript"] if m["role"] == "user"]
        answers = [MANIFEST[u["answer_id"]]["text"] for u in session["utterances"]]
        assert len(users) == len(answers) == 3
        for answer, message in zip(answers, users, strict=True):
            assert word_error_rate(answer, message["content"]) <= VOICE_MATCH_MAX_WER, (answer, message["content"])
        said += answers
        stored += [m["content"] for m in users]
        # the caller's turn covers what the server's stages cover, plus the network and its jitter buffer
        by_id = {m["id"]: m for m in run["transcript"]}
        measured = [t for t in session["turns"] if t["latency_ms"] is not None]
        assert measured
        for turn in measured:
            reply = by_id[turn["reply_id"]]
            assert reply["role"] == "assistant" and reply["latency_breakdown"]["eos"] is not None
            stages = sum(reply["latency_breakdown"][s] for s in VOICE_STAGES)
            assert turn["latency_ms"] >= stages - 100, (turn, reply["latency_breakdown"])
        # what the caller heard stop is what the server stored as cut short
        interrupted = {m["id"] for m in run["transcript"] if m["role"] == "assistant" and m["is_interrupted"]}
        for b in session["barge_ins"]:
            if b["outcome"] == "stopped":
                assert interrupted & set(b["message_ids"]), (b, interrupted)
    assert report["verification"]["voice_wer"] == pytest.approx(
        corpus_word_error_rate(list(zip(said, stored, strict=True))), abs=1e-3
    )


def config_for(server: Server, channel: str, **overrides: Any) -> LoadtestConfig:
    options: dict[str, Any] = {
        "url": server.url,
        "api_key": server.api_key,
        "channel_id": channel,
        "persona": Persona.from_json({**PERSONA, "barge_in_probability": 0}),
        "connect_timeout_s": 10 * UNIT,
        "request_timeout_s": 10 * UNIT,
        "read_timeout_s": 30 * UNIT,
        "media_timeout_s": 5 * UNIT,
        "deadline_s": 120 * UNIT,
        "seed": 5,
    }
    options.update(overrides)
    return LoadtestConfig(**options)


async def test_chat_and_voice_callers_mixed_on_two_channels(server_factory: ServerFactory) -> None:
    server, voice_channel = await voice_server(server_factory, SHORT_BLUEPRINT)
    persona = Persona.from_json(
        {
            **PERSONA,
            "barge_in_probability": 0,
            "pause_probability": 0,
            "typing_delay_ms": {"distribution": "uniform", "min": 5, "max": 30},
        }
    )
    config = config_for(
        server, server.chat_channel_id, more_channel_ids=(voice_channel,), callers=2, runs=2, persona=persona
    )
    report = await execute(config, console=quiet())
    assert report["exit_code"] == 0, report["problems"]
    assert report["summary"]["kinds"] == {"chat": 1, "voice": 1} and report["summary"]["completed"] == 2
    assert report["by_kind"]["chat"]["measures"]["turn_ms"]["count"] == 2
    assert report["by_kind"]["voice"]["measures"]["turn_ms"]["count"] > 0
    assert "first_audio_ms" not in report["by_kind"]["chat"]["measures"]
    assert report["verification"]["missing"] == 0 and report["verification"]["utterances"] == 4
    for session in report["sessions"]:
        run = await server.get_run(session["run_id"], "transcript", "sessions")
        assert run["status"] == "completed"
        assert [s["type"] for s in run["sessions"]] == [{"chat": "text", "voice": "voice"}[session["kind"]]]


async def test_a_server_stopped_mid_test_fails_voice_callers_quickly_with_reasons(
    server_factory: ServerFactory,
) -> None:
    server, channel = await voice_server(server_factory)
    config = config_for(
        server, channel, callers=2, duration_s=120 * UNIT, reconnect_window_s=1 * UNIT, connect_timeout_s=2 * UNIT,
        request_timeout_s=2 * UNIT, media_timeout_s=2 * UNIT,
    )  # fmt: skip
    counters = Counters()
    task = asyncio.create_task(run_loadtest(config, counters=counters))

    async def a_turn() -> None:
        while counters.turns < 1:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(a_turn(), 60 * UNIT)
    await server.stop()
    result = await asyncio.wait_for(task, 30 * UNIT)  # far less than the 120 s duration: no hang
    report = build_report(result)
    assert report["exit_code"] == 1
    assert report["summary"]["failed"] >= 2 and report["summary"]["completed"] == 0
    reasons = " ".join(report["failures"])
    assert "dropped" in reasons or "create run" in reasons, reasons
    assert any("sessions failed" in p for p in report["problems"])
    assert counters.connected == 0 and counters.callers_active == 0 and counters.sessions_open == 0
    # what had been said before the stop is in the stored transcript all the same
    assert report["verification"]["missing_acked"] == 0


async def test_a_channel_of_the_other_kind_or_unknown_answers_stop_the_test(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server, channel = await voice_server(server_factory)
    report = await execute(config_for(server, channel, kind="chat", callers=2, runs=2), console=quiet())
    assert report["exit_code"] == 1 and report["summary"]["sessions"] == 0
    assert "webrtc_voice channel but --kind is chat" in report["summary"]["aborted"]
    persona = Persona.from_json({"voice_answers": ["job", "no_such_answer"]})
    report = await execute(config_for(server, channel, persona=persona), console=quiet())
    assert report["exit_code"] == 1 and report["summary"]["sessions"] == 0
    assert "'no_such_answer' is not in" in report["summary"]["aborted"]
    runs = await server.request("GET", "/v1/runs")
    assert not [r for r in runs[1]["data"] if "loadtest" in r["metadata"]]  # nothing was created


def test_voice_persona_fields_parse_and_validate(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    path = tmp_path / "persona.json"
    path.write_text(json.dumps({**PERSONA, "voice_answers_dir": "mine", "voice_short_answers": ["yes"]}))
    persona = Persona.load(path)
    assert persona.voice_answers_dir == tmp_path / "mine"
    assert persona.barge_in_probability == 0.5 and persona.voice_short_answers == ("yes",)
    rng = random.Random(1)
    thinks = [persona.think(rng) for _ in range(2000)]
    assert min(thinks) >= 100 and max(thinks) <= 1200
    assert any(t > 400 for t in thinks)  # the longer pauses
    assert {persona.voice_answer(rng) for _ in range(200)} == {"job", "home", "breakfast", "commute"}
    bad_personas: list[dict[str, Any]] = [
        {"barge_in_probability": 1.5},
        {"pause_probability": "often"},
        {"pause_ms": {"distribution": "uniform", "min": 5}},
        {"voice_answers": []},
        {"voice_answers_dir": 3},
        {"barge_in": 0.2},
    ]
    for bad in bad_personas:
        with pytest.raises(ConfigError):
            Persona.from_json(bad)
    with pytest.raises(ConfigError, match="pause_ms"):
        Persona.from_json({"pause_ms": -1})
    # the defaults speak the repository's fixtures
    assert (Persona().voice_answers_dir / "answers.json").exists()
    assert json.dumps(Persona().as_json())  # the report can hold it
