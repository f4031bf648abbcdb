"""Voice interviews end to end: a real aiortc caller speaks fixture answers to a real server in real time.

Answers whose words are scored are real human recordings (fixtures/fetch_speech.py): through this pipeline
Whisper tiny.en measured 2.9 % WER over the whole real-speech set (tests/api/test_voice_real_speech.py);
here a transcript of two or three of them must stay ≤ 0.15 (at most 2 errors in 15 words). The eSpeak
fixtures (a synthetic voice Whisper hears less well: "I work as a nurse" came back as "I wear a cat under")
drive the tests of turn-taking mechanics, where only the number and order of answers is checked.
"""

from __future__ import annotations

import asyncio
import io
import itertools
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from api.state import STATE
from api.voice import VoiceLink
from media.caller import VoiceCaller
from media.resample import resample
from media.stt import create_recognizer
from media.stt.wer import word_error_rate
from media.synthesis import SynthesisThreads
from media.tts.piper import PiperSynthesizer
from runtime.interviewer import Purpose, ReplyPart, ReplyRequest, ScriptedInterviewer
from tests.conftest import (
    UNIT,
    VOICE_BLUEPRINT,
    HumanClip,
    Server,
    ServerFactory,
    eventually,
    refuse_first_answer,
    spoken_answer,
)

STAGES = ("eos", "eos_wait", "transcriber", "llm", "tts", "initial_wait")


@pytest.fixture
async def voice_server(server_factory: ServerFactory) -> Server:
    server = await server_factory(ice_host_addresses=("127.0.0.1",))
    server.extra["blueprint_id"] = await server.create_blueprint(VOICE_BLUEPRINT)
    status, channel = await server.request(
        "POST", "/v1/channels", json={"type": "webrtc_voice", "name": "voice", "settings": {"recording": True}}
    )
    assert status == 201
    server.extra["voice_channel"] = channel["id"]
    return server


async def join(server: Server, run: dict[str, Any]) -> VoiceCaller:
    caller = VoiceCaller()
    await caller.join(server.http, run["join_url"], timeout=10 * UNIT)
    return caller


def is_message(kind: str, question_id: str | None = None) -> Any:
    def match(ev: dict[str, Any]) -> bool:
        m = ev.get("message", {})
        return ev.get("type") == "message" and m.get("kind") == kind and (question_id in (None, m.get("question_id")))

    return match


async def wait_listening(caller: VoiceCaller, after: int) -> None:
    await caller.wait_event(lambda ev: ev.get("type") == "state" and ev.get("state") == "listening", 20 * UNIT,
                            after=after)  # fmt: skip


async def say_to_the_first_question(caller: VoiceCaller, pcm: np.ndarray) -> int:
    """Wait for the "work" question to be spoken, then say ``pcm``; returns how many events came before."""
    await caller.wait_event(is_message("question", "work"), 20 * UNIT)
    await wait_listening(caller, 0)
    n = len(caller.events)
    await caller.say(pcm)
    return n


async def answer_the_first_question(caller: VoiceCaller, pcm: np.ndarray) -> None:
    """Say ``pcm`` to the "work" question and wait for the next question."""
    n = await say_to_the_first_question(caller, pcm)
    await caller.wait_event(is_message("question", "home"), 30 * UNIT, after=n)


HUMAN_WER = 0.15


def human(clips: list[HumanClip], ident: str) -> HumanClip:
    return next(c for c in clips if c.id.endswith(ident))


