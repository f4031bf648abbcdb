"""Twilio, as the telephony routes see it: webhook signatures, signed stream tokens, TwiML, the REST client.

Secrets: the account's auth token (``VIVAVOCE_TWILIO_AUTH_TOKEN``) is held in the server's configuration
only: it verifies Twilio's ``X-Twilio-Signature`` on every webhook (the ``twilio`` package's
``RequestValidator``), keys the HMAC of our stream tokens, and authenticates our REST calls; it is never
stored, logged or returned.

Stream tokens: the TwiML that connects a call to our Media Streams websocket passes ``<Parameter>``s that
Twilio hands back in the stream's ``start`` event: the run (empty while a caller has still to key in a
PIN), the channel, the direction, the caller's number, an expiry, and an HMAC of all of them with the
call's SID. The websocket itself is not signed by anything we can check, so a stranger who opens it
gets nowhere without a token made for that very call.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

import aiohttp
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from api.config import ServerConfig
from runtime.errors import Conflict, InvalidRequest, UpstreamFailed
from runtime.types import EndReason

log = logging.getLogger("vivavoce.telephony")

STREAM_TOKEN_TTL_S = 60.0  # between our TwiML answer and Twilio opening the stream: seconds at most
REST_TIMEOUT_S = 10.0

# CallStatus values (Twilio's status callbacks) that end a call before it became an interview
CALL_OUTCOMES = {
    "busy": EndReason.BUSY,
    "no-answer": EndReason.NO_ANSWER,
    "failed": EndReason.FAILED,
    "canceled": EndReason.FAILED,
}
MACHINE_ANSWERS = ("machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax")


def is_machine(answered_by: str | None) -> bool:
    """Twilio's answering-machine detection says a machine (voicemail, fax) picked up."""
    return answered_by in MACHINE_ANSWERS


def verify_signature(config: ServerConfig, url: str, params: dict[str, str], signature: str | None) -> bool:
    """Whether ``X-Twilio-Signature`` proves Twilio sent this request to ``url`` (the public URL it called)."""
    if not signature or not config.twilio_auth_token:
        return False
    return bool(RequestValidator(config.twilio_auth_token).validate(url, params, signature))


# --- stream tokens ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamGrant:
    """What our TwiML lets one call's media stream do: join ``run_id`` (or ask for a PIN on ``channel_id``)."""

    call_sid: str
    run_id: str  # "" : the caller keys in a PIN on the stream
    channel_id: str
    direction: str  # "inbound" | "outbound"
    caller: str  # the participant's number
    expires: int

    def fields(self) -> tuple[str, ...]:
        return (self.call_sid, self.run_id, self.channel_id, self.direction, self.caller, str(self.expires))


def _key(config: ServerConfig) -> bytes:
    token = config.twilio_auth_token or ""
    return hashlib.sha256(b"vivavoce twilio stream token\x00" + token.encode()).digest()


def sign_grant(config: ServerConfig, grant: StreamGrant) -> str:
    return hmac.new(_key(config), "\x1f".join(grant.fields()).encode(), hashlib.sha256).hexdigest()


def new_grant(config: ServerConfig, call_sid: str, *, run_id: str, channel_id: str, direction: str,
              caller: str) -> StreamGrant:  # fmt: skip
    expires = int(time.time() + config.scaled(STREAM_TOKEN_TTL_S)) + 1
    return StreamGrant(call_sid, run_id, channel_id, direction, caller, expires)


def check_grant(config: ServerConfig, call_sid: str, params: object) -> StreamGrant | None:
    """The grant in a stream's ``customParameters``, if it was made by us for this call and is still valid."""
    if not isinstance(params, dict) or not config.telephony_enabled:
        return None
    names = ("run", "channel", "direction", "caller", "expires", "signature")
    values = [params.get(k) for k in names]
    if not all(isinstance(v, str) and len(v) <= 200 for v in values):
        return None
    run, channel, direction, caller, expires, signature = (str(v) for v in values)
    if not expires.isdigit():
        return None
    grant = StreamGrant(call_sid, run, channel, direction, caller, int(expires))
    if not hmac.compare_digest(sign_grant(config, grant), signature):
        return None
    if grant.expires < time.time():
        return None
    return grant


