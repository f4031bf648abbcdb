"""A participant's WebRTC link: one aiortc peer connection carrying their voice in, ours out, and events.

Signalling is one HTTP round trip (``POST /join/{token}/offer``): the client
sends a complete offer, :meth:`VoicePeer.accept` answers with every candidate
already gathered (no trickle ICE). The client opens a data channel labelled
``"events"`` that carries JSON both ways: :meth:`VoicePeer.send_event` out,
``on_message`` in; ``ping``/``pong`` on it are handled here.

Round trip (:attr:`VoicePeer.rtt`): every WebRTC client (browsers, aiortc) answers our RTCP sender
reports with receiver reports whose LSR/DLSR fields give it (RTT = arrival - LSR - DLSR, in NTP
1/65536 s), which aiortc's sender computes and smooths (``remote-inbound-rtp`` ``roundTripTime`` in
its stats, read every :data:`RTCP_POLL_S`). A client that also answers our data-channel pings (our
page does) refines it: a recent pong is preferred, being measured on a monotonic clock every ping
and not smoothed; a client that ignores them still gets a round trip from RTCP within a few seconds.

Inbound audio (48 kHz stereo from the Opus decoder) becomes 20 ms frames of
16 kHz mono (:func:`consume_audio`); outbound audio is a paced
:class:`~media.speech_track.SpeechTrack`.

ICE needs care on servers: pass ``ice_servers`` explicitly (aiortc's default is
a public STUN server, whose lookup stalls gathering for seconds on a closed
network), and on loopback-only setups call :func:`configure_host_addresses`
because aioice never offers 127.0.0.1 on its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import aioice.ice
import av
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.audio import FRAME_SAMPLES, PCM, SAMPLE_RATE
from media.resample import Downsampler48to16
from media.speech_track import OUT_RATE, Playback, SpeechTrack

__all__ = [
    "InvalidOffer",
    "Playback",
    "SpeechTrack",
    "VoicePeer",
    "configure_host_addresses",
    "consume_audio",
    "parse_offer",
]

log = logging.getLogger("vivavoce.webrtc")

MAX_SDP_BYTES = 64 * 1024
EVENTS_LABEL = "events"
MAX_QUEUED_EVENTS = 64  # events sent before the data channel opens; beyond this the oldest are dropped
RTCP_POLL_S = 1.0  # how often the RTCP round trip is read from the sender's stats (reports come every 0.5-1.5 s)
PONG_FRESH_PINGS = 3  # a pong newer than this many ping intervals refines the RTCP round trip

# --- ICE host addresses ---------------------------------------------------------------------

_default_get_host_addresses = aioice.ice.get_host_addresses


def configure_host_addresses(addresses: Sequence[str] | None) -> None:
    """Make aioice gather host candidates on exactly ``addresses`` (e.g. ``["127.0.0.1"]``); None: its default.

    Process-global: it replaces ``aioice.ice.get_host_addresses`` for every
    peer connection created afterwards in this process, tests included.
    IPv4/IPv6 addresses are offered only when the connection allows that family.
    """
    if addresses is None:
        aioice.ice.get_host_addresses = _default_get_host_addresses
        return
    fixed = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in fixed if (use_ipv6 if ":" in a else use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses


# --- offers -----------------------------------------------------------------------------------


class InvalidOffer(ValueError):
    """The client's offer cannot be used; the message is a human-readable reason (answer 400)."""


_M_LINE = re.compile(r"^m=(\w+)", re.MULTILINE)
_AUDIO_LINE = re.compile(r"^m=audio\b", re.MULTILINE)
_DIRECTION = re.compile(r"^a=(sendrecv|sendonly|recvonly|inactive)\s*$", re.MULTILINE)