async def test_voice_interview_completes_with_transcript_breakdowns_and_recording(
    voice_server: Server, human_speech: list[HumanClip]
) -> None:
    server = voice_server
    answers = {"job": human(human_speech, "0930"), "home": human(human_speech, "forever")}
    run = await server.create_run(channel_id=server.extra["voice_channel"])
    caller = await join(server, run)
    try:
        n = len(caller.events)
        await caller.wait_event(is_message("question", "work"), 20 * UNIT)
        for answer_id, next_message in (("job", is_message("question", "home")), ("home", is_message("closing"))):
            await wait_listening(caller, n)
            n = len(caller.events)
            spoken_until = await caller.say(answers[answer_id].pcm)
            await caller.wait_event(next_message, 30 * UNIT, after=n)
            heard_at = await caller.heard_after(spoken_until, 10 * UNIT)
            assert heard_at - spoken_until < 5.0  # voice to voice, loosely: figures live in bench/voice.py
            n = len(caller.events)
        await caller.wait_event(lambda ev: ev.get("type") == "run.ended", 30 * UNIT)
    finally:
        await caller.close()

    done = await server.wait_status(run["id"], "completed", timeout=10)
    assert done["end_reason"] == "completed"
    done = await server.get_run(run["id"], "transcript", "sessions")
    transcript = done["transcript"]
    users = [m for m in transcript if m["role"] == "user"]
    said = " ".join(answers[a].text for a in ("job", "home"))
    heard = " ".join(m["content"] for m in users)
    assert word_error_rate(said, heard) <= HUMAN_WER, heard
    assert [s["type"] for s in done["sessions"]] == ["voice"]

    # the six stages add up to the measured latency: first reply frame - end of the participant's speech
    checked = 0
    for before, message in itertools.pairwise(transcript):
        lat = message["latency_breakdown"]
        if message["role"] != "assistant" or before["role"] != "user" or lat is None or lat["eos"] is None:
            continue
        measured = (message["start_offset_s"] - before["end_offset_s"]) * 1000
        assert abs(sum(lat[s] for s in STAGES) - measured) <= 2.0, (lat, measured)
        assert lat["eos"] >= 480  # the default 500 ms silence window, in 20 ms frames
        checked += 1
    assert checked == 2
    assert done["latency"]["eos"]["count"] == 2

    # the recording: stereo, participant left, assistant right, aligned with the transcript
    async with server.http.get(f"{server.url}/v1/runs/{run['id']}/recording", headers=server.auth) as resp:
        assert resp.status == 200
        audio, rate = sf.read(io.BytesIO(await resp.read()), dtype="float32")
    assert audio.ndim == 2 and audio.shape[1] == 2
    assert abs(len(audio) / rate - done["duration_s"]) < 1.0
    previous_end = {0: -1.0, 1: -1.0}
    for message in transcript:
        lane = 0 if message["role"] == "user" else 1
        start = message["start_offset_s"]
        onset = first_sound(audio[:, lane], rate, start - 0.1, start + 0.5)
        assert onset is not None and onset <= start + 0.1, (message["content"], start, onset)
        if previous_end[lane] < start - 0.4:  # after a pause the lane is silent until just before the start
            assert first_sound(audio[:, lane], rate, start - 0.35, start - 0.1) is None, (message["content"], start)
        previous_end[lane] = message["end_offset_s"]

    # what was played and recorded is Piper's English voice, and it says the interviewer's words
    synthesis = server.app[STATE].voice.synthesis
    assert isinstance(synthesis, SynthesisThreads)
    assert any(isinstance(engine, PiperSynthesizer) for engine in synthesis._engines.values())
    assistant = [m for m in transcript if m["role"] == "assistant"]
    lane = np.concatenate([audio[int(m["start_offset_s"] * rate) : int(m["end_offset_s"] * rate) + rate // 5, 1]
                           for m in assistant])  # fmt: skip
    pcm = np.asarray(resample((lane * 32767).astype(np.int16), rate, 16_000), dtype=np.int16)
    recognizer = create_recognizer("pocketsphinx")
    recognizer.start()
    recognizer.feed(pcm)
    spoken = " ".join(m["content"] for m in assistant)
    assert word_error_rate(spoken, recognizer.finish()) <= 0.5  # Piper through pocketsphinx: ~0.2 (test_piper.py)


def first_sound(lane: np.ndarray, rate: int, start: float, stop: float) -> float | None:
    """Start of the first 10 ms block with sound between ``start`` and ``stop`` seconds."""
    block = rate // 100
    for i in range(max(int(start * rate), 0), min(int(stop * rate), len(lane)) - block, block):
        if np.sqrt(np.mean(lane[i : i + block] ** 2)) > 0.01:
            return i / rate
    return None


JSON_TYPE = {"Content-Type": "application/json"}


async def test_bad_offers_are_400_and_unknown_tokens_404(voice_server: Server) -> None:
    server = voice_server
    run = await server.create_run(channel_id=server.extra["voice_channel"])
    for body in ({"sdp": "v=0\r\nnonsense", "type": "offer"}, {"type": "offer"}, {"sdp": "x", "type": "answer"}, []):
        async with server.http.post(run["join_url"] + "/offer", json=body) as resp:
            assert resp.status == 400
            err = await resp.json()
            assert err["error"]["type"] == "invalid_request" and err["error"]["message"]
    async with server.http.post(run["join_url"] + "/offer", data=b"{not json", headers=JSON_TYPE) as resp:
        assert resp.status == 400
    async with server.http.post(run["join_url"] + "/offer", data=b"{not json") as resp:  # application/octet-stream
        assert resp.status == 415
    async with server.http.post(server.url + "/join/nope/offer", json={"sdp": "v=0", "type": "offer"}) as resp:
        assert resp.status == 404
    chat_run = await server.create_run()
    caller = VoiceCaller()
    try:
        with pytest.raises(ConnectionError, match="409"):
            await caller.join(server.http, chat_run["join_url"], timeout=10 * UNIT)
    finally:
        await caller.close()


async def voice_run(server: Server, **settings: Any) -> dict[str, Any]:
    status, channel = await server.request(
        "POST", "/v1/channels", json={"type": "webrtc_voice", "name": "voice", "settings": settings}
    )
    assert status == 201
    return await server.create_run(channel_id=channel["id"])


async def test_barge_in_stops_the_interviewer_and_cuts_the_stored_message(server_factory: ServerFactory) -> None:
    server = await server_factory(ice_host_addresses=("127.0.0.1",))
    long_greeting = (
        "Hello and welcome. Thank you very much for taking the time to talk with me today about your work, "
        "your home and the way you spend an ordinary day, from morning until evening."
    )
    server.extra["blueprint_id"] = await server.create_blueprint({**VOICE_BLUEPRINT, "greeting": long_greeting})
    run = await voice_run(server, min_interruption_ms=400)
    caller = await join(server, run)
    try:
        first_audio = await caller.heard_after(0, 20 * UNIT)
        await asyncio.sleep(1.0)
        spoken_until = await caller.say(spoken_answer("job"))  # talks over the greeting
        # the first question was cut off before it was heard: it is asked again, and nothing is taken as its answer
        await caller.wait_event(is_message("reask", "work"), 20 * UNIT)
    finally:
        await caller.close()
    done = await server.get_run(run["id"], "transcript")
    greeting = done["transcript"][0]
    assert greeting["kind"] == "greeting" and greeting["is_interrupted"] is True
    assert 0 < len(greeting["content"]) < len(long_greeting) and long_greeting.startswith(greeting["content"][:-1])
    # the words kept are those that could have been heard (Piper speaks ~2.5 words/s), although most of the
    # greeting was not even synthesised yet when it was cut
    played_s = greeting["end_offset_s"] - greeting["start_offset_s"]
    assert 1 <= len(greeting["content"].split()) <= 1 + 4 * played_s, (greeting["content"], played_s)
    user = next(m for m in done["transcript"] if m["role"] == "user")
    # playback stopped once the participant had spoken min_interruption_ms, long before the greeting's end
    stopped_after_onset = greeting["end_offset_s"] - user["start_offset_s"]
    assert 0.3 <= stopped_after_onset <= 0.4 + 0.3 * UNIT, stopped_after_onset
    last_heard = caller.heard.last_audible()
    assert last_heard is not None and first_audio < last_heard < spoken_until


class SlowInterviewer(ScriptedInterviewer):
    async def reply(self, request: ReplyRequest) -> AsyncIterator[ReplyPart]:
        if request.purpose is Purpose.ANSWER:
            await asyncio.sleep(1.5)
        async for part in super().reply(request):
            yield part


async def test_a_slow_reply_is_preceded_by_a_spoken_filler(server_factory: ServerFactory) -> None:
    server = await server_factory(ice_host_addresses=("127.0.0.1",), interviewer=SlowInterviewer())
    server.extra["blueprint_id"] = await server.create_blueprint(VOICE_BLUEPRINT)
    run = await voice_run(server, filler_after_ms=300)
    caller = await join(server, run)
    try:
        n = await say_to_the_first_question(caller, spoken_answer("job"))
        filler = await caller.wait_event(is_message("filler"), 20 * UNIT, after=n)
        await caller.wait_event(is_message("question", "home"), 20 * UNIT, after=n)
        await wait_listening(caller, len(caller.events))
    finally:
        await caller.close()
    assert filler["message"]["is_filler"] is True
    transcript = (await server.get_run(run["id"], "transcript"))["transcript"]
    kinds = [m["kind"] for m in transcript]
    assert kinds.index("filler") < kinds.index("question", 2)
    stored = next(m for m in transcript if m["kind"] == "filler")
    assert stored["is_filler"] is True and stored["latency_breakdown"]["eos"] is not None


async def test_idle_timeout_by_voice_with_a_spoken_reminder(server_factory: ServerFactory) -> None:
    server = await server_factory(ice_host_addresses=("127.0.0.1",), time_scale=0.4)
    server.extra["blueprint_id"] = await server.create_blueprint(VOICE_BLUEPRINT)
    run = await voice_run(server, idle_timeout_s=10)  # reminder 2 s, end 4 s after the question has been played
    caller = await join(server, run)
    try:
        await caller.wait_event(is_message("reminder", "work"), 30 * UNIT)
        ended = await caller.wait_event(lambda ev: ev.get("type") == "run.ended", 30 * UNIT)
    finally:
        await caller.close()
    assert ended["reason"] == "idle_timeout"
    done = await server.get_run(run["id"], "transcript")
    assert done["end_reason"] == "idle_timeout"
    reminder = next(m for m in done["transcript"] if m["kind"] == "reminder")
    assert reminder["is_interrupted"] is False and reminder["end_offset_s"] > reminder["start_offset_s"]


async def test_a_peer_that_never_sends_audio_times_out_without_hanging(server_factory: ServerFactory) -> None:
    server = await server_factory(ice_host_addresses=("127.0.0.1",), time_scale=0.4)
    server.extra["blueprint_id"] = await server.create_blueprint(VOICE_BLUEPRINT)
    run = await voice_run(server, idle_timeout_s=10)
    caller = VoiceCaller(mute=True)
    try:
        await caller.join(server.http, run["join_url"], timeout=10 * UNIT)
        ended = await caller.wait_event(lambda ev: ev.get("type") == "run.ended", 30 * UNIT)
    finally:
        await caller.close()
    assert ended["reason"] == "idle_timeout"
    done = await server.get_run(run["id"], "sessions", "transcript")
    assert [m["role"] for m in done["transcript"]].count("user") == 0
    assert done["sessions"][0]["status"] == "ended"


async def test_max_duration_by_voice_speaks_the_closing(server_factory: ServerFactory) -> None:
    server = await server_factory(ice_host_addresses=("127.0.0.1",), time_scale=0.5)
    server.extra["blueprint_id"] = await server.create_blueprint(VOICE_BLUEPRINT)
    run = await voice_run(server, max_duration_s=10, idle_timeout_s=3600)  # 5 s of real time
    caller = await join(server, run)
    try:
        closing = await caller.wait_event(is_message("closing"), 30 * UNIT)
        ended = await caller.wait_event(lambda ev: ev.get("type") == "run.ended", 30 * UNIT)
    finally:
        await caller.close()
    assert "time" in closing["message"]["content"] and ended["reason"] == "max_duration"
    done = await server.get_run(run["id"], "transcript")
    spoken = next(m for m in done["transcript"] if m["kind"] == "closing")
    assert spoken["end_offset_s"] - spoken["start_offset_s"] > 1.0  # it was played, not just stored


async def test_reconnect_resumes_at_the_same_question(voice_server: Server) -> None:
    server = voice_server
    run = await server.create_run(channel_id=server.extra["voice_channel"])
    caller = await join(server, run)
    try:
        await answer_the_first_question(caller, spoken_answer("job"))
    finally:
        await caller.close()  # the page is closed mid-interview

    async def session_ended() -> bool:
        return (await server.get_run(run["id"], "sessions"))["sessions"][0]["status"] == "ended"

    await eventually(session_ended, 10)
    again = await join(server, run)
    try:
        resumed = await again.wait_event(is_message("resume", "home"), 20 * UNIT)
        assert "Where do you live?" in resumed["message"]["content"]
        await wait_listening(again, 0)
        n = len(again.events)
        await again.say(spoken_answer("home"))
        await again.wait_event(lambda ev: ev.get("type") == "run.ended", 30 * UNIT, after=n)
    finally:
        await again.close()
    done = await server.get_run(run["id"], "sessions", "responses")
    assert done["status"] == "completed" and len(done["sessions"]) == 2
    assert all(r["answer"] for r in done["responses"])


async def test_a_pause_inside_an_answer_keeps_one_answer_with_all_its_words(
    voice_server: Server, human_speech: list[HumanClip]
) -> None:
    """A 300 ms pause outlasts the early-finish point (200 ms) but not the 500 ms window:
    the answer goes on after the early finish and one answer holds every word."""
    server = voice_server
    job, home = human(human_speech, "0880"), human(human_speech, "0930")  # 3.0 s and 3.3 s
    paused = np.concatenate([job.pcm, np.zeros(int(0.3 * 16_000), dtype=np.int16), home.pcm])
    run = await server.create_run(channel_id=server.extra["voice_channel"])
    caller = await join(server, run)
    try:
        await answer_the_first_question(caller, paused)
    finally:
        await caller.close()
    done = await server.get_run(run["id"], "transcript")
    users = [m for m in done["transcript"] if m["role"] == "user"]
    assert len(users) == 1, users
    heard = users[0]["content"]
    assert word_error_rate(f"{job.text} {home.text}", heard) <= HUMAN_WER, heard


async def test_a_spoken_answer_the_database_refuses_is_asked_for_again(
    voice_server: Server, monkeypatch: pytest.MonkeyPatch, human_speech: list[HumanClip]
) -> None:
    server = voice_server
    job = human(human_speech, "0930")
    refused = refuse_first_answer(server, monkeypatch)
    run = await server.create_run(channel_id=server.extra["voice_channel"])
    caller = await join(server, run)
    try:
        n = await say_to_the_first_question(caller, job.pcm)
        error = await caller.wait_event(lambda ev: ev.get("type") == "error", 30 * UNIT, after=n)
        assert error["code"] == "storage_unavailable" and "say it again" in error["message"]
        n = len(caller.events)
        await caller.say(job.pcm)  # the participant says it again; now it is kept
        await caller.wait_event(is_message("question", "home"), 30 * UNIT, after=n)
    finally:
        await caller.close()
    transcript = (await server.get_run(run["id"], "transcript"))["transcript"]
    answers = [m["content"] for m in transcript if m["role"] == "user"]
    assert len(refused) == 1 and len(answers) == 1
    assert word_error_rate(job.text, answers[0]) <= HUMAN_WER


async def test_network_is_measured_for_a_client_that_ignores_our_pings(voice_server: Server) -> None:
    """Any WebRTC client answers RTCP sender reports: the round trip comes from them when the client does not
    answer the data-channel pings that only our page answers."""
    server = voice_server
    run = await server.create_run(channel_id=server.extra["voice_channel"])
    caller = VoiceCaller(answer_pings=False)
    await caller.join(server.http, run["join_url"], timeout=10 * UNIT)
    try:
        await answer_the_first_question(caller, spoken_answer("job"))
        link = server.app[STATE].live.controllers[run["id"]].link
        assert isinstance(link, VoiceLink)
        assert link.peer.last_pong_at is None and link.peer.rtcp_rtt is not None  # pings never answered
    finally:
        await caller.close()
    done = await server.get_run(run["id"], "transcript")
    reply = next(m for m in done["transcript"] if m.get("question_id") == "home")
    network = reply["latency_breakdown"]["network"]
    assert network is not None and 0.0 <= network < 50.0  # one way, in ms, on loopback


async def test_breath_and_hiss_are_not_answers_and_the_question_is_asked_again(
    server_factory: ServerFactory, human_speech: list[HumanClip]
) -> None:
    """Sounds the VAD takes for speech (an out-breath, loud hiss) reach Whisper, which would write "Huh?" or
    "I'm not going to be able to do it." over them (tests/media/test_whisper.py); the guards make the transcript
    empty, nothing is stored, and the interviewer's reminder asks the question again."""
    from tests.media.test_whisper import noises

    server = await server_factory(ice_host_addresses=("127.0.0.1",), time_scale=0.4)
    server.extra["blueprint_id"] = await server.create_blueprint(VOICE_BLUEPRINT)
    run = await voice_run(server, idle_timeout_s=10)  # reminder 2 s after the question (scaled)
    caller = await join(server, run)
    sounds = noises()
    answer = human(human_speech, "0930")
    try:
        n = await say_to_the_first_question(caller, np.concatenate([sounds["breath"], sounds["hiss -20 dBFS"]]))
        await caller.wait_event(is_message("reminder", "work"), 30 * UNIT, after=n)
        n = len(caller.events)
        await wait_listening(caller, n)
        await caller.say(answer.pcm)
        await caller.wait_event(is_message("question", "home"), 30 * UNIT, after=n)
    finally:
        await caller.close()
    user_captions = [ev for ev in caller.events if ev.get("type") == "caption" and ev.get("role") == "user"]
    assert [c["text"] for c in user_captions if c["final"]] != [] and all(c["text"] for c in user_captions)
    transcript = (await server.get_run(run["id"], "transcript"))["transcript"]
    answers = [m["content"] for m in transcript if m["role"] == "user"]
    assert len(answers) == 1 and word_error_rate(answer.text, answers[0]) <= HUMAN_WER, answers
