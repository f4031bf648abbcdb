"""Phone interviews through Twilio: the TwiML webhook, the call status callback, and outbound calls.

``POST /telephony/twilio/voice``: Twilio asks what to do with a call. Inbound, the number called (``To``)
names a telephony channel (its ``phone_numbers``); the channel's ``inbound`` setting says whether the call
is a new run (``new_run``) or the caller keys in a run's PIN (``pin``). Outbound (``?run=``), it is the
call we placed for that run; if a machine answered (``AnsweredBy``), the call is hung up and a pending run
ends as ``voicemail`` (one in progress goes on: a call back reached voicemail). Otherwise the answer is
``<Connect><Stream>`` to our Media Streams websocket with a grant for this call (api/telephony/stream.py).

``POST /telephony/twilio/status?run=``: the outbound call's progress; ``busy``, ``no-answer``, ``failed``
and ``canceled`` end a run that never started with ``busy``, ``no_answer`` and ``failed``. A run already
in progress (the call was a call back after a dropped call) is left as it is: the interview took place,
and its idle and time limits end it if nobody comes back.

``POST /v1/runs/{id}/call``: dial the run's participant (``participant.phone``) from the channel's first
number: a pending run, or one in progress that nobody is connected to (a dropped call; the interview
resumes at the question it had reached, as any rejoin does).

Every webhook must carry a valid ``X-Twilio-Signature`` for the public URL it was sent to (403 otherwise),
and the account SID must be ours; without Twilio configured they answer 404.
"""

from __future__ import annotations

import logging

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from api.openapi import Param, RouteTable
from api.params import check_query, path_id
from api.routes_runs import new_run
from api.schemas import RunIn
from api.state import ORG_ID, STATE, AppState
from api.telephony.twilio import (
    CALL_OUTCOMES,
    connect_stream,
    is_machine,
    new_grant,
    place_call,
    say,
    twiml,
    verify_signature,
)
from runtime.errors import Conflict, Forbidden, NotFound
from runtime.ids import is_id
from runtime.types import ChannelType, EndReason, InboundCalls, Run, RunStatus, SessionStatus

log = logging.getLogger("vivavoce.telephony")

routes = RouteTable()

FORM = ("application/x-www-form-urlencoded",)
NOT_IN_SERVICE = "Sorry, this number is not taking interviews at the moment. Goodbye."
ENDED = "This interview has ended. Thank you, goodbye."


class TwilioCallForm(BaseModel):
    """The fields of Twilio's voice and status webhooks that are read (Twilio sends more; they are signed too)."""

    model_config = ConfigDict(extra="allow")

    CallSid: str = Field(max_length=64)
    AccountSid: str = Field(max_length=64)
    From: str = Field("", max_length=64)
    To: str = Field("", max_length=64)
    CallStatus: str | None = Field(None, max_length=32)
    AnsweredBy: str | None = Field(None, max_length=32)


class CallOut(BaseModel):
    object: str = Field(description='"call"')
    run_id: str
    call_sid: str = Field(description="Twilio's CallSid")
    status: str = Field(description="Twilio's status of the new call (queued)")
    to: str
    from_: str = Field(alias="from")


RUN_PARAM = Param("run", "The run an outbound call is for (our TwiML and callback URLs carry it)")


async def _verified_form(request: web.Request) -> dict[str, str]:
    """The webhook's form fields, if Twilio sent it (signature on the public URL; our account)."""
    config = request.app[STATE].config
    if not config.telephony_enabled:
        raise NotFound("Telephony is not configured on this server")
    form = await request.post()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    url = config.base_url + request.path_qs
    if not verify_signature(config, url, fields, request.headers.get("X-Twilio-Signature")):
        raise Forbidden("The X-Twilio-Signature header does not verify for this request")
    if fields.get("AccountSid") != config.twilio_account_sid or not fields.get("CallSid"):
        raise Forbidden("This webhook is not for this server's Twilio account")
    return fields


def _xml(body: str) -> web.Response:
    return web.Response(text=body, content_type="text/xml")


async def _run_for(state: AppState, request: web.Request) -> Run | None:
    run_id = request.query.get("run")
    if run_id is None:
        return None
    if not is_id(run_id, "run"):
        raise NotFound(f"No run {run_id[:80]!r}", param="run")
    return await state.store.runs.get_run(run_id)


@routes.route("POST", "/telephony/twilio/voice", summary="Twilio's voice webhook: TwiML for a call (docs/telephony.md)",
              tag="telephony", auth=False, body=TwilioCallForm, body_types=FORM, content_types=("text/xml",),
              errors=(403, 404), params=(RUN_PARAM,))  # fmt: skip