def parse_offer(body: object) -> RTCSessionDescription:
    """Validate the JSON body of ``POST /join/{token}/offer``: ``{"type": "offer", "sdp": "v=0..."}``."""
    if not isinstance(body, dict):
        raise InvalidOffer("the offer must be a JSON object with 'type' and 'sdp'")
    if body.get("type") != "offer":
        raise InvalidOffer("'type' must be \"offer\"")
    sdp = body.get("sdp")
    if not isinstance(sdp, str):
        raise InvalidOffer("'sdp' must be a string")
    if not sdp.strip():
        raise InvalidOffer("'sdp' is empty")
    if len(sdp.encode("utf-8", "surrogatepass")) > MAX_SDP_BYTES:
        raise InvalidOffer(f"'sdp' is larger than {MAX_SDP_BYTES} bytes")
    if not sdp.startswith("v=0"):
        raise InvalidOffer("'sdp' is not a session description (it must start with 'v=0')")
    kinds = _M_LINE.findall(sdp)
    audio_line = _AUDIO_LINE.search(sdp)
    if audio_line is None:
        raise InvalidOffer("the offer has no audio section ('m=audio' line)")
    if kinds.count("audio") > 1:
        raise InvalidOffer("the offer has more than one audio section; send one microphone track")
    if "video" in kinds:
        raise InvalidOffer("video is not supported; offer audio (and the 'events' data channel) only")
    audio = sdp[audio_line.start() :].split("\nm=", 1)[0]
    direction = _DIRECTION.search(audio)
    if direction is not None and direction.group(1) != "sendrecv":
        raise InvalidOffer(
            f"the audio section must be sendrecv (send the microphone, receive speech), not {direction.group(1)}"
        )
    return RTCSessionDescription(sdp=sdp, type="offer")


# --- inbound audio ------------------------------------------------------------------------------

MAX_CLOCK_JUMP_S = 1.0  # a frame this much later than its media time starts a new clock offset


