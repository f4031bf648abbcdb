"""The WebRTC link with real aiortc peers in one process over loopback (no STUN, host candidates on 127.0.0.1).

The "client" is a plain RTCPeerConnection playing a 440 Hz tone and opening the
"events" data channel, like the join page does; the server side is a VoicePeer.
"""

from __future__ import annotations

import asyncio
import fractions
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from media.audio import FRAME_SAMPLES, PCM, SAMPLE_RATE
from media.webrtc import (
    MAX_SDP_BYTES,
    InvalidOffer,
    Playback,
    SpeechTrack,
    VoicePeer,
    configure_host_addresses,
    consume_audio,
    parse_offer,
)
from tests.conftest import UNIT

RATE48 = 48_000
SILENT_RMS = 200.0  # a frame above this is "audio"; the test tones have an RMS of ~5600


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[None]:
    configure_host_addresses(["127.0.0.1"])
    yield
    configure_host_addresses(None)


def tone(freq: float, seconds: float, rate: int = RATE48, amplitude: float = 8000.0, phase0: int = 0) -> PCM:
    n = np.arange(phase0, phase0 + round(seconds * rate))
    return (amplitude * np.sin(2 * np.pi * freq * n / rate)).astype(np.int16)


def dominant_hz(pcm: PCM, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * rate / len(pcm))


def rms(pcm: np.ndarray[Any, Any]) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))


async def within(awaitable: Awaitable[Any], timeout: float = 5.0) -> Any:
    return await asyncio.wait_for(awaitable, timeout * UNIT)


async def until(check: Callable[[], object], timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout * UNIT)


class ToneTrack(MediaStreamTrack):
    """A microphone saying 'aaa' at 440 Hz: 20 ms frames of 48 kHz mono s16, in real time."""

    kind = "audio"

    def __init__(self, freq: float = 440.0) -> None:
        super().__init__()
        self.freq = freq
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += 960
            await asyncio.sleep(max(0.0, self._start + self._pts / RATE48 - time.monotonic()))
        frame = AudioFrame.from_ndarray(
            tone(self.freq, 0.02, phase0=self._pts).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE48
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE48)
        return frame


@dataclass
class Client:
    """The participant's side: records what it hears (per 20 ms frame) and answers pings like the join page."""

    pc: RTCPeerConnection
    channel: Any
    heard: list[tuple[float, float]] = field(default_factory=list)  # (time.monotonic() at receipt, rms)
    heard_pcm: list[np.ndarray[Any, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def audible(self, since: float = 0.0) -> list[float]:
        return [t for t, level in self.heard if t >= since and level > SILENT_RMS]

    def send(self, payload: dict[str, Any]) -> None:
        self.channel.send(json.dumps(payload))


def make_client() -> Client:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    client = Client(pc, pc.createDataChannel("events"))
    pc.addTrack(ToneTrack())

    async def listen(track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, AudioFrame)
            samples = frame.to_ndarray().reshape(-1, 2)[:, 0]  # Opus decodes to s16 stereo
            client.heard.append((time.monotonic(), rms(samples)))
            client.heard_pcm.append(samples)

    @pc.on("track")  # type: ignore[untyped-decorator]
    def on_track(track: MediaStreamTrack) -> None:
        client.tasks.append(asyncio.ensure_future(listen(track)))

    @client.channel.on("message")  # type: ignore[untyped-decorator]
    def on_message(data: str) -> None:
        message = json.loads(data)
        client.messages.append(message)
        if message.get("type") == "ping":
            client.send({"type": "pong", "t": message["t"]})

    return client


@dataclass
class Session:
    client: Client
    peer: VoicePeer
    frames: list[tuple[PCM, float]]
    messages: list[dict[str, Any]]
    closed: list[str]
    connect_s: float


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Awaitable[Session]]]:
    sessions: list[Session] = []

    async def start(**options: Any) -> Session:
        frames: list[tuple[PCM, float]] = []
        messages: list[dict[str, Any]] = []
        closed: list[str] = []
        peer = VoicePeer(
            ice_servers=[],
            on_audio_frame=lambda pcm, end_at: frames.append((pcm, end_at)),
            on_message=messages.append,
            on_closed=closed.append,
            **options,
        )
        client = make_client()
        await within(client.pc.setLocalDescription(await client.pc.createOffer()))
        offer = parse_offer({"type": "offer", "sdp": client.pc.localDescription.sdp})
        t0 = time.perf_counter()
        answer = await within(peer.accept(offer))
        await within(client.pc.setRemoteDescription(answer))
        assert await within(peer.wait_connected())
        session = Session(client, peer, frames, messages, closed, time.perf_counter() - t0)
        sessions.append(session)
        return session

    yield start
    for s in sessions:
        await within(s.peer.close())
        await within(s.client.pc.close())
        for task in s.client.tasks:
            task.cancel()


