"""The participant's side: the join page and the chat websocket (protocol: docs/protocol.md).

The join token in the URL is the participant's only credential. Every frame
from the participant is validated; a bad one gets an ``error`` frame and the
session goes on. Frames larger than ``max_frame_bytes`` are refused by aiohttp
with close code 1009.

The server pings the participant every ``heartbeat_s`` and measures the round
trip from the pong: half of it is the ``network`` stage of the latency
breakdown. A participant that answers no ping for two intervals is
disconnected, which ends the session (not the run).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import re
import struct
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import WSMsgType, web

from api.errors import UNSTORABLE, unstorable_text
from api.live import CLOSE_GOING_AWAY, RESTARTING, ParticipantLink, PlaybackReport
from api.openapi import Param, RouteTable
from api.state import STATE, AppState
from runtime.errors import Conflict, Draining, LeaseLost, NotFound, StorageUnavailable
from runtime.serialize import message_text
from runtime.types import ChannelType, EndReason, InboundCalls, Message, Run, RunStatus, SessionType

routes = RouteTable()

STATIC_DIR = Path(__file__).parent / "static"
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
CSP = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; media-src 'self' blob:"
CLIENT_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
TOKEN = Param("token", "The run's join token", where="path")

# Channel types whose participants do not join in a browser: their join URL says how to join instead, and
# never falls back to a chat page; the chat websocket and the WebRTC offer refuse them (409).
NOT_IN_BROWSER = {
    ChannelType.TELEPHONY: "it is a phone interview (telephony channel)",
    ChannelType.CUSTOM: "it is joined over the custom media socket (custom channel)",
}

END_TEXT = {
    EndReason.COMPLETED: "This interview is complete. Thank you for taking part!",
    EndReason.PARTICIPANT_LEFT: "This interview has ended because the connection was not resumed in time.",
    EndReason.IDLE_TIMEOUT: "This interview ended because of inactivity.",
    EndReason.MAX_DURATION: "This interview reached its time limit and has ended.",
    EndReason.CANCELLED: "This interview was cancelled by the researcher.",
    EndReason.JOIN_EXPIRED: "This interview link has expired.",
    EndReason.ERROR: "This interview ended because of a technical problem. We are sorry.",
    EndReason.BUSY: "This interview ended: the line was busy when we called.",
    EndReason.NO_ANSWER: "This interview ended: nobody answered when we called.",
    EndReason.VOICEMAIL: "This interview ended: the call reached voicemail.",
    EndReason.FAILED: "This interview ended: the call could not be connected.",
}


class ChatLink:
    """A participant's websocket, as the live controller sees it."""

    session_type = SessionType.TEXT
    plays_audio = False
    user_number: str | None = None

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self._rtt: float | None = None
        self.last_pong = time.monotonic()

    @property
    def rtt(self) -> float | None:
        return self._rtt

    async def send(self, frame: dict[str, Any]) -> None:
        """Send a frame; a participant who has just gone is not an error (the session ends on its own)."""
        await self.send_text(json.dumps(frame, separators=(",", ":")))

    async def send_text(self, text: str) -> None:
        """Send a frame already encoded as JSON."""
        if not self.ws.closed:
            with contextlib.suppress(ConnectionError):
                await self.ws.send_str(text)

    async def deliver(self, message: Message, run_started_at: float | None) -> None:
        await self.send_text(f'{{"type":"message","message":{message_text(message, run_started_at)}}}')

    async def stop_playback(self) -> list[PlaybackReport]:
        return []

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode())

    async def ping(self) -> None:
        await self.ws.ping(struct.pack("!d", time.monotonic()))

    def pong(self, payload: bytes) -> None:
        self.last_pong = time.monotonic()
        if len(payload) == 8:
            sent = struct.unpack("!d", payload)[0]
            if 0 <= self.last_pong - sent < 60:
                self._rtt = self.last_pong - sent


_: type[ParticipantLink] = ChatLink  # ChatLink satisfies the link protocol


async def not_in_browser(state: AppState, run: Run) -> str | None:
    """Why this run cannot be joined on this server's pages (a phone or media-socket run), or None."""
    if run.channel_id is None:
        return None
    channel = await state.store.catalog.get_channel(run.org_id, run.channel_id)
    return NOT_IN_BROWSER.get(channel.type)


