"""``vivavoce loadtest`` against a real server: it completes, agrees with the server's records, fails loudly.

The load test runs in-process (its async entry point) where that is simpler,
and once as a separate process through its command line.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from rich.console import Console

from api.loadtest import ConfigError, LoadtestConfig, Persona, run_loadtest
from api.loadtest.callers import Counters
from api.loadtest.cli import EXIT_REFUSED, execute, main
from api.loadtest.config import Delay, Slo, check_target, join_ws_url, origin_of
from api.loadtest.stats import percentile
from tests.conftest import UNIT, Server, ServerFactory, database_env, eventually

ROOT = Path(__file__).resolve().parents[2]
QUICK = Persona(typing_delay_ms=Delay(distribution="uniform", low=5, high=30, min=5, max=30), short_answer_ratio=0.3)


def quiet() -> Console:
    return Console(file=io.StringIO(), width=160)


def config_for(server: Server, **overrides: Any) -> LoadtestConfig:
    options: dict[str, Any] = {
        "url": server.url,
        "api_key": server.api_key,
        "channel_id": server.chat_channel_id,
        "persona": QUICK,
        "connect_timeout_s": 5 * UNIT,
        "request_timeout_s": 10 * UNIT,
        "deadline_s": 60 * UNIT,
        "seed": 7,
    }
    options.update(overrides)
    return LoadtestConfig(**options)


async def test_three_chat_callers_complete_and_agree_with_the_servers_records(server: Server, tmp_path: Path) -> None:
    blueprint_id = await server.create_blueprint()  # the newest published one: the loadtest must pick it
    config = config_for(server, callers=3, runs=6)
    report = await execute(config, report_path=tmp_path / "r.json", plot_path=tmp_path / "p.png", console=quiet())

    assert report["exit_code"] == 0, report["problems"]
    assert report["blueprint_id"] == blueprint_id
    summary = report["summary"]
    assert summary["sessions"] == 6 and summary["completed"] == 6 and summary["failed"] == 0
    assert json.loads((tmp_path / "r.json").read_text())["summary"] == summary
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("join_ms", "first_message_ms", "turn_ms", "ack_ms", "server_turn_ms"):
        assert report["measures"][name]["count"] > 0, name
    assert report["verification"]["missing"] == 0 and report["verification"]["utterances"] > 0

    # independent check against the server: every utterance stored once, caller latency ≥ server stages
    caller_p50s, server_p50s = [], []
    for session in report["sessions"]:
        run = await server.get_run(session["run_id"], "transcript")
        assert run["status"] == "completed" and run["blueprint_id"] == blueprint_id
        assert run["metadata"]["loadtest"] == report["tag"]
        stored = [m["client_id"] for m in run["transcript"] if m["role"] == "user"]
        assert sorted(stored) == sorted(u["client_id"] for u in session["utterances"])
        by_id = {m["id"]: m for m in run["transcript"]}
        caller, served = [], []
        for turn in session["turns"]:
            assert not turn["interrupted"] and turn["latency_ms"] is not None
            lat = by_id[turn["reply_id"]]["latency_breakdown"]
            server_ms = lat["initial_wait"] + lat["llm"]
            # the server's stages start after the frame arrived and end before the reply is stored and sent
            assert turn["latency_ms"] + 0.5 >= server_ms, (turn, lat)
            caller.append(turn["latency_ms"])
            served.append(server_ms)
        caller_p50s.append(percentile(caller, 50))
        server_p50s.append(percentile(served, 50))
    assert all(c is not None and s is not None and c >= s for c, s in zip(caller_p50s, server_p50s, strict=True))
    # short answers earned probes, so runs had different numbers of turns but all ended completed
    assert report["verification"]["turns_caller_faster_than_server"] == 0


async def test_duration_mode_keeps_starting_runs_until_the_time_is_up(server: Server) -> None:
    started = time.monotonic()
    config = config_for(server, callers=2, duration_s=1.5 * UNIT, ramp_s=0.2 * UNIT)
    report = await execute(config, console=quiet())
    assert report["exit_code"] == 0, report["problems"]
    assert report["summary"]["sessions"] > 2  # each caller did more than one run
    assert time.monotonic() - started < config.hard_deadline_s
    assert max(row[1] for row in report["timeline"]) == 2


async def test_a_server_stopped_mid_test_gives_failures_and_a_non_zero_exit_quickly(server: Server) -> None:
    slow = Persona(typing_delay_ms=Delay(distribution="fixed", value=150))
    config = config_for(
        server,
        callers=3,
        duration_s=60 * UNIT,
        persona=slow,
        reconnect_window_s=1.0 * UNIT,
        connect_timeout_s=2 * UNIT,
        request_timeout_s=2 * UNIT,
        read_timeout_s=5 * UNIT,
    )
    counters = Counters()
    task = asyncio.create_task(run_loadtest(config, counters=counters))

    async def some_turns() -> None:
        while counters.turns < 3:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(some_turns(), 10 * UNIT)
    await server.stop()
    stopped = time.monotonic()
    result = await asyncio.wait_for(task, 20 * UNIT)
    took = time.monotonic() - stopped
    assert took < 15 * UNIT, took  # far less than the 60 s duration: callers give up on a dead server

    from api.loadtest.report import build_report

    report = build_report(result)
    assert report["exit_code"] == 1
    assert report["summary"]["failed"] >= 3
    reasons = " ".join(report["failures"])
    assert "dropped" in reasons or "create run" in reasons, reasons
    assert any("sessions failed" in p for p in report["problems"])
    assert counters.connected == 0 and counters.callers_active == 0


async def start_server_process(data_dir: Path, port: int) -> tuple[asyncio.subprocess.Process, str | None, str]:
    """``vivavoce serve`` as a subprocess; returns it, the API key (first start only) and the chat channel."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "api.cli", "serve", "--data-dir", str(data_dir), "--port", str(port),
        "--log-level", "WARNING", cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **database_env(data_dir)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    key, channel = None, ""
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30 * UNIT)).decode()
        assert line, "the server exited before it was ready"
        if m := re.search(r"API key \(shown once, store it now\): (\S+)", line):
            key = m.group(1)
        if m := re.search(r"chat channel (\S+);", line):
            channel = m.group(1)
        if line.startswith("Demo interview"):
            return proc, key, channel


