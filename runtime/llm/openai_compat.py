"""The OpenAI-compatible Chat Completions API, streamed, through the official ``openai`` package.

Why the official client: it is the reference implementation of the wire format that
OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp's server and LM Studio all speak, it
parses the SSE ``chat.completion.chunk`` stream and the error bodies, and it is
maintained with the API. Its own retries are off (``max_retries=0``): the
interviewer retries within its per-turn deadline, which the client cannot know.

What servers differ in (docs/llm.md): hidden reasoning arrives as ``reasoning_content``
or ``reasoning`` beside ``content`` (kept apart here, never spoken) or inline as
``<think>…</think>`` (stripped by the interviewer); the usage chunk comes only with
``stream_options.include_usage`` and may be missing when a stream is cut; tool-call
arguments arrive as fragments joined by ``index``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
from openai import AsyncOpenAI

from runtime.llm.protocol import (
    BadRequest,
    ChatModel,
    ChatRequest,
    Chunk,
    Finish,
    LLMError,
    LLMTimeout,
    LLMUnavailable,
    RateLimited,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UpstreamError,
    Usage,
)

log = logging.getLogger("vivavoce.llm")

_REASONING_FIELDS = ("reasoning_content", "reasoning")


class OpenAICompatModel(ChatModel):
    """A chat model served at ``base_url`` (``…/v1``). ``api_key`` may be anything for local servers."""

    def __init__(self, *, base_url: str, api_key: str | None = None, default_timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        # Local servers ignore the key, but the client insists on one.
        self._client = AsyncOpenAI(
            base_url=self.base_url, api_key=api_key or "not-needed", max_retries=0, timeout=default_timeout
        )
        # The client imports its chat resources on first use (~0.1 s): at start, not in a participant's turn.
        self._completions = self._client.chat.completions

    async def aclose(self) -> None:
        await self._client.close()

    def _arguments(self, request: ChatRequest, timeout: float) -> dict[str, Any]:
        args: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "timeout": timeout,
        }
        if request.tools:
            args["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in request.tools
            ]
            if request.tool_choice:
                args["tool_choice"] = {"type": "function", "function": {"name": request.tool_choice}}
        if request.json_mode:
            args["response_format"] = {"type": "json_object"}
        if request.temperature is not None:
            args["temperature"] = request.temperature
        if request.max_tokens is not None:
            args["max_tokens"] = request.max_tokens
        if request.seed is not None:
            args["seed"] = request.seed
        return args

    async def stream(self, request: ChatRequest, *, timeout: float) -> AsyncIterator[Chunk]:
        try:
            response = await self._completions.create(**self._arguments(request, timeout))
        except openai.APIError as exc:
            raise _translate(exc) from exc
        except httpx2.HTTPError as exc:
            raise _transport(exc) from exc
        finished = False
        try:
            async for chunk in response:
                if chunk.usage is not None:
                    details = chunk.usage.prompt_tokens_details
                    yield Usage(
                        input_tokens=chunk.usage.prompt_tokens or 0,
                        output_tokens=chunk.usage.completion_tokens or 0,
                        cached_tokens=(details.cached_tokens or 0) if details is not None else 0,
                    )
                for choice in chunk.choices[:1]:
                    delta = choice.delta
                    extra = delta.model_extra or {}
                    for name in _REASONING_FIELDS:
                        hidden = extra.get(name)
                        if isinstance(hidden, str) and hidden:
                            yield ReasoningDelta(hidden)
                    if delta.content:
                        yield TextDelta(delta.content)
                    for call in delta.tool_calls or ():
                        function = call.function
                        yield ToolCallDelta(
                            index=call.index,
                            id=call.id,
                            name=function.name if function is not None else None,
                            arguments=(function.arguments or "") if function is not None else "",
                        )
                    if choice.finish_reason is not None:
                        finished = True
                        yield Finish(choice.finish_reason)
        except (openai.APITimeoutError, httpx2.TimeoutException) as exc:
            raise LLMTimeout(f"the model's stream stalled for {timeout:.1f} s") from exc
        except (openai.APIConnectionError, httpx2.NetworkError, httpx2.ProtocolError) as exc:
            log.info("model stream cut: %r", exc)  # what arrived stands; the caller decides
        except openai.APIError as exc:
            raise _translate(exc) from exc
        except httpx2.HTTPError as exc:
            raise _transport(exc) from exc
        finally:
            await response.close()
        if not finished:
            yield Finish(None)


def _retry_after(exc: openai.APIStatusError) -> float | None:
    raw = exc.response.headers.get("retry-after")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


def _translate(exc: openai.APIError) -> LLMError:
    if isinstance(exc, openai.APITimeoutError):
        return LLMTimeout(f"the model did not answer in time: {exc}")
    if isinstance(exc, openai.APIConnectionError):
        return LLMUnavailable(f"could not reach the model: {exc}")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = f"model server answered {status}: {_short(exc)}"
        if status == 429:
            return RateLimited(message, retry_after=_retry_after(exc))
        if status >= 500 or status in (408, 409):
            return UpstreamError(message, status=status)
        return BadRequest(message, status=status)
    return UpstreamError(f"bad answer from the model server: {exc}")


def _transport(exc: httpx2.HTTPError) -> LLMError:
    if isinstance(exc, httpx2.TimeoutException):
        return LLMTimeout(f"the model did not answer in time: {exc!r}")
    return LLMUnavailable(f"could not reach the model: {exc!r}")


def _short(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:300]
    return str(exc.message)[:300]
