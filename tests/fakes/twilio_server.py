"""Local stand-ins for Twilio: its REST API (outbound calls) and its side of a call (webhooks, Media Streams).

:class:`FakeTwilioAPI` answers the real ``twilio`` client: ``POST /2010-04-01/Accounts/{sid}/Calls.json``,
form-encoded (``To``, ``From``, ``Url`` or ``Twiml``, ``StatusCallback``...), HTTP basic auth with the
account SID and auth token; it answers Twilio's call resource (201) or Twilio's error shape
(``{"code", "message", "more_info", "status"}``): 20003 for bad credentials (401), 21211 for an invalid
``To`` (400), 21205 for a missing ``Url`` (400), and any status scripted in :attr:`FakeTwilioAPI.fail_next`.

:class:`MediaStreamsCall` is Twilio's side of one call: it posts the voice webhook, signed as Twilio signs
(``X-Twilio-Signature``: HMAC-SHA1 of the URL and sorted form fields, with the auth token), reads the
TwiML, opens the ``<Stream>`` websocket and speaks the Media Streams protocol as documented: ``connected``,
``start`` (with the TwiML's ``<Parameter>``s as ``customParameters``), ``media`` frames of base64 μ-law,
20 ms each, paced in real time (silence between utterances, as a phone line sends), ``dtmf``, ``stop``;
it echoes each ``mark`` once the audio sent before it has played (at once: it plays audio as it arrives),
and on ``clear`` drops nothing it has not played yet (there is nothing buffered) and notes it.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import secrets
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import websockets
from aiohttp import web
from twilio.request_validator import RequestValidator

from media.g711 import decode_mulaw, encode_mulaw
from media.resample import resample

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "test-auth-token-" + "f" * 16
FRAME = 160  # 20 ms of 8 kHz
AUDIBLE_RMS = 200.0


def twilio_error(status: int, code: int, message: str) -> web.Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status)


@dataclass
class FakeTwilioAPI:
    account_sid: str = ACCOUNT_SID
    auth_token: str = AUTH_TOKEN
    calls: list[dict[str, Any]] = field(default_factory=list)  # every accepted request's form
    fail_next: list[tuple[int, int, str]] = field(default_factory=list)  # (status, code, message), in order
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> FakeTwilioAPI:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Calls.json", self._create_call)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _create_call(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if auth != expected or request.match_info["sid"] != self.account_sid:
            return twilio_error(401, 20003, "Authenticate")
        if self.fail_next:
            status, code, message = self.fail_next.pop(0)
            return twilio_error(status, code, message)
        form = dict(await request.post())
        to = str(form.get("To", ""))
        if not (to.startswith("+") and to[1:].isdigit() and 8 <= len(to) <= 16):
            return twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not form.get("Url") and not form.get("Twiml"):
            return twilio_error(400, 21205, "Url parameter is required.")
        self.calls.append({**form, "Authorization": auth})
        sid = "CA" + secrets.token_hex(16)
        now = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        body = {
            "sid": sid, "account_sid": self.account_sid, "to": to, "to_formatted": to, "from": form.get("From"),
            "from_formatted": form.get("From"), "status": "queued", "direction": "outbound-api",
            "date_created": now, "date_updated": now, "start_time": None, "end_time": None, "duration": None,
            "price": None, "price_unit": "USD", "answered_by": None, "api_version": "2010-04-01",
            "caller_name": None, "forwarded_from": None, "group_sid": None, "parent_call_sid": None,
            "phone_number_sid": None, "queue_time": "0", "trunk_sid": None, "annotation": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{sid}.json", "subresource_uris": {},
        }  # fmt: skip
        return web.json_response(body, status=201)


def signature(url: str, params: dict[str, str], token: str = AUTH_TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(url, params))


async def post_webhook(
    http: aiohttp.ClientSession, url: str, params: dict[str, str], *, token: str = AUTH_TOKEN, sign: bool = True
) -> tuple[int, str]:
    """A webhook request as Twilio sends it: form-encoded, signed on the full URL."""
    headers = {"X-Twilio-Signature": signature(url, params, token)} if sign else {}
    async with http.post(url, data=params, headers=headers) as resp:
        return resp.status, await resp.text()


def call_form(call_sid: str, *, to: str, from_: str, direction: str = "inbound", **extra: str) -> dict[str, str]:
    return {"CallSid": call_sid, "AccountSid": ACCOUNT_SID, "From": from_, "To": to, "CallStatus": "ringing",
            "Direction": direction, "ApiVersion": "2010-04-01", **extra}  # fmt: skip


def stream_of(twiml: str) -> tuple[str, dict[str, str]]:
    """The ``<Connect><Stream url>`` of a TwiML answer and its ``<Parameter>``s."""
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    assert stream is not None, twiml
    return stream.attrib["url"], {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}


class MediaStreamsCall:
    """Twilio's side of one call on our Media Streams websocket (see the module docs)."""

    def __init__(self, call_sid: str | None = None) -> None:
        self.call_sid = call_sid or "CA" + secrets.token_hex(16)
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.ws: websockets.ClientConnection | None = None
        self.received: list[dict[str, Any]] = []  # every frame from the server
        self.clears: list[float] = []  # when each clear arrived
        self.marks_echoed: list[str] = []
        self.heard_at: list[float] = []  # arrival of each audible 20 ms frame
        self.audio = bytearray()  # μ-law received
        self._seq = itertools.count(1)
        self._chunk = itertools.count(1)
        self._sent_samples = 0
        self._speech: asyncio.Queue[np.ndarray] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._speaking = False
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""

    async def answer(self, http: aiohttp.ClientSession, voice_url: str, form: dict[str, str]) -> dict[str, str]:
        """Post the voice webhook, then open the stream its TwiML names; returns the stream's parameters."""
        status, twiml = await post_webhook(http, voice_url, form)
        assert status == 200, twiml
        url, params = stream_of(twiml)
        await self.connect(url, params)
        return params

    async def connect(self, url: str, params: dict[str, str], *, media_format: dict[str, Any] | None = None) -> None:
        self.ws = await websockets.connect(url, open_timeout=5, max_size=2**22)
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        start = {
            "accountSid": ACCOUNT_SID, "streamSid": self.stream_sid, "callSid": self.call_sid, "tracks": ["inbound"],
            "customParameters": params,
            "mediaFormat": media_format or {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }  # fmt: skip
        await self._send({"event": "start", "sequenceNumber": str(next(self._seq)), "start": start,
                          "streamSid": self.stream_sid})  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        self._sender = asyncio.create_task(self._send_media())

    async def _send(self, frame: dict[str, Any] | str) -> None:
        assert self.ws is not None
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def send_raw(self, data: str | bytes) -> None:
        assert self.ws is not None
        await self.ws.send(data)

    def say(self, pcm16k: np.ndarray) -> None:
        """Queue an utterance (16 kHz int16): sent as μ-law 8 kHz in real time after what is queued."""
        self._speech.put_nowait(np.asarray(resample(pcm16k, 16_000, 8_000), dtype=np.int16))

    async def said(self) -> None:
        """Wait until everything queued has been sent (and 100 ms more)."""
        while not self._speech.empty() or self._speaking:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)

    async def dtmf(self, digits: str) -> None:
        for digit in digits:
            await self._send({"event": "dtmf", "streamSid": self.stream_sid, "sequenceNumber": str(next(self._seq)),
                              "dtmf": {"track": "inbound_track", "digit": digit}})  # fmt: skip
            await asyncio.sleep(0.05)

    async def hang_up(self) -> None:
        if self.ws is not None and not self.closed.is_set():
            stop = {"accountSid": ACCOUNT_SID, "callSid": self.call_sid}
            await self._send({"event": "stop", "sequenceNumber": str(next(self._seq)), "stop": stop,
                              "streamSid": self.stream_sid})  # fmt: skip
        await self.close()

    async def close(self) -> None:
        for task in (self._sender, self._reader):
            if task is not None:
                task.cancel()
        if self.ws is not None:
            await self.ws.close()

    async def _send_media(self) -> None:
        """20 ms frames in real time: queued speech, else silence (a phone line never stops sending)."""
        silence = np.zeros(FRAME, dtype=np.int16)
        current = np.zeros(0, dtype=np.int16)
        start = time.monotonic()
        n = 0
        while True:
            if not len(current) and not self._speech.empty():
                current = self._speech.get_nowait()
            self._speaking = bool(len(current))
            frame, current = (current[:FRAME], current[FRAME:]) if len(current) else (silence, current)
            if len(frame) < FRAME:
                frame = np.concatenate([frame, np.zeros(FRAME - len(frame), dtype=np.int16)])
            media = {"track": "inbound", "chunk": str(next(self._chunk)), "timestamp": str(self._sent_samples // 8),
                     "payload": base64.b64encode(encode_mulaw(frame)).decode()}  # fmt: skip
            self._sent_samples += FRAME
            try:
                await self._send({"event": "media", "sequenceNumber": str(next(self._seq)), "media": media,
                                  "streamSid": self.stream_sid})  # fmt: skip
            except websockets.ConnectionClosed:
                return
            n += 1
            await asyncio.sleep(max(start + n * 0.02 - time.monotonic(), 0))

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for data in self.ws:
                frame = json.loads(data)
                self.received.append(frame)
                event = frame.get("event")
                assert frame.get("streamSid") == self.stream_sid, frame
                if event == "media":
                    raw = base64.b64decode(frame["media"]["payload"])
                    self.audio += raw
                    pcm = decode_mulaw(raw).astype(np.float64)
                    if len(pcm) and np.sqrt(np.mean(pcm**2)) > AUDIBLE_RMS:
                        self.heard_at.append(time.time())
                elif event == "mark":  # played as it arrived: the audio before the mark has been heard
                    self.marks_echoed.append(frame["mark"]["name"])
                    await self._send({"event": "mark", "sequenceNumber": str(next(self._seq)),
                                      "streamSid": self.stream_sid, "mark": frame["mark"]})  # fmt: skip
                elif event == "clear":
                    self.clears.append(time.time())
        except websockets.ConnectionClosed:
            pass
        finally:
            if self.ws.close_code is not None:
                self.close_code = self.ws.close_code
                self.close_reason = self.ws.close_reason or ""
            self.closed.set()

    async def wait_quiet(self, quiet_s: float = 0.6, timeout: float = 30.0) -> None:
        """Wait until the server has spoken and then been silent for ``quiet_s`` (its turn is over)."""

        async def poll() -> None:
            while not (self.heard_at and time.time() - self.heard_at[-1] >= quiet_s):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(poll(), timeout)

    async def wait_audio(self, after: float, timeout: float = 30.0) -> float:
        """The arrival of the first audible frame after ``after``."""

        async def poll() -> float:
            while True:
                later = [t for t in self.heard_at if t > after]
                if later:
                    return later[0]
                await asyncio.sleep(0.02)

        return await asyncio.wait_for(poll(), timeout)
