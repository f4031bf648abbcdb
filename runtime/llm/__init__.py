"""Large language models behind one small streaming interface.

:class:`~runtime.llm.protocol.ChatModel` is what the interviewer needs from a model: a
streamed chat completion as typed chunks (text, hidden reasoning, tool-call fragments,
usage). :mod:`runtime.llm.openai_compat` speaks the OpenAI-compatible Chat Completions
API that OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp's server and LM Studio serve.
Errors are one small tree (see :mod:`runtime.llm.protocol`), so callers can tell a
retryable failure from one that is not.
"""

from __future__ import annotations

from runtime.llm.pricing import Price, Prices
from runtime.llm.protocol import (
    BadRequest,
    ChatMessage,
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
    ToolSpec,
    UpstreamError,
    Usage,
)

__all__ = [
    "BadRequest",
    "ChatMessage",
    "ChatModel",
    "ChatRequest",
    "Chunk",
    "Finish",
    "LLMError",
    "LLMTimeout",
    "LLMUnavailable",
    "Price",
    "Prices",
    "RateLimited",
    "ReasoningDelta",
    "TextDelta",
    "ToolCallDelta",
    "ToolSpec",
    "UpstreamError",
    "Usage",
]
