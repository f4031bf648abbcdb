"""The participant page of a voice run in a real headless Chromium, with Chromium's fake microphone.

The fake microphone plays a WAV file (``--use-file-for-fake-audio-capture``),
looped from the moment the page opens the microphone: the files built here put
fixture answers (fixtures/answers) between stretches of silence, resampled to
48 kHz 16-bit mono, the capture format. The server offers 127.0.0.1 as its ICE
host candidate and Chromium is allowed loopback candidates, so the call stays
on this machine.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from playwright.async_api import expect

from media.resample import Upsampler
from tests.browser.conftest import Launch, requires_chromium, screenshot
from tests.conftest import UNIT, Server, ServerFactory, eventually

pytestmark = requires_chromium

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "answers"
MANIFEST = {a["id"]: a for a in json.loads((FIXTURES / "answers.json").read_text())}
TIME_SCALE = 0.25  # server timers (idle reminder and timeout, rejoin grace) run 4x faster

VOICE_BLUEPRINT = {
    "name": "Voice interview",
    "greeting": "Hello.",
    "questions": [{"id": "work", "text": "What do you do for a living?", "max_probes": 0}],
    "closing": "Thank you, goodbye.",
}
FAKE_MEDIA = [
    "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
]
STATE_TEXT = {
    "listening": "The interviewer is listening",
    "thinking": "The interviewer is thinking…",
    "speaking": "The interviewer is speaking",
}


def microphone(path: Path, *parts: str | float) -> Path:
    """A WAV for the fake microphone: fixture answers (by id) and silences (seconds), at 48 kHz."""
    pieces = []
    for part in parts:
        if isinstance(part, str):
            pcm, rate = sf.read(FIXTURES / MANIFEST[part]["file"], dtype="int16")
            assert rate == 16_000
            up = Upsampler(16_000, 48_000)
            pieces += [up.process(pcm), up.flush()]
        else:
            pieces.append(np.zeros(int(part * 48_000), dtype=np.int16))
    sf.write(path, np.concatenate(pieces), 48_000, subtype="PCM_16")
    return path


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


@pytest.fixture
async def voice_server(server_factory: ServerFactory) -> Server:
    server = await server_factory(ice_host_addresses=("127.0.0.1",), time_scale=TIME_SCALE)
    server.extra["blueprint_id"] = await server.create_blueprint(VOICE_BLUEPRINT)
    return server


async def voice_run(server: Server, **settings: Any) -> dict[str, Any]:
    body = {"type": "webrtc_voice", "name": "voice", "settings": settings}
    status, channel = await server.request("POST", "/v1/channels", json=body)
    assert status == 201, channel
    return await server.create_run(channel_id=channel["id"])


async def meter(page: Any) -> float:
    return float(await page.locator("#voice-level").evaluate("el => el.value"))


async def meter_reaches(page: Any, above: float | None = None, *, zero: bool = False, timeout: float = 20) -> None:
    """Wait until the microphone meter shows a level above ``above`` (or exactly zero)."""

    async def check() -> bool:
        level = await meter(page)
        return level == 0 if zero else level > (above or 0)

    await eventually(check, timeout)


async def open_with_microphone(launch: Launch, wav: Path, **context: Any) -> Any:
    return await launch([*FAKE_MEDIA, f"--use-file-for-fake-audio-capture={wav}"], **context)


async def test_a_voice_interview_spoken_into_the_fake_microphone(
    voice_server: Server, launch: Launch, tmp_path: Path
) -> None:
    server = voice_server
    run = await voice_run(server, recording=True)
    # the greeting and the question take ~3 s to speak; then the answer; the loop repeats it later
    wav = microphone(tmp_path / "mic.wav", 5.0, "job", 6.0)
    page = await open_with_microphone(launch, wav)
    await page.goto(run["join_url"])
    timeout = 20_000 * UNIT
    start = page.get_by_role("button", name="Start the interview")
    await expect(start).to_be_visible(timeout=timeout)
    await expect(page.locator("#voice-recording")).to_be_visible()  # the channel records: the page says so
    await start.click()

    state = page.locator("#voice-state")
    captions = page.locator("#voice-captions")
    await expect(state).to_have_text(STATE_TEXT["speaking"], timeout=timeout)
    await expect(captions).to_contain_text("Interviewer: What do you do for a living?", timeout=timeout)
    await expect(state).to_have_text(STATE_TEXT["listening"], timeout=timeout)
    # the answer plays: the meter moves, and a caption of it appears
    await meter_reaches(page, 0.3)
    answer = captions.locator(".caption--user").first
    await expect(answer).to_be_visible(timeout=timeout)
    await screenshot(page, "join-voice-in-progress")
    await expect(captions).to_contain_text("Thank you, goodbye.", timeout=timeout)

    end = page.locator("#end")
    await expect(end).to_be_visible(timeout=timeout)
    await expect(page.locator("#end-text")).to_contain_text("Thank you for taking part")
    await expect(page.get_by_role("button", name="Hang up")).to_be_hidden()
    await expect(captions).to_be_visible()  # the conversation can be read back
    await screenshot(page, "join-voice-completed")

    done = await server.wait_status(run["id"], "completed", timeout=10)
    assert done["end_reason"] == "completed"
    done = await server.get_run(run["id"], "transcript", "sessions")
    heard = " ".join(m["content"] for m in done["transcript"] if m["role"] == "user")
    said = words(MANIFEST["job"]["text"])
    assert len(said & words(heard)) >= len(said) // 2, heard
    shown = await answer.inner_text()
    assert words(shown) & said, shown  # the caption shows what was understood
    assert [s["type"] for s in done["sessions"]] == ["voice"]
