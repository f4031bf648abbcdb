"""The speech worker's side: its loop, run in a worker process or a thread of the server.

Worker loop: single-threaded; it reads every request available, merges consecutive feeds of one stream
into one ``Recognizer.feed`` call (a lagging worker catches up with fewer, larger calls instead of
queueing further behind), then advances at most one synthesis by one chunk before looking at its inbox
again, so a long synthesis never holds up recognition on the same worker. Syntheses on one worker run one
after another (FIFO): eSpeak NG is one process-wide engine. Recognisers are pooled per worker and reused
across streams (loading PocketSphinx takes about half a second; Whisper's model is loaded once per process and
shared, so a new Whisper recogniser is cheap); with ``warm=True`` each worker loads one
recogniser and one synthesiser before it reports ready, and whenever its inbox is empty it loads spares
until :data:`SPARE_RECOGNIZERS` wait idle, so a new participant's first answer does not wait for a
model to load (nor does every other stream on that worker).

A worker process is a fresh interpreter launched directly (``python -c <bootstrap> <fd>`` with the parent's
``sys.path``; see :mod:`media.workers.pool` for why not multiprocessing); in-process workers run the same
loop on a thread, with a queue as inbox (:func:`thread_main`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import socket
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from media.stt.base import Recognizer
from media.tts.base import Synthesizer
from media.workers.wire import (
    RECV_CHUNK,
    Frames,
    RecognizerSpec,
    Reply,
    Request,
    SynthesizerSpec,
    encode,
    error_payload,
)

SPARE_RECOGNIZERS = 2  # idle recognisers a warm worker keeps loaded for the next streams

# --- the worker side (runs in the worker process or thread) ------------------------------------------


@dataclass(frozen=True)
class EngineConfig:
    recognizer: RecognizerSpec
    recognizer_options: Mapping[str, Any]
    synthesizer: SynthesizerSpec
    synthesizer_options: Mapping[str, Any]
    warm: bool


def _make_recognizer(config: EngineConfig, language: str | None = None) -> Recognizer:
    """A recogniser for ``language`` (a BCP 47 tag; None: the engine's default, English)."""
    options = dict(config.recognizer_options)
    if language is not None:
        options["language"] = language
    if isinstance(config.recognizer, str):
        from media.stt import create_recognizer

        return create_recognizer(config.recognizer, **options)
    return config.recognizer(**options)


def _make_synthesizer(config: EngineConfig) -> Synthesizer:
    if isinstance(config.synthesizer, str):
        from media import tts

        factory: Callable[..., Synthesizer] = tts.create_synthesizer  # type: ignore[attr-defined,unused-ignore]
        return factory(config.synthesizer, **config.synthesizer_options)
    return config.synthesizer(**config.synthesizer_options)


@dataclass
class _Utterances:
    """One recognition stream inside a worker."""

    recognizer: Recognizer
    language: str | None = None
    partial: str = ""
    final: str = ""  # what the last finish() gave, for an engine that cannot resume()
    parts: list[str] = field(default_factory=list)  # the utterance's text before each resume(), ditto
    error: tuple[str, str, str] | None = None

    def text(self, last: str) -> str:
        return " ".join(part for part in [*self.parts, last] if part)


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

    def __init__(self, config: EngineConfig, send: Callable[[Reply], None]) -> None:
        self.config = config
        self.send = send
        self.idle: dict[str | None, list[Recognizer]] = {}  # by language; None: the engine's default
        self.streams: dict[int, _Utterances] = {}
        self.synthesizer: Synthesizer | None = None
        self.jobs: deque[_SynthJob] = deque()
        self.stopping = False
        # The channel as the latest finished utterance left its recogniser (e.g. its cepstral mean):
        # a recogniser new to a stream starts from it instead of priming on the stream's first answer.
        self.adaptation: object | None = None

    def warm(self) -> None:
        if self.config.warm:
            self.idle.setdefault(None, []).append(_make_recognizer(self.config))
            self.synthesizer = _make_synthesizer(self.config)

    def short_of_spares(self) -> bool:
        return self.config.warm and len(self.idle.get(None, ())) < SPARE_RECOGNIZERS

    def add_spare(self) -> None:
        self.idle.setdefault(None, []).append(_make_recognizer(self.config))

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
                if stream is not None and stream.language != payload:
                    self.streams.pop(sid)  # another language from now on (not reused: it may be a different model)
                    stream = None
                if stream is None:
                    idle = self.idle.get(payload)
                    recognizer = idle.pop() if idle else _make_recognizer(self.config, payload)
                    if self.adaptation is not None:
                        recognizer.adapt(self.adaptation)
                    stream = self.streams[sid] = _Utterances(recognizer, payload)
                stream.error, stream.partial, stream.final, stream.parts = None, "", "", []
                stream.recognizer.start()
            except Exception as exc:
                if sid in self.streams:  # a start sent without waiting: its error comes with finish()
                    self.streams[sid].error = error_payload(exc)
                self.reply(rid, "err", error_payload(exc))
            else:
                self.reply(rid, "ok", None)
        elif op in ("partial", "finish"):
            stream = self.streams.get(sid)
            if stream is None:
                self.reply(rid, "err", ("RuntimeError", f"{op}() on a stream that was not started", ""))
            elif stream.error is not None:
                self.reply(rid, "err", stream.error)
            elif op == "partial":
                try:
                    fresh = stream.recognizer.partial()
                except Exception as exc:
                    stream.error = error_payload(exc)
                    self.reply(rid, "err", stream.error)
                else:
                    self.reply(rid, "ok", stream.text(stream.partial if fresh is None else fresh))
            else:
                try:
                    stream.final = stream.recognizer.finish()
                    self.adaptation = stream.recognizer.adaptation() or self.adaptation
                except Exception as exc:
                    stream.error = error_payload(exc)
                    self.reply(rid, "err", stream.error)
                else:
                    self.reply(rid, "ok", stream.text(stream.final))
        elif op == "resume":
            stream = self.streams.get(sid)
            if stream is not None and stream.error is None:
                try:
                    if not stream.recognizer.resume():  # the engine starts afresh; the text so far is kept here
                        stream.parts.append(stream.final)
                        stream.final = stream.partial = ""
                        stream.recognizer.start()
                except Exception as exc:
                    stream.error = error_payload(exc)
        elif op == "close":
            stream = self.streams.pop(sid, None)
            if stream is not None and stream.error is None:  # a failed engine is dropped rather than reused
                self.idle.setdefault(stream.language, []).append(stream.recognizer)
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
            stream.error = error_payload(exc)

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
            self.reply(job.request_id, "err", error_payload(exc))
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


class _SocketChannel:
    """The worker process's end of the socket (blocking reads, batched)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames = Frames()
        self.eof = False

    def recv(self, block: bool) -> list[Request] | None:
        if self.eof:
            return None
        out: list[Request] = []
        while True:
            wait = block and not out
            try:
                data = self.sock.recv(RECV_CHUNK, 0 if wait else socket.MSG_DONTWAIT)
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
        self.sock.sendall(encode(reply))


# What a worker process runs: ``python -c BOOTSTRAP <fd>``. It takes the parent's ``sys.path`` from the
# socket first (so whatever the parent could import, the worker can), then hands over to _worker_main.
BOOTSTRAP = """\
import pickle, socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
size = int.from_bytes(sock.recv(4, socket.MSG_WAITALL), "little")
sys.path[:] = pickle.loads(sock.recv(size, socket.MSG_WAITALL))
from media.workers.worker import worker_main
worker_main(sock)
"""


def worker_main(sock: socket.socket) -> None:
    """Entry point of a worker process: read the engine configuration, load the engines, serve."""
    import media.workers

    media.workers.IN_WORKER_PROCESS = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops us in order
    channel = _SocketChannel(sock)
    try:
        first = channel.recv(block=True)
        if not first or first[0][2] != "config":
            return
        try:
            config: EngineConfig = pickle.loads(first[0][3])
            core = _Core(config, channel.send)
            core.warm()
        except Exception as exc:
            channel.send((0, "ready", {"pid": os.getpid(), "error": error_payload(exc)}))
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


class QueueChannel:
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
                raise Crash
        return out

    def send(self, reply: Reply) -> None:
        self.deliver(reply)


class Crash(Exception):
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


def thread_main(config: EngineConfig, inbox: queue.SimpleQueue[Request], deliver: Callable[[Reply], None]) -> None:
    _name_os_thread(threading.current_thread().name)
    channel = QueueChannel(inbox, deliver)
    core = _Core(config, deliver)
    try:
        core.warm()
    except Exception as exc:
        deliver((0, "ready", {"pid": os.getpid(), "error": error_payload(exc)}))
    else:
        deliver((0, "ready", {"pid": os.getpid(), "error": None}))
    with contextlib.suppress(Crash):
        _serve(core, channel)
