"""Phone interviews through Twilio: a client that speaks Media Streams exactly as documented, against a real
server, with real speech as μ-law in real-time 20 ms frames; webhooks signed as Twilio signs them; outbound
calls placed by the real ``twilio`` client against a local fake of Twilio's REST API (tests/fakes)."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
from dataclasses import replace
from typing import Any

import pytest
import soundfile as sf

from api.config import ServerConfig
from api.telephony.twilio import check_grant, connect_stream, new_grant, sign_grant, twiml
from media.stt.wer import word_error_rate
from tests.conftest import UNIT, VOICE_BLUEPRINT, HumanClip, Server, eventually, spoken_answer
from tests.fakes.twilio_server import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    FakeTwilioAPI,
    MediaStreamsCall,
    call_form,
    post_webhook,
    stream_of,
)
from tests.phone import CALLER, NUMBER, asked, phone_channel, transcript, voice_url

LONG_QUESTION = (
    "Before we start, could you tell me in as much detail as you like what you do for a living, how long you have "
    "done it, and what a normal working day looks like for you from the morning until the evening?"
)


async def test_an_inbound_call_is_a_new_run_interviewed_by_voice_and_recorded_at_8_khz(
    phone_server: Server, human_speech: list[HumanClip]
) -> None:
    server = phone_server
    bp = server.extra["blueprint_id"]
    channel = await phone_channel(server, inbound="new_run", inbound_blueprint_id=bp, recording=True)
    call = MediaStreamsCall()
    params = await call.answer(server.http, voice_url(server), call_form(call.call_sid, to=NUMBER, from_=CALLER))
    run_id = params["run"]
    answers = [next(c for c in human_speech if c.id.endswith(k)) for k in ("0930", "forever")]
    try:
        for question, clip in zip(("work", "home"), answers, strict=True):
            await asked(server, run_id, question)
            await call.wait_quiet(timeout=30 * UNIT)
            call.say(clip.pcm)
            await call.said()
        done = await server.wait_status(run_id, "completed", timeout=60)
    finally:
        await call.close()
    assert done["end_reason"] == "completed" and done["channel_id"] == channel["id"]
    run = await server.get_run(run_id, "transcript", "sessions")
    assert run["participant"]["phone"] == CALLER
    heard = " ".join(m["content"] for m in run["transcript"] if m["role"] == "user")
    assert word_error_rate(" ".join(c.text for c in answers), heard) <= 0.2, heard  # telephone band, μ-law
    assert [(s["type"], s["user_number"]) for s in run["sessions"]] == [("inbound", CALLER)]
    replies = [m for m in run["transcript"] if m["role"] == "assistant" and m["latency_breakdown"]]
    assert replies and all(m["latency_breakdown"]["network"] is None for m in replies)  # unknown on a phone leg
    assert any(m["latency_breakdown"]["eos"] for m in replies)
    assert call.marks_echoed  # what was played was confirmed with marks
    async with server.http.get(f"{server.url}/v1/runs/{run_id}/recording", headers=server.auth) as resp:
        assert resp.status == 200
        audio, rate = sf.read(io.BytesIO(await resp.read()), dtype="int16")
    assert rate == 8000 and audio.ndim == 2 and abs(len(audio) / rate - run["duration_s"]) < 1.5


async def test_barge_in_sends_clear_and_cuts_the_stored_question_to_what_was_heard(phone_server: Server) -> None:
    server = phone_server
    bp = await server.create_blueprint(
        {**VOICE_BLUEPRINT, "greeting": "Hi.", "questions": [{"id": "work", "text": LONG_QUESTION, "max_probes": 0}]}
    )
    await phone_channel(server, inbound="new_run", inbound_blueprint_id=bp)
    call = MediaStreamsCall()
    params = await call.answer(server.http, voice_url(server), call_form(call.call_sid, to=NUMBER, from_=CALLER))
    try:
        await asked(server, params["run"], "work")
        await call.wait_audio(0, 20 * UNIT)
        await asyncio.sleep(2.0)  # well into the long question (about 10 s of speech)
        call.say(spoken_answer("job"))

        async def cleared() -> bool:
            return bool(call.clears)

        await eventually(cleared, 10)
    finally:
        await call.close()

    async def cut() -> dict[str, Any] | None:
        q = next(m for m in await transcript(server, params["run"]) if m.get("question_id") == "work")
        return q if q["is_interrupted"] else None

    question = await eventually(cut, 10)
    assert 0 < len(question["content"].split()) < len(LONG_QUESTION.split())
    assert LONG_QUESTION.startswith(question["content"])


async def test_a_caller_keys_in_the_pin_of_an_existing_run(phone_server: Server) -> None:
    server = phone_server
    channel = await phone_channel(server)  # inbound: pin (the default)
    run = await server.create_run(channel_id=channel["id"])
    other = await server.create_run(channel_id=channel["id"])
    assert run["pin"] and len(run["pin"]) == 6 and run["pin"] != other["pin"]
    async with server.http.get(run["join_url"]) as resp:  # the join page says how to join: by phone, not chat
        page = await resp.text()
        assert resp.status == 200 and NUMBER in page and " ".join(run["pin"]) in page and "/ws" not in page
    call = MediaStreamsCall()
    params = await call.answer(server.http, voice_url(server), call_form(call.call_sid, to=NUMBER, from_=CALLER))
    assert params["run"] == ""  # who is calling is not known until the PIN is in
    try:
        await call.wait_audio(0, 20 * UNIT)  # the prompt
        wrong = "000000" if run["pin"] != "000000" and other["pin"] != "000000" else "999999"
        await call.dtmf(wrong + "#")
        await asyncio.sleep(0.5 * UNIT)
        assert (await server.get_run(run["id"]))["status"] == "pending"
        await call.dtmf(run["pin"])
        await server.wait_status(run["id"], "in_progress", timeout=10)
        await asked(server, run["id"], "work")
    finally:
        await call.hang_up()
    done = await server.get_run(run["id"], "sessions")
    assert [(s["type"], s["user_number"]) for s in done["sessions"]] == [("inbound", CALLER)]
    assert (await server.get_run(other["id"]))["status"] == "pending"


async def test_webhooks_refuse_bad_signatures_and_unknown_accounts(phone_server: Server) -> None:
    server = phone_server
    await phone_channel(server)
    form = call_form("CA" + "1" * 32, to=NUMBER, from_=CALLER)
    status, _ = await post_webhook(server.http, voice_url(server), form, sign=False)
    assert status == 403
    status, body = await post_webhook(server.http, voice_url(server), form, token="not-the-token")
    assert status == 403 and "X-Twilio-Signature" in body
    status, _ = await post_webhook(server.http, voice_url(server), {**form, "AccountSid": "AC" + "9" * 32})
    assert status == 403
    status, body = await post_webhook(server.http, voice_url(server, "?x=1"), form)  # signed for another URL
    status2, _ = await post_webhook(server.http, voice_url(server), form)
    assert status2 == 200 and "<Stream" in _  # the same request, signed for the URL it goes to, is taken
    status, _ = await post_webhook(server.http, f"{server.url}/telephony/twilio/status", form, sign=False)
    assert status == 403
    # a number no channel has: a polite hang-up, no stream
    status, twiml = await post_webhook(server.http, voice_url(server), call_form("CA" + "2" * 32, to="+15550000000",
                                                                                  from_=CALLER))  # fmt: skip
    assert status == 200 and "<Hangup/>" in twiml and "<Stream" not in twiml


async def test_without_twilio_configured_the_webhooks_are_not_there(server: Server) -> None:
    form = call_form("CA" + "1" * 32, to=NUMBER, from_=CALLER)
    status, _ = await post_webhook(server.http, f"{server.url}/telephony/twilio/voice", form)
    assert status == 404


async def test_malformed_frames_and_forged_tokens_close_that_call_only(phone_server: Server) -> None:
    server = phone_server
    bp = server.extra["blueprint_id"]
    await phone_channel(server, inbound="new_run", inbound_blueprint_id=bp)
    good = MediaStreamsCall()
    good_params = await good.answer(server.http, voice_url(server), call_form(good.call_sid, to=NUMBER, from_=CALLER))
    try:
        bad = MediaStreamsCall()
        params = await bad.answer(server.http, voice_url(server), call_form(bad.call_sid, to=NUMBER, from_=CALLER))
        await bad.send_raw("this is not json")
        await asyncio.wait_for(bad.closed.wait(), 5 * UNIT)
        assert bad.close_code == 1008 and "JSON" in bad.close_reason

        bad_audio = MediaStreamsCall()
        await bad_audio.answer(server.http, voice_url(server), call_form(bad_audio.call_sid, to=NUMBER, from_=CALLER))
        await bad_audio.send_raw('{"event": "media", "media": {"payload": "%%%not base64"}}')
        await asyncio.wait_for(bad_audio.closed.wait(), 5 * UNIT)
        assert bad_audio.close_code == 1008 and "base64" in bad_audio.close_reason

        forged = MediaStreamsCall()  # another call's parameters: signed for that call's SID, not this one's
        url, _ = stream_of((await post_webhook(server.http, voice_url(server), call_form(
            "CA" + "3" * 32, to=NUMBER, from_=CALLER)))[1])  # fmt: skip
        await forged.connect(url, params)
        await asyncio.wait_for(forged.closed.wait(), 5 * UNIT)
        assert forged.close_code == 1008 and "token" in forged.close_reason

        await asked(server, good_params["run"], "work")  # the good call goes on: it is asked its question
        await good.wait_quiet(timeout=20 * UNIT)
        assert not good.closed.is_set()
        assert (await server.get_run(good_params["run"]))["status"] == "in_progress"
    finally:
        await good.close()


@pytest.mark.parametrize(
    ("call_status", "answered_by", "reason"),
    [("busy", None, "busy"), ("no-answer", None, "no_answer"), ("failed", None, "failed"),
     ("completed", "machine_end_beep", "voicemail")],
)  # fmt: skip
async def test_status_callbacks_end_an_outbound_run_with_the_call_outcome(
    phone_server: Server, call_status: str, answered_by: str | None, reason: str
) -> None:
    server = phone_server
    channel = await phone_channel(server)
    run = await server.create_run(channel_id=channel["id"], participant={"phone": CALLER})
    url = f"{server.url}/telephony/twilio/status?run={run['id']}"
    form = call_form("CA" + "4" * 32, to=CALLER, from_=NUMBER, direction="outbound-api", CallStatus=call_status)
    if answered_by:
        form["AnsweredBy"] = answered_by
    status, _ = await post_webhook(server.http, url, form)
    assert status == 204
    done = await server.get_run(run["id"])
    assert (done["status"], done["end_reason"]) == ("failed", reason)


async def test_a_machine_answering_the_call_ends_the_run_as_voicemail(phone_server: Server) -> None:
    server = phone_server
    channel = await phone_channel(server)
    run = await server.create_run(channel_id=channel["id"], participant={"phone": CALLER})
    form = call_form("CA" + "5" * 32, to=CALLER, from_=NUMBER, direction="outbound-api", AnsweredBy="machine_start")
    status, twiml = await post_webhook(server.http, voice_url(server, f"?run={run['id']}"), form)
    assert status == 200 and "<Hangup/>" in twiml and "<Stream" not in twiml
    assert (await server.get_run(run["id"]))["end_reason"] == "voicemail"


async def test_outbound_call_through_twilios_api_and_its_stream(
    phone_server: Server, twilio_api: FakeTwilioAPI
) -> None:
    server = phone_server
    channel = await phone_channel(server)
    run = await server.create_run(channel_id=channel["id"], participant={"name": "Ada", "phone": CALLER})
    status, placed = await server.request("POST", f"/v1/runs/{run['id']}/call")
    assert status == 201, placed
    assert placed["call_sid"].startswith("CA") and placed["status"] == "queued" and placed["to"] == CALLER
    sent = twilio_api.calls[-1]
    assert (sent["To"], sent["From"]) == (CALLER, NUMBER)
    assert sent["Url"] == f"{server.url}/telephony/twilio/voice?run={run['id']}"
    assert sent["StatusCallback"] == f"{server.url}/telephony/twilio/status?run={run['id']}"
    assert sent["MachineDetection"] == "Enable"
    # Twilio calls back when the participant answers
    call = MediaStreamsCall(placed["call_sid"])
    form = call_form(call.call_sid, to=CALLER, from_=NUMBER, direction="outbound-api", AnsweredBy="human")
    params = await call.answer(server.http, voice_url(server, f"?run={run['id']}"), form)
    assert params["run"] == run["id"]
    try:
        await asked(server, run["id"], "work")
        status, body = await server.request("POST", f"/v1/runs/{run['id']}/call")
        assert status == 409 and "connected" in body["error"]["message"]  # on the phone now: not called again
    finally:
        await call.hang_up()
    done = await server.get_run(run["id"], "sessions")
    assert [(s["type"], s["user_number"]) for s in done["sessions"]] == [("outbound", CALLER)]
    assert len(twilio_api.calls) == 1


async def test_outbound_call_errors_are_clear(
    phone_server: Server, twilio_api: FakeTwilioAPI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = phone_server
    channel = await phone_channel(server)
    no_phone = await server.create_run(channel_id=channel["id"])
    status, body = await server.request("POST", f"/v1/runs/{no_phone['id']}/call")
    assert status == 409 and "participant.phone" in body["error"]["message"]
    status, body = await server.request("POST", "/v1/runs/run_doesnotexist/call")
    assert status == 404
    chat = await server.create_run(participant={"phone": CALLER})
    assert (await server.request("POST", f"/v1/runs/{chat['id']}/call"))[0] == 409  # not a telephony run
    run = await server.create_run(channel_id=channel["id"], participant={"phone": CALLER})
    cases = [
        ((400, 21211, "The 'To' number +442071838750 is not a valid phone number."), 400, "21211"),
        ((401, 20003, "Authenticate"), 502, "credentials"),
        ((500, 20500, "Internal Server Error"), 502, "20500"),
    ]
    for failure, expected, said in cases:
        twilio_api.fail_next.append(failure)
        status, body = await server.request("POST", f"/v1/runs/{run['id']}/call")
        assert status == expected and said in body["error"]["message"], body
    assert (await server.get_run(run["id"]))["status"] == "pending"
    assert twilio_api.calls == [] and caplog.records  # the calls were logged, the auth token never
    assert (
        AUTH_TOKEN not in caplog.text
        and base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode() not in caplog.text
    )
    dup = {"type": "telephony", "name": "dup", "settings": {"phone_numbers": [NUMBER]}}
    status, body = await server.request("POST", "/v1/channels", json=dup)
    assert status == 409 and body["error"]["param"] == "phone_numbers"
    bad = {"type": "telephony", "name": "bad", "settings": {"phone_numbers": ["555-0100"]}}
    assert (await server.request("POST", "/v1/channels", json=bad))[0] == 400
    on_chat = {"type": "chat", "name": "c", "settings": {"phone_numbers": ["+15550000001"]}}
    assert (await server.request("POST", "/v1/channels", json=on_chat))[0] == 400


def test_stream_grants_verify_only_for_their_call_unchanged_and_unexpired() -> None:
    config = ServerConfig(twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN)
    grant = new_grant(config, "CA1", run_id="run_x", channel_id="chn_y", direction="inbound", caller=CALLER)
    _, params = stream_of(twiml(connect_stream(config, grant)))
    assert check_grant(config, "CA1", params) == grant
    assert check_grant(config, "CA2", params) is None  # another call's stream
    assert check_grant(config, "CA1", {**params, "run": "run_z"}) is None  # tampered
    assert check_grant(config, "CA1", {**params, "expires": "1"}) is None  # signed for another expiry
    other = ServerConfig(twilio_account_sid=ACCOUNT_SID, twilio_auth_token="another-token")
    assert check_grant(other, "CA1", params) is None  # another server's key
    stale = replace(grant, expires=int(time.time()) - 1)
    assert check_grant(config, "CA1", {**params, "expires": str(stale.expires),
                                       "signature": sign_grant(config, stale)}) is None  # fmt: skip
    assert check_grant(config, "CA1", "not a dict") is None