# --- over the network -------------------------------------------------------------------------


async def test_inbound_audio_arrives_as_16khz_frames_of_the_tone(connect: Callable[..., Awaitable[Session]]) -> None:
    s = await connect()
    print(f"\naccept() -> connected on loopback: {s.connect_s * 1000:.1f} ms")
    assert "a=candidate" in s.peer.pc.localDescription.sdp and "127.0.0.1" in s.peer.pc.localDescription.sdp
    await until(lambda: len(s.frames) >= 60)

    assert all(len(pcm) == FRAME_SAMPLES and pcm.dtype == np.int16 for pcm, _ in s.frames)
    stamps = [end_at for _, end_at in s.frames]
    assert all(b >= a for a, b in itertools.pairwise(stamps)) and stamps[-1] > stamps[0]
    assert abs(stamps[-1] - time.time()) < 1.0 * UNIT
    assert s.peer.last_audio_at == stamps[-1]
    audio = np.concatenate([pcm for pcm, _ in s.frames[-50:]])  # 1 s, past the codec's start-up
    assert abs(dominant_hz(audio, SAMPLE_RATE) - 440.0) < 5.0
    assert rms(audio) > 2000  # the tone's RMS is ~5600, minus Opus and resampling losses


async def test_a_playback_is_heard_by_the_client_for_its_length(connect: Callable[..., Awaitable[Session]]) -> None:
    s = await connect()
    started: list[Playback] = []
    finished: list[Playback] = []
    playback = Playback("m1", "hello there", on_first_frame=started.append, on_finished=finished.append)
    wave = tone(1000.0, 0.6)
    await asyncio.sleep(0.2 * UNIT)  # let the client hear some silence first
    since = time.monotonic()
    s.peer.speech.play(playback)
    playback.append(wave[: len(wave) // 3])  # synthesis arrives in chunks
    await asyncio.sleep(0.05)
    playback.append(wave[len(wave) // 3 :])
    playback.complete()
    await within(playback.done)
    await asyncio.sleep(0.4 * UNIT)  # jitter buffer and Opus tail

    assert started == [playback] and finished == [playback]
    assert not playback.interrupted and playback.played_fraction == 1.0
    assert playback.played_samples == playback.total_samples == len(wave)
    assert playback.samples_ready_at is not None and playback.first_frame_at is not None
    assert playback.finished_at is not None
    assert playback.samples_ready_at <= playback.first_frame_at < playback.finished_at
    assert 0.45 <= playback.finished_at - playback.first_frame_at <= 0.65 + 0.1 * UNIT  # 29 frame slots

    audible = [i for i, (t, level) in enumerate(s.client.heard) if t >= since and level > SILENT_RMS]
    assert audible, "the client heard nothing"
    assert audible == list(range(audible[0], audible[-1] + 1)), "the playback was heard with gaps"
    assert abs(len(audible) - 30) <= 2, f"heard {len(audible)} frames of audio for a 30-frame playback"
    heard = np.concatenate([s.client.heard_pcm[i] for i in audible[2:-2]])
    assert abs(dominant_hz(heard, RATE48) - 1000.0) < 10.0


async def test_stop_cuts_the_playback_at_once(connect: Callable[..., Awaitable[Session]]) -> None:
    s = await connect()
    sent_at: list[float] = []  # time.monotonic() of every frame of real audio handed to the sender
    s.peer.speech.on_frame_sent = lambda pcm, at: sent_at.append(time.monotonic())
    first, second = Playback("m1", "a long answer"), Playback("m2", "queued")
    for p in (first, second):
        p.append(tone(600.0, 2.0))
        p.complete()
        s.peer.speech.play(p)
    start = time.monotonic()
    await until(lambda: len(s.client.audible(start)) >= 15)  # the client has heard 300 ms

    stopped_at = time.monotonic()
    assert s.peer.speech.stop() == [first, second]
    assert first.done.done() and second.done.done()
    assert first.interrupted and second.interrupted
    assert 0.0 < first.played_fraction < 1.0 and second.played_fraction == 0.0
    assert first.finished_at is not None and second.first_frame_at is None
    await asyncio.sleep(0.5 * UNIT)

    last_audible = s.client.audible(start)[-1]
    latency = last_audible - stopped_at
    print(f"\nstop() -> last audible frame at the client: {latency * 1000:.1f} ms")
    assert sent_at[-1] <= stopped_at  # the server sent no audio after stop(); the rest was in flight
    assert latency < 0.2 * UNIT  # ~95 ms measured: 20 ms frames plus aiortc's 4-frame jitter-buffer prefetch
    assert s.peer.speech.current is None and s.peer.speech.pending == []


async def test_data_channel_events_and_rtt(connect: Callable[..., Awaitable[Session]]) -> None:
    s = await connect(ping_interval=0.1)
    s.peer.send_event({"type": "state", "state": "speaking"})
    await until(lambda: any(m["type"] == "state" for m in s.client.messages))
    await until(lambda: s.peer.rtt is not None)
    assert s.peer.rtt is not None and 0.0 < s.peer.rtt < 0.5 * UNIT
    print(f"\ndata channel ping RTT on loopback: {s.peer.rtt * 1000:.2f} ms")

    s.client.send({"type": "ping", "t": 12345})
    s.client.send({"type": "hello", "n": 1})
    s.client.channel.send("not json")
    s.client.send({"type": "hello", "n": 2})
    await until(lambda: len(s.messages) == 2)
    assert s.messages == [{"type": "hello", "n": 1}, {"type": "hello", "n": 2}]  # pings and pongs stay inside
    await until(lambda: {"type": "pong", "t": 12345} in s.client.messages)


async def test_events_sent_before_the_channel_opens_are_delivered_in_order() -> None:
    peer = VoicePeer(ice_servers=[], on_audio_frame=lambda pcm, t: None)
    client = make_client()
    try:
        for i in range(70):
            peer.send_event({"type": "n", "i": i})
        assert peer.dropped_events == 6  # bounded: the oldest go
        await within(client.pc.setLocalDescription(await client.pc.createOffer()))
        offer = parse_offer({"type": "offer", "sdp": client.pc.localDescription.sdp})
        await within(client.pc.setRemoteDescription(await within(peer.accept(offer))))
        await until(lambda: len([m for m in client.messages if m["type"] == "n"]) == 64)
        assert [m["i"] for m in client.messages if m["type"] == "n"] == list(range(6, 70))
        peer.send_event({"type": "n", "i": 70})
        await until(lambda: {"type": "n", "i": 70} in client.messages)
    finally:
        await within(peer.close())
        await within(client.pc.close())
        for task in client.tasks:
            task.cancel()


async def test_closing_the_client_reports_once_and_close_is_idempotent(
    connect: Callable[..., Awaitable[Session]],
) -> None:
    s = await connect()
    await until(lambda: len(s.frames) > 5)
    await within(s.client.pc.close())
    await until(lambda: s.closed)
    await asyncio.sleep(0.3 * UNIT)
    assert len(s.closed) == 1 and s.closed[0] in ("closed", "remote_ended")
    print(f"\non_closed reason when the client closes: {s.closed[0]!r}")
    playback = Playback("late", "")
    s.peer.speech.play(playback)
    await within(asyncio.gather(s.peer.close(), s.peer.close()))
    await within(s.peer.close())
    assert playback.done.done() and playback.interrupted
    assert s.peer.connection_state == "closed" and len(s.closed) == 1
    s.peer.send_event({"type": "ignored"})  # after close: dropped, no error


async def test_a_local_close_is_not_reported(connect: Callable[..., Awaitable[Session]]) -> None:
    s = await connect()
    await within(s.peer.close())
    await asyncio.sleep(0.3 * UNIT)
    assert s.closed == []


# --- offers -------------------------------------------------------------------------------------

GOOD_SDP = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("v=0", "JSON object"),
        (None, "JSON object"),
        ([GOOD_SDP], "JSON object"),
        ({"type": "offer"}, "'sdp' must be a string"),
        ({"type": "offer", "sdp": 5}, "'sdp' must be a string"),
        ({"type": "offer", "sdp": "  "}, "empty"),
        ({"type": "answer", "sdp": GOOD_SDP}, "'type'"),
        ({"sdp": GOOD_SDP}, "'type'"),
        ({"type": "offer", "sdp": "hello world"}, "v=0"),
        ({"type": "offer", "sdp": "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"}, "no audio"),
        ({"type": "offer", "sdp": GOOD_SDP + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"}, "more than one audio"),
        ({"type": "offer", "sdp": GOOD_SDP + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"}, "video"),
        ({"type": "offer", "sdp": GOOD_SDP + "a=recvonly\r\n"}, "sendrecv"),
        ({"type": "offer", "sdp": GOOD_SDP + "a=inactive\r\n"}, "sendrecv"),
        ({"type": "offer", "sdp": GOOD_SDP + "a=x:" + "y" * MAX_SDP_BYTES + "\r\n"}, "larger than"),
    ],
)
def test_parse_offer_rejects_with_a_reason(body: object, reason: str) -> None:
    with pytest.raises(InvalidOffer, match=reason):
        parse_offer(body)


def test_parse_offer_accepts_an_audio_offer() -> None:
    offer = parse_offer({"type": "offer", "sdp": GOOD_SDP})
    assert offer.type == "offer" and offer.sdp == GOOD_SDP


async def real_offer() -> str:
    pc = make_client().pc
    await within(pc.setLocalDescription(await pc.createOffer()))
    sdp = str(pc.localDescription.sdp)
    await within(pc.close())
    return sdp


@pytest.mark.parametrize(
    "breakage",
    ["no_ice_credentials", "truncated", "unknown_codec", "bad_setup", "bad_rtpmap", "bad_ssrc", "bad_port"],
)
async def test_accept_turns_a_broken_sdp_into_invalid_offer(breakage: str) -> None:
    sdp = await real_offer()
    lines = sdp.split("\r\n")
    if breakage == "no_ice_credentials":
        sdp = "\r\n".join(line for line in lines if not line.startswith(("a=ice-ufrag", "a=ice-pwd")))
    elif breakage == "truncated":
        sdp = "v=0\r\nm=audio\r\n"
    elif breakage == "unknown_codec":
        sdp = "\r\n".join(
            line.replace("96 9 0 8", "120") if line.startswith("m=audio") else line
            for line in lines
            if not line.startswith("a=rtpmap:")
        )
    elif breakage == "bad_setup":
        sdp = sdp.replace("a=setup:actpass", "a=setup:sideways")
    elif breakage == "bad_rtpmap":
        sdp = sdp.replace("a=rtpmap:96 opus/48000/2", "a=rtpmap:96 opus")
    elif breakage == "bad_ssrc":
        sdp = sdp.replace("a=ssrc:", "a=ssrc:x", 1)
    elif breakage == "bad_port":
        sdp = "\r\n".join(line.replace("m=audio ", "m=audio x", 1) for line in lines)
    peer = VoicePeer(ice_servers=[], on_audio_frame=lambda pcm, t: None)
    try:
        with pytest.raises(InvalidOffer) as info:
            await within(peer.accept(parse_offer({"type": "offer", "sdp": sdp})))
        print(f"\n{breakage}: {info.value}")
        assert peer.connection_state == "closed"
    finally:
        await within(peer.close())


async def test_a_failed_handshake_is_reported_as_ice_failed() -> None:
    """An offer aiortc accepts but whose DTLS fingerprint is wrong: the connection fails after ICE."""
    client = make_client()
    closed: list[str] = []
    peer = VoicePeer(ice_servers=[], on_audio_frame=lambda pcm, t: None, on_closed=closed.append)
    try:
        await within(client.pc.setLocalDescription(await client.pc.createOffer()))
        sdp = re.sub(r"a=fingerprint:sha-(384|512) .*\r\n", "", client.pc.localDescription.sdp)
        sdp = re.sub(r"(a=fingerprint:sha-256 )\w\w", r"\g<1>00", sdp)
        answer = await within(peer.accept(parse_offer({"type": "offer", "sdp": sdp})))
        await within(client.pc.setRemoteDescription(answer))
        await until(lambda: closed)
        await asyncio.sleep(0.2 * UNIT)
        assert closed == ["ice_failed"] and peer.connection_state == "failed"
        assert not await within(peer.wait_connected(), 1.0)
    finally:
        await within(peer.close())
        await within(client.pc.close())
        for task in client.tasks:
            task.cancel()


# --- the tracks alone ---------------------------------------------------------------------------


async def test_speech_track_waits_for_late_audio_without_skipping_and_keeps_time() -> None:
    sent: list[tuple[PCM, float]] = []
    track = SpeechTrack(on_frame_sent=lambda pcm, at: sent.append((pcm, at)))
    ramp = (np.arange(960 * 5) % 30000).astype(np.int16)
    p1, p2 = Playback("a", "one", prebuffer_s=0), Playback("b", "two")
    track.play(p1)
    track.play(p2)
    p1.append(ramp[:1500])  # 1.56 frames: one frame now, the rest must wait

    frames = [await track.recv() for _ in range(3)]
    assert [f.pts for f in frames] == [0, 960, 1920]
    assert all(f.sample_rate == RATE48 and f.time_base == fractions.Fraction(1, RATE48) for f in frames)
    assert all(f.samples == 960 and f.layout.name == "mono" and f.format.name == "s16" for f in frames)
    assert np.array_equal(frames[0].to_ndarray().ravel(), ramp[:960])
    assert not frames[1].to_ndarray().any() and not frames[2].to_ndarray().any()  # underrun: silence
    assert p1.underruns == 2 and p1.first_frame_at is not None

    p1.append(ramp[1500:])
    p1.complete()
    p2.append(tone(440.0, 0.01))
    p2.complete()
    frames = [await track.recv() for _ in range(6)]
    played = np.concatenate([f.to_ndarray().ravel() for f in frames[:4]])
    assert np.array_equal(played[: len(ramp) - 960], ramp[960:])  # nothing skipped, last frame zero-padded
    assert not played[len(ramp) - 960 :].any()
    assert p1.done.done() and not p1.interrupted and p1.played_fraction == 1.0
    assert frames[4].to_ndarray().any() and p2.done.done()  # the next one starts on its own frame
    assert not frames[5].to_ndarray().any()
    assert len(sent) == 6 and all(len(pcm) == 960 for pcm, _ in sent)

    # pacing: absolute schedule, no drift
    t0 = time.monotonic()
    for _ in range(25):
        await track.recv()
    assert 0.45 <= time.monotonic() - t0 <= 0.5 + 0.1 * UNIT
    track.end()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_a_playback_starts_once_it_has_enough_audio_not_with_its_first_scrap() -> None:
    """A first chunk alone would play and then stall; the playback waits for 200 ms (or its end)."""
    track = SpeechTrack()
    slow, short = Playback("slow", "a long reply"), Playback("short", "ok")
    track.play(slow)
    slow.append(tone(440.0, 0.1))
    frames = [await track.recv() for _ in range(3)]
    assert not any(f.to_ndarray().any() for f in frames) and slow.first_frame_at is None
    slow.append(tone(440.0, 0.1))  # 200 ms buffered: it starts, and plays 10 frames without a gap
    frames = [await track.recv() for _ in range(10)]
    assert all(f.to_ndarray().any() for f in frames) and slow.underruns == 0
    slow.complete()
    track.play(short)
    short.append(tone(440.0, 0.04))
    short.complete()  # shorter than the prebuffer, but complete: no reason to wait
    frames = [await track.recv() for _ in range(3)]
    assert slow.done.done() and frames[0].to_ndarray().any() and short.first_frame_at is not None
    track.end()


async def test_costs_per_frame() -> None:
    track = SpeechTrack()
    playback = Playback("p", "")
    playback.append(tone(300.0, 10.0))
    playback.complete()
    track.play(playback)
    n = 400

    async def no_wait() -> None:
        pass

    track._wait_for_slot = no_wait  # type: ignore[method-assign]  # measure the work, not the pacing sleep
    t0 = time.perf_counter()
    for _ in range(n):
        await track.recv()
    recv_us = (time.perf_counter() - t0) / n * 1e6

    class Frames(MediaStreamTrack):
        kind = "audio"

        def __init__(self, count: int) -> None:
            super().__init__()
            self.count = count
            stereo = np.repeat(tone(440.0, 0.02), 2).reshape(1, -1)
            self.frame = AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
            self.frame.sample_rate = RATE48

        async def recv(self) -> AudioFrame:
            if self.count == 0:
                raise MediaStreamError
            self.count -= 1
            return self.frame

    out: list[PCM] = []
    t0 = time.perf_counter()
    await consume_audio(Frames(n), lambda pcm, at: out.append(pcm))
    consume_us = (time.perf_counter() - t0) / n * 1e6
    print(f"\nSpeechTrack.recv: {recv_us:.1f} us/frame; consume_audio conversion: {consume_us:.1f} us/frame")
    assert len(out) == n and all(len(pcm) == FRAME_SAMPLES for pcm in out)
    assert recv_us < 1000 * UNIT and consume_us < 1000 * UNIT


async def test_consume_audio_buffers_odd_sized_and_foreign_frames() -> None:
    class Odd(MediaStreamTrack):
        kind = "audio"

        def __init__(self, frames: list[AudioFrame]) -> None:
            super().__init__()
            self.frames = frames

        async def recv(self) -> AudioFrame:
            if not self.frames:
                raise MediaStreamError
            return self.frames.pop(0)

    def stereo48(samples: int) -> AudioFrame:
        frame = AudioFrame.from_ndarray(np.zeros((1, samples * 2), np.int16), format="s16", layout="stereo")
        frame.sample_rate = RATE48
        return frame

    def mono8k(i: int) -> AudioFrame:  # what G.711 decodes to: 20 ms frames of 8 kHz mono
        wave = tone(440.0, 0.02, rate=8000, phase0=160 * i)
        frame = AudioFrame.from_ndarray(wave.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 8000
        return frame

    got: list[tuple[PCM, float]] = []
    await consume_audio(Odd([stereo48(n) for n in (480, 1000, 1400, 2000)]), lambda p, t: got.append((p, t)))
    assert len(got) == 4880 // 3 // FRAME_SAMPLES and all(len(p) == FRAME_SAMPLES for p, _ in got)
    got.clear()
    await consume_audio(Odd([mono8k(i) for i in range(50)]), lambda p, t: got.append((p, t)))
    assert 47 <= len(got) <= 50 and all(len(p) == FRAME_SAMPLES for p, _ in got)
    assert abs(dominant_hz(np.concatenate([p for p, _ in got[5:]]), SAMPLE_RATE) - 440.0) < 5.0


async def test_frames_delivered_in_a_bunch_keep_the_time_they_were_spoken() -> None:
    """A stall (jitter buffer, busy loop) delivers 10 frames at once: their times stay 20 ms apart on
    the sender's clock, anchored at the least-delayed frame; a new RTP stream re-anchors."""

    class Scripted(MediaStreamTrack):
        kind = "audio"

        def __init__(self, script: list[tuple[int, float]]) -> None:
            super().__init__()
            self.script = script  # (pts at 48 kHz, wall-clock arrival)
            self.now = 0.0

        async def recv(self) -> AudioFrame:
            if not self.script:
                raise MediaStreamError
            pts, self.now = self.script.pop(0)
            frame = AudioFrame.from_ndarray(np.zeros((1, 960 * 2), np.int16), format="s16", layout="stereo")
            frame.sample_rate = RATE48
            frame.pts = pts
            frame.time_base = fractions.Fraction(1, RATE48)
            return frame

    base = 123_456_000
    arrivals = [(base + 960 * i, 1000.0 + 0.02 * (i + 1) + 0.005) for i in range(10)]  # 5 ms late each
    arrivals += [(base + 960 * i, 1000.0 + 0.4 + 0.001 * i) for i in range(10, 20)]  # stalled, then a burst
    arrivals += [(7_000 + 960 * i, 2000.0 + 0.02 * (i + 1)) for i in range(5)]  # new stream, new clock
    track = Scripted(arrivals)
    got: list[float] = []
    await consume_audio(track, lambda pcm, at: got.append(at), clock=lambda: track.now)
    assert len(got) == 25  # one 16 kHz frame of 320 samples per received 20 ms frame
    for i in range(1, 20):
        assert abs(got[i] - got[i - 1] - 0.02) < 1e-6, (i, got[i] - got[i - 1])
    assert abs(got[19] - 1000.405) < 1e-6  # spoken 5 ms before the punctual frames arrived, not at 1000.409
    assert abs(got[20] - 2000.02) < 1e-6
    assert all(abs(got[i] - got[i - 1] - 0.02) < 1e-6 for i in range(21, 25))


async def test_the_server_holds_no_frames_back_in_its_jitter_buffer(connect: Callable[..., Awaitable[Session]]) -> None:
    """aiortc would hold 4 complete frames (80 ms) before decoding one; the peer holds none by default."""
    s = await connect()
    receiver = next(t.receiver for t in s.peer.pc.getTransceivers() if t.kind == "audio")
    assert receiver._RTCRtpReceiver__jitter_buffer._prefetch == 0  # type: ignore[attr-defined]
    await until(lambda: len(s.frames) >= 10)  # and audio still flows
    held = await connect(jitter_prefetch=4)
    receiver = next(t.receiver for t in held.peer.pc.getTransceivers() if t.kind == "audio")
    assert receiver._RTCRtpReceiver__jitter_buffer._prefetch == 4  # type: ignore[attr-defined]


def test_without_prefetch_a_reordered_packet_is_still_put_in_order() -> None:
    from aiortc.jitterbuffer import JitterBuffer
    from aiortc.rtp import RtpPacket

    buffer = JitterBuffer(capacity=16, prefetch=0)
    released = []
    for seq in (100, 102, 101, 103, 104):
        packet = RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960)
        packet._data = bytes([seq])  # type: ignore[attr-defined]
        _, frame = buffer.add(packet)
        if frame is not None:
            released.append(frame.timestamp // 960)
    # in order, nothing lost; aiortc hands on one frame per packet, so after the swap it runs one behind
    assert released == [100, 101, 102]


async def test_words_heard_follow_the_pieces_played_not_the_audio_made_so_far() -> None:
    """A reply made piece by piece and cut during its second piece: the words heard are the first piece's
    and a share of the second's, though the third piece was never made."""
    playback = Playback("m", "one two three four five six seven eight nine ten")
    playback.append(np.ones(4800, dtype=np.int16), words=2)  # 0.1 s: "one two"
    playback.append(np.ones(9600, dtype=np.int16), words=4)  # 0.2 s: "three four five six"
    assert playback.take(4800 + 4800) is not None  # played the first piece and half the second
    assert playback.played_fraction == pytest.approx(9600 / 14400)  # of the audio made so far: misleading
    assert playback.words_heard(10) == pytest.approx(4.0)
    unmarked = Playback("n", "a b c d")
    unmarked.append(np.ones(4800, dtype=np.int16))
    unmarked.complete()
    assert unmarked.take(2400) is not None
    assert unmarked.words_heard(4) == pytest.approx(2.0)  # no word counts: the share of the audio