async def test_callers_reconnect_and_resend_unacked_answers_after_a_server_crash(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc, key, channel = await start_server_process(tmp_path / "data", port)
    try:
        config = LoadtestConfig(
            url=f"http://127.0.0.1:{port}", api_key=key, channel_id=channel, callers=3, runs=3,
            persona=Persona(typing_delay_ms=Delay(distribution="fixed", value=250), short_answer_ratio=0.5),
            reconnect_window_s=20 * UNIT, deadline_s=60 * UNIT, seed=3,
        )  # fmt: skip
        counters = Counters()
        task = asyncio.create_task(run_loadtest(config, counters=counters))

        async def some_turns() -> None:
            while counters.turns < 3:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(some_turns(), 20 * UNIT)
        proc.send_signal(signal.SIGKILL)  # mid-interview, answers possibly in flight
        await proc.wait()
        await asyncio.sleep(0.5)
        proc, _, _ = await start_server_process(tmp_path / "data", port)
        result = await asyncio.wait_for(task, 60 * UNIT)
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()

    from api.loadtest.report import build_report

    report = build_report(result)
    assert report["exit_code"] == 0, report["problems"]
    assert report["summary"]["completed"] == 3
    assert report["summary"]["reconnects"] >= 3  # every caller lost its connection and came back
    assert report["verification"]["missing"] == 0 and report["verification"]["utterances"] >= 9
    # a turn cut by the crash is recorded but not measured
    turns = [t for s in report["sessions"] for t in s["turns"]]
    assert all(t["latency_ms"] is None for t in turns if t["interrupted"])


def assistant(kind: str, text: str, n: int) -> dict[str, Any]:
    return {"id": f"msg_{n}", "role": "assistant", "content": text, "kind": kind, "client_id": None}


@pytest.mark.parametrize("stored_before_drop", [False, True])
async def test_an_unacknowledged_answer_is_resent_with_its_client_id_unless_the_server_has_it(
    stored_before_drop: bool,
) -> None:
    """A scripted server drops the socket right after the first answer, without an ack."""
    received: list[list[dict[str, Any]]] = []  # frames per connection

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        frames: list[dict[str, Any]] = []
        received.append(frames)
        history = [assistant("greeting", "Hi.", 1), assistant("question", "Q1?", 2)]
        if len(received) == 1:
            await ws.send_json({"type": "session.ready", "run_id": "run_x", "messages": []})
            for m in history:
                await ws.send_json({"type": "message", "message": m})
            frames.append(json.loads((await ws.receive()).data))
            assert request.transport is not None
            request.transport.abort()  # crash: no ack, no close frame
            return ws
        first = received[0][0]
        if stored_before_drop:
            history.append(
                {"id": "msg_3", "role": "user", "content": first["content"], "client_id": first["client_id"]}
            )
        await ws.send_json({"type": "session.ready", "run_id": "run_x", "resumed": True, "messages": history})
        await ws.send_json({"type": "message", "message": assistant("question", "Q2?", 4)})
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            if frame["type"] != "message":
                continue
            frames.append(frame)
            await ws.send_json({"type": "message.ack", "client_id": frame["client_id"], "message": {}})
            if frame["client_id"] != first["client_id"]:  # a new answer (to Q2): finish
                await ws.send_json({"type": "message", "message": assistant("closing", "Bye.", 5)})
                await ws.send_json({"type": "run.ended", "status": "completed", "reason": "completed"})
                await ws.close()
                break
        return ws

    app = web.Application()
    app.router.add_get("/join/{token}/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        config = LoadtestConfig(
            url=f"http://127.0.0.1:{port}", join_urls=(f"http://127.0.0.1:{port}/join/tok",),
            persona=Persona(typing_delay_ms=Delay(distribution="fixed", value=0)), reconnect_window_s=5 * UNIT,
            deadline_s=20 * UNIT,
        )  # fmt: skip
        result = await run_loadtest(config)
    finally:
        await runner.cleanup()
    [session] = result.sessions
    assert session.ok, (session.failure, session.errors)
    assert session.reconnects == 1 and session.run_id == "run_x"
    first = received[0][0]
    assert first["type"] == "message" and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", first["client_id"])
    second = received[1]
    if stored_before_drop:  # the server had it: not sent again; the next answer is a new message
        assert [f["client_id"] for f in second] != [first["client_id"]] and first not in second
        assert len(second) == 1
    else:  # re-sent first, same client_id and words, then the answer to Q2
        assert second[0] == first and len(second) == 2 and second[1]["client_id"] != first["client_id"]
    assert all(u.acked for u in session.utterances)
    assert session.turns[0].interrupted and session.turns[0].latency_ms is None


async def test_cli_in_a_subprocess_reports_a_missed_slo_with_a_non_zero_exit(server: Server, tmp_path: Path) -> None:
    persona = tmp_path / "persona.json"
    persona.write_text(json.dumps({"typing_delay_ms": {"distribution": "lognormal", "median": 10, "sigma": 0.3}}))
    args = [
        "--url", server.url, "--api-key", server.api_key, "--channel", server.chat_channel_id,
        "--callers", "2", "--runs", "2", "--persona", str(persona), "--report", str(tmp_path / "r.json"),
        "--slo", "p50_turn_ms=0.001", "p99_join_ms=60000", "--deadline-s", str(60 * UNIT),
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "api.loadtest", *args, cwd=ROOT, env={**os.environ, "COLUMNS": "160"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60 * UNIT)
    text = out.decode()
    assert proc.returncode == 1, text
    assert "SLO missed: p50_turn_ms" in text and "p99_join_ms" in text
    assert "api_key" not in text or server.api_key not in text
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["completed"] == 2 and report["summary"]["failed"] == 0
    assert {s["key"]: s["ok"] for s in report["slo"]} == {"p50_turn_ms": False, "p99_join_ms": True}
    assert server.api_key not in (tmp_path / "r.json").read_text()


async def test_a_wrong_api_key_stops_the_test_at_once(server: Server) -> None:
    started = time.monotonic()
    report = await execute(config_for(server, api_key="vv_wrong", callers=5, runs=50), console=quiet())
    assert report["exit_code"] == 1 and "HTTP 401" in report["summary"]["aborted"]
    blueprint_id = await server.create_blueprint()
    config = config_for(server, api_key="vv_wrong", blueprint_id=blueprint_id, callers=5, runs=50)
    report = await execute(config, console=quiet())
    assert report["exit_code"] == 1 and "HTTP 401" in report["summary"]["aborted"]
    assert report["summary"]["sessions"] <= 5  # no caller kept trying
    assert time.monotonic() - started < 10 * UNIT


async def test_join_urls_from_the_server_on_another_origin_are_refused(server_factory: ServerFactory) -> None:
    server = await server_factory(public_url="http://127.0.0.2:9")
    report = await execute(config_for(server, callers=1, runs=1), console=quiet())
    assert report["exit_code"] == 1
    assert "not the target" in report["summary"]["aborted"]
    assert report["summary"]["sessions"] == 0  # nothing was joined


def test_join_url_file_on_another_origin_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("# runs\nhttp://127.0.0.1:8080/join/aaa\nhttp://127.0.0.1:8081/join/bbb\n")
    code = main(["--url", "http://127.0.0.1:8080", "--join-urls", str(urls), "--callers", "2"])
    err = capsys.readouterr().err
    assert code == EXIT_REFUSED
    assert "refused" in err and "line 3" in err and "127.0.0.1:8081" in err
    for other in ("https://127.0.0.1:8080/join/x", "http://localhost:8080/join/x", "ws://127.0.0.2:8080/join/x/ws"):
        with pytest.raises(ConfigError, match="not the target"):
            join_ws_url(other, origin_of("http://127.0.0.1:8080"))
    assert join_ws_url("http://127.0.0.1:8080/join/x", origin_of("http://127.0.0.1:8080/")) == (
        "ws://127.0.0.1:8080/join/x/ws"
    )


async def test_run_loadtest_refuses_off_origin_join_urls_before_any_traffic() -> None:
    config = LoadtestConfig(url="http://127.0.0.1:9", join_urls=("http://127.0.0.3:9/join/t",))
    with pytest.raises(ConfigError, match="not the target"):
        await run_loadtest(config)


@pytest.mark.parametrize(
    "url", ["http://10.0.0.5:8080", "http://192.168.1.2", "https://example.com", "http://[2001:db8::1]:80"]
)
def test_a_non_loopback_url_is_refused_without_allow_remote(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--url", url, "--api-key", "k", "--channel", "chn_x"])
    assert code == EXIT_REFUSED
    assert "--allow-remote" in capsys.readouterr().err
    assert str(check_target(url, allow_remote=True)).startswith(url.split(":")[0])  # allowed only when asked


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://127.9.9.9", "http://localhost:1", "http://[::1]:80"])
def test_loopback_urls_are_accepted(url: str) -> None:
    check_target(url, allow_remote=False)


def test_slos_personas_and_percentiles_parse_and_validate(tmp_path: Path) -> None:
    assert Slo.parse("p95_turn_ms=900") == Slo("p95", "turn_ms", 900.0)
    for bad in ("p95_turn_ms", "p90_turn_ms=1", "p95_tts_ms=1", "p99_join_ms=fast", "p50_turn_ms=-1"):
        with pytest.raises(ConfigError):
            Slo.parse(bad)
    persona = tmp_path / "p.json"
    persona.write_text(
        json.dumps(
            {
                "typing_delay_ms": {"distribution": "lognormal", "median": 800, "sigma": 0.5, "max": 5000},
                "answers": ["one two three four five six seven"],
                "short_answer_ratio": 0,
            }
        )
    )
    p = Persona.load(persona)
    import random

    rng = random.Random(1)
    delays = [p.typing_delay_ms.sample(rng) for _ in range(2000)]
    assert 700 < percentile(delays, 50) < 900 and max(delays) <= 5000  # type: ignore[operator]
    assert p.answer(rng) == "one two three four five six seven"
    bad_personas: list[dict[str, Any]] = [
        {"typing_delay_ms": {"distribution": "zipf"}},
        {"typing_delay_ms": {"distribution": "uniform", "min": 5}},
        {"typing_delay_ms": {"distribution": "fixed", "value": -1}},
        {"answers": []},
        {"short_answer_ratio": 2},
        {"typing": 1},
    ]
    for bad_persona in bad_personas:
        with pytest.raises(ConfigError):
            Persona.from_json(bad_persona)
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([], 50) is None
    with pytest.raises(ConfigError, match="not both"):
        LoadtestConfig(url="http://127.0.0.1:1", api_key="k", channel_id="c", duration_s=1, runs=1)


async def test_debug_runtime_counters_need_a_key_and_come_back_after_runs(server: Server) -> None:
    status, _ = await server.request("GET", "/v1/debug/runtime", headers={"Authorization": ""})
    assert status == 401
    status, before = await server.request("GET", "/v1/debug/runtime")
    assert status == 200 and before["live_runs"] == 0 and before["asyncio_tasks"] >= 1 and before["threads"] >= 1

    def server_tasks(runtime: dict[str, Any]) -> dict[str, int]:  # the test's own tasks share the loop
        return {k: v for k, v in runtime["tasks_by_name"].items() if not k.startswith(("test_", "eventually"))}

    report = await execute(config_for(server, callers=3, runs=6), console=quiet())
    assert report["exit_code"] == 0, report["problems"]

    seen: list[dict[str, Any]] = []

    async def back_to_baseline() -> bool:
        _, after = await server.request("GET", "/v1/debug/runtime")
        seen[:] = [after]
        baseline, now = server_tasks(before), server_tasks(after)
        # none more than before (the loop is shared with earlier tests' servers, whose last tasks may end meanwhile)
        return bool(after["live_runs"] == 0) and all(n <= baseline.get(name, 0) for name, n in now.items())

    try:
        await eventually(back_to_baseline, 10)  # six interviews later, no task was left behind
    except TimeoutError:
        after = seen[-1]
        raise AssertionError(
            f"left behind: {after['live_runs']} runs, tasks {server_tasks(after)} (before: {server_tasks(before)})"
        ) from None


async def test_debug_runtime_counts_objects_by_type_and_collects_garbage_on_request(server: Server) -> None:
    status, plain = await server.request("GET", "/v1/debug/runtime")
    assert status == 200 and plain["objects_by_type"] is None and plain["python_objects"] > 1000
    assert plain["python_heap_bytes"] is None and plain["python_heap_top"] == []  # the suite runs without tracemalloc
    status, counted = await server.request("GET", "/v1/debug/runtime?objects=true")
    assert status == 200 and len(counted["objects_by_type"]) == 25
    assert counted["objects_by_type"]["builtins.function"] > 100
    gc.disable()  # the automatic collector would free the cycles below on its own
    try:
        garbage: list[list[object]] = [[] for _ in range(2000)]
        for cycle in garbage:
            cycle.append(cycle)  # only a garbage collection frees these
        del garbage
        _, uncollected = await server.request("GET", "/v1/debug/runtime")
        status, collected = await server.request("GET", "/v1/debug/runtime?collect=true")
    finally:
        gc.enable()
    assert status == 200 and collected["python_objects"] <= uncollected["python_objects"] - 2000
    for query, param in (("objects=yes", "objects"), ("object=true", "object"), ("collect=1", "collect")):
        status, body = await server.request("GET", f"/v1/debug/runtime?{query}")
        assert status == 400 and body["error"]["param"] == param, body
