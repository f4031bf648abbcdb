"""Local stand-ins for hosted speech services, speaking their real wire protocols and error shapes.

The services cannot run here, so one aiohttp server plays all three, doing the real work with the
embedded engines (PocketSphinx listens, eSpeak NG speaks), so an interview through them is a real one:

* OpenAI-compatible ``POST /v1/audio/transcriptions``: multipart ``file`` (any format soundfile reads),
  ``model`` (required), ``language``, ``response_format`` (``json`` -> ``{"text"}``, ``verbose_json`` adds
  ``task``, ``language``, ``duration``, ``segments``; ``text`` -> plain text). Errors:
  ``{"error": {"message", "type", "param", "code"}}`` with 400 (bad file, missing model), 401 (key).
* OpenAI-compatible ``POST /v1/audio/speech``: JSON ``model``, ``input``, ``voice`` (required),
  ``response_format`` ``pcm`` (24 kHz s16le mono, streamed in chunks); other formats are refused here.
* Deepgram live ``GET /v1/listen`` (websocket): ``Authorization: Token KEY`` (else HTTP 401 with a
  ``dg-error`` header and ``{"err_code", "err_msg"}``), ``encoding=linear16&sample_rate=16000``; binary
  audio frames, interim ``Results`` every 0.5 s of audio, ``{"type": "CloseStream"}`` -> final ``Results``
  (``is_final``, ``speech_final``), ``Metadata``, close 1000; an empty frame -> close 1008 ``DATA-0000``.

``fail_next(route, how)`` makes the next request on a route fail: an HTTP status (answered with the
service's error shape), ``"hang"`` (never answers in time), ``"bad_audio"`` (the file is taken as
undecodable), or for the websocket a close code.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf
from aiohttp import WSMsgType, web

from media.resample import resample
from media.stt import create_recognizer
from media.tts.espeak import EspeakSynthesizer

KEY = "sk-test-not-a-real-key"
HANG_S = 60.0


def openai_error(status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> web.Response:  # fmt: skip
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status)


@dataclass
class SpeechServices:
    """The fake services' state: what they were asked, and the failures queued for them."""

    key: str = KEY
    requests: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, deque[int | str]] = field(default_factory=lambda: defaultdict(deque))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _recognizer: Any = None

    def fail_next(self, route: str, how: int | str) -> None:
        """``route``: ``transcriptions``, ``speech`` or ``listen``."""
        self.failures[route].append(how)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v1/audio/transcriptions", self.transcriptions)
        app.router.add_post("/v1/audio/speech", self.speech)
        app.router.add_get("/v1/listen", self.listen)
        return app

    # --- the engines doing the work ---

    def recognise(self, pcm16k: np.ndarray) -> str:
        with self._lock:
            if self._recognizer is None:
                self._recognizer = create_recognizer()  # the embedded default (Whisper), as good as a hosted one
            self._recognizer.start()
            self._recognizer.feed(pcm16k)
            return str(self._recognizer.finish())

    @staticmethod
    def speak(text: str) -> bytes:
        pcm = EspeakSynthesizer().synthesize_all(text)
        return np.asarray(resample(pcm, 22_050, 24_000), dtype="<i2").tobytes()

    def _failure(self, route: str) -> int | str | None:
        """The failure queued for this request (0 queued: answer this one normally)."""
        queue = self.failures[route]
        return (queue.popleft() or None) if queue else None

    def _authorised(self, request: web.Request, scheme: str) -> bool:
        return request.headers.get("Authorization") == f"{scheme} {self.key}"

    # --- OpenAI: transcriptions ---

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request, "Bearer"):
            return openai_error(401, "Incorrect API key provided.", code="invalid_api_key")
        fields: dict[str, Any] = {}
        reader = await request.multipart()
        async for part in reader:
            if part.name == "file":
                fields["file"] = bytes(await part.read())  # type: ignore[union-attr]
                fields["filename"] = part.filename  # type: ignore[union-attr]
                fields["content_type"] = part.headers.get("Content-Type")
            elif part.name:
                fields[part.name] = await part.text()  # type: ignore[union-attr]
        self.requests.append({"route": "transcriptions", **{k: v for k, v in fields.items() if k != "file"}})
        failure = self._failure("transcriptions")
        if failure == "hang":
            await asyncio.sleep(HANG_S)
        elif failure == "bad_audio":
            fields["file"] = b"not audio"
        elif isinstance(failure, int):
            return openai_error(failure, "The server had an error while processing your request.", kind="server_error")
        if not fields.get("model"):
            return openai_error(400, "you must provide a model parameter", param="model")
        if "file" not in fields:
            return openai_error(400, "'file' is a required property", param="file")
        try:
            pcm, rate = sf.read(io.BytesIO(fields["file"]), dtype="int16")
        except Exception:
            return openai_error(400, "Invalid file format. Supported formats: ['flac', 'mp3', 'wav', ...]")
        if pcm.ndim > 1:
            pcm = pcm[:, 0]
        audio = np.asarray(resample(pcm, rate, 16_000), dtype=np.int16)
        words = await asyncio.to_thread(self.recognise, audio)
        text = (words[:1].upper() + words[1:] + ".") if words else ""  # as Whisper writes it
        duration = len(audio) / 16_000
        response_format = fields.get("response_format", "json")
        if response_format == "text":
            return web.Response(text=text)
        if response_format == "verbose_json":
            segment = {"id": 0, "seek": 0, "start": 0.0, "end": duration, "text": text, "tokens": [],
                       "temperature": 0.0, "avg_logprob": -0.2, "compression_ratio": 1.0,
                       "no_speech_prob": 0.01}  # fmt: skip
            return web.json_response({"task": "transcribe", "language": "english", "duration": duration,
                                      "text": text, "segments": [segment] if text else []})  # fmt: skip
        if response_format != "json":
            return openai_error(400, f"Invalid response_format {response_format!r}", param="response_format")
        return web.json_response({"text": text})

    # --- OpenAI: speech ---

    async def speech(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request, "Bearer"):
            return openai_error(401, "Incorrect API key provided.", code="invalid_api_key")
        try:
            body = await request.json()
        except ValueError:
            return openai_error(400, "We could not parse the JSON body of your request.")
        self.requests.append({"route": "speech", **body})
        failure = self._failure("speech")
        if failure == "hang":
            await asyncio.sleep(HANG_S)
        elif isinstance(failure, int):
            return openai_error(failure, "The server had an error while processing your request.", kind="server_error")
        for name in ("model", "input", "voice"):
            if not body.get(name):
                return openai_error(400, f"Missing required parameter: '{name}'.", param=name)
        if body.get("response_format", "mp3") != "pcm":
            return openai_error(400, "this fake speaks only response_format 'pcm'", param="response_format")
        audio = await asyncio.to_thread(self.speak, body["input"])
        response = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
        await response.prepare(request)
        for i in range(0, len(audio), 4801):  # odd-sized chunks, as a network delivers them
            await response.write(audio[i : i + 4801])
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    # --- Deepgram: live ---

    async def listen(self, request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        if not self._authorised(request, "Token"):
            body = {"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials.", "request_id": request_id}
            return web.json_response(body, status=401, headers={"dg-error": "Invalid credentials.",
                                                                 "dg-request-id": request_id})  # fmt: skip
        query = request.query
        self.requests.append({"route": "listen", **query})
        if query.get("encoding") != "linear16" or query.get("sample_rate") != "16000":
            body = {"err_code": "Bad Request", "err_msg": "encoding and sample_rate must be set for raw audio"}
            return web.json_response(body, status=400, headers={"dg-error": body["err_msg"]})
        failure = self._failure("listen")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        recognizer: Any = None
        fed = since_interim = 0
        heard: list[np.ndarray] = []  # the final transcript is the default recogniser's, on all of it
        async for message in ws:
            if message.type is WSMsgType.BINARY:
                if not message.data:
                    await ws.close(code=1008, message=b"DATA-0000")
                    break
                if isinstance(failure, int):  # the service fails mid-stream
                    await ws.close(code=failure, message=b"NET-0000")
                    break
                if recognizer is None:
                    recognizer = await asyncio.to_thread(create_recognizer, "pocketsphinx")
                    await asyncio.to_thread(recognizer.start)
                pcm = np.frombuffer(message.data, dtype="<i2").astype(np.int16)
                heard.append(pcm)
                partial = await asyncio.to_thread(recognizer.feed, pcm)  # interim results: PocketSphinx streams
                fed += len(pcm)
                since_interim += len(pcm)
                if since_interim >= 8_000 and partial:
                    since_interim = 0
                    await ws.send_str(json.dumps(_results(request_id, partial, fed, final=False)))
            elif message.type is WSMsgType.TEXT:
                control = json.loads(message.data)
                if control.get("type") == "CloseStream":
                    if failure == "hang":
                        await asyncio.sleep(HANG_S)
                    if recognizer is not None:
                        await asyncio.to_thread(recognizer.finish)
                    words = await asyncio.to_thread(self.recognise, np.concatenate(heard)) if heard else ""
                    await ws.send_str(json.dumps(_results(request_id, words, fed, final=True)))
                    await ws.send_str(json.dumps({"type": "Metadata", "transaction_key": "deprecated",
                                                  "request_id": request_id, "sha256": "", "created": "",
                                                  "duration": fed / 16_000, "channels": 1}))  # fmt: skip
                    await ws.close(code=1000)
                    break
        return ws


def _results(request_id: str, transcript: str, fed: int, *, final: bool) -> dict[str, Any]:
    duration = fed / 16_000
    return {
        "type": "Results",
        "channel_index": [0, 1],
        "duration": duration,
        "start": 0.0,
        "is_final": final,
        "speech_final": final,
        "channel": {"alternatives": [{"transcript": transcript, "confidence": 0.9, "words": []}]},
        "metadata": {"request_id": request_id, "model_info": {"name": "fake", "version": "0", "arch": "fake"}},
        "from_finalize": final,
    }


async def start_services(services: SpeechServices) -> tuple[web.AppRunner, str]:
    """Serve ``services`` on 127.0.0.1; returns the runner and the base URL (``http://127.0.0.1:PORT``)."""
    runner = web.AppRunner(services.app(), shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"
