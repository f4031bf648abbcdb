"""What the telephony tests share (tests/api/test_telephony*.py): the channel's and caller's numbers, helpers
on a server with Twilio configured (the ``phone_server`` fixture of tests/api/conftest.py), and digits said
aloud by a real synthesiser for spoken PINs."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import numpy as np

from media.resample import resample
from media.tts import create_synthesizer
from tests.conftest import Server, eventually

NUMBER = "+14155550100"
CALLER = "+442071838750"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


async def phone_channel(server: Server, number: str = NUMBER, **settings: Any) -> dict[str, Any]:
    body = {"type": "telephony", "name": "phone", "settings": {"phone_numbers": [number], **settings}}
    status, channel = await server.request("POST", "/v1/channels", json=body)
    assert status == 201, channel
    return dict(channel)


def voice_url(server: Server, query: str = "") -> str:
    return f"{server.url}/telephony/twilio/voice{query}"


def status_url(server: Server, run_id: str) -> str:
    return f"{server.url}/telephony/twilio/status?run={run_id}"


async def transcript(server: Server, run_id: str) -> list[dict[str, Any]]:
    return list((await server.get_run(run_id, "transcript"))["transcript"])


async def asked(server: Server, run_id: str, question_id: str, kind: str | None = None) -> dict[str, Any]:
    """The first message that asks ``question_id`` (of ``kind``, if given), once it is stored."""

    async def check() -> dict[str, Any] | None:
        for m in await transcript(server, run_id):
            if m.get("question_id") == question_id and kind in (None, m.get("kind")):
                return m
        return None

    found: dict[str, Any] = await eventually(check, 30)
    return found


def pin_words(pin: str) -> str:
    """A PIN as a caller says it, in two groups of three: "four two seven, one nine three"."""
    words = [DIGIT_WORDS[int(d)] for d in pin]
    return " ".join(words[:3]) + ", " + " ".join(words[3:]) + "."


@functools.cache
def _piper() -> Any:
    return create_synthesizer("piper")


def _synthesize(text: str) -> np.ndarray:
    tts = _piper()
    pcm = np.concatenate(list(tts.synthesize(text)))
    return np.asarray(resample(pcm, tts.sample_rate, 16_000), dtype=np.int16)


async def said(text: str) -> np.ndarray:
    """``text`` spoken by Piper (the server's English voice), as 16 kHz int16; made on a thread, as the server
    under test shares this event loop. The Media Streams client sends it as 8 kHz μ-law."""
    return await asyncio.to_thread(_synthesize, text)
