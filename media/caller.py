"""A simulated voice participant: a real aiortc peer that joins through the public signalling endpoint.

Used by the tests and by ``vivavoce loadtest``: it speaks PCM utterances in
real time, hears the interviewer (frame energy, with timestamps), and follows
the ``events`` data channel (state, captions, messages), so a caller can
measure what a participant feels: from the end of its own speech to the first
audible reply frame.

``light=True`` makes a caller cheap enough to run many beside the server on the same cores (load
generation): it sends pre-encoded Opus packets (each utterance encoded once per process and replayed;
silence is one pre-encoded packet) instead of encoding 50 frames a second, and it does not decode what
it receives: each RTP frame is timed as it arrives, a 3-byte frame is the encoder's digital silence,
and only the first frames after a silence are decoded to tell speech from near-silence. It also times
every frame against its RTP timestamp, to count frames that arrive late (:meth:`Heard.lateness`).
"""

from __future__ import annotations

import asyncio
import json
import queue
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, Packet

from media.audio import PCM
from media.resample import Upsampler
from media.webrtc import set_jitter_prefetch

RATE = 48_000
FRAME = 960  # 20 ms at 48 kHz
AUDIBLE_RMS = 200.0  # int16 RMS above which a received frame counts as interviewer speech


@dataclass
class Speech:
    """One queued utterance: ``started`` and ``done`` resolve with the wall time its first and last frame were sent."""

    pcm48: PCM
    started: asyncio.Future[float]
    done: asyncio.Future[float]


class CallerTrack(MediaStreamTrack):
    """The caller's microphone: queued utterances in real time, silence otherwise."""

    kind = "audio"

    def __init__(self, *, mute: bool = False) -> None:
        super().__init__()
        self.mute = mute  # send no audio at all (not even silence): a broken microphone
        self._queue: deque[Speech] = deque()
        self._current: Speech | None = None
        self._offset = 0
        self._start: float | None = None
        self._pts = 0

    def say(self, pcm16k: PCM) -> asyncio.Future[float]:
        """Queue an utterance (16 kHz mono); the future resolves with the wall time its last frame was sent."""
        return self.speak(pcm16k).done

    def speak(self, pcm16k: PCM) -> Speech:
        """Queue an utterance (16 kHz mono); its futures tell when its first and last frame were sent."""
        up = Upsampler(16_000, RATE)
        pcm48 = np.concatenate([up.process(pcm16k), up.flush()])
        loop = asyncio.get_running_loop()
        speech = Speech(pcm48, loop.create_future(), loop.create_future())
        self._queue.append(speech)
        return speech

    @property
    def speaking(self) -> bool:
        """An utterance is being sent or waits in the queue."""
        return self._current is not None or bool(self._queue)

    async def recv(self) -> AudioFrame:
        if self.mute:
            await asyncio.Event().wait()  # never: no RTP leaves this peer
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += FRAME
            wait = self._start + self._pts / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        samples = np.zeros(FRAME, dtype=np.int16)
        if self._current is None and self._queue:
            self._current, self._offset = self._queue.popleft(), 0
            if not self._current.started.done():
                self._current.started.set_result(time.time())
        if self._current is not None:
            pcm, done = self._current.pcm48, self._current.done
            chunk = pcm[self._offset : self._offset + FRAME]
            samples[: len(chunk)] = chunk
            self._offset += FRAME
            if self._offset >= len(pcm):
                self._current = None
                if not done.done():
                    done.set_result(time.time())
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.planes[0].update(samples.tobytes())
        frame.pts = self._pts
        frame.sample_rate = RATE
        frame.time_base = Fraction(1, RATE)
        return frame


@dataclass
class Heard:
    """What the caller heard: per 20 ms frame, when it arrived and whether it was audible; for a light
    caller also its delay, arrival minus its RTP media time (plus an arbitrary constant): a frame's
    lateness is its delay minus the smallest delay over the stretch considered (:meth:`late_frames`)."""

    times: list[float] = field(default_factory=list)
    audible: list[bool] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)

    def lateness(self, start: int = 0) -> list[float]:
        """Seconds each frame from index ``start`` came after the schedule set by the fastest of them."""
        window = self.delays[start:]
        fastest = min(window, default=0.0)
        return [d - fastest for d in window]

    def first_audible_after(self, t: float) -> float | None:
        for at, loud in zip(self.times, self.audible, strict=True):
            if at > t and loud:
                return at
        return None

    def last_audible(self) -> float | None:
        for at, loud in zip(reversed(self.times), reversed(self.audible), strict=True):
            if loud:
                return at
        return None


