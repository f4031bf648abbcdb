"""The custom media socket: a documented websocket for integrators' own clients and bridges (a native app,
a SIP gateway, another telephony provider) on ``custom`` channels. Protocol: docs/protocol.md
("Custom media socket").

``GET /join/{token}/media`` (websocket). The client's first frame is ``start``, naming its audio format
(PCM16 little-endian mono at 16 or 24 kHz); then binary frames carry its microphone in real time and
ours back at the same rate, and JSON text frames carry the same events as the WebRTC ``events`` data
channel (session.ready, state, message, caption, run.ended, error, ping/pong) plus ``clear`` (a barge-in:
drop any of our audio still buffered). The same pipeline as WebRTC (api/voice.py) listens and speaks.

Every frame is validated: a bad one gets an ``error`` frame and the session goes on; a socket that
never starts is closed after ``START_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from api.join import TOKEN, _current, linked_run
from api.join_voice import attach_voice, voice_link
from api.openapi import RouteTable
from api.state import STATE
from api.voice import VoiceLink
from media.audio import PCM
from media.socket_transport import Message, SocketTransport
from runtime.errors import Conflict
from runtime.types import ChannelType, EndReason

log = logging.getLogger("vivavoce.media_socket")

routes = RouteTable()

RATES = (16_000, 24_000)
ENCODING = "pcm_s16le"
START_TIMEOUT_S = 10.0  # a client that sends no start by then is closed
MAX_AUDIO_FRAME_S = 1.0  # binary frames longer than this are refused (send 20-100 ms at a time)
PING_INTERVAL_S = 2.0


@dataclass(frozen=True)
class PcmWire:
    """The custom socket's spelling: raw PCM16 LE binary frames, JSON events, ``clear`` on barge-in."""

    input_rate: int
    output_rate: int
    confirms_playback: bool = False

    def audio(self, pcm: PCM) -> Message:
        return pcm.astype("<i2", copy=False).tobytes()

    def mark(self, name: str) -> Message | None:
        return None

    def clear(self) -> Message | None:
        return '{"type":"clear"}'

    def event(self, event: dict[str, Any]) -> Message | None:
        return json.dumps(event, separators=(",", ":"))


class StartError(ValueError):
    """The client's ``start`` frame cannot be used; the message says why."""


def parse_start(data: str) -> int:
    """The sample rate of a valid ``start`` frame: ``{"type": "start", "format": {"encoding": "pcm_s16le",
    "sample_rate": 16000 | 24000}}``."""
    try:
        frame = json.loads(data)
    except json.JSONDecodeError:
        raise StartError("frames must be JSON objects") from None
    if not isinstance(frame, dict) or frame.get("type") != "start":
        raise StartError('the first frame must be {"type": "start", "format": {...}}')
    fmt = frame.get("format")
    if not isinstance(fmt, dict):
        raise StartError("start needs a 'format' object with 'encoding' and 'sample_rate'")
    if fmt.get("encoding") != ENCODING:
        raise StartError(f"format.encoding must be {ENCODING!r} (16-bit little-endian mono PCM)")
    rate = fmt.get("sample_rate")
    if isinstance(rate, bool) or rate not in RATES:
        raise StartError(f"format.sample_rate must be one of {', '.join(map(str, RATES))}")
    return int(rate)


@routes.route("GET", "/join/{token}/media", summary="The custom media socket (custom channels; docs/protocol.md)",
              tag="participant", auth=False, status=101, content_types=(), errors=(404, 409),
              params=(TOKEN,))  # fmt: skip
