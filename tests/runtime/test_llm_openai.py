"""The OpenAI-compatible adapter against a server speaking the real streaming format."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from runtime.llm import (
    BadRequest,
    ChatMessage,
    ChatRequest,
    Finish,
    LLMTimeout,
    LLMUnavailable,
    RateLimited,
    ReasoningDelta,
    TextDelta,
    ToolSpec,
    UpstreamError,
    Usage,
)
from runtime.llm.openai_compat import OpenAICompatModel
from runtime.llm.protocol import collect
from tests.conftest import UNIT
from tests.fakes.openai_server import FakeOpenAI, Reply, respond

REQUEST = ChatRequest(model="fake-model", messages=[ChatMessage("user", "Hello")])
TOOL = ToolSpec("respond", "Say something", {"type": "object", "properties": {"text": {"type": "string"}}})


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def model(fake: FakeOpenAI) -> AsyncIterator[OpenAICompatModel]:
    m = OpenAICompatModel(base_url=fake.base_url, api_key="sk-test")
    yield m
    await m.aclose()


async def test_text_streams_in_pieces_with_usage_last(fake: FakeOpenAI, model: OpenAICompatModel) -> None:
    fake.push(Reply("What made you choose it?", piece=3))
    chunks = [c async for c in model.stream(REQUEST, timeout=5 * UNIT)]
    texts = [c.text for c in chunks if isinstance(c, TextDelta)]
    assert len(texts) > 3 and "".join(texts) == "What made you choose it?"
    assert isinstance(chunks[-1], Usage) and chunks[-1].output_tokens > 0 and chunks[-1].input_tokens > 0
    assert Finish("stop") in chunks
    sent = fake.requests[0]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == [{"role": "user", "content": "Hello"}]


async def test_tool_call_arguments_split_across_chunks_are_joined(fake: FakeOpenAI, model: OpenAICompatModel) -> None:
    fake.push(replace(respond("follow_up", "Why was that?"), piece=2))
    request = ChatRequest(model="fake-model", messages=REQUEST.messages, tools=[TOOL], tool_choice="respond")
    whole = await collect(model, request, timeout=5 * UNIT)
    assert whole.finish == "tool_calls" and whole.text == ""
    assert whole.tool_calls[0]["name"] == "respond"
    assert json.loads(whole.tool_calls[0]["arguments"]) == {"action": "follow_up", "text": "Why was that?"}
    sent = fake.requests[0]
    assert sent["tools"][0]["function"]["name"] == "respond"
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "respond"}}


async def test_hidden_reasoning_is_kept_apart_from_the_text(fake: FakeOpenAI, model: OpenAICompatModel) -> None:
    fake.push(Reply("Fine.", reasoning="The user said hello, so"))
    chunks = [c async for c in model.stream(REQUEST, timeout=5 * UNIT)]
    assert "".join(c.text for c in chunks if isinstance(c, ReasoningDelta)) == "The user said hello, so"
    assert "".join(c.text for c in chunks if isinstance(c, TextDelta)) == "Fine."


async def test_a_429_says_when_to_retry(fake: FakeOpenAI, model: OpenAICompatModel) -> None:
    fake.push(Reply(status=429, retry_after=0.5, error_message="Rate limit reached"))
    with pytest.raises(RateLimited) as caught:
        await collect(model, REQUEST, timeout=5 * UNIT)
    assert caught.value.retry_after == 0.5 and "Rate limit reached" in str(caught.value)


async def test_server_errors_are_retryable_and_bad_requests_are_not(fake: FakeOpenAI, model: OpenAICompatModel) -> None:
    fake.push(Reply(status=500), Reply(status=400, error_message="tools are not supported"))
    with pytest.raises(UpstreamError) as server_error:
        await collect(model, REQUEST, timeout=5 * UNIT)
    assert server_error.value.retryable and server_error.value.status == 500
    with pytest.raises(BadRequest) as bad:
        await collect(model, REQUEST, timeout=5 * UNIT)
    assert not bad.value.retryable and "tools are not supported" in str(bad.value)


async def test_a_stalled_stream_times_out_with_what_arrived(fake: FakeOpenAI, model: OpenAICompatModel) -> None:
    fake.push(Reply("One two three four five six", piece=4, stall_after=2))
    seen: list[str] = []
    with pytest.raises(LLMTimeout):
        async for chunk in model.stream(REQUEST, timeout=0.3 * UNIT):
            if isinstance(chunk, TextDelta):
                seen.append(chunk.text)
    assert "".join(seen) == "One two "


async def test_a_cut_stream_ends_without_a_finish_reason(fake: FakeOpenAI, model: OpenAICompatModel) -> None:
    fake.push(Reply("One two three four five six", piece=4, cut_after=3))
    whole = await collect(model, REQUEST, timeout=5 * UNIT)
    assert whole.text == "One two thre" and whole.finish is None and whole.usage is None


async def test_no_server_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    model = OpenAICompatModel(base_url=f"http://127.0.0.1:{port}/v1")
    try:
        with pytest.raises(LLMUnavailable):
            await collect(model, REQUEST, timeout=2 * UNIT)
    finally:
        await model.aclose()
