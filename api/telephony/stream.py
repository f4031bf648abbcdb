"""A phone call's audio: Twilio Media Streams on our websocket, into the same voice pipeline as WebRTC.

``GET /telephony/twilio/stream`` is what our TwiML's ``<Connect><Stream>`` points Twilio at. The wire
format is Twilio's (docs/telephony.md has it in full): JSON text frames ``connected``, ``start`` (the
call's SIDs, the media format, our signed ``customParameters``), ``media`` (base64 μ-law 8 kHz, 20 ms),
``dtmf``, ``mark`` (echoed when the audio before it has played) and ``stop``; we send ``media``, ``mark``
and ``clear`` (barge-in: Twilio drops what it buffered).

The stream is only trusted with a grant our TwiML made for this very call (api/telephony/twilio.py). A
grant with a run joins it at once; one without (a telephony channel whose callers give a PIN) asks for
the PIN, keyed in (``dtmf`` frames) or said (the call's audio through VAD, endpointing and the recogniser),
until it names an open run of the channel (api/telephony/pin.py).

A malformed frame (not JSON, no event, a media payload that is not base64 μ-law) is logged and the socket
closed with 1008 and the reason: Twilio ends that call, and nothing else is touched.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from api.join_voice import attach_voice, voice_link
from api.live import RunController
from api.openapi import RouteTable
from api.state import STATE, AppState
from api.telephony.digit_listener import DigitListener
from api.telephony.pin import PIN_TIMEOUT_S, Keyed, PinEntry, PinInput
from api.telephony.twilio import StreamGrant, check_grant
from api.voice import synthesize_into
from media.audio import PCM
from media.g711 import MULAW_RATE, decode_mulaw, encode_mulaw
from media.playout import Playback
from media.socket_transport import Message, SocketTransport
from runtime.errors import Conflict, Draining, LeaseLost
from runtime.types import Channel, ChannelType, SessionType

log = logging.getLogger("vivavoce.telephony")

routes = RouteTable()

START_TIMEOUT_S = 10.0  # Twilio sends connected and start at once
MAX_PAYLOAD_BYTES = 8_000  # one second of μ-law; Twilio sends 20 ms (160 bytes)
DTMF = frozenset("0123456789*#")
PIN_LANGUAGE = "en"  # the PIN prompts are English, and so is the reading of spoken digits


class Malformed(ValueError):
    """A frame that does not follow the Media Streams protocol; the message says how."""


@dataclass(frozen=True)
class TwilioWire:
    """Media Streams' spelling of our messages (μ-law 8 kHz both ways; Twilio confirms playback with marks)."""

    stream_sid: str
    input_rate: int = MULAW_RATE
    output_rate: int = MULAW_RATE
    confirms_playback: bool = True

    def audio(self, pcm: PCM) -> Message:
        payload = base64.b64encode(encode_mulaw(pcm)).decode("ascii")
        return json.dumps({"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}})

    def mark(self, name: str) -> Message | None:
        return json.dumps({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    def clear(self) -> Message | None:
        return json.dumps({"event": "clear", "streamSid": self.stream_sid})

    def event(self, event: dict[str, Any]) -> Message | None:
        return None  # a phone line carries no captions or states


def parse_frame(data: str) -> dict[str, Any]:
    try:
        frame = json.loads(data)
    except json.JSONDecodeError:
        raise Malformed("a frame is not JSON") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("event"), str):
        raise Malformed("a frame is not a JSON object with a string 'event'")
    return frame


def _field(obj: Any, name: str, where: str) -> Any:
    if not isinstance(obj, dict) or name not in obj:
        raise Malformed(f"{where} has no {name!r}")
    return obj[name]


def media_payload(frame: dict[str, Any]) -> PCM:
    """The μ-law audio of a ``media`` frame, decoded."""
    media = _field(frame, "media", "a media frame")
    payload = _field(media, "payload", "media")
    if not isinstance(payload, str) or len(payload) > MAX_PAYLOAD_BYTES * 4 // 3 + 4:
        raise Malformed("media.payload must be base64 text of at most a second of audio")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise Malformed("media.payload is not base64") from None
    return decode_mulaw(raw)


@dataclass(frozen=True)
class StreamStart:
    stream_sid: str
    call_sid: str
    parameters: object


def parse_start(frame: dict[str, Any]) -> StreamStart:
    start = _field(frame, "start", "the start frame")
    stream_sid = _field(start, "streamSid", "start")
    call_sid = _field(start, "callSid", "start")
    if not isinstance(stream_sid, str) or not isinstance(call_sid, str) or not stream_sid or not call_sid:
        raise Malformed("start.streamSid and start.callSid must be strings")
    fmt = start.get("mediaFormat")
    if fmt is not None:
        if not isinstance(fmt, dict):
            raise Malformed("start.mediaFormat must be an object")
        if (fmt.get("encoding"), fmt.get("sampleRate"), fmt.get("channels", 1)) != ("audio/x-mulaw", MULAW_RATE, 1):
            raise Malformed("the stream must be audio/x-mulaw at 8000 Hz, one channel")
    return StreamStart(stream_sid, call_sid, start.get("customParameters"))


@routes.route("GET", "/telephony/twilio/stream", summary="Twilio Media Streams websocket (docs/telephony.md)",
              tag="telephony", auth=False, status=101, content_types=(), errors=(409,))  # fmt: skip
async def twilio_stream(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise Conflict("This is Twilio's Media Streams websocket; our TwiML points calls at it (docs/telephony.md).")
    state = request.app[STATE]
    ws = web.WebSocketResponse(max_msg_size=state.config.max_frame_bytes)
    await ws.prepare(request)
    call = Call(state, ws)
    try:
        await call.serve()
    except Malformed as exc:
        log.warning("Twilio stream closed: %s", exc)
        await ws.close(code=1008, message=str(exc).encode()[:120])
    finally:
        await call.end()
    return ws


class Call:
    """One call's stream: the start, the PIN (if the grant names no run), then the interview."""

    def __init__(self, state: AppState, ws: web.WebSocketResponse) -> None:
        self.state = state
        self.ws = ws
        self.transport: SocketTransport | None = None
        self.pin_inputs: asyncio.Queue[PinInput] = asyncio.Queue()  # keyed and spoken, while asking for a PIN
        self.interview: asyncio.Task[None] | None = None
        self.attached = False  # the voice link owns the transport (and closes it) from then on

    async def send(self, message: Message) -> None:
        if not self.ws.closed:
            await self.ws.send_str(message if isinstance(message, str) else message.decode())

    async def serve(self) -> None:
        start = await self._start()
        if start is None:
            return
        grant = check_grant(self.state.config, start.call_sid, start.parameters)
        if grant is None:
            log.warning("Twilio stream for call %s had no valid grant", start.call_sid)
            await self.ws.close(code=1008, message=b"invalid stream token")
            return
        await self.state.voice.ready()
        self.transport = SocketTransport(TwilioWire(start.stream_sid), self.send, hang_up=self.ws.close)
        self.interview = asyncio.create_task(self._interview(grant))
        await self._read()

    async def _start(self) -> StreamStart | None:
        deadline = time.monotonic() + self.state.config.scaled(START_TIMEOUT_S)
        while True:
            try:
                msg = await asyncio.wait_for(self.ws.receive(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                await self.ws.close(code=1008, message=b"no start event")
                return None
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return None
            if msg.type is not WSMsgType.TEXT:
                raise Malformed("Media Streams frames are JSON text")
            frame = parse_frame(msg.data)
            if frame["event"] == "start":
                return parse_start(frame)
            if frame["event"] != "connected":
                raise Malformed(f"expected connected or start, not {frame['event'][:40]!r}")

    async def _read(self) -> None:
        transport = self.transport
        assert transport is not None
        async for msg in self.ws:
            if msg.type is not WSMsgType.TEXT:
                raise Malformed("Media Streams frames are JSON text")
            frame = parse_frame(msg.data)
            event = frame["event"]
            if event == "media":
                track = frame["media"].get("track", "inbound") if isinstance(frame.get("media"), dict) else None
                pcm = media_payload(frame)
                if track in ("inbound", "inbound_track") and len(pcm):
                    transport.receive_audio(pcm, time.time())
            elif event == "mark":
                name = _field(_field(frame, "mark", "a mark frame"), "name", "mark")
                if not isinstance(name, str):
                    raise Malformed("mark.name must be a string")
                transport.marked(name)
            elif event == "dtmf":
                digit = _field(_field(frame, "dtmf", "a dtmf frame"), "digit", "dtmf")
                if not isinstance(digit, str) or digit not in DTMF:
                    raise Malformed("dtmf.digit must be one of 0-9, * and #")
                if not self.attached:  # an interview has no use for keys
                    self.pin_inputs.put_nowait(Keyed(digit))
            elif event == "stop":
                return
            else:  # connected again, or an event of a later protocol version: nothing to do
                log.debug("ignoring Twilio stream event %r", event[:40])

    async def end(self) -> None:
        """The stream is over (hung up, closed, malformed): the session ends, the run goes on."""
        if self.transport is not None:
            self.transport.remote_closed("hung_up")  # the voice link, if attached, hangs up and closes it
        if self.interview is not None and not self.interview.done():
            self.interview.cancel()
            await asyncio.gather(self.interview, return_exceptions=True)
        if self.transport is not None and not self.attached:
            await self.transport.close()

    async def _interview(self, grant: StreamGrant) -> None:
        state = self.state
        channel = await state.store.catalog.find_channel(grant.channel_id)
        if channel is None or channel.type is not ChannelType.TELEPHONY:
            await self.ws.close(code=1008, message=b"no such telephony channel")
            return
        run_id = grant.run_id or await self._collect_pin(channel)
        if run_id is None:
            return
        run = await state.store.runs.get_run(run_id)
        controller: RunController | None = None
        if not run.status.is_terminal:
            try:
                controller = await state.live.controller(run)
            except (Draining, LeaseLost) as exc:  # this process is handing its interviews over
                log.info("call for run %s not taken here: %s", run_id, exc)
                await self._say("Sorry, we could not connect you just now. Please call again in a minute.")
                await self.ws.close(code=1001, message=b"server restarting")
                return
        if controller is None:
            await self._say("This interview has ended. Goodbye.")
            await self.ws.close(code=1000, message=b"run ended")
            return
        assert self.transport is not None
        await self.transport.stop_playback()
        session_type = SessionType.OUTBOUND if grant.direction == "outbound" else SessionType.INBOUND
        link = voice_link(state, controller, channel, self.transport, session_type=session_type,
                          user_number=grant.caller or None)  # fmt: skip
        link.connected_at = time.time()
        self.attached = True
        await attach_voice(state, link, controller, channel)

    async def _say(self, text: str, language: str = "en") -> Playback:
        """Speak a prompt of our own (before any run is joined), and wait until the caller heard it."""
        assert self.transport is not None
        playback = Playback(f"prompt_{uuid.uuid4().hex[:8]}", text, rate=self.transport.output_rate)
        self.transport.play(playback)
        await synthesize_into(self.state.voice.speaker(language), playback)
        await playback.done
        return playback

    async def _collect_pin(self, channel: Channel) -> str | None:
        """The run the caller names by its PIN, keyed in or said (api/telephony/pin.py); None if they could
        not (they have been told, and the call is closed)."""
        assert self.transport is not None
        listener = DigitListener(self.transport, self.state.voice.listener(PIN_LANGUAGE), self.pin_inputs.put_nowait,
                                 vad=self.state.config.vad, language=PIN_LANGUAGE)  # fmt: skip
        entry = PinEntry(self.state.store, self.transport, self._say, self.pin_inputs,
                         timeout_s=self.state.config.scaled(PIN_TIMEOUT_S))  # fmt: skip
        try:
            run_id = await entry.run_id(channel)
        finally:
            await listener.close()
        if run_id is None:
            await self.ws.close(code=1000, message=b"no such PIN")
        return run_id
