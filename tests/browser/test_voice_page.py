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
from tests.conftest import BLUEPRINT, UNIT, Server, ServerFactory, eventually

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


def microphone(path: Path, *parts: str | float, trim: bool = False) -> Path:
    """A WAV for the fake microphone: fixture answers (by id) and silences (seconds), at 48 kHz.

    ``trim`` cuts the fixtures' own leading and trailing silence.
    """
    pieces = []
    for part in parts:
        if isinstance(part, str):
            pcm, rate = sf.read(FIXTURES / MANIFEST[part]["file"], dtype="int16")
            assert rate == 16_000
            if trim:
                pcm = pcm[int(MANIFEST[part]["speech_start_s"] * rate) : int(MANIFEST[part]["speech_end_s"] * rate)]
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


async def voice_run(server: Server, blueprint_id: str | None = None, **settings: Any) -> dict[str, Any]:
    body = {"type": "webrtc_voice", "name": "voice", "settings": settings}
    status, channel = await server.request("POST", "/v1/channels", json=body)
    assert status == 201, channel
    return await server.create_run(channel_id=channel["id"], blueprint_id=blueprint_id)


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


# What the participant saw in the interviewer's state line, in order (states can be brief: polling would miss some).
RECORD_STATES = """(() => {
  window.__states = [];
  new MutationObserver(() => {
    const label = document.getElementById("voice-state");
    const text = label && !label.closest("[hidden]") ? label.textContent : null;
    if (text && window.__states[window.__states.length - 1] !== text) window.__states.push(text);
  }).observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
})();"""


async def test_a_voice_interview_spoken_into_the_fake_microphone(
    voice_server: Server, launch: Launch, tmp_path: Path
) -> None:
    server = voice_server
    run = await voice_run(server, recording=True)
    # the greeting and the question take ~3 s to speak; then the answer; the loop repeats it later
    wav = microphone(tmp_path / "mic.wav", 5.0, "job", 6.0)
    page = await open_with_microphone(launch, wav)
    await page.add_init_script(RECORD_STATES)
    await page.goto(run["join_url"])
    timeout = 20_000 * UNIT
    start = page.get_by_role("button", name="Start the interview")
    await expect(start).to_be_visible(timeout=timeout)
    await expect(page.locator("#voice-recording")).to_be_visible()  # the channel records: the page says so
    await start.click()

    state = page.locator("#voice-state")
    captions = page.locator("#voice-captions")
    await expect(captions).to_contain_text("Interviewer: What do you do for a living?", timeout=timeout)
    await expect(state).to_have_text(STATE_TEXT["listening"], timeout=timeout)  # the question has been spoken
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
    seen = await page.evaluate("() => window.__states")
    speaking, listening = STATE_TEXT["speaking"], STATE_TEXT["listening"]
    assert seen[:3] == ["Connecting…", STATE_TEXT["thinking"], speaking], seen  # then the greeting is spoken
    turns = [s for s in seen if s in (speaking, listening)]
    turns = [s for i, s in enumerate(turns) if i == 0 or s != turns[i - 1]]  # the question may follow a pause
    assert turns[:2] == [speaking, listening] and speaking in turns[2:], seen  # the answer; the closing
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


COUNT_MEDIA = """(() => {
  window.__media = { getUserMedia: 0, peers: 0 };
  const devices = navigator.mediaDevices;
  const getUserMedia = devices.getUserMedia.bind(devices);
  devices.getUserMedia = (constraints) => { window.__media.getUserMedia += 1; return getUserMedia(constraints); };
  const Peer = window.RTCPeerConnection;
  window.RTCPeerConnection = function (config) { window.__media.peers += 1; return new Peer(config); };
  window.RTCPeerConnection.prototype = Peer.prototype;
})();"""

NO_DEVICE_ONCE = """(() => {
  const devices = navigator.mediaDevices;
  const getUserMedia = devices.getUserMedia.bind(devices);
  let calls = 0;
  devices.getUserMedia = (constraints) => (calls++ === 0
    ? Promise.reject(new DOMException("Requested device not found", "NotFoundError"))
    : getUserMedia(constraints));
})();"""


