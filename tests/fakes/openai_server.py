"""A local stand-in for an OpenAI-compatible Chat Completions server, for tests and benchmarks.

It speaks the real wire format, so the adapter under test is the production one
(the official ``openai`` client): ``POST /v1/chat/completions`` with ``stream: true``
answers Server-Sent Events of ``chat.completion.chunk`` objects (the role first, then
content or ``tool_calls`` fragments split at any character, ``finish_reason``, a usage
chunk with empty ``choices`` when ``stream_options.include_usage`` is set, and
``data: [DONE]``); ``stream: false`` answers one ``chat.completion``; errors are the
``{"error": {"message", "type", "param", "code"}}`` bodies with their statuses
(429 with ``retry-after``, 500, 400). ``GET /v1/models`` lists the model.

Each request takes the next :class:`Reply` from :attr:`FakeOpenAI.script`, or asks
:attr:`FakeOpenAI.responder` when the script is empty. A reply can be slow (``ttft``,
``token_delay``), stall mid-stream, be cut without ``[DONE]``, carry hidden reasoning
(``reasoning_content``) or arbitrary text. Every request body is kept in
:attr:`FakeOpenAI.requests` for assertions.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MODEL = "fake-model"


@dataclass
class Reply:
    text: str = ""  # content, streamed in pieces
    tool: dict[str, Any] | None = None  # {"name": ..., "arguments": dict or raw string}
    reasoning: str = ""  # sent as reasoning_content before the answer
    status: int = 200  # an error status answers an OpenAI error body instead
    error_message: str = "scripted failure"
    retry_after: float | None = None
    ttft: float = 0.0  # seconds before the first content chunk
    token_delay: float = 0.0  # seconds between chunks
    piece: int = 6  # characters per chunk
    stall_after: int | None = None  # stop sending after this many content chunks (keep the stream open)
    cut_after: int | None = None  # close the connection after this many content chunks (no [DONE], no usage)
    finish_reason: str | None = None  # default: "tool_calls" with a tool, else "stop"
    cached_tokens: int = 0


def respond(action: str, text: str = "", **fields: Any) -> Reply:
    """A ``respond`` tool call, as the interviewer's prompt asks for."""
    return Reply(tool={"name": "respond", "arguments": {"action": action, "text": text, **fields}})


def tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


@dataclass
class FakeOpenAI:
    script: deque[Reply] = field(default_factory=deque)
    responder: Callable[[dict[str, Any]], Reply] | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    # per request, monotonic times: received, first (first content chunk sent), done (last chunk sent),
    # sentence (the chunk that completed the reply's first sentence), and the last user message it answered
    timings: list[dict[str, Any]] = field(default_factory=list)
    seen_headers: list[dict[str, str]] = field(default_factory=list)  # of every completion request
    model: str = MODEL
    _runner: web.AppRunner | None = None
    port: int = 0
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def push(self, *replies: Reply) -> None:
        self.script.extend(replies)

    async def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAI:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- handlers ---------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "fake"}]}
        )

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or "model" not in body:
            return _error(400, "'messages' and 'model' are required properties", "invalid_request_error")
        self.requests.append(body)
        self.seen_headers.append(dict(request.headers))
        timing: dict[str, Any] = {"received": time.monotonic(), "answer": _last_user(body)}
        self.timings.append(timing)
        reply = self.script.popleft() if self.script else (self.responder(body) if self.responder else Reply("OK."))
        if reply.status != 200:
            await asyncio.sleep(reply.ttft)
            headers = {"retry-after": str(reply.retry_after)} if reply.retry_after is not None else {}
            kind = {429: "rate_limit_exceeded", 400: "invalid_request_error"}.get(reply.status, "server_error")
            return _error(reply.status, reply.error_message, kind, headers)
        arguments = ""
        if reply.tool is not None:
            raw = reply.tool["arguments"]
            arguments = raw if isinstance(raw, str) else json.dumps(raw)
        prompt_tokens = tokens(json.dumps(body["messages"]))
        completion_tokens = tokens(reply.text + arguments + reply.reasoning)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
        }
        finish = reply.finish_reason or ("tool_calls" if reply.tool is not None else "stop")
        call_id = f"call_{next(self._ids)}"
        if not body.get("stream"):
            await asyncio.sleep(reply.ttft)
            message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
            if reply.tool is not None:
                message["tool_calls"] = [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": reply.tool["name"], "arguments": arguments},
                    }
                ]
            if reply.reasoning:
                message["reasoning_content"] = reply.reasoning
            return web.json_response(
                {
                    "id": f"chatcmpl-{call_id}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": self.model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": usage,
                }
            )
        return await self._stream(request, body, reply, arguments, usage, finish, call_id, timing)

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        reply: Reply,
        arguments: str,
        usage: dict[str, Any],
        finish: str,
        call_id: str,
        timing: dict[str, Any],
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        created = int(time.time())

        async def send(delta: dict[str, Any] | None, *, finish_reason: str | None = None, **extra: Any) -> None:
            chunk: dict[str, Any] = {
                "id": f"chatcmpl-{call_id}",
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model,
                "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                **extra,
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        await send({"role": "assistant", "content": ""})
        await asyncio.sleep(reply.ttft)
        pieces: list[dict[str, Any]] = [
            {"reasoning_content": reply.reasoning[i : i + reply.piece]}
            for i in range(0, len(reply.reasoning), reply.piece)
        ]
        pieces += [{"content": reply.text[i : i + reply.piece]} for i in range(0, len(reply.text), reply.piece)]
        if reply.tool is not None:
            pieces.append(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call_id,
                            "type": "function",
                            "function": {"name": reply.tool["name"], "arguments": ""},
                        }
                    ]
                }
            )
            pieces += [
                {"tool_calls": [{"index": 0, "function": {"arguments": arguments[i : i + reply.piece]}}]}
                for i in range(0, len(arguments), reply.piece)
            ]
        said = ""
        for n, delta in enumerate(pieces):
            if reply.stall_after is not None and n >= reply.stall_after:
                await asyncio.sleep(3600)  # the client gives up; the handler is cancelled when it disconnects
            if reply.cut_after is not None and n >= reply.cut_after:
                assert request.transport is not None
                request.transport.close()
                return response
            if n and reply.token_delay:
                await asyncio.sleep(reply.token_delay)
            await send(delta)
            timing.setdefault("first", time.monotonic())
            said += json.dumps(delta)
            if "sentence" not in timing and any(mark in said for mark in (". ", "? ", "! ", '?"', '."')):
                timing["sentence"] = time.monotonic()
        await send({}, finish_reason=finish)
        timing["done"] = time.monotonic()
        timing["prompt_tokens"] = usage["prompt_tokens"]
        if (body.get("stream_options") or {}).get("include_usage"):
            await send(None, usage=usage)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _last_user(body: dict[str, Any]) -> str | None:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return str(message.get("content"))
    return None


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
    return web.json_response(body, status=status, headers=headers)
