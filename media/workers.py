"""Speech recognition and synthesis in worker processes, driven from asyncio.

Why processes: the WebRTC media path (aiortc) keeps one Python process busy on one core and holds its
GIL; recognisers and synthesisers are CPU-heavy and must not compete with it. :class:`SpeechWorkers`
runs ``processes`` workers, each a fresh interpreter holding its own engines. Start method: spawn, never
fork (the parent runs an event loop and threads); the interpreter is launched directly
(``python -c <bootstrap> <fd>`` with the parent's ``sys.path``) rather than with multiprocessing, whose
spawn re-imports the parent's ``__main__`` in every child (under ``vivavoce serve``, the whole server:
3+ s and ~80 MB per worker) and leaves a resource-tracker process behind.

Wire: one ``socket.socketpair`` per worker (what ``multiprocessing.Pipe(duplex=True)`` is on Unix), carrying
length-prefixed pickles: requests ``(request_id, stream_id, op, payload)`` and replies
``(request_id, kind, payload)``; audio travels as raw ``int16`` bytes, text as ``str``, and nothing
else crosses the boundary (engines named by string are created in the worker with
:func:`media.stt.create_recognizer` / :func:`media.tts.create_synthesizer`; engine callables must be
picklable top-level functions or classes). In the parent the socket is an asyncio transport, so replies
are parsed in ``data_received`` on the event loop (no reader thread, no blocking ``recv``) and writes
never block: ``feed`` is fire-and-forget (request id 0, no reply) and ordered, ``partial`` / ``finish``
are one round trip that also flushes the feeds before them. Backpressure: if a worker falls behind by
more than :data:`WRITE_HIGH_WATER` bytes, ``feed`` waits for it to catch up.

Worker loop: single-threaded; it reads every request available, merges consecutive feeds of one stream
into one ``Recognizer.feed`` call (a lagging worker catches up with fewer, larger calls instead of
queueing further behind), then advances at most one synthesis by one chunk before looking at its inbox
again, so a long synthesis never holds up recognition on the same worker. Syntheses on one worker run one
after another (FIFO): eSpeak NG is one process-wide engine. Recognisers are pooled per worker and reused
across streams (loading PocketSphinx takes about half a second); with ``warm=True`` each worker loads one
recogniser and one synthesiser before it reports ready, and whenever its inbox is empty it loads spares
until :data:`SPARE_RECOGNIZERS` wait idle, so a new participant's first answer does not wait for a
model to load (nor does every other stream on that worker).

Failure: when a worker process dies, its socket closes; every call waiting on it fails at once with
:class:`WorkerDied`, as does any later call on a recognition utterance that was running there. The
worker is started again on demand: ``RecognitionStream.start()`` (a new utterance) and
``synthesize()`` pick a live or restartable worker. A call that gets no reply within ``reply_timeout``
raises :class:`WorkerTimeout` and the worker is killed (it is wedged) so the others waiting on it fail too.

``inprocess=True`` runs the same worker loop on the threads of a :class:`ThreadPoolExecutor` in this
process (one thread per "worker"), behind the same API: for tests and tiny deployments. Those threads are
named ``{thread_name_prefix}_{n}`` for the operating system too (``/proc/<pid>/task/<tid>/comm``; threads
they start, such as eSpeak's, inherit the name), so their CPU can be told apart from the event loop's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import pickle
import queue
import signal
import socket
import sys
import threading
import traceback
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import Future as ConcurrentFuture
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from media.audio import PCM
from media.stt.base import Recognizer
from media.tts.base import Synthesizer

__all__ = [
    "WRITE_HIGH_WATER",
    "RecognitionStream",
    "RemoteError",
    "SpeechWorkers",
    "WorkerDied",
    "WorkerError",
    "WorkerTimeout",
]

log = logging.getLogger(__name__)

RecognizerSpec = Callable[[], Recognizer] | str
SynthesizerSpec = Callable[[], Synthesizer] | str
Request = tuple[int, int, str, Any]  # (request_id, stream_id, op, payload); request_id 0: no reply wanted
Reply = tuple[int, str, Any]  # (request_id, kind, payload)

SPARE_RECOGNIZERS = 2  # idle recognisers a warm worker keeps loaded for the next streams
#: Bytes queued towards one worker before ``feed`` waits (about 30 s of 16 kHz audio).
WRITE_HIGH_WATER = 1 << 20
_HEADER = 4  # little-endian uint32 length before each pickle
_RECV_CHUNK = 1 << 18


# --- errors ---------------------------------------------------------------------------------------


class WorkerError(RuntimeError):
    """A speech worker could not do what was asked."""


class WorkerDied(WorkerError):
    """The worker process ended (crashed, was killed, or the pool closed) before replying."""


class WorkerTimeout(WorkerError, TimeoutError):
    """No reply within ``reply_timeout``; the worker has been killed."""


class RemoteError(WorkerError):
    """The engine raised in the worker; ``remote_type`` and ``remote_traceback`` describe it."""

    def __init__(self, remote_type: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{remote_type}: {message}")
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback


def _error_payload(exc: BaseException) -> tuple[str, str, str]:
    return type(exc).__name__, str(exc), "".join(traceback.format_exception(exc))


# --- the worker side (runs in the worker process or thread) ------------------------------------------


@dataclass(frozen=True)
class _EngineConfig:
    recognizer: RecognizerSpec
    recognizer_options: Mapping[str, Any]
    synthesizer: SynthesizerSpec
    synthesizer_options: Mapping[str, Any]
    warm: bool


def _make_recognizer(config: _EngineConfig) -> Recognizer:
    if isinstance(config.recognizer, str):
        from media.stt import create_recognizer

        return create_recognizer(config.recognizer, **config.recognizer_options)
    return config.recognizer(**config.recognizer_options)


def _make_synthesizer(config: _EngineConfig) -> Synthesizer:
    if isinstance(config.synthesizer, str):
        from media import tts

        factory: Callable[..., Synthesizer] = tts.create_synthesizer  # type: ignore[attr-defined,unused-ignore]
        return factory(config.synthesizer, **config.synthesizer_options)
    return config.synthesizer(**config.synthesizer_options)


@dataclass
class _Utterances:
    """One recognition stream inside a worker."""

    recognizer: Recognizer
    partial: str = ""
    error: tuple[str, str, str] | None = None


@dataclass
class _SynthJob:
    request_id: int
    text: str
    chunks: Any = None  # the engine's iterator once started
    rate: int = 0


class _Stop(Exception):
    """Leave the worker loop."""


class _Core:
    """The worker's state and request handling; transport-agnostic, single-threaded."""

    def __init__(self, config: _EngineConfig, send: Callable[[Reply], None]) -> None:
        self.config = config
        self.send = send
        self.idle: list[Recognizer] = []
        self.streams: dict[int, _Utterances] = {}
        self.synthesizer: Synthesizer | None = None
        self.jobs: deque[_SynthJob] = deque()
        self.stopping = False
        # The channel as the latest finished utterance left its recogniser (e.g. its cepstral mean):
        # a recogniser new to a stream starts from it instead of priming on the stream's first answer.
        self.adaptation: object | None = None

    def warm(self) -> None:
        if self.config.warm:
            self.idle.append(_make_recognizer(self.config))
            self.synthesizer = _make_synthesizer(self.config)

    def short_of_spares(self) -> bool:
        return self.config.warm and len(self.idle) < SPARE_RECOGNIZERS

    def add_spare(self) -> None:
        self.idle.append(_make_recognizer(self.config))

    @property
    def busy(self) -> bool:
        return bool(self.jobs)

    def handle_batch(self, requests: list[Request]) -> None:
        """Handle requests in order per stream, merging runs of feeds to one stream into one call."""
        feeds: dict[int, list[bytes]] = {}
        for request in requests:
            _, sid, op, payload = request
            if op == "feed":
                feeds.setdefault(sid, []).append(payload)
                continue
            parts = feeds.pop(sid, None)
            if parts:
                self.feed(sid, parts)
            self.handle(request)
        for sid, parts in feeds.items():
            self.feed(sid, parts)

    def reply(self, rid: int, kind: str, payload: Any) -> None:
        if rid:
            self.send((rid, kind, payload))

    def handle(self, request: Request) -> None:
        rid, sid, op, payload = request
        if op == "start":
            try:
                stream = self.streams.get(sid)
                if stream is None:
                    recognizer = self.idle.pop() if self.idle else _make_recognizer(self.config)
                    if self.adaptation is not None:
                        recognizer.adapt(self.adaptation)
                    stream = self.streams[sid] = _Utterances(recognizer)
                stream.error, stream.partial = None, ""
                stream.recognizer.start()
            except Exception as exc:
                if sid in self.streams:  # a start sent without waiting: its error comes with finish()
                    self.streams[sid].error = _error_payload(exc)
                self.reply(rid, "err", _error_payload(exc))
            else:
                self.reply(rid, "ok", None)
        elif op in ("partial", "finish"):
            stream = self.streams.get(sid)
            if stream is None:
                self.reply(rid, "err", ("RuntimeError", f"{op}() on a stream that was not started", ""))
            elif stream.error is not None:
                self.reply(rid, "err", stream.error)
            elif op == "partial":
                self.reply(rid, "ok", stream.partial)
            else:
                try:
                    text = stream.recognizer.finish()
                    self.adaptation = stream.recognizer.adaptation() or self.adaptation
                except Exception as exc:
                    stream.error = _error_payload(exc)
                    self.reply(rid, "err", stream.error)
                else:
                    self.reply(rid, "ok", text)
        elif op == "close":
            stream = self.streams.pop(sid, None)
            if stream is not None and stream.error is None:
                self.idle.append(stream.recognizer)  # a failed engine is dropped rather than reused
            self.reply(rid, "ok", None)
        elif op == "synth":
            self.jobs.append(_SynthJob(rid, payload))
        elif op == "cancel":
            for job in list(self.jobs):
                if job.request_id == payload:
                    self.jobs.remove(job)
                    if job.chunks is not None:
                        with contextlib.suppress(Exception):
                            job.chunks.close()
        elif op == "ping":
            self.reply(rid, "ok", os.getpid())
        elif op == "stop":
            self.stopping = True
            raise _Stop
        else:
            self.reply(rid, "err", ("ValueError", f"unknown op {op!r}", ""))

    def feed(self, sid: int, parts: list[bytes]) -> None:
        stream = self.streams.get(sid)
        if stream is None or stream.error is not None:
            return  # reported by the next partial() / finish()
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        try:
            stream.partial = stream.recognizer.feed(np.frombuffer(data, dtype=np.int16))
        except Exception as exc:
            stream.error = _error_payload(exc)

    def step(self) -> None:
        """Advance the oldest synthesis by one chunk."""
        job = self.jobs[0]
        try:
            if job.chunks is None:
                if self.synthesizer is None:
                    self.synthesizer = _make_synthesizer(self.config)
                job.rate = self.synthesizer.sample_rate
                job.chunks = iter(self.synthesizer.synthesize(job.text))
            chunk = next(job.chunks, None)
        except Exception as exc:
            self.jobs.popleft()
            self.reply(job.request_id, "err", _error_payload(exc))
            return
        if chunk is None:
            self.jobs.popleft()
            self.reply(job.request_id, "end", None)
        else:
            self.reply(job.request_id, "chunk", (np.ascontiguousarray(chunk, dtype=np.int16).tobytes(), job.rate))

    def shutdown(self) -> None:
        for job in self.jobs:
            if job.chunks is not None:
                with contextlib.suppress(Exception):
                    job.chunks.close()
        self.jobs.clear()


