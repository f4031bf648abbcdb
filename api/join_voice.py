"""Joining by voice: WebRTC signalling for the participant page, and the run's recording.

``GET /join/{token}/info`` tells the participant page how to join: chat or
voice, the run's status (and end reason), and the ICE servers to use.

``POST /join/{token}/offer`` takes ``{sdp, type}`` and answers with the full
SDP (non-trickle ICE: candidates are gathered before answering; with no ICE
servers configured that takes milliseconds). The session starts when the
peer connection is up, so a participant whose network never connects leaves
no session behind.

Recordings: one stereo file per run (participant left, assistant right),
placed on the run's clock, so sessions of the same run land in the same file.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

from aiohttp import web
from aiortc import RTCIceServer
from pydantic import BaseModel, Field

from api.errors import read_json
from api.join import TOKEN, _current, linked_run
from api.live import RunController
from api.openapi import Param, RouteTable
from api.params import path_id
from api.routes_runs import with_data
from api.routes_study_links import redirect_after
from api.state import ORG_ID, STATE, AppState
from api.voice import VoiceLink
from media.transport import AudioTransport
from media.webrtc import InvalidOffer, VoicePeer, parse_offer
from runtime.errors import Conflict, Draining, InvalidRequest, LeaseLost, NotFound
from runtime.turn_end import TurnEndSettings
from runtime.types import Channel, ChannelType, EndReason, SessionType

log = logging.getLogger("vivavoce.voice")

routes = RouteTable()


def ice_servers(state: AppState) -> list[RTCIceServer]:
    return [RTCIceServer(urls=url) for url in state.config.ice_servers]


@routes.route("GET", "/join/{token}/info", summary="How the join page connects: chat or voice, run status, ICE servers",
              tag="participant", auth=False, errors=(404, 409), params=(TOKEN,))  # fmt: skip
async def join_info(request: web.Request) -> web.Response:
    state = request.app[STATE]
    run = await linked_run(request)
    run = await _current(state, run)
    channel = await state.store.catalog.get_channel(run.org_id, run.channel_id) if run.channel_id else None
    voice = channel is not None and channel.type is ChannelType.WEBRTC_VOICE
    if channel is not None and channel.type in (ChannelType.TELEPHONY, ChannelType.CUSTOM):
        mode = channel.type.value  # never "chat": the page shows how to join instead
    else:
        mode = "voice" if voice else "chat"
    end_reason = run.end_reason or (EndReason.ERROR if run.status.is_terminal else None)
    body = {
        "mode": mode,
        "status": run.status.value,
        "end_reason": end_reason.value if end_reason else None,
        "recording": bool(voice and channel is not None and channel.settings.recording),
        "ice_servers": [{"urls": url} for url in state.config.ice_servers] if voice else [],
        "redirect_url": await redirect_after(state, run),
    }
    return web.json_response(body, headers={"Cache-Control": "no-store"})


MAX_SDP_CHARS = 16 * 1024  # real offers are a few kilobytes


class OfferIn(BaseModel):
    """A WebRTC offer (non-trickle): the session description with the microphone's audio section."""

    type: Literal["offer"]
    # in characters, as JSON Schema counts: even escaped as \\uXXXX, an offer this long fits the body limit
    sdp: str = Field(pattern="^v=0", max_length=MAX_SDP_CHARS, description="SDP with one m=audio section")


def _checked_offer(body: object) -> object:
    """The limits the document states (then parse_offer checks the description itself)."""
    if isinstance(body, dict) and isinstance(body.get("sdp"), str) and len(body["sdp"]) > MAX_SDP_CHARS:
        raise InvalidOffer(f"'sdp' is longer than {MAX_SDP_CHARS} characters")
    return body


class AnswerOut(BaseModel):
    type: Literal["answer"]
    sdp: str


@routes.route("POST", "/join/{token}/offer", summary="WebRTC signalling: the participant's SDP offer, answered",
              tag="participant", auth=False, body=OfferIn, response=AnswerOut, errors=(404, 409),
              params=(TOKEN,))  # fmt: skip
