"""Deepgram's live API: streaming recognition with interim results over a websocket.

One connection per utterance: ``wss://api.deepgram.com/v1/listen?encoding=linear16&sample_rate=16000
&channels=1&interim_results=true&model=...&language=...`` with ``Authorization: Token KEY``. The
utterance's audio goes as binary frames (raw 16 kHz s16le, never an empty one: Deepgram closes on it)
while the participant speaks; the service answers with JSON ``Results`` messages
(``channel.alternatives[0].transcript``, ``is_final``, ``speech_final``): interim ones revise the words
since the last final one. ``{"type": "CloseStream"}`` ends the utterance: the service flushes its last
finals, sends a ``Metadata`` summary and closes the socket (1000). Errors: a refused handshake is an
HTTP status (with a ``dg-error`` header); a failure during the stream is a close frame with its code and
reason (1008 ``DATA-0000`` audio it cannot decode, 1011 ``NET-0000``/``NET-0001`` timeouts).

Opening per utterance means no keep-alive is needed between answers (the service drops a connection
that gets no audio for 10 s), and the handshake happens while the participant is speaking (the audio
fed meanwhile is held and sent once the socket is open).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import urlencode

import aiohttp

from media.audio import PCM, SAMPLE_RATE
from media.hosted import HostedEngine, HostedError
from media.stt.base import HostedRecognizer

log = logging.getLogger("vivavoce.hosted")


class DeepgramRecognition(HostedRecognizer):
    """One participant's utterances, each over its own websocket (see the module docs)."""

    name = "deepgram"

    def __init__(self, *, engine: HostedEngine, session: aiohttp.ClientSession, language: str = "en") -> None:
        self.engine = engine
        self.session = session
        self.language = language
        self._utterance: _Utterance | None = None

    def url(self) -> str:
        query = {
            "encoding": "linear16",
            "sample_rate": str(SAMPLE_RATE),
            "channels": "1",
            "interim_results": "true",
            "punctuate": "true",
            "model": self.engine.model,
            "language": self.language,
        }
        return f"{self.engine.url}?{urlencode(query)}"

    async def start(self) -> None:
        if self._utterance is not None:
            await self._utterance.abandon()
        self._utterance = _Utterance(self)

    async def feed(self, pcm: PCM) -> None:
        self._current().feed(pcm.tobytes())

    async def partial(self) -> str:
        return self._current().text(interim=True)

    async def finish(self) -> str:
        utterance = self._current()
        self._utterance = None
        return await utterance.finish()

    async def close(self) -> None:
        if self._utterance is not None:
            utterance, self._utterance = self._utterance, None
            await utterance.abandon()

    def _current(self) -> _Utterance:
        if self._utterance is None:
            raise RuntimeError("start() the recognition first")
        return self._utterance


class _Utterance:
    """One websocket: a task connects and reads; audio is queued until it is open."""

    def __init__(self, owner: DeepgramRecognition) -> None:
        self.owner = owner
        self.finals: list[str] = []
        self.interim = ""
        self.error: HostedError | None = None
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="deepgram-utterance")

    def feed(self, data: bytes) -> None:
        if data:
            self._outbox.put_nowait(data)

    def text(self, *, interim: bool) -> str:
        parts = [*self.finals, self.interim] if interim else self.finals
        return " ".join(p for p in parts if p)

    async def finish(self) -> str:
        self._outbox.put_nowait(None)  # CloseStream after the audio queued so far
        try:
            async with asyncio.timeout(self.owner.engine.timeout_s):
                await asyncio.shield(self._task)
        except TimeoutError:
            await self.abandon()
            raise HostedError(f"no final transcript within {self.owner.engine.timeout_s:g} s") from None
        if self.error is not None:
            raise self.error
        return self.text(interim=False)

    async def abandon(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task

    async def _run(self) -> None:
        engine = self.owner.engine
        headers = {"Authorization": f"Token {engine.api_key()}"}
        try:
            async with self.owner.session.ws_connect(
                self.owner.url(), headers=headers, timeout=aiohttp.ClientWSTimeout(ws_close=engine.timeout_s)
            ) as ws:
                sender = asyncio.create_task(self._send(ws))
                try:
                    await self._receive(ws)
                finally:
                    sender.cancel()
                    with contextlib.suppress(BaseException):
                        await sender
        except aiohttp.WSServerHandshakeError as exc:
            reason = exc.headers.get("dg-error") if exc.headers else None
            self.error = HostedError(f"connection refused: HTTP {exc.status}" + (f" ({reason})" if reason else ""))
        except (aiohttp.ClientError, OSError) as exc:
            self.error = HostedError(f"connection failed: {exc!r}")

    async def _send(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while (data := await self._outbox.get()) is not None:
            await ws.send_bytes(data)
        await ws.send_str(json.dumps({"type": "CloseStream"}))

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            message = await ws.receive()
            if message.type is aiohttp.WSMsgType.TEXT:
                self._on_text(message.data)
            elif message.type is aiohttp.WSMsgType.CLOSE:
                if message.data != 1000 and self.error is None:
                    reason = f" {message.extra}" if message.extra else ""
                    self.error = HostedError(f"stream closed by the service: {message.data}{reason}")
                return
            elif message.type is aiohttp.WSMsgType.ERROR:
                self.error = HostedError(f"websocket error: {message.data!r}")
                return
            elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                if self.error is None:
                    self.error = HostedError("the stream ended without a close frame")
                return

    def _on_text(self, data: str) -> None:
        try:
            message: Any = json.loads(data)
        except ValueError:
            log.debug("deepgram sent text that is not JSON")
            return
        if not isinstance(message, dict) or message.get("type") != "Results":
            return  # Metadata, SpeechStarted, UtteranceEnd...
        try:
            transcript = str(message["channel"]["alternatives"][0]["transcript"]).strip()
        except (KeyError, IndexError, TypeError):
            self.error = HostedError("a Results message without channel.alternatives[0].transcript")
            return
        if message.get("is_final"):
            if transcript:
                self.finals.append(transcript)
            self.interim = ""
        else:
            self.interim = transcript