# --- TwiML ----------------------------------------------------------------------------------------------


def twiml(*verbs: str) -> str:
    return '<?xml version="1.0" encoding="UTF-8"?><Response>' + "".join(verbs) + "</Response>"


def say(text: str) -> str:
    return f"<Say>{escape(text)}</Say>"


def connect_stream(config: ServerConfig, grant: StreamGrant) -> str:
    """``<Connect><Stream>``: the call's audio both ways on our websocket; the call ends when it closes."""
    url = config.base_url.replace("http", "ws", 1) + "/telephony/twilio/stream"
    params = dict(zip(("run", "channel", "direction", "caller", "expires"), grant.fields()[1:], strict=True))
    params["signature"] = sign_grant(config, grant)
    inner = "".join(f"<Parameter name={quoteattr(k)} value={quoteattr(v)}/>" for k, v in params.items())
    return f"<Connect><Stream url={quoteattr(url)}>{inner}</Stream></Connect>"


# --- the REST API (outbound calls) --------------------------------------------------------------------


class _TwilioHttp(AsyncTwilioHttpClient):  # type: ignore[misc]  # (untyped package)
    """The twilio package's aiohttp client, sending its basic auth as a header: it builds an ``aiohttp.BasicAuth``,
    which aiohttp 3.14 deprecates (a DeprecationWarning on every call)."""

    async def request(self, method: str, url: str, *args: object, auth: tuple[str, str] | None = None,
                      headers: dict[str, str] | None = None, **kwargs: object) -> object:  # fmt: skip
        if auth is not None:
            headers = {**(headers or {}), "Authorization": aiohttp.encode_basic_auth(auth[0], auth[1])}
        return await super().request(method, url, *args, headers=headers, **kwargs)


@dataclass(frozen=True)
class PlacedCall:
    sid: str
    status: str


async def place_call(config: ServerConfig, *, to: str, from_: str, url: str, status_callback: str) -> PlacedCall:
    """Dial ``to`` from ``from_`` through Twilio's REST API; Twilio asks ``url`` for TwiML when it answers.

    Answering-machine detection is on, so a voicemail is told apart from a person. Twilio's errors become
    ours: its 400s (an invalid or unreachable number) a 400 naming the participant's phone, its 401/403
    (our credentials) and 5xx, and no answer at all, a 502.
    """
    if not config.telephony_enabled:
        raise Conflict("Telephony is not configured on this server (Twilio account SID and auth token)")
    http = _TwilioHttp(timeout=REST_TIMEOUT_S)
    try:
        client = Client(config.twilio_account_sid, config.twilio_auth_token, http_client=http)
        if config.twilio_api_url:  # the REST API's base: a test double, or a regional endpoint
            client.api.base_url = config.twilio_api_url.rstrip("/")
        call = await client.api.v2010.accounts(config.twilio_account_sid).calls.create_async(
            to=to,
            from_=from_,
            url=url,
            method="POST",
            status_callback=status_callback,
            status_callback_method="POST",
            status_callback_event=["initiated", "ringing", "answered", "completed"],
            machine_detection="Enable",
        )
    except TwilioRestException as exc:
        log.info("Twilio refused a call: HTTP %s, code %s", exc.status, exc.code)
        detail = f"Twilio error {exc.code}: {exc.msg}" if exc.code else f"Twilio answered HTTP {exc.status}"
        if exc.status in (401, 403):
            raise UpstreamFailed(f"Twilio refused this server's credentials ({detail})") from None
        if 400 <= exc.status < 500:
            raise InvalidRequest(f"The call could not be placed: {detail}", param="participant.phone") from None
        raise UpstreamFailed(f"Twilio failed to place the call ({detail})") from None
    except (OSError, TimeoutError) as exc:
        raise UpstreamFailed(f"Twilio's API could not be reached ({type(exc).__name__})") from None
    finally:
        await http.close()
    return PlacedCall(str(call.sid), str(call.status))