async def join_offer(request: web.Request) -> web.Response:
    state = request.app[STATE]
    run = await linked_run(request)
    try:
        offer = parse_offer(_checked_offer(await read_json(request)))
    except InvalidOffer as exc:
        raise InvalidRequest(str(exc), param="sdp") from None
    run = await _current(state, run)
    if run.status.is_terminal:
        reason = run.end_reason.value if run.end_reason else "ended"
        raise Conflict(f"This interview has ended ({reason}).")
    channel = await state.store.catalog.get_channel(run.org_id, run.channel_id) if run.channel_id else None
    if channel is None or channel.type is not ChannelType.WEBRTC_VOICE:
        raise Conflict("This interview is not a WebRTC voice interview; its join page says how to join it.")
    controller = await state.live.controller(run)
    if controller is None:
        raise Conflict("This interview has ended.")
    voice = state.voice
    await voice.ready()
    link = voice_link(state, controller, channel, VoicePeer(ice_servers=ice_servers(state)))
    try:
        answer = await link.peer.accept(offer)
    except InvalidOffer as exc:
        await link.close(1000, "bad offer")
        raise InvalidRequest(str(exc), param="sdp") from None
    except BaseException:  # cancelled (the server is stopping) or failed: its sockets must not outlive it
        await asyncio.shield(link.close(1000, "offer not answered"))
        raise
    voice.spawn(_start_session(state, link, controller, channel))
    return web.json_response({"sdp": answer.sdp, "type": answer.type})


def voice_link(
    state: AppState,
    controller: RunController,
    channel: Channel,
    transport: AudioTransport,
    *,
    session_type: SessionType = SessionType.VOICE,
    user_number: str | None = None,
) -> VoiceLink:
    """The voice pipeline of one session of ``controller``'s run, over ``transport`` (any of them)."""
    voice = state.voice
    language = controller.blueprint.language
    return VoiceLink(
        transport=transport,
        workers=voice.listener(language),
        synthesis=voice.speaker(language),
        settings=channel.settings,
        vad=state.config.vad,
        language=language,
        turn_end=TurnEndSettings(
            max_silence_ms=state.config.turn_max_silence_ms, punctuated=state.config.recognizer == "whisper"
        ),
        session_type=session_type,
        user_number=user_number,
    )


async def attach_voice(state: AppState, link: VoiceLink, controller: RunController, channel: Channel) -> bool:
    """Open the session of a connected voice link, and its recording if the channel records (at the
    transport's rate where that is narrower: a phone call's 8 kHz). False if the run has ended."""
    link.controller = controller
    try:
        attached = await state.live.attach(controller, link)
    except (Draining, LeaseLost) as exc:  # this process is draining, or the run kept changing hands
        log.info("voice session of run %s not started here: %s", controller.run_id, exc)
        await link.close(1001, "server restarting")
        return False
    if attached is None:
        await link.close(1000, "run ended")
        return False
    link.controller = attached[0]  # the run may have been taken back for this connection
    if channel.settings.recording:
        run = await state.store.runs.get_run(controller.run_id)
        link.recorder = state.voice.recordings.recorder(run, rate=min(16_000, link.transport.output_rate))
    return True


async def _start_session(state: AppState, link: VoiceLink, controller: RunController, channel: Channel) -> None:
    try:
        connected = await asyncio.wait_for(link.peer.wait_connected(), state.config.voice_connect_timeout_s)
    except TimeoutError:
        connected = False
    except BaseException:  # the server is stopping before the peer connected: close it, or its sockets leak
        await asyncio.shield(link.close(1001, "server stopping"))
        raise
    if not connected:
        log.info("voice peer for run %s never connected", controller.run_id)
        await link.close(1000, "never connected")
        return
    link.connected_at = link.peer.connected_at
    await attach_voice(state, link, controller, channel)


@routes.route("GET", "/v1/runs/{id}/recording", summary="Run's stereo recording (participant left, assistant right)",
              tag="runs", content_types=("audio/wav",), errors=(404, 409, 410),
              params=(Param("id", "Run id", where="path"),))  # fmt: skip
async def get_recording(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    run = with_data(await state.store.runs.get_run(path_id(request, "run"), org_id=request[ORG_ID]), "recording")
    path = state.voice.recordings.path(run.id)
    if not path.exists():
        raise NotFound(f"Run {run.id} has no recording", param="id")
    if run.id in state.voice.recordings.open:
        raise Conflict(f"Run {run.id} is still being recorded; fetch the recording when it has ended")
    return web.FileResponse(path, headers={"Content-Type": "audio/wav"})
