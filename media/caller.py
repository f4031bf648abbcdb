"""A simulated voice participant: a real aiortc peer that joins through the public signalling endpoint.

Used by the tests and by ``vivavoce loadtest``: it speaks PCM utterances in
real time, hears the interviewer (frame energy, with timestamps), and follows
the ``events`` data channel (state, captions, messages), so a caller can
measure what a participant feels: from the end of its own speech to the first
audible reply frame.
"""

from __future__ import annotations

import asyncio
import json
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
from av import AudioFrame

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
    """What the caller heard: per 20 ms frame, when it arrived and whether it was audible."""

    times: list[float] = field(default_factory=list)
    audible: list[bool] = field(default_factory=list)

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
    ) -> None:
        """``jitter_prefetch``: frames the caller's jitter buffer holds before playing one. 0 (the
        default) times what arrives, as a client with no playout delay would hear it; ``None`` keeps
        aiortc's 4 frames (80 ms). A browser's adaptive buffer sits between, ~20-60 ms on a clean
        network. ``answer_pings=False``: ignore the server's data-channel pings, as any WebRTC client
        but our page does."""
        self.jitter_prefetch = jitter_prefetch
        self.answer_pings = answer_pings
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers or [])))
        self.mic = CallerTrack(mute=mute)
        self.heard = Heard()
        self.events: list[dict[str, Any]] = []
        self.event_times: list[float] = []  # wall time each of ``events`` arrived
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self.channel = self.pc.createDataChannel("events")
        self.channel.on("message", self._on_message)
        self.pc.addTrack(self.mic)
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
