"""Calling a participant back after their call dropped mid-interview: ``POST /v1/runs/{id}/call`` on a run in
progress that nobody is connected to, through the fake of Twilio's REST API, answered by the Media Streams
client. The interview resumes where it was; a call back that is not answered (busy, no answer, voicemail)
leaves the run as it was, to its own timeouts."""

from __future__ import annotations

from typing import Any

from tests.conftest import UNIT, Server, ServerFactory, eventually, spoken_answer
from tests.fakes.twilio_server import ACCOUNT_SID, AUTH_TOKEN, FakeTwilioAPI, MediaStreamsCall, call_form, post_webhook
from tests.phone import CALLER, NUMBER, asked, phone_channel, status_url, voice_url


async def place(server: Server, run_id: str) -> dict[str, Any]:
    status, placed = await server.request("POST", f"/v1/runs/{run_id}/call")
    assert status == 201, placed
    return dict(placed)


async def callback(server: Server, run_id: str, call_sid: str, call_status: str) -> None:
    """Twilio's status callback for one of our calls."""
    form = call_form(call_sid, to=CALLER, from_=NUMBER, direction="outbound-api", CallStatus=call_status)
    status, _ = await post_webhook(server.http, status_url(server, run_id), form)
    assert status == 204


async def pick_up(server: Server, run_id: str, call_sid: str) -> MediaStreamsCall:
    """The participant answers the call: Twilio asks our voice webhook, then opens the stream."""
    call = MediaStreamsCall(call_sid)
    form = call_form(call_sid, to=CALLER, from_=NUMBER, direction="outbound-api", AnsweredBy="human")
    params = await call.answer(server.http, voice_url(server, f"?run={run_id}"), form)
    assert params["run"] == run_id
    return call


async def dropped(server: Server, run_id: str, call: MediaStreamsCall) -> None:
    """The line drops (no ``stop``: the socket just closes) and the session ends."""
    await call.close()

    async def session_ended() -> bool:
        sessions = (await server.get_run(run_id, "sessions"))["sessions"]
        return all(s["status"] == "ended" for s in sessions)

    await eventually(session_ended, 10)


async def test_a_dropped_call_is_called_back_and_resumes_at_the_same_question(
    phone_server: Server, twilio_api: FakeTwilioAPI
) -> None:
    server = phone_server
    channel = await phone_channel(server)
    run = await server.create_run(channel_id=channel["id"], participant={"name": "Ada", "phone": CALLER})
    first = await place(server, run["id"])
    call = await pick_up(server, run["id"], first["call_sid"])
    try:
        await asked(server, run["id"], "work")
        await call.wait_quiet(timeout=30 * UNIT)
        call.say(spoken_answer("job"))
        await call.said()
        await asked(server, run["id"], "home")
    finally:
        await dropped(server, run["id"], call)
    await callback(server, run["id"], first["call_sid"], "completed")
    assert (await server.get_run(run["id"]))["status"] == "in_progress"

    # the call back is busy, then a voicemail answers: the interview that took place is not ended
    busy = await place(server, run["id"])
    await callback(server, run["id"], busy["call_sid"], "busy")
    machine = await place(server, run["id"])
    form = call_form(machine["call_sid"], to=CALLER, from_=NUMBER, direction="outbound-api",
                     AnsweredBy="machine_end_beep")  # fmt: skip
    status, twiml = await post_webhook(server.http, voice_url(server, f"?run={run['id']}"), form)
    assert status == 200 and "<Hangup/>" in twiml and "<Stream" not in twiml
    await callback(server, run["id"], machine["call_sid"], "completed")
    after = await server.get_run(run["id"])
    assert (after["status"], after["end_reason"]) == ("in_progress", None)

    # the next call back is answered: the interview picks up at the question it had reached
    again = await place(server, run["id"])
    assert len(twilio_api.calls) == 4 and all(c["To"] == CALLER for c in twilio_api.calls)
    call = await pick_up(server, run["id"], again["call_sid"])
    try:
        resume = await asked(server, run["id"], "home", kind="resume")
        assert "Where do you live?" in resume["content"]
        status, body = await server.request("POST", f"/v1/runs/{run['id']}/call")
        assert status == 409 and "connected" in body["error"]["message"]  # on the phone now: no second call
        await call.wait_quiet(timeout=30 * UNIT)
        call.say(spoken_answer("home"))
        done = await server.wait_status(run["id"], "completed", timeout=60)
    finally:
        await call.close()
    assert done["end_reason"] == "completed"
    run_now = await server.get_run(run["id"], "sessions", "responses")
    assert [(s["type"], s["user_number"]) for s in run_now["sessions"]] == [("outbound", CALLER)] * 2
    assert [r["question_id"] for r in run_now["responses"]] == ["work", "home"]  # each question answered once
    status, body = await server.request("POST", f"/v1/runs/{run['id']}/call")
    assert status == 409 and "completed" in body["error"]["message"]
    assert len(twilio_api.calls) == 4


async def test_an_unanswered_call_back_leaves_the_run_to_its_idle_timeout(
    server_factory: ServerFactory, twilio_api: FakeTwilioAPI
) -> None:
    scale = 0.05 * UNIT  # the channel's 100 s rejoin grace lasts 5 s
    server = await server_factory(time_scale=scale, twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
                                  twilio_api_url=twilio_api.url)  # fmt: skip
    channel = await phone_channel(server, idle_timeout_s=100)
    run = await server.create_run(channel_id=channel["id"], participant={"phone": CALLER})
    first = await place(server, run["id"])
    call = await pick_up(server, run["id"], first["call_sid"])
    try:
        await asked(server, run["id"], "q1")
    finally:
        await dropped(server, run["id"], call)
    back = await place(server, run["id"])
    await callback(server, run["id"], back["call_sid"], "no-answer")
    assert (await server.get_run(run["id"]))["status"] == "in_progress"
    done = await server.wait_status(run["id"], "completed", timeout=30)
    assert done["end_reason"] == "participant_left"
