"""Timeouts, cancel and rejoin, on a real server whose durations are scaled down.

With ``time_scale = SCALE``, a channel's 5 s idle timeout lasts ``5 * SCALE``
seconds of real time, so these tests take a fraction of a second each.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import LONG_ANSWER, UNIT, Server, ServerFactory, eventually

SCALE = 0.05 * UNIT  # 5 s of configured time = 0.25 s of test time


@pytest.fixture
async def fast(server_factory: ServerFactory) -> Server:
    return await server_factory(time_scale=SCALE, sweep_interval_s=1.0)


async def test_idle_reminder_at_half_then_idle_timeout(fast: Server) -> None:
    channel = await fast.create_channel(idle_timeout_s=10)  # reminder after 5 s, end after 10 s (scaled)
    run = await fast.create_run(channel_id=channel)
    p = await fast.join(run)
    asked = await p.until("message", kind="question", question_id="q1")
    reminder = await p.until("message", kind="reminder", question_id="q1", timeout=10 * 10 * SCALE)
    ended = await p.until("run.ended", timeout=10 * 10 * SCALE)
    assert ended["reason"] == "idle_timeout"
    waited_reminder = reminder["message"]["start_offset_s"] - asked["message"]["start_offset_s"]
    assert waited_reminder >= 5 * SCALE * 0.99
    done = await fast.get_run(run["id"], "transcript")
    assert done["status"] == "completed" and done["end_reason"] == "idle_timeout"
    run_time = done["duration_s"]
    assert run_time >= 10 * SCALE * 0.99
    assert [m["kind"] for m in done["transcript"]].count("reminder") == 1


async def test_typing_keeps_the_idle_timer_from_firing(fast: Server) -> None:
    channel = await fast.create_channel(idle_timeout_s=10)
    run = await fast.create_run(channel_id=channel)
    p = await fast.join(run)
    await p.until("message", kind="question", question_id="q1")
    start = time.monotonic()
    while time.monotonic() - start < 15 * SCALE:  # longer than the idle timeout, typing all along
        await p.send({"type": "typing"})
        await asyncio.sleep(2 * SCALE)
    await p.say(LONG_ANSWER)
    await p.until("message", kind="question", question_id="q2")
    kinds = [f.get("message", {}).get("kind") for f in p.frames]
    assert "reminder" not in kinds and not any(f["type"] == "run.ended" for f in p.frames)
    await p.close()


async def test_max_duration_says_closing_and_ends(fast: Server) -> None:
    channel = await fast.create_channel(max_duration_s=10, idle_timeout_s=3600)
    run = await fast.create_run(channel_id=channel)
    p = await fast.join(run)
    await p.until("message", kind="question", question_id="q1")
    await p.say(LONG_ANSWER)
    closing = await p.until("message", kind="closing", timeout=10 * 10 * SCALE)
    assert "time" in closing["message"]["content"]
    ended = await p.until("run.ended")
    assert ended["reason"] == "max_duration"
    done = await fast.get_run(run["id"])
    assert done["end_reason"] == "max_duration"
    assert done["duration_s"] >= 10 * SCALE * 0.99


async def test_join_window_expiry_fails_the_run(server_factory: ServerFactory) -> None:
    server = await server_factory(time_scale=SCALE, join_window_s=4.0, sweep_interval_s=1.0)
    run = await server.create_run()
    done = await server.wait_status(run["id"], "failed", timeout=20 * 4 * SCALE + 1)
    assert done["end_reason"] == "join_expired"
    p = await server.join(run)
    ended = await p.until("run.ended")
    assert ended["status"] == "failed" and ended["reason"] == "join_expired"
    async with server.http.get(run["join_url"]) as resp:
        assert resp.status == 200 and "expired" in await resp.text()


async def test_cancel_during_a_live_session_tells_the_participant(server: Server) -> None:
    run = await server.create_run()
    p = await server.join(run)
    await p.until("message", kind="question", question_id="q1")
    status, body = await server.request("POST", f"/v1/runs/{run['id']}/cancel")
    assert status == 200 and body["status"] == "cancelled" and body["end_reason"] == "cancelled"
    ended = await p.until("run.ended")
    assert ended["reason"] == "cancelled"
    sessions = (await server.get_run(run["id"], "sessions"))["sessions"]
    assert [s["status"] for s in sessions] == ["ended"] and sessions[0]["end_reason"] == "run_ended"
    status, body = await server.request("POST", f"/v1/runs/{run['id']}/cancel")
    assert status == 409 and body["error"]["type"] == "conflict"


async def test_rejoin_after_a_dropped_connection_resumes_at_the_same_question(server: Server) -> None:
    run = await server.create_run()
    p = await server.join(run)
    await p.until("message", kind="question", question_id="q1")
    await p.say(LONG_ANSWER)
    await p.until("message", kind="question", question_id="q2")
    p.ws.transport.abort()  # a dropped connection: no close frame

    async def session_ended() -> bool:
        sessions = (await server.get_run(run["id"], "sessions"))["sessions"]
        return sessions[-1]["status"] == "ended"

    await eventually(session_ended)
    again = await server.join(run)
    ready = await again.until("session.ready")
    assert ready["resumed"] is True
    assert [m["question_id"] for m in ready["messages"] if m["kind"] == "question"] == ["q1", "q2"]
    resume = await again.until("message", kind="resume", question_id="q2")
    assert "Where do you live?" in resume["message"]["content"]
    await again.say(LONG_ANSWER)
    await again.until("message", kind="question", question_id="q3")
    await again.say(LONG_ANSWER)
    await again.until("run.ended")
    done = await server.get_run(run["id"], "sessions", "responses")
    assert done["status"] == "completed" and len(done["sessions"]) == 2
    assert [r["answer"] for r in done["responses"]] == [LONG_ANSWER] * 3


async def test_participant_who_never_comes_back_ends_as_participant_left(fast: Server) -> None:
    channel = await fast.create_channel(idle_timeout_s=5)
    run = await fast.create_run(channel_id=channel)
    p = await fast.join(run)
    await p.until("message", kind="question", question_id="q1")
    await p.close()
    done = await fast.wait_status(run["id"], "completed", timeout=20 * 5 * SCALE + 1)
    assert done["end_reason"] == "participant_left"


async def test_timeouts_hold_across_a_server_restart(server_factory: ServerFactory) -> None:
    """Deadlines come from stored timestamps: a restart neither resets nor extends them."""
    first = await server_factory(time_scale=SCALE, sweep_interval_s=1.0)
    channel = await first.create_channel(idle_timeout_s=10, max_duration_s=3600)
    run = await first.create_run(channel_id=channel)
    p = await first.join(run)
    await p.until("message", kind="question", question_id="q1")
    await p.say(LONG_ANSWER)
    asked = await p.until("message", kind="question", question_id="q2")
    asked_at = time.time()  # wall-clock twin of the question's stored offset
    await first.stop()  # the participant is cut off with the server
    await asyncio.sleep(6 * SCALE)  # more than half of the 10 s rejoin grace passes while the server is down

    second = await server_factory(
        time_scale=SCALE, sweep_interval_s=1.0, data_dir=first.config.data_dir, api_key=first.api_key
    )
    up_after = time.time() - asked_at  # a loaded machine may take longer than the grace to start a server
    done = await second.wait_status(run["id"], "completed", timeout=20 * 10 * SCALE + 1)
    assert done["end_reason"] == "participant_left"
    sessions = (await second.get_run(run["id"], "sessions"))["sessions"]
    assert [s["end_reason"] for s in sessions] == ["server_restart"]
    # It ended one grace period after the participant was last seen (or at once, if that passed while the
    # server was down), never a fresh grace period after the restart (that would be >= up_after + 10 * SCALE).
    ended_after = done["duration_s"] - asked["message"]["start_offset_s"]
    assert 10 * SCALE * 0.99 <= ended_after < max(16 * SCALE, up_after + 5 * SCALE)


async def test_max_duration_passed_while_the_server_was_down_ends_the_run_on_start(
    server_factory: ServerFactory,
) -> None:
    first = await server_factory(time_scale=SCALE, sweep_interval_s=1.0)
    channel = await first.create_channel(idle_timeout_s=3600, max_duration_s=10)
    run = await first.create_run(channel_id=channel)
    p = await first.join(run)
    await p.until("message", kind="question", question_id="q1")
    await first.stop()
    await asyncio.sleep(12 * SCALE)
    second = await server_factory(
        time_scale=SCALE, sweep_interval_s=1.0, data_dir=first.config.data_dir, api_key=first.api_key
    )
    done = await second.wait_status(run["id"], "completed", timeout=2)
    assert done["end_reason"] == "max_duration"