async def consume_audio(
    track: MediaStreamTrack,
    on_frame: Callable[[PCM, float], None],
    *,
    clock: Callable[[], float] = time.time,
) -> None:
    """Read ``track`` until it ends; hand on every 20 ms of audio as 16 kHz mono ``(pcm320, end_at)``.

    ``end_at`` is the wall-clock time at which the frame's last sample was
    spoken, on the sender's media clock: the RTP timestamp (``pts``) plus an
    offset, the smallest ``received - media time`` seen so far, i.e. the frame
    that travelled fastest. Frames that a jitter buffer or a busy loop hands on
    in a bunch keep their real spacing, so a 500 ms silence window is 500 ms of
    the participant's silence, and any delivery delay shows up after T0 instead
    of being hidden inside it. The offset is reset when the media clock jumps by
    more than ``MAX_CLOCK_JUMP_S`` (a new RTP stream); frames without a ``pts``
    count samples instead. Received frames of any length are
    buffered into exact 320-sample frames. aiortc's Opus decoder gives s16
    stereo at 48 kHz: the fast path, :class:`~media.resample.Downsampler48to16`
    (which delays by 15 samples, 0.94 ms); anything else (e.g. G.711 at 8 kHz)
    goes through an ``av.AudioResampler``.
    """
    downsampler: Downsampler48to16 | None = None
    fallback: Any = None  # av.AudioResampler, built on first use
    pending = np.empty(0, dtype=np.int16)
    offset: float | None = None  # wall clock minus media clock, from the least-delayed frame
    counted = 0.0  # media seconds by sample count, for frames without a pts
    last_end = 0.0
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        received_at = clock()
        if not isinstance(frame, av.AudioFrame):
            continue
        time_base = frame.time_base
        if frame.pts is not None and time_base is not None:
            # == float(pts * time_base), without building a Fraction per frame (int division rounds correctly)
            media_end = frame.pts * time_base.numerator / time_base.denominator + frame.samples / frame.sample_rate
        else:
            counted += frame.samples / frame.sample_rate
            media_end = counted
        lateness = received_at - media_end
        if offset is None or lateness < offset or lateness - offset > MAX_CLOCK_JUMP_S:
            offset = lateness
        spoken_at = offset + media_end
        if frame.format.name in ("s16", "s16p") and frame.sample_rate == 48_000:
            channels = len(frame.layout.channels)
            if downsampler is None or downsampler.channels != channels:
                downsampler = Downsampler48to16(channels)
            samples: np.ndarray
            if frame.format.name == "s16":  # packed: a view of the frame's buffer (to_ndarray copies via vstack)
                samples = np.frombuffer(memoryview(frame.planes[0]), dtype=np.int16, count=frame.samples * channels)
            else:
                samples = frame.to_ndarray()
            pcm = downsampler.process(samples)
        else:
            if fallback is None:
                fallback = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            parts = [f.to_ndarray().reshape(-1) for f in fallback.resample(frame)]
            pcm = np.concatenate(parts) if parts else np.empty(0, dtype=np.int16)
        pending = np.concatenate((pending, pcm)) if len(pending) else pcm
        n = len(pending) // FRAME_SAMPLES
        for i in range(n):
            out = pending[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
            # never earlier than the previous frame, when a faster frame has just moved the offset back
            last_end = max(spoken_at - (len(pending) - (i + 1) * FRAME_SAMPLES) / SAMPLE_RATE, last_end)
            on_frame(out, last_end)
        pending = pending[n * FRAME_SAMPLES :]


# --- the peer -----------------------------------------------------------------------------------


def set_jitter_prefetch(receiver: RTCRtpReceiver, frames: int) -> None:
    """Hold ``frames`` complete audio frames in the receiver's jitter buffer before handing one on.

    aiortc holds 4 (80 ms of Opus) and offers no option; speech recognition gains nothing from
    the wait, and every frame of it delays the end-of-speech decision. With 0 a frame goes on as
    soon as the next packet arrives (20 ms); reordering within the buffer's 16 packets is still
    put right, since the buffer waits at a gap either way. This reaches into aiortc's private
    receiver state (pinned version, checked by tests/media/test_webrtc.py).
    """
    attribute = "_RTCRtpReceiver__jitter_buffer"
    current = getattr(receiver, attribute, None)
    if not isinstance(current, JitterBuffer):
        raise RuntimeError("aiortc's RTCRtpReceiver no longer has the expected jitter buffer")
    setattr(receiver, attribute, JitterBuffer(capacity=current.capacity, prefetch=frames))


class VoicePeer:
    """One participant session's peer connection (server side, answering).

    ``ice_servers`` are the STUN/TURN servers to gather with; the default is
    none (host candidates only), never aiortc's public STUN default.

    Callbacks are sync and run on the event loop: keep them cheap.
    ``on_closed(reason)`` is called at most once, with ``"ice_failed"`` (the
    connection failed: ICE, or the DTLS handshake after it), ``"closed"`` (the remote closed it) or
    ``"remote_ended"`` (the participant's audio track ended), and never after
    :meth:`close`; the caller then closes the peer. Whether a participant who
    sends no audio is gone is the caller's call: see :attr:`last_audio_at`.
    """

    def __init__(
        self,
        *,
        ice_servers: list[RTCIceServer] | None = None,
        on_audio_frame: Callable[[PCM, float], None] = lambda pcm, end_at: None,
        on_message: Callable[[dict[str, Any]], None] | None = None,
        on_closed: Callable[[str], None] | None = None,
        ping_interval: float = 2.0,
        speech: SpeechTrack | None = None,
        jitter_prefetch: int = 0,
    ) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers or [])))
        self.speech = speech or SpeechTrack()
        self.on_audio_frame = on_audio_frame
        self.on_message = on_message
        self.on_closed = on_closed
        self.ping_interval = ping_interval
        self.jitter_prefetch = jitter_prefetch
        self.channel: RTCDataChannel | None = None
        self._rtt: float | None = None  # of the latest pong
        self.rtcp_rtt: float | None = None  # from RTCP receiver reports (smoothed by aiortc)
        self.last_pong_at: float | None = None  # time.monotonic() of the latest pong
        self.last_audio_at: float | None = None  # wall clock of the latest inbound audio frame
        self.connected_at: float | None = None  # wall clock when the connection was first up
        self.dropped_events = 0
        self._settled = asyncio.Event()  # connected, failed or closed
        self._outbox: deque[str] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepted = False
        self._closing = False
        self._closed_reported = False
        self._close_task: asyncio.Task[None] | None = None
        self._audio_task: asyncio.Task[None] | None = None
        self._ping_task: asyncio.Task[None] | None = None
        self._rtcp_task: asyncio.Task[None] | None = None
        self.pc.on("connectionstatechange", self._on_connection_state)
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)

    # --- as the voice pipeline's transport (media/transport.py) ---

    output_rate = OUT_RATE

    def bind(
        self,
        *,
        on_audio_frame: Callable[[PCM, float], None],
        on_closed: Callable[[str], None],
        on_frame_sent: Callable[[PCM, float], None],
    ) -> None:
        self.on_audio_frame = on_audio_frame
        self.on_closed = on_closed
        self.speech.on_frame_sent = on_frame_sent

    def play(self, playback: Playback) -> None:
        self.speech.play(playback)

    async def stop_playback(self) -> list[Playback]:
        return self.speech.stop()

    @property
    def rtt(self) -> float | None:
        """The round trip to the client in seconds: a recent data-channel pong's, else RTCP's (None until
        either has been measured)."""
        pong = self.last_pong_at
        fresh = pong is not None and time.monotonic() - pong <= PONG_FRESH_PINGS * self.ping_interval
        if self._rtt is not None and (fresh or self.rtcp_rtt is None):
            return self._rtt
        return self.rtcp_rtt

    @property
    def connection_state(self) -> str:
        return str(self.pc.connectionState)

    async def wait_connected(self) -> bool:
        """Wait until the connection is up (True) or has failed or closed without coming up (False)."""
        await self._settled.wait()
        return self.connected_at is not None

    async def accept(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        """Apply the client's offer and return the complete answer (all ICE candidates in it).

        Raises :class:`InvalidOffer` for any offer aiortc refuses or one that
        does not both send and receive audio; the peer is then closed.
        """
        if self._accepted or self._closing:
            raise RuntimeError("VoicePeer.accept() can only be called once, before close()")
        self._accepted = True
        try:
            await self.pc.setRemoteDescription(offer)
            audio = [t for t in self.pc.getTransceivers() if t.kind == "audio"]
            if not audio:
                raise InvalidOffer("the offer has no audio section")
            for transceiver in audio:
                set_jitter_prefetch(transceiver.receiver, self.jitter_prefetch)
            self.pc.addTrack(self.speech)  # joins the offered audio transceiver: recvonly -> sendrecv
            answer = await self.pc.createAnswer()
        except (InvalidOffer, OSError, asyncio.CancelledError):
            await self.close()
            raise
        except Exception as exc:  # aiortc signals malformed SDP with ValueError, AssertionError, OperationError...
            await self.close()
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else f"malformed SDP ({type(exc).__name__})"
            raise InvalidOffer(f"the offer's SDP was rejected: {detail}") from exc
        try:
            await self.pc.setLocalDescription(answer)  # gathers every candidate before returning
        except BaseException:
            await self.close()
            raise
        if audio[0].currentDirection != "sendrecv":
            await self.close()
            raise InvalidOffer("the offer's audio must be sendrecv (send the microphone, receive speech)")
        return self.pc.localDescription

    def send_event(self, payload: dict[str, Any]) -> None:
        """Send ``payload`` as JSON on the events channel; queued (the newest 64) until the channel opens."""
        if self._closing:
            return
        data = json.dumps(payload, separators=(",", ":"))
        channel = self.channel
        if channel is not None and channel.readyState == "open" and not self._outbox:
            channel.send(data)
            return
        if len(self._outbox) >= MAX_QUEUED_EVENTS:
            self._outbox.popleft()
            self.dropped_events += 1
        self._outbox.append(data)

    async def close(self) -> None:
        """Stop playback, tasks and the peer connection. Idempotent; concurrent calls wait for the same close."""
        if self._close_task is None:
            self._closing = True
            self._close_task = asyncio.ensure_future(self._close())
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        self.speech.end()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.pc.close()
        self.channel = None
        self._outbox.clear()

    # --- aiortc events ---

    def _report_closed(self, reason: str) -> None:
        if self._closing or self._closed_reported:
            return
        self._closed_reported = True
        log.info("peer connection ended: %s", reason)
        if self.on_closed is not None:
            try:
                self.on_closed(reason)
            except Exception:
                log.exception("on_closed callback failed")

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and self.connected_at is None:
            self.connected_at = time.time()
            if self._rtcp_task is None and not self._closing:
                self._rtcp_task = self._spawn(self._read_rtcp_rtt(), "webrtc-rtcp-rtt")
        elif state == "failed":
            self._report_closed("ice_failed")
        elif state == "closed":
            self._report_closed("closed")
        if state in ("connected", "failed", "closed"):
            self._settled.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._audio_task is None:
            self._audio_task = self._spawn(self._consume(track), "webrtc-audio-in")

    async def _consume(self, track: MediaStreamTrack) -> None:
        def on_frame(pcm: PCM, end_at: float) -> None:
            self.last_audio_at = end_at
            try:
                self.on_audio_frame(pcm, end_at)
            except Exception:  # one bad frame must not stop the participant's audio
                log.exception("on_audio_frame callback failed")

        await consume_audio(track, on_frame)
        self._report_closed("remote_ended")

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != EVENTS_LABEL:
            log.debug("ignoring data channel %r", channel.label)
            return
        self.channel = channel
        channel.on("message", self._on_channel_message)
        channel.on("open", self._on_channel_open)
        if channel.readyState == "open":
            self._on_channel_open()

    def _on_channel_open(self) -> None:
        channel = self.channel
        while channel is not None and channel.readyState == "open" and self._outbox:
            channel.send(self._outbox.popleft())
        if self._ping_task is None and not self._closing:
            self._ping_task = self._spawn(self._ping_loop(), "webrtc-ping")

    def _on_channel_message(self, data: str | bytes) -> None:
        try:
            message = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            log.debug("ignoring a data channel message that is not JSON")
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind == "ping":
            self.send_event({"type": "pong", "t": message.get("t")})
        elif kind == "pong":
            t = message.get("t")
            now = time.monotonic()
            if isinstance(t, int | float) and not isinstance(t, bool) and 0 <= now - t < 60:
                self._rtt = now - t
                self.last_pong_at = now
        elif self.on_message is not None:
            try:
                self.on_message(message)
            except Exception:
                log.exception("on_message callback failed")

    async def _read_rtcp_rtt(self) -> None:
        """Keep :attr:`rtcp_rtt` up to date from the senders' ``remote-inbound-rtp`` stats."""
        while not self._closing:
            for sender in self.pc.getSenders():
                try:
                    stats = await sender.getStats()
                except Exception as exc:  # the transport is going away
                    log.debug("no sender stats: %r", exc)
                    continue
                for report in stats.values():
                    rtt = getattr(report, "roundTripTime", None)
                    if getattr(report, "type", None) == "remote-inbound-rtp" and isinstance(rtt, float):
                        self.rtcp_rtt = max(rtt, 0.0)
            await asyncio.sleep(RTCP_POLL_S)

    async def _ping_loop(self) -> None:
        """Our own pings carry ``t`` = our monotonic clock, so a pong's age is the round trip."""
        while (channel := self.channel) is not None and channel.readyState == "open":
            channel.send(json.dumps({"type": "ping", "t": time.monotonic()}))
            await asyncio.sleep(self.ping_interval)
        self._ping_task = None

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