SILENT_BYTES = 8  # an Opus frame this small is the encoder's digital silence (measured: 3 bytes)
_ENCODED: dict[bytes, list[bytes]] = {}  # utterance audio -> its Opus frames, encoded once per process


def _opus_frames(pcm48: PCM) -> list[bytes]:
    """20 ms Opus frames of ``pcm48`` with aiortc's own encoder (what a full caller would send)."""
    from aiortc.codecs.opus import OpusEncoder

    encoder = OpusEncoder()
    frames: list[bytes] = []
    padded = np.concatenate([pcm48, np.zeros(-len(pcm48) % FRAME, dtype=np.int16)])
    for i in range(0, len(padded), FRAME):
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.planes[0].update(padded[i : i + FRAME].tobytes())
        frame.sample_rate, frame.time_base, frame.pts = RATE, Fraction(1, RATE), i
        payloads, _ = encoder.encode(frame)
        frames.extend(payloads)
    return frames


class PacketTrack(CallerTrack):
    """A light caller's microphone: the pre-encoded Opus frames of queued utterances, in real time."""

    def __init__(self, *, mute: bool = False) -> None:
        super().__init__(mute=mute)
        self._silence = _opus_frames(np.zeros(FRAME, dtype=np.int16))[-1]
        self._packets: dict[int, list[bytes]] = {}

    def speak(self, pcm16k: PCM) -> Speech:
        speech = super().speak(pcm16k)
        key = pcm16k.tobytes()
        if key not in _ENCODED:
            _ENCODED[key] = _opus_frames(speech.pcm48)
        self._packets[id(speech)] = _ENCODED[key]
        return speech

    async def recv(self) -> Any:
        if self.mute:
            await asyncio.Event().wait()
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += FRAME
            wait = self._start + self._pts / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        payload = self._silence
        if self._current is None and self._queue:
            self._current, self._offset = self._queue.popleft(), 0
            if not self._current.started.done():
                self._current.started.set_result(time.time())
        if self._current is not None:
            frames = self._packets[id(self._current)]
            index = self._offset // FRAME
            payload = frames[index] if index < len(frames) else self._silence
            self._offset += FRAME
            if self._offset >= len(self._current.pcm48):
                done, self._current = self._current, None
                self._packets.pop(id(done), None)
                if not done.done.done():
                    done.done.set_result(time.time())
        packet = Packet(payload)
        packet.pts, packet.time_base = self._pts, Fraction(1, RATE)
        return packet


class _FrameTimer(queue.Queue[Any]):
    """Stands in for an aiortc receiver's decoder queue: times each assembled frame instead of decoding
    it (the receiver's decoder thread then waits on an empty queue, and ends on its None)."""

    def __init__(self, heard: Heard) -> None:
        super().__init__()
        self.heard = heard
        self.decoder: Any = None
        self.speaking = False  # the previous frame was audible: the next loud-sized frame is too
        self.first_ts: int | None = None
        self.unwrapped = 0
        self.last_ts = 0

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:
            super().put(item)
            return
        _, encoded = item
        now = time.time()
        data = encoded.data
        if len(data) <= SILENT_BYTES:
            loud = False
        elif self.speaking:
            loud = True
        else:
            loud = self._audible(encoded)
        self.speaking = loud
        # lateness against the RTP clock: the frame that travelled fastest sets the offset
        ts = encoded.timestamp
        if self.first_ts is None:
            self.first_ts = self.last_ts = ts
        self.unwrapped += (ts - self.last_ts) & 0xFFFFFFFF if ts != self.last_ts else 0
        self.last_ts = ts
        self.heard.times.append(now)
        self.heard.audible.append(loud)
        self.heard.delays.append(now - self.unwrapped / RATE)

    def _audible(self, encoded: Any) -> bool:
        from aiortc.codecs.opus import OpusDecoder

        if self.decoder is None:
            self.decoder = OpusDecoder()
        frames = self.decoder.decode(encoded)
        if not frames:
            return False
        samples = frames[0].to_ndarray().astype(np.float32)
        return bool(samples.size) and float(np.sqrt(np.mean(samples * samples))) > AUDIBLE_RMS