class _Channel(Protocol):
    def recv(self, block: bool) -> list[Request] | None:
        """Every request available (waiting for one if ``block``); None at end of input."""

    def send(self, reply: Reply) -> None: ...


def _serve(core: _Core, channel: _Channel, requests: list[Request] | None = None) -> None:
    try:
        while True:
            if requests:
                core.handle_batch(requests)
            if core.busy:
                core.step()
            elif core.short_of_spares():
                requests = channel.recv(block=False)
                if requests is None:
                    return
                if not requests:  # nothing waiting: load the next stream's recogniser now, not when it speaks
                    core.add_spare()
                continue
            requests = channel.recv(block=not core.busy)
            if requests is None:
                return
    except _Stop:
        return
    finally:
        core.shutdown()


def _encode(message: Request | Reply) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(body).to_bytes(_HEADER, "little") + body


class _Frames:
    """Incremental parser for length-prefixed pickles."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buf = self.buffer
        buf += data
        out: list[Any] = []
        pos, end = 0, len(buf)
        view = memoryview(buf)
        try:
            while end - pos >= _HEADER:
                size = int.from_bytes(view[pos : pos + _HEADER], "little")
                if end - pos - _HEADER < size:
                    break
                out.append(pickle.loads(view[pos + _HEADER : pos + _HEADER + size]))
                pos += _HEADER + size
        finally:
            view.release()
        if pos:
            del buf[:pos]
        return out


class _SocketChannel:
    """The worker process's end of the socket (blocking reads, batched)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames = _Frames()
        self.eof = False

    def recv(self, block: bool) -> list[Request] | None:
        if self.eof:
            return None
        out: list[Request] = []
        while True:
            wait = block and not out
            try:
                data = self.sock.recv(_RECV_CHUNK, 0 if wait else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            except OSError:
                data = b""
            if not data:
                self.eof = True
                return out or None
            out.extend(self.frames.feed(data))
            if len(out) >= 4096:
                return out

    def send(self, reply: Reply) -> None:
        self.sock.sendall(_encode(reply))


#: Set in a worker process before the engine factories are unpickled (modules they import can check it).
IN_WORKER_PROCESS = False

# What a worker process runs: ``python -c _BOOTSTRAP <fd>``. It takes the parent's ``sys.path`` from the
# socket first (so whatever the parent could import, the worker can), then hands over to _worker_main.
_BOOTSTRAP = """\
import pickle, socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
size = int.from_bytes(sock.recv(4, socket.MSG_WAITALL), "little")
sys.path[:] = pickle.loads(sock.recv(size, socket.MSG_WAITALL))
from media.workers import _worker_main
_worker_main(sock)
"""


def _worker_main(sock: socket.socket) -> None:
    """Entry point of a worker process: read the engine configuration, load the engines, serve."""
    global IN_WORKER_PROCESS
    IN_WORKER_PROCESS = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops us in order
    channel = _SocketChannel(sock)
    try:
        first = channel.recv(block=True)
        if not first or first[0][2] != "config":
            return
        try:
            config: _EngineConfig = pickle.loads(first[0][3])
            core = _Core(config, channel.send)
            core.warm()
        except Exception as exc:
            channel.send((0, "ready", {"pid": os.getpid(), "error": _error_payload(exc)}))
            return
        channel.send((0, "ready", {"pid": os.getpid(), "error": None}))
        _serve(core, channel, first[1:])
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent is gone
    finally:
        with contextlib.suppress(OSError):
            sock.close()
        # Skip interpreter teardown (hundreds of ms with the engines' modules loaded): nothing to flush.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


class _QueueChannel:
    """A worker thread's inbox (a queue) and outbox (the event loop)."""

    CRASH = "__crash__"

    def __init__(self, inbox: queue.SimpleQueue[Request], deliver: Callable[[Reply], None]) -> None:
        self.inbox = inbox
        self.deliver = deliver

    def recv(self, block: bool) -> list[Request] | None:
        out: list[Request] = []
        try:
            out.append(self.inbox.get(block=block))
            while len(out) < 4096:
                out.append(self.inbox.get_nowait())
        except queue.Empty:
            pass
        for i, request in enumerate(out):
            if request[2] == self.CRASH:  # simulated crash: drop everything, reply nothing
                del out[i:]
                raise _Crash
        return out

    def send(self, reply: Reply) -> None:
        self.deliver(reply)


class _Crash(Exception):
    pass


def _name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` (first 15 bytes) in ``/proc``; Linux only, best effort.

    Python 3.11 names threads only for itself; threads started from this one inherit the OS name.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _thread_main(config: _EngineConfig, inbox: queue.SimpleQueue[Request], deliver: Callable[[Reply], None]) -> None:
    _name_os_thread(threading.current_thread().name)
    channel = _QueueChannel(inbox, deliver)
    core = _Core(config, deliver)
    try:
        core.warm()
    except Exception as exc:
        deliver((0, "ready", {"pid": os.getpid(), "error": _error_payload(exc)}))
    else:
        deliver((0, "ready", {"pid": os.getpid(), "error": None}))
    with contextlib.suppress(_Crash):
        _serve(core, channel)


# --- the parent side (event loop) --------------------------------------------------------------------


class _Waiter:
    """Where replies to one request go: a future (one reply) or a queue (a synthesis' chunks)."""

    __slots__ = ("future", "queue")

    def __init__(self, future: asyncio.Future[Any] | None = None, q: asyncio.Queue[Reply] | None = None) -> None:
        self.future = future
        self.queue = q

    def deliver(self, reply: Reply) -> bool:
        """Pass a reply on; True if the request is complete."""
        if self.queue is not None:
            self.queue.put_nowait(reply)
            return reply[1] != "chunk"
        future = self.future
        assert future is not None
        if not future.done():
            _, kind, payload = reply
            if kind == "ok":
                future.set_result(payload)
            elif kind == "err":
                future.set_exception(RemoteError(*payload))
            else:
                future.set_exception(payload if isinstance(payload, BaseException) else WorkerError(str(payload)))
        return True


class _ProcessHandle:
    """A worker process, its socket transport, and a task that is done once the process is reaped."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid = process.pid
        self.transport: asyncio.Transport | None = None
        self.exited: asyncio.Task[int] = asyncio.get_running_loop().create_task(process.wait())

    def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    def close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    async def wait(self, timeout: float) -> bool:
        """Wait until the process has exited and been reaped; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.exited)
        except TimeoutError:
            return False
        return True


class _Slot:
    """One worker as seen from the event loop; survives restarts (``generation`` counts them)."""

    def __init__(self, pool: SpeechWorkers, index: int) -> None:
        self.pool = pool
        self.index = index
        self.generation = 0
        self.alive = False
        self.load = 0  # recognition streams pinned here + syntheses running
        self.pid: int | None = None
        self.waiters: dict[int, _Waiter] = {}
        self._ids = itertools.count(1)
        self._starting: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[Any] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._proc: _ProcessHandle | None = None  # process mode
        self._inbox: queue.SimpleQueue[Request] | None = None  # thread mode
        self._thread: ConcurrentFuture[None] | None = None

    def __repr__(self) -> str:
        return f"<speech worker {self.index} pid={self.pid} generation={self.generation} alive={self.alive}>"

    # lifecycle

    async def ensure_started(self) -> None:
        if self.alive:
            return
        if self.pool.closed:
            raise WorkerError("speech workers are closed")
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._start(), name=f"speech-worker-{self.index}")
        starting = self._starting
        try:
            await asyncio.shield(starting)
        finally:
            if starting.done() and self._starting is starting:
                self._starting = None

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._proc is not None:  # a dead predecessor: make sure it is gone
            await self._proc.wait(self.pool.stop_timeout)
        self.generation += 1
        generation = self.generation
        self._ready = loop.create_future()
        self._writable.set()
        self.alive = True
        if self.pool.inprocess:
            self._inbox = queue.SimpleQueue()
            deliver = functools.partial(self._deliver_threadsafe, loop, generation)
            self._thread = self.pool._executor().submit(_thread_main, self.pool._config, self._inbox, deliver)
            self._thread.add_done_callback(functools.partial(self._thread_finished, loop, generation))
            self.pid = os.getpid()
        else:
            parent_sock, child_sock = socket.socketpair()
            try:
                # A fresh interpreter (the "spawn" start method), launched directly rather than through
                # multiprocessing, whose spawn re-imports the parent's __main__ in every child: under
                # `vivavoce serve` that is the whole server (3+ s and ~80 MB per worker).
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    _BOOTSTRAP,
                    str(child_sock.fileno()),
                    pass_fds=(child_sock.fileno(),),
                    stdin=asyncio.subprocess.DEVNULL,
                )
            except BaseException:
                parent_sock.close()
                self.alive = False
                raise
            finally:
                child_sock.close()
            self._proc = proc = _ProcessHandle(process)
            self.pid = process.pid
            path = pickle.dumps(sys.path, protocol=pickle.HIGHEST_PROTOCOL)
            try:
                parent_sock.sendall(len(path).to_bytes(_HEADER, "little") + path)
                parent_sock.setblocking(False)
                transport, _ = await loop.create_unix_connection(
                    lambda: _ParentProtocol(self, generation), sock=parent_sock
                )
            except BaseException:
                parent_sock.close()
                proc.kill()
                self._lost(generation, WorkerDied(f"speech worker {self.index} could not be connected"))
                raise
            transport.write(_encode((0, 0, "config", pickle.dumps(self.pool._config, pickle.HIGHEST_PROTOCOL))))
            transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
            proc.transport = transport  # type: ignore[assignment]
        try:
            async with asyncio.timeout(self.pool.start_timeout):
                info = await self._ready
        except BaseException as exc:
            self.kill()
            self._lost(generation, WorkerDied(f"speech worker {self.index} did not start: {exc!r}"))
            raise
        if info["error"] is not None:
            error = RemoteError(*info["error"])
            await self.stop(self.pool.stop_timeout)
            raise error

    def _deliver_threadsafe(self, loop: asyncio.AbstractEventLoop, generation: int, reply: Reply) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(self._on_reply, generation, reply)

    def _thread_finished(self, loop: asyncio.AbstractEventLoop, generation: int, done: ConcurrentFuture[None]) -> None:
        exc = None if done.cancelled() else done.exception()
        error = WorkerDied(f"speech worker {self.index} " + (f"crashed: {exc!r}" if exc else "stopped"))
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._lost, generation, error)

    async def stop(self, timeout: float) -> None:
        """Ask the worker to exit and wait for it; kill it if it does not exit within ``timeout``."""
        generation = self.generation
        if self.alive:
            with contextlib.suppress(WorkerError, OSError):
                self.send((0, 0, "stop", None))
        proc = self._proc
        if proc is not None:
            if not await proc.wait(timeout):
                log.warning("speech worker %d (pid %s) did not stop; killing it", self.index, proc.pid)
                proc.kill()
                await proc.wait(timeout)
            proc.close_transport()
            self._proc = None
        elif self._thread is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout):
                    await asyncio.wrap_future(self._thread)
            self._thread = None
        self._lost(generation, WorkerDied(f"speech worker {self.index} stopped"), expected=True)

    def kill(self, reason: str = "was killed") -> None:
        """Abandon the worker at once: its pending calls fail with :class:`WorkerDied` and the next stream or
        synthesis starts a new one. A process gets SIGKILL; a thread cannot be killed, so it is told to exit
        without replying once its current engine call returns (it keeps that executor thread until then)."""
        if not self.alive:
            return
        if self._proc is not None:
            self._proc.kill()
        elif self._inbox is not None:
            self._inbox.put((0, 0, _QueueChannel.CRASH, None))
        self._lost(self.generation, WorkerDied(f"speech worker {self.index} (pid {self.pid}) {reason}"), expected=True)

    # messages

    def send(self, request: Request) -> None:
        if self._proc is not None and self._proc.transport is not None:
            self._proc.transport.write(_encode(request))
        elif self._inbox is not None:
            self._inbox.put(request)
        else:
            raise WorkerDied(f"speech worker {self.index} is not running")

    async def drain(self) -> None:
        if not self._writable.is_set():
            await self._writable.wait()

    def check(self, generation: int) -> None:
        if not self.alive or generation != self.generation:
            raise WorkerDied(f"speech worker {self.index} died; the utterance running there was lost")

    async def call(self, generation: int, sid: int, op: str, payload: Any = None) -> Any:
        self.check(generation)
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiters[rid] = _Waiter(future=future)
        try:
            self.send((rid, sid, op, payload))
            return await self.wait(future)
        finally:
            self.waiters.pop(rid, None)

    async def wait(self, awaitable: Awaitable[Any]) -> Any:
        timeout = self.pool.reply_timeout
        if timeout is None:
            return await awaitable
        try:
            async with asyncio.timeout(timeout):
                return await awaitable
        except TimeoutError:
            log.error("speech worker %d gave no reply within %.1f s; killing it", self.index, timeout)
            self.kill(f"was killed: no reply within {timeout} s")
            raise WorkerTimeout(f"speech worker {self.index} gave no reply within {timeout} s") from None

    def open_stream(self) -> tuple[int, asyncio.Queue[Reply]]:
        rid = next(self._ids)
        q: asyncio.Queue[Reply] = asyncio.Queue()
        self.waiters[rid] = _Waiter(q=q)
        return rid, q

    def _on_reply(self, generation: int, reply: Reply) -> None:
        if generation != self.generation:
            return
        rid = reply[0]
        if rid == 0:
            if reply[1] == "ready" and self._ready is not None and not self._ready.done():
                self.pid = reply[2]["pid"]
                self._ready.set_result(reply[2])
            return
        waiter = self.waiters.get(rid)
        if waiter is not None and waiter.deliver(reply):
            self.waiters.pop(rid, None)

    def _lost(self, generation: int, error: WorkerDied, *, expected: bool = False) -> None:
        """The worker of ``generation`` is gone: fail everything that waits on it."""
        if generation != self.generation or not self.alive:
            return
        self.alive = False
        self._writable.set()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
            self._ready.exception()  # mark retrieved: _start() reports it
        waiters, self.waiters = self.waiters, {}
        for rid, waiter in waiters.items():
            waiter.deliver((rid, "died", error))
        self._inbox = None
        if self._proc is not None:
            self._proc.close_transport()
        if not expected and not self.pool.closed:
            log.error("%s; %d pending call(s) failed", error, len(waiters))

    def connection_lost(self, generation: int) -> None:
        if self.pool.closed:
            self._lost(generation, WorkerDied(f"speech worker {self.index} stopped"), expected=True)
        else:
            self._lost(generation, WorkerDied(f"speech worker {self.index} (pid {self.pid}) exited unexpectedly"))


class _ParentProtocol(asyncio.Protocol):
    def __init__(self, slot: _Slot, generation: int) -> None:
        self.slot = slot
        self.generation = generation
        self.frames = _Frames()

    def data_received(self, data: bytes) -> None:
        for reply in self.frames.feed(data):
            self.slot._on_reply(self.generation, reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.slot.connection_lost(self.generation)

    def pause_writing(self) -> None:
        if self.generation == self.slot.generation:
            self.slot._writable.clear()

    def resume_writing(self) -> None:
        if self.generation == self.slot.generation:
            self.slot._writable.set()


class RecognitionStream:
    """Streaming recognition of one participant, a sequence of utterances, pinned to one worker.

    ``start()`` begins an utterance (waiting for the worker to be up, not for its reply), ``feed()``
    sends 16 kHz mono int16 audio without waiting for the worker, ``partial()`` returns the hypothesis
    after everything fed so far, ``finish()`` the final transcript. If the worker dies, the running
    utterance's calls raise :class:`WorkerDied`; the next ``start()`` moves the stream to a live worker.
    ``close()`` returns the recogniser to the worker's pool. Also an async context manager (closes).
    """

    _ids = itertools.count(1)

    def __init__(self, pool: SpeechWorkers, slot: _Slot) -> None:
        self._pool = pool
        self._slot = slot
        self._sid = next(self._ids)
        self._generation: int | None = None  # worker generation the utterance runs on
        self._pinned = True  # counted in slot.load
        self.closed = False
        slot.load += 1

    @property
    def worker(self) -> int:
        """Index of the worker this stream is pinned to."""
        return self._slot.index

    async def start(self) -> None:
        self._check_open()
        slot = self._slot
        if self._generation is not None and (not slot.alive or self._generation != slot.generation):
            self._move(self._pool._least_loaded())  # the old worker died: start afresh elsewhere
            slot = self._slot
        await slot.ensure_started()
        self._generation = slot.generation
        # Not waiting for the reply: the worker handles a stream's requests in order, and waiting
        # here would queue the participant's end-of-turn decisions behind every other stream's
        # audio on this worker. An error starting shows up at partial() or finish().
        slot.check(slot.generation)
        slot.send((0, self._sid, "start", None))

    async def feed(self, pcm: PCM) -> None:
        generation = self._utterance()
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise ValueError(f"feed() takes 1-D int16 audio at 16 kHz, not {pcm.dtype} of shape {pcm.shape}")
        self._slot.check(generation)
        self._slot.send((0, self._sid, "feed", pcm.tobytes()))
        await self._slot.drain()

    async def partial(self) -> str:
        result: str = await self._slot.call(self._utterance(), self._sid, "partial")
        return result

    async def finish(self) -> str:
        result: str = await self._slot.call(self._utterance(), self._sid, "finish")
        return result

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        slot = self._slot
        if self._generation is not None and slot.alive and self._generation == slot.generation:
            with contextlib.suppress(WorkerError):
                slot.send((0, self._sid, "close", None))
        self._unpin()

    async def __aenter__(self) -> RecognitionStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise WorkerError("recognition stream is closed")

    def _utterance(self) -> int:
        self._check_open()
        if self._generation is None:
            raise RuntimeError("start() the recognition stream first")
        return self._generation

    def _unpin(self) -> None:
        if self._pinned:
            self._pinned = False
            self._slot.load -= 1

    def _move(self, slot: _Slot) -> None:
        self._unpin()
        self._slot = slot
        self._generation = None
        self._pinned = True
        slot.load += 1

    def __del__(self) -> None:
        if not self.closed and self._pinned:
            self._slot.load -= 1


class SpeechWorkers:
    """A pool of speech workers (see the module docs). Start with :meth:`start` or ``async with``.

    ``recognizer`` / ``synthesizer``: an engine name for :func:`media.stt.create_recognizer` /
    :func:`media.tts.create_synthesizer` (with ``recognizer_options`` / ``synthesizer_options``), or a
    picklable top-level callable returning the engine (called with those options).
    ``thread_name_prefix`` names the threads of ``inprocess`` workers (see the module docs).
    """

    def __init__(
        self,
        *,
        processes: int = 1,
        recognizer: RecognizerSpec = "pocketsphinx",
        synthesizer: SynthesizerSpec = "espeak",
        inprocess: bool = False,
        recognizer_options: Mapping[str, Any] | None = None,
        synthesizer_options: Mapping[str, Any] | None = None,
        warm: bool = True,
        reply_timeout: float | None = 60.0,
        start_timeout: float = 120.0,
        stop_timeout: float = 5.0,
        thread_name_prefix: str = "speech-worker",
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be >= 1")
        self.processes = processes
        self.inprocess = inprocess
        self.reply_timeout = reply_timeout
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.thread_name_prefix = thread_name_prefix
        self._config = _EngineConfig(
            recognizer, dict(recognizer_options or {}), synthesizer, dict(synthesizer_options or {}), warm
        )
        if not inprocess:
            for name, spec in (("recognizer", recognizer), ("synthesizer", synthesizer)):
                if not isinstance(spec, str):
                    try:
                        pickle.dumps(spec)
                    except Exception as exc:
                        raise ValueError(f"{name} must be a name or a picklable top-level callable: {exc}") from exc
        self._slots = [_Slot(self, i) for i in range(processes)]
        self._pool: ThreadPoolExecutor | None = None
        self.closed = False
        self.started = False

    # lifecycle

    async def start(self) -> None:
        """Start every worker and wait until each has its engines loaded (idempotent)."""
        if self.closed:
            raise WorkerError("speech workers are closed")
        await asyncio.gather(*(slot.ensure_started() for slot in self._slots))
        self.started = True

    async def close(self) -> None:
        """Stop every worker (killing any that does not exit within ``stop_timeout``); pending calls fail."""
        if self.closed:
            return
        self.closed = True
        for slot in self._slots:
            if slot._starting is not None:
                slot._starting.cancel()
                with contextlib.suppress(BaseException):
                    await slot._starting
        await asyncio.gather(*(slot.stop(self.stop_timeout) for slot in self._slots))
        if self._pool is not None:
            executor, self._pool = self._pool, None
            executor.shutdown(wait=False, cancel_futures=True)
            # its threads exit promptly, except one still inside the engine call of a killed worker
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.stop_timeout):
                    await asyncio.to_thread(executor.shutdown, wait=True)
        await asyncio.sleep(0)  # let the reaper tasks run

    async def __aenter__(self) -> SpeechWorkers:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            # spare threads: a killed worker's thread stays busy until its engine call returns
            self._pool = ThreadPoolExecutor(
                max_workers=2 * self.processes + 2, thread_name_prefix=self.thread_name_prefix
            )
        return self._pool

    # introspection, tests

    @property
    def pids(self) -> list[int | None]:
        """Process id of each worker (this process's in ``inprocess`` mode; None if not running)."""
        return [slot.pid if slot.alive else None for slot in self._slots]

    @property
    def loads(self) -> list[int]:
        return [slot.load for slot in self._slots]

    def kill_worker(self, index: int) -> None:
        """Kill worker ``index`` abruptly (SIGKILL; in-process: its thread stops without replying)."""
        self._slots[index].kill()

    # API

    def _least_loaded(self) -> _Slot:
        return min(self._slots, key=lambda s: (s.load, not s.alive, s.index))

    def recognition(self) -> RecognitionStream:
        """A new recognition stream on the least loaded worker."""
        if self.closed:
            raise WorkerError("speech workers are closed")
        return RecognitionStream(self, self._least_loaded())

    async def synthesize(self, text: str) -> AsyncIterator[tuple[PCM, int]]:
        """Synthesise ``text`` on the least loaded worker: ``(int16 chunk, sample rate)`` as produced.

        Stopping the iteration early (``break``, ``aclose()``, cancellation) cancels the synthesis.
        """
        if self.closed:
            raise WorkerError("speech workers are closed")
        slot = self._least_loaded()
        slot.load += 1
        try:
            await slot.ensure_started()
            generation = slot.generation
            rid, replies = slot.open_stream()
            finished = False
            try:
                slot.send((rid, 0, "synth", text))
                while True:
                    _, kind, payload = await slot.wait(replies.get())
                    if kind == "chunk":
                        data, rate = payload
                        yield np.frombuffer(data, dtype=np.int16).copy(), rate
                    elif kind == "end":
                        finished = True
                        return
                    elif kind == "err":
                        finished = True
                        raise RemoteError(*payload)
                    else:
                        finished = True
                        raise payload if isinstance(payload, BaseException) else WorkerError(str(payload))
            finally:
                slot.waiters.pop(rid, None)
                if not finished and slot.alive and slot.generation == generation:
                    with contextlib.suppress(WorkerError):
                        slot.send((0, 0, "cancel", rid))
        finally:
            slot.load -= 1

    async def ping(self) -> list[int]:
        """Round trip to every worker (starting any that is down); returns their process ids."""
        pids: list[int] = []
        for slot in self._slots:
            await slot.ensure_started()
            pids.append(await slot.call(slot.generation, 0, "ping"))
        return pids