async def media_socket(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    run = await linked_run(request)
    channel = await state.store.catalog.get_channel(run.org_id, run.channel_id) if run.channel_id else None
    if channel is None or channel.type is not ChannelType.CUSTOM:
        raise Conflict("This interview is not on a custom channel; the media socket serves custom channels only.")
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise Conflict("The media socket is a websocket: connect with a websocket client (docs/protocol.md).")
    run = await _current(state, run)
    # before the upgrade: a process that is draining answers 503 and the client connects again (elsewhere)
    controller = None if run.status.is_terminal else await state.live.controller(run)
    ws = web.WebSocketResponse(max_msg_size=state.config.max_frame_bytes, autoping=True, heartbeat=None)
    await ws.prepare(request)

    async def send_json(frame: dict[str, Any]) -> None:
        if not ws.closed:
            await ws.send_str(json.dumps(frame, separators=(",", ":")))

    if controller is None:
        run = await state.store.runs.get_run(run.id)
        reason = (run.end_reason or EndReason.ERROR).value
        await send_json({"type": "run.ended", "status": run.status.value, "reason": reason})
        await ws.close(code=1000, message=b"run ended")
        return ws
    try:
        first = await asyncio.wait_for(ws.receive(), state.config.scaled(START_TIMEOUT_S))
    except TimeoutError:
        await send_json({"type": "error", "code": "no_start", "message": "no start frame was sent"})
        await ws.close(code=1008, message=b"no start")
        return ws
    if first.type is not WSMsgType.TEXT:
        if first.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return ws
        await send_json({"type": "error", "code": "invalid_start", "message": "the first frame must be start (JSON)"})
        await ws.close(code=1008, message=b"invalid start")
        return ws
    try:
        rate = parse_start(first.data)
    except StartError as exc:
        await send_json({"type": "error", "code": "invalid_start", "message": str(exc)})
        await ws.close(code=1008, message=b"invalid start")
        return ws

    await state.voice.ready()
    transport = SocketTransport(PcmWire(rate, rate), _sender(ws), hang_up=ws.close)
    link = voice_link(state, controller, channel, transport)
    link.connected_at = time.time()
    if not await attach_voice(state, link, controller, channel):
        return ws
    pinger = asyncio.create_task(_ping(transport, state.config.scaled(PING_INTERVAL_S)))
    try:
        await _read(ws, link, transport, rate)
    finally:
        pinger.cancel()
        transport.remote_closed("closed")
    return ws


def _sender(ws: web.WebSocketResponse) -> Any:
    async def send(message: Message) -> None:
        if ws.closed:
            return
        if isinstance(message, bytes):
            await ws.send_bytes(message)
        else:
            await ws.send_str(message)

    return send


async def _ping(transport: SocketTransport, interval: float) -> None:
    """Our pings carry ``t`` = our monotonic clock, so a pong's age is the round trip (the ``network`` stage)."""
    while not transport.closed:
        transport.send_event({"type": "ping", "t": time.monotonic()})
        await asyncio.sleep(interval)


async def _read(ws: web.WebSocketResponse, link: VoiceLink, transport: SocketTransport, rate: int) -> None:
    max_bytes = int(MAX_AUDIO_FRAME_S * rate) * 2
    async for msg in ws:
        if msg.type is WSMsgType.BINARY:
            data: bytes = msg.data
            if len(data) % 2 or len(data) > max_bytes:
                transport.send_event(_error("invalid_audio", f"audio frames are whole 16-bit samples, at most "
                                            f"{max_bytes} bytes ({MAX_AUDIO_FRAME_S:g} s)"))  # fmt: skip
                continue
            if data:
                transport.receive_audio(np.frombuffer(data, dtype="<i2").astype(np.int16), time.time())
        elif msg.type is WSMsgType.TEXT and _control(msg.data, transport) == "stop":
            return
    # the loop ends when the client closes (or the server closed it: the run ended)


def _control(data: str, transport: SocketTransport) -> str | None:
    """A JSON control frame from the client; returns "stop" when it hangs up."""
    try:
        frame = json.loads(data)
    except json.JSONDecodeError:
        transport.send_event(_error("invalid_frame", "text frames must be JSON objects"))
        return None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        transport.send_event(_error("invalid_frame", "text frames must be JSON objects with a string 'type'"))
        return None
    kind = frame["type"]
    t = frame.get("t")
    if kind == "ping":
        transport.send_event({"type": "pong", "t": t})
    elif kind == "pong":
        now = time.monotonic()
        if isinstance(t, int | float) and not isinstance(t, bool) and 0 <= now - t < 60:
            transport.rtt = now - t
    elif kind == "stop":
        return "stop"
    elif kind == "start":
        transport.send_event(_error("invalid_frame", "the session has already started"))
    else:
        transport.send_event(_error("unknown_type", f"unknown frame type {kind[:40]!r}; expected ping, pong or stop"))
    return None


def _error(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}