class OfferRefused(ConnectionError):
    """The server answered the offer with an error status (``status``)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"offer refused: {status} {body}")
        self.status = status
        self.body = body


class VoiceCaller:
    def __init__(
        self,
        *,
        ice_servers: list[Any] | None = None,
        mute: bool = False,
        jitter_prefetch: int | None = 0,
        answer_pings: bool = True,
        light: bool = False,
    ) -> None:
        """``jitter_prefetch``: frames the caller's jitter buffer holds before playing one. 0 (the
        default) times what arrives, as a client with no playout delay would hear it; ``None`` keeps
        aiortc's 4 frames (80 ms). A browser's adaptive buffer sits between, ~20-60 ms on a clean
        network. ``answer_pings=False``: ignore the server's data-channel pings, as any WebRTC client
        but our page does. ``light``: a cheap caller for load generation (see the module docs)."""
        self.jitter_prefetch = jitter_prefetch
        self.answer_pings = answer_pings
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers or [])))
        self.light = light
        self.mic = PacketTrack(mute=mute) if light else CallerTrack(mute=mute)
        self.heard = Heard()
        self.events: list[dict[str, Any]] = []
        self.event_times: list[float] = []  # wall time each of ``events`` arrived
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self.channel = self.pc.createDataChannel("events")
        self.channel.on("message", self._on_message)
        self.pc.addTrack(self.mic)
        if light:
            for transceiver in self.pc.getTransceivers():  # before the answer starts its decoder thread
                attribute = "_RTCRtpReceiver__decoder_queue"
                if not isinstance(getattr(transceiver.receiver, attribute, None), queue.Queue):
                    raise RuntimeError("aiortc's RTCRtpReceiver no longer has the expected decoder queue")
                setattr(transceiver.receiver, attribute, _FrameTimer(self.heard))
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._notify)

    async def join(
        self, http: aiohttp.ClientSession, join_url: str, *, timeout: float = 10.0, follow_redirects: bool = True
    ) -> None:
        """Offer through ``POST {join_url}/offer`` and wait until connected (:class:`OfferRefused` on an error)."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        if self.jitter_prefetch is not None:
            for transceiver in self.pc.getTransceivers():
                if transceiver.kind == "audio":
                    set_jitter_prefetch(transceiver.receiver, self.jitter_prefetch)
        offer = {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}
        async with http.post(
            join_url + "/offer",
            json=offer,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=follow_redirects,
        ) as resp:
            text = await resp.text()
            try:
                body = json.loads(text)
            except ValueError:
                body = text[:200]
            if resp.status != 200 or not isinstance(body, dict):
                raise OfferRefused(resp.status, body)
        await self.pc.setRemoteDescription(RTCSessionDescription(body["sdp"], body["type"]))
        await self.wait_for(lambda: self.pc.connectionState == "connected", timeout)

    def say(self, pcm16k: PCM) -> asyncio.Future[float]:
        return self.mic.say(pcm16k)

    def speak(self, pcm16k: PCM) -> Speech:
        """Like :meth:`say`, also telling when the utterance's first frame was sent."""
        return self.mic.speak(pcm16k)

    async def wait_event(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, *, after: int = 0
    ) -> dict[str, Any]:
        """The first event (from index ``after``) matching ``predicate``."""
        found: list[dict[str, Any]] = []

        def check() -> bool:
            for ev in self.events[after:]:
                if predicate(ev):
                    found.append(ev)
                    return True
            return False

        await self.wait_for(check, timeout)
        return found[0]

    async def heard_after(self, t: float, timeout: float) -> float:
        """Wait for the first audible frame received after wall time ``t``; return when it arrived."""

        async def poll() -> float:
            while (at := self.heard.first_audible_after(t)) is None:
                await asyncio.sleep(0.02)
            return at

        return await asyncio.wait_for(poll(), timeout)

    async def wait_for(self, check: Callable[[], bool], timeout: float) -> None:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(check)

        await asyncio.wait_for(wait(), timeout)

    async def close(self) -> None:
        await self.pc.close()
        for task in list(self._tasks):
            task.cancel()

    def _on_message(self, data: str | bytes) -> None:
        try:
            event = json.loads(data)
        except (TypeError, ValueError):
            return
        if isinstance(event, dict):
            if event.get("type") == "ping":
                if self.answer_pings:
                    self.channel.send(json.dumps({"type": "pong", "t": event.get("t")}))
                return
            self.events.append(event)
            self.event_times.append(time.time())
            self._notify()

    def _notify(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        self._spawn(notify())

    def _on_track(self, track: MediaStreamTrack) -> None:
        if not self.light:  # a light caller's frames are timed as they arrive, never decoded into the track
            self._spawn(self._listen(track))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _listen(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, AudioFrame):
                continue
            samples = frame.to_ndarray().astype(np.float32)
            rms = float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0
            self.heard.times.append(time.time())
            self.heard.audible.append(rms > AUDIBLE_RMS)