async def twilio_voice(request: web.Request) -> web.Response:
    state = request.app[STATE]
    fields = await _verified_form(request)
    call_sid = fields["CallSid"]
    run = await _run_for(state, request)
    if run is not None:  # the call we placed has been answered
        if is_machine(fields.get("AnsweredBy")):
            log.info("call %s for run %s reached a machine", call_sid, run.id)
            if run.status is RunStatus.PENDING:  # a call back that reached voicemail ends nothing
                await state.live.end(run, EndReason.VOICEMAIL)
            return _xml(twiml("<Hangup/>"))
        if run.status.is_terminal or run.channel_id is None:
            return _xml(twiml(say(ENDED), "<Hangup/>"))
        grant = new_grant(state.config, call_sid, run_id=run.id, channel_id=run.channel_id, direction="outbound",
                          caller=fields.get("To", ""))  # fmt: skip
        return _xml(twiml(connect_stream(state.config, grant)))
    channel = await state.store.catalog.channel_for_number(fields.get("To", ""))
    if channel is None:
        log.info("call %s to a number no channel has", call_sid)
        return _xml(twiml(say(NOT_IN_SERVICE), "<Hangup/>"))
    caller = fields.get("From", "")
    run_id = ""
    if channel.settings.inbound is InboundCalls.NEW_RUN and channel.settings.inbound_blueprint_id:
        body = RunIn.model_validate(
            {
                "blueprint_id": channel.settings.inbound_blueprint_id,
                "channel_id": channel.id,
                "participant": {"phone": caller} if _is_e164(caller) else {},
                "metadata": {"call_sid": call_sid[:200]},
            }
        )
        try:
            created = await new_run(state, channel.org_id, body)
        except (NotFound, Conflict) as exc:  # the blueprint was unpublished since
            log.warning("no run for call %s on channel %s: %s", call_sid, channel.id, exc)
            return _xml(twiml(say(NOT_IN_SERVICE), "<Hangup/>"))
        run_id = created.id
    grant = new_grant(state.config, call_sid, run_id=run_id, channel_id=channel.id, direction="inbound", caller=caller)
    return _xml(twiml(connect_stream(state.config, grant)))


def _is_e164(number: str) -> bool:
    return number.startswith("+") and number[1:].isdigit() and 7 <= len(number) - 1 <= 15


@routes.route("POST", "/telephony/twilio/status", summary="Twilio's call status callback (outbound calls)",
              tag="telephony", auth=False, body=TwilioCallForm, body_types=FORM, content_types=(), status=204,
              errors=(403, 404), params=(RUN_PARAM,))  # fmt: skip
async def twilio_status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    fields = await _verified_form(request)
    run = await _run_for(state, request)
    if run is None:
        return web.Response(status=204)
    status = fields.get("CallStatus") or ""
    reason = CALL_OUTCOMES.get(status)
    if reason is None and is_machine(fields.get("AnsweredBy")):
        reason = EndReason.VOICEMAIL
    if reason is None:
        return web.Response(status=204)
    if run.status is RunStatus.PENDING:  # the call never became an interview
        log.info("outbound call for run %s ended: %s", run.id, status or "machine")
        await state.live.end(run, reason)
    else:  # a call back to an interview that took place: it goes on, and its own timeouts end it
        log.info("call back for run %s (%s) ended: %s", run.id, run.status.value, status or "machine")
    return web.Response(status=204)


@routes.route("POST", "/v1/runs/{id}/call", summary="Phone the run's participant (telephony runs; docs/telephony.md)",
              tag="runs", response=CallOut, status=201, errors=(404, 409, 502),
              params=(Param("id", "Run id", where="path"),))  # fmt: skip
async def call_participant(request: web.Request) -> web.Response:
    check_query(request, ())
    state = request.app[STATE]
    run = await state.store.runs.get_run(path_id(request, "run"), org_id=request[ORG_ID])
    channel = await state.store.catalog.get_channel(run.org_id, run.channel_id) if run.channel_id else None
    if channel is None or channel.type is not ChannelType.TELEPHONY:
        raise Conflict(f"Run {run.id} is not on a telephony channel", param="id")
    if run.status is RunStatus.IN_PROGRESS:  # a call back: only if nobody is on the interview now
        if any(s.status is SessionStatus.ACTIVE for s in await state.store.runs.list_sessions(run.id)):
            raise Conflict(f"Run {run.id}'s participant is connected now; call when they have hung up", param="id")
    elif run.status is not RunStatus.PENDING:
        raise Conflict(f"Run {run.id} is {run.status.value}; only a pending or in-progress run can be called",
                       param="id")  # fmt: skip
    if not run.participant.phone:
        raise Conflict(f"Run {run.id}'s participant has no phone number (participant.phone)", param="id")
    if not channel.settings.phone_numbers:
        raise Conflict(f"Channel {channel.id} has no phone number to call from (settings.phone_numbers)", param="id")
    base = state.config.base_url
    call = await place_call(
        state.config,
        to=run.participant.phone,
        from_=channel.settings.phone_numbers[0],
        url=f"{base}/telephony/twilio/voice?run={run.id}",
        status_callback=f"{base}/telephony/twilio/status?run={run.id}",
    )
    body = {"object": "call", "run_id": run.id, "call_sid": call.sid, "status": call.status,
            "to": run.participant.phone, "from": channel.settings.phone_numbers[0]}  # fmt: skip
    return web.json_response(body, status=201)
