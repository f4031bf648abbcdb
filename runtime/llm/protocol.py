"""The streaming chat interface every model adapter implements, and its error tree.

Errors::

    LLMError                 anything that kept a completion from arriving
    ├── RateLimited          429: retry after ``retry_after`` seconds (if the server said)
    ├── UpstreamError        5xx, or another status worth retrying
    ├── LLMUnavailable       no connection (refused, reset, DNS)
    ├── LLMTimeout           no answer, or the stream stalled, within the request timeout
    └── BadRequest           4xx other than 429: the request itself is wrong (e.g. tools unsupported);
                             retrying the same request will not help

A stream may also end early without an error (cut connection, no ``[DONE]``): the
adapter then yields what arrived and a :class:`Finish` with ``reason=None``.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call; ``parameters`` is its JSON Schema."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: Sequence[ChatMessage]
    tools: Sequence[ToolSpec] = ()
    tool_choice: str | None = None  # a tool name to force, or None for the server's default
    json_mode: bool = False  # ask for a JSON object (response_format) instead of tools
    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None


# --- what a stream yields ------------------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    """Hidden reasoning (``reasoning_content`` and the like): never shown to a participant."""

    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A fragment of a tool call; fragments with the same ``index`` join into one call."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True)
class Finish:
    reason: str | None  # "stop", "tool_calls", "length", ...; None if the stream was cut


Chunk = TextDelta | ReasoningDelta | ToolCallDelta | Usage | Finish


class ChatModel(abc.ABC):
    """A model that streams chat completions."""

    @abc.abstractmethod
    def stream(self, request: ChatRequest, *, timeout: float) -> AsyncIterator[Chunk]:
        """Yield the completion's chunks as they arrive; ``timeout`` bounds the wait for each one."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


# --- errors ---------------------------------------------------------------------------


class LLMError(Exception):
    """A completion did not arrive. ``retryable`` says whether the same request may succeed later."""

    retryable = True

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RateLimited(LLMError):
    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, status=429)
        self.retry_after = retry_after


class UpstreamError(LLMError):
    pass


class LLMUnavailable(LLMError):
    pass


class LLMTimeout(LLMError):
    pass


class BadRequest(LLMError):
    retryable = False


@dataclass
class Collected:
    """A whole completion gathered from its chunks (for callers that need no streaming)."""

    text: str = ""
    reasoning: str = ""
    tool_calls: dict[int, dict[str, str]] = field(default_factory=dict)  # index -> {"id", "name", "arguments"}
    usage: Usage | None = None
    finish: str | None = None

    def add(self, chunk: Chunk) -> None:
        if isinstance(chunk, TextDelta):
            self.text += chunk.text
        elif isinstance(chunk, ReasoningDelta):
            self.reasoning += chunk.text
        elif isinstance(chunk, ToolCallDelta):
            call = self.tool_calls.setdefault(chunk.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = call["id"] or (chunk.id or "")
            call["name"] = call["name"] or (chunk.name or "")
            call["arguments"] += chunk.arguments
        elif isinstance(chunk, Usage):
            self.usage = chunk
        else:
            self.finish = chunk.reason


async def collect(model: ChatModel, request: ChatRequest, *, timeout: float) -> Collected:
    whole = Collected()
    async for chunk in model.stream(request, timeout=timeout):
        whole.add(chunk)
    return whole