async def test_the_microphone_is_requested_only_when_start_is_pressed(
    voice_server: Server, launch: Launch, tmp_path: Path
) -> None:
    run = await voice_run(voice_server)
    page = await open_with_microphone(launch, microphone(tmp_path / "mic.wav", 1.0, "home", 1.0))
    await page.add_init_script(COUNT_MEDIA)
    offers: list[str] = []
    page.on("request", lambda request: offers.append(request.url) if request.url.endswith("/offer") else None)
    await page.goto(run["join_url"])
    timeout = 20_000 * UNIT
    await expect(page.locator("#status")).to_have_text("Ready when you are", timeout=timeout)
    start = page.get_by_role("button", name="Start the interview")
    await expect(start).to_be_visible()
    await expect(page.get_by_role("button", name="Hang up")).to_be_hidden()
    assert await page.evaluate("() => window.__media") == {"getUserMedia": 0, "peers": 0}
    assert offers == []
    await page.keyboard.press("Tab")  # the first stop in the focus order is the start button
    assert await page.evaluate("() => document.activeElement.id") == "voice-start-button"
    await screenshot(page, "join-voice-start")
    assert (await voice_server.get_run(run["id"]))["status"] == "pending"  # nobody has joined

    await page.keyboard.press("Enter")
    await expect(page.locator("#voice-captions")).to_contain_text("Interviewer: Hello.", timeout=timeout)
    assert await page.evaluate("() => window.__media") == {"getUserMedia": 1, "peers": 1}
    assert len(offers) == 1
    await page.keyboard.press("Tab")  # focus stayed in place when the start screen went: next is Mute
    assert await page.evaluate("() => document.activeElement.id") == "voice-mute"
    await voice_server.wait_status(run["id"], "in_progress")


async def test_a_blocked_microphone_is_explained(voice_server: Server, launch: Launch) -> None:
    run = await voice_run(voice_server)
    page = await launch(["--use-fake-device-for-media-stream"])  # no fake UI: the permission is refused
    await page.goto(run["join_url"])
    await page.get_by_role("button", name="Start the interview").click()
    error = page.locator("#voice-error")
    await expect(error).to_be_visible(timeout=10_000 * UNIT)
    await expect(page.locator("#voice-error-title")).to_have_text("Microphone blocked")
    await expect(error).to_contain_text("Allow microphone access for this site")
    retry = page.get_by_role("button", name="Try again")
    await expect(retry).to_be_focused()
    await expect(page.locator("#status")).to_have_text("Microphone blocked")
    await screenshot(page, "join-voice-microphone-blocked")
    assert (await voice_server.get_run(run["id"]))["status"] == "pending"


async def test_no_microphone_is_explained_and_try_again_connects_once_there_is_one(
    voice_server: Server, launch: Launch, tmp_path: Path
) -> None:
    run = await voice_run(voice_server)
    page = await open_with_microphone(launch, microphone(tmp_path / "mic.wav", 1.0, "home", 1.0))
    await page.add_init_script(NO_DEVICE_ONCE)  # the first request finds no device; then one is plugged in
    await page.goto(run["join_url"])
    await page.get_by_role("button", name="Start the interview").click()
    timeout = 20_000 * UNIT
    await expect(page.locator("#voice-error-title")).to_have_text("No microphone found", timeout=timeout)
    await expect(page.locator("#voice-error")).to_contain_text("Connect a microphone or a headset")
    await screenshot(page, "join-voice-no-microphone")
    await page.get_by_role("button", name="Try again").click()
    await expect(page.locator("#voice-captions")).to_contain_text("Interviewer: Hello.", timeout=timeout)
    await expect(page.locator("#voice-error")).to_be_hidden()