async def how_to_join(state: AppState, run: Run, token: str) -> str:
    """What a phone or media-socket run's join page says instead of a chat page."""
    channel = await state.store.catalog.get_channel(run.org_id, run.channel_id or "")
    if channel.type is ChannelType.CUSTOM:
        media = state.config.base_url.replace("http", "ws", 1) + f"/join/{quote(token, safe='')}/media"
        return (
            f"This interview is joined with a media client, not in a browser: connect a websocket to {media} "
            "and speak the custom media socket protocol (docs/protocol.md)."
        )
    numbers = " or ".join(channel.settings.phone_numbers)
    if numbers and channel.settings.inbound is InboundCalls.PIN and run.pin:
        return f"This is a phone interview: call {numbers} and key in your PIN, {' '.join(run.pin)}, when asked."
    return "This is a phone interview: you will be called."


async def linked_run(request: web.Request) -> Run:
    """The run whose join token is in the path (404 for a link that names none)."""
    run = await request.app[STATE].store.runs.run_by_token(request.match_info["token"])
    if run is None:
        raise NotFound("This interview link is not valid.", param="token")
    return run


async def _current(state: AppState, run: Run) -> Run:
    """The run, failed as join_expired first if its join window has passed."""
    if run.status is RunStatus.PENDING and time.time() >= run.join_expires_at:
        await state.store.runs.end_run(run.id, EndReason.JOIN_EXPIRED)
        return await state.store.runs.get_run(run.id)
    return run


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><link rel='stylesheet' href='/static/join.css'></head>"
        f"<body><main class='notice-page'><h1>{html.escape(title)}</h1><p>{html.escape(body)}</p></main></body></html>"
    )
    return web.Response(text=text, status=status, content_type="text/html", headers={"Content-Security-Policy": CSP})


@routes.route(
    "GET",
    "/join/{token}",
    summary="The participant's interview page",
    tag="participant",
    auth=False,
    content_types=("text/html",),
    errors=(404, 409),
    error_type="text/html",
    also=(303,),
    params=(TOKEN,),
)
async def join_page(request: web.Request) -> web.Response:
    state = request.app[STATE]
    run = await state.store.runs.run_by_token(request.match_info["token"])
    if run is None:
        return _page(
            "Interview not found", "This interview link is not valid. Please check the link you were given.", 404
        )
    run = await _current(state, run)
    if not run.status.is_terminal and await not_in_browser(state, run) is not None:
        return _page("How to join this interview", await how_to_join(state, run, request.match_info["token"]))
    if run.status.is_terminal:
        from api.routes_study_links import redirect_after  # (a study link's run: back to the panel)

        target = await redirect_after(state, run)
        if target is not None:
            return web.Response(status=303, headers={"Location": target})
        return _page("Interview ended", END_TEXT[run.end_reason or EndReason.ERROR])
    bp = await state.store.catalog.get_blueprint(run.org_id, run.blueprint_id, run.blueprint_version)
    template = (STATIC_DIR / "join.html").read_text(encoding="utf-8")
    page = template.replace("{{TITLE}}", html.escape(bp.content.name)).replace(
        "{{WS_PATH}}", html.escape(f"/join/{request.match_info['token']}/ws")
    )
    return web.Response(
        text=page, content_type="text/html", headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"}
    )


@routes.route(
    "GET",
    "/static/{name}",
    summary="Page assets (scripts, styles)",
    tag="participant",
    auth=False,
    content_types=("text/javascript", "text/css"),
    errors=(404,),
    params=(Param("name", "Asset file name", where="path"),),
)
async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    path = STATIC_DIR / name
    if "/" in name or name.startswith(".") or path.suffix not in STATIC_TYPES or not path.is_file():
        raise web.HTTPNotFound(text=f"no asset {name[:80]!r}")
    return web.Response(
        body=path.read_bytes(), content_type=STATIC_TYPES[path.suffix], headers={"Cache-Control": "no-cache"}
    )


