"""Spoken PINs: a caller to a ``pin`` channel says the six digits (or keys them in, or both) and is matched
to their run. End to end: the Media Streams client of tests/fakes speaks digits synthesised by Piper, sent
as 8 kHz μ-law in real time, into the server's VAD, endpointer and Whisper; and the try itself, unit by unit."""

from __future__ import annotations

import asyncio
import time

import pytest

from api.telephony.digit_listener import Spoken
from api.telephony.pin import Keyed, PinAttempt
from tests.conftest import UNIT, Server, eventually
from tests.fakes.twilio_server import MediaStreamsCall, call_form
from tests.phone import CALLER, NUMBER, asked, phone_channel, pin_words, said, voice_url

WRONG_PINS = ("580264", "391857", "602718")


def unused_pin(*taken: str) -> str:
    return next(p for p in WRONG_PINS if p not in taken)


async def prompt_after(call: MediaStreamsCall, after: float) -> None:
    """Wait for the server's next prompt (audio after ``after``) to be played out."""
    await call.wait_audio(after, 20 * UNIT)
    await call.wait_quiet(timeout=20 * UNIT)


async def test_a_caller_says_a_wrong_pin_then_the_right_one_and_is_interviewed(phone_server: Server) -> None:
    server = phone_server
    channel = await phone_channel(server)  # inbound: pin (the default)
    run = await server.create_run(channel_id=channel["id"])
    other = await server.create_run(channel_id=channel["id"])
    wrong = unused_pin(run["pin"], other["pin"])
    wrong_said, right_said = await said(pin_words(wrong)), await said(pin_words(run["pin"]))
    call = MediaStreamsCall()
    params = await call.answer(server.http, voice_url(server), call_form(call.call_sid, to=NUMBER, from_=CALLER))
    assert params["run"] == ""
    try:
        await call.wait_audio(0, 20 * UNIT)  # "please say or key in your PIN"
        call.say(wrong_said)  # over the prompt: it stops, as an interviewer does on a barge-in
        await call.said()

        async def cleared() -> bool:
            return bool(call.clears)

        await eventually(cleared, 5)
        await prompt_after(call, time.time())  # "that PIN was not recognised"
        assert (await server.get_run(run["id"]))["status"] == "pending"
        assert not call.closed.is_set()

        call.say(right_said)
        await server.wait_status(run["id"], "in_progress", timeout=20)
        await asked(server, run["id"], "work")
    finally:
        await call.hang_up()
    done = await server.get_run(run["id"], "sessions")
    assert [(s["type"], s["user_number"]) for s in done["sessions"]] == [("inbound", CALLER)]
    assert (await server.get_run(other["id"]))["status"] == "pending"


async def test_keyed_and_spoken_tries_are_counted_together(phone_server: Server) -> None:
    server = phone_server
    channel = await phone_channel(server)
    run = await server.create_run(channel_id=channel["id"])
    first = unused_pin(run["pin"])
    second = unused_pin(run["pin"], first)
    spoken_wrong = await said(pin_words(second))
    last_three = await said(pin_words(first).split(", ")[1])  # "two six four."
    call = MediaStreamsCall()
    await call.answer(server.http, voice_url(server), call_form(call.call_sid, to=NUMBER, from_=CALLER))
    try:
        await prompt_after(call, 0)
        keyed_at = time.time()
        await call.dtmf(first)  # try 1: keyed
        await prompt_after(call, keyed_at)
        call.say(spoken_wrong)  # try 2: said
        await call.said()
        await prompt_after(call, time.time())
        assert not call.closed.is_set()
        await call.dtmf(first[:3])  # try 3: three keyed, three said, one entry
        call.say(last_three)
        await asyncio.wait_for(call.closed.wait(), 20 * UNIT)  # no timeout waited for: the six digits were in
    finally:
        await call.close()
    assert (call.close_code, call.close_reason) == (1000, "no such PIN")
    assert (await server.get_run(run["id"]))["status"] == "pending"


def test_a_try_takes_keys_and_words_in_order() -> None:
    attempt = PinAttempt()
    assert attempt.add(Keyed("4")) is None
    assert attempt.add(Spoken("27", "two seven")) is None
    assert attempt.add(Spoken("", "um")) is None  # no digits: nothing changes
    assert attempt.add(Spoken("193", "one nine three")) == "427193"


def test_a_whole_pin_said_at_once_replaces_stray_digits() -> None:
    attempt = PinAttempt()
    attempt.add(Spoken("2", "I'd like to... two"))
    assert attempt.add(Spoken("427193", "427 193.")) == "427193"


@pytest.mark.parametrize(
    ("entries", "pin"),
    [
        ([Keyed("1"), Keyed("2"), Keyed("#")], "12"),  # "#" ends early (a short PIN: wrong)
        ([Keyed("9"), Keyed("*"), *(Keyed(d) for d in "427193")], "427193"),  # "*" starts again
        ([Spoken("4271", "4271"), Spoken("93", "93")], "427193"),
        ([Spoken("42", "42"), Spoken("71934", "71934")], "4271934"),  # too many: a wrong PIN, not a guess
    ],
)
def test_a_try_ends_on_six_digits_or_hash(entries: list[Keyed | Spoken], pin: str) -> None:
    attempt = PinAttempt()
    results = [attempt.add(e) for e in entries]
    assert results[-1] == pin and all(r is None for r in results[:-1])