async def test_a_failed_connection_is_explained_and_try_again_connects(
    voice_server: Server, launch: Launch, tmp_path: Path
) -> None:
    run = await voice_run(voice_server)
    page = await open_with_microphone(launch, microphone(tmp_path / "mic.wav", 1.0, "home", 1.0))

    async def refuse(route: Any) -> None:
        await route.fulfill(status=503, json={"error": {"type": "unavailable", "message": "Server busy"}})

    await page.route("**/offer", refuse)
    await page.goto(run["join_url"])
    await page.get_by_role("button", name="Start the interview").click()
    timeout = 20_000 * UNIT
    error = page.locator("#voice-error")
    await expect(page.locator("#voice-error-title")).to_have_text("Could not connect", timeout=timeout)
    await expect(error).to_contain_text("Check your internet connection")
    await expect(error).to_contain_text("Server busy")
    await screenshot(page, "join-voice-connection-failed")
    await page.unroute("**/offer")
    await page.get_by_role("button", name="Try again").click()
    await expect(page.locator("#voice-captions")).to_contain_text("Interviewer: Hello.", timeout=timeout)


# Every text the status line showed, in order.
RECORD_STATUS = """(() => {
  window.__status = [];
  new MutationObserver(() => {
    const text = document.getElementById("status").textContent;
    if (window.__status[window.__status.length - 1] !== text) window.__status.push(text);
  }).observe(document.getElementById("status"), { subtree: true, childList: true, characterData: true });
})();"""


async def test_a_call_handed_over_by_its_server_reconnects_by_itself_and_the_interview_goes_on(
    voice_server: Server, launch: Launch, tmp_path: Path
) -> None:
    """An upgrade drains the process holding the call: the run is let go and the participant told to reconnect.
    The page connects again by itself (no Try again to press), the run resumes where it was, and the answers
    spoken after the move are stored."""
    server = voice_server
    many_questions = await server.create_blueprint(BLUEPRINT)
    run = await voice_run(server, many_questions)
    page = await open_with_microphone(launch, microphone(tmp_path / "mic.wav", 2.0, "home", 6.0))
    await page.goto(run["join_url"])
    await page.evaluate(RECORD_STATUS)
    await page.get_by_role("button", name="Start the interview").click()
    timeout = 20_000 * UNIT
    await expect(page.locator("#voice-captions")).to_contain_text("Interviewer: Hello and welcome.", timeout=timeout)

    await server.state.live.controllers[run["id"]].hand_over()  # what draining does to each of its runs

    await expect(page.locator("#status")).to_have_text("Reconnected", timeout=timeout)
    await expect(page.locator("#voice-error")).to_be_hidden()
    shown = await page.evaluate("() => window.__status")
    assert "Reconnecting…" in shown and "Connection lost" not in shown, shown
    sessions = (await server.get_run(run["id"], "sessions"))["sessions"]
    assert [s["end_reason"] for s in sessions] == ["server_restart", None]
    assert (await server.get_run(run["id"]))["status"] == "in_progress"

    async def answered_after_the_move() -> bool:
        transcript = (await server.get_run(run["id"], "transcript"))["transcript"]
        return any(m["role"] == "user" and m["session_id"] == sessions[1]["id"] for m in transcript)

    await eventually(answered_after_the_move, timeout=30)
    await expect(page.locator("#voice-captions").locator(".caption--user").first).to_be_visible()


async def test_a_call_that_cannot_reconnect_asks_the_participant_to_try_again(
    voice_server: Server, launch: Launch, tmp_path: Path
) -> None:
    """Every server refuses the call for a while (all draining): the page tries a few times by itself, then says
    the connection was lost, and Try again continues the interview once a server takes it."""
    server = voice_server
    run = await voice_run(server, await server.create_blueprint(BLUEPRINT))
    page = await open_with_microphone(launch, microphone(tmp_path / "mic.wav", 30.0))
    await page.goto(run["join_url"])
    await page.get_by_role("button", name="Start the interview").click()
    timeout = 20_000 * UNIT
    await expect(page.locator("#voice-captions")).to_contain_text("Interviewer: Hello and welcome.", timeout=timeout)
    offers = 0

    async def refuse(route: Any) -> None:
        nonlocal offers
        offers += 1
        await route.fulfill(status=503, json={"error": {"type": "unavailable", "message": "draining"}})

    await page.route("**/offer", refuse)
    await server.state.live.controllers[run["id"]].hand_over()
    await expect(page.locator("#voice-error-title")).to_have_text("Connection lost", timeout=timeout)
    assert offers == 4  # the tries made by itself, then it stops and asks
    await page.unroute("**/offer")
    await page.get_by_role("button", name="Try again").click()
    await expect(page.locator("#status")).to_have_text("Reconnected", timeout=timeout)
    assert (await server.get_run(run["id"]))["status"] == "in_progress"