@routes.route(
    "GET",
    "/join/{token}/ws",
    summary="The participant's chat websocket (docs/protocol.md)",
    tag="participant",
    auth=False,
    status=101,
    content_types=(),
    also=(303,),
    errors=(404, 409),
    params=(TOKEN,),
)
async def join_socket(request: web.Request) -> web.StreamResponse:
    """A plain GET (a browser given this URL instead of the page's) is sent to the page."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return web.Response(status=303, headers={"Location": f"/join/{quote(request.match_info['token'], safe='')}"})
    state = request.app[STATE]
    run = await state.store.runs.run_by_token(request.match_info["token"])
    if run is None:
        raise web.HTTPNotFound(text="This interview link is not valid.")
    why = await not_in_browser(state, run)
    if why is not None:
        raise Conflict(f"This interview cannot be joined over the chat websocket: {why}.")
    ws = web.WebSocketResponse(max_msg_size=state.config.max_frame_bytes, autoping=False)
    await ws.prepare(request)
    link = ChatLink(ws)
    run = await _current(state, run)
    try:
        controller = None if run.status.is_terminal else await state.live.controller(run)
        attached = None if controller is None else await state.live.attach(controller, link)
    except (Draining, LeaseLost):  # this process is handing its interviews over: the page reconnects elsewhere
        await link.send({"type": "error", "code": "server_restart", "message": RESTARTING})
        await ws.close(code=CLOSE_GOING_AWAY, message=b"server restarting")
        return ws
    if attached is None:
        run = await state.store.runs.get_run(run.id)
        reason = (run.end_reason or EndReason.ERROR).value
        await link.send({"type": "run.ended", "status": run.status.value, "reason": reason})
        await ws.close(code=1000, message=b"run ended")
        return ws
    controller = attached[0]
    heartbeat = asyncio.create_task(_heartbeat(link, state.config.scaled(state.config.heartbeat_s)))
    try:
        await link.ping()
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await _on_frame(state, controller, link, msg.data, received_at=time.time())
            elif msg.type is WSMsgType.BINARY:
                await _error(link, "invalid_frame", "binary frames are not supported; send JSON text frames")
            elif msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type is WSMsgType.PONG:
                link.pong(msg.data)
    finally:
        heartbeat.cancel()
        await controller.detach(link)
    return ws


async def _heartbeat(link: ChatLink, interval: float) -> None:
    while not link.ws.closed:
        await asyncio.sleep(interval)
        if time.monotonic() - link.last_pong > 2 * interval + 1:
            await link.close(1011, "no answer to ping")  # the participant is gone; its session ends
            return
        try:
            await link.ping()
        except ConnectionError:
            return


async def _error(link: ChatLink, code: str, message: str, **extra: Any) -> None:
    await link.send({"type": "error", "code": code, "message": message, **extra})


async def _on_frame(state: AppState, controller: Any, link: ChatLink, data: str, *, received_at: float) -> None:
    try:
        frame = json.loads(data)
    except json.JSONDecodeError:
        return await _error(link, "invalid_frame", "frames must be JSON objects")
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        return await _error(link, "invalid_frame", "frames must be JSON objects with a string 'type'")
    where = unstorable_text(frame)
    if where is not None:  # refused with the message's client_id, so the page can say which answer it was
        extra = (
            {"client_id": frame["client_id"]}
            if isinstance(frame.get("client_id"), str) and where != "/client_id"
            else {}
        )
        return await _error(link, "invalid_frame", f"{where}: {UNSTORABLE}", **extra)
    kind = frame["type"]
    if kind == "message":
        return await _on_message(state, controller, link, frame, received_at=received_at)
    if kind == "typing":
        return await controller.participant_activity(link)  # type: ignore[no-any-return]
    if kind == "ping":
        return await link.send({"type": "pong", "t": frame.get("t")})
    await _error(link, "unknown_type", f"unknown frame type {kind[:40]!r}; expected message, typing or ping")


async def _on_message(
    state: AppState, controller: Any, link: ChatLink, frame: dict[str, Any], *, received_at: float
) -> None:
    client_id = frame.get("client_id")
    if client_id is not None and (not isinstance(client_id, str) or not CLIENT_ID.match(client_id)):
        return await _error(link, "invalid_frame", "client_id must be 1-64 letters, digits, '_' or '-'")
    content = frame.get("content")
    extra = {"client_id": client_id} if client_id else {}
    if not isinstance(content, str):
        return await _error(link, "invalid_frame", "message frames need a string 'content'", **extra)
    content = content.strip()
    if not content:
        return await _error(link, "empty_content", "the message is empty", **extra)
    limit = state.config.max_content_bytes
    if len(content.encode("utf-8")) > limit:
        return await _error(link, "content_too_large", f"the message is longer than {limit} bytes", **extra)
    try:
        message = await controller.participant_message(link, content, client_id=client_id, received_at=received_at)
    except StorageUnavailable:  # nothing was stored: the participant's page keeps the answer and sends it again
        return await _error(link, "storage_unavailable", "the answer could not be saved; send it again", **extra)
    if message is not None:
        text = message_text(message, controller.run_started_at)  # encoded once, when it was stored
        await link.send_text(f'{{"type":"message.ack","client_id":{json.dumps(client_id)},"message":{text}}}')