async def test_mute_silences_the_microphone_and_hang_up_ends_the_session(
    voice_server: Server, launch: Launch, tmp_path: Path
) -> None:
    server = voice_server
    # many questions: the pause while muted ends a turn, and the interview must not be over by the hang-up
    many_questions = await server.create_blueprint(BLUEPRINT)
    run = await voice_run(server, many_questions, idle_timeout_s=20)  # rejoin grace: 20 s x TIME_SCALE
    # talking with pauses too short to end a turn (the fixtures trimmed to their speech)
    wav = microphone(tmp_path / "mic.wav", "job", 0.15, "home", 0.15, "breakfast", 0.15, trim=True)
    page = await open_with_microphone(launch, wav)
    await page.goto(run["join_url"])
    await page.get_by_role("button", name="Start the interview").click()
    timeout = 20_000 * UNIT
    await expect(page.locator("#voice-captions")).to_contain_text("Interviewer: Hello and welcome.", timeout=timeout)
    await meter_reaches(page, 0.3)

    mute = page.get_by_role("button", name="Mute")
    await mute.click()
    await expect(page.get_by_role("button", name="Unmute")).to_be_visible()
    await expect(page.locator("#voice-muted")).to_be_visible()
    await meter_reaches(page, zero=True, timeout=5)  # a muted track carries silence
    assert await page.evaluate("() => document.activeElement.textContent") == "Unmute"
    await screenshot(page, "join-voice-muted")
    await page.get_by_role("button", name="Unmute").click()
    await expect(page.locator("#voice-muted")).to_be_hidden()
    await meter_reaches(page, 0.3)

    await page.get_by_role("button", name="Hang up").click()
    await expect(page.locator("#end")).to_be_visible()
    await expect(page.locator("#end-text")).to_contain_text("You left the interview")
    await expect(page.get_by_role("button", name="Hang up")).to_be_hidden()
    await screenshot(page, "join-voice-hung-up")

    async def session_ended() -> bool:
        sessions = (await server.get_run(run["id"], "sessions"))["sessions"]
        return len(sessions) == 1 and sessions[0]["status"] == "ended"

    await eventually(session_ended, timeout=10)
    done = await server.wait_status(run["id"], "completed", timeout=10)  # nobody came back
    assert done["end_reason"] == "participant_left"


async def test_an_ended_voice_run_shows_a_friendly_page(voice_server: Server, launch: Launch, tmp_path: Path) -> None:
    server = voice_server
    cancelled = await voice_run(server)
    status, _ = await server.request("POST", f"/v1/runs/{cancelled['id']}/cancel")
    assert status == 200
    page = await open_with_microphone(launch, microphone(tmp_path / "mic.wav", 1.0, "home", 1.0))
    response = await page.goto(cancelled["join_url"])
    assert response is not None and response.status == 200
    assert "cancelled by the researcher" in await page.inner_text("main")

    # cancelled while the participant reads the start screen: Start then says so instead of connecting
    run = await voice_run(server)
    await page.goto(run["join_url"])
    start = page.get_by_role("button", name="Start the interview")
    await expect(start).to_be_visible(timeout=10_000 * UNIT)
    status, _ = await server.request("POST", f"/v1/runs/{run['id']}/cancel")
    assert status == 200
    await start.click()
    await expect(page.locator("#end")).to_be_visible(timeout=10_000 * UNIT)
    await expect(page.locator("#end-text")).to_have_text("The researcher cancelled this interview.")
    await expect(page.locator("#voice-error")).to_be_hidden()
