"""The pool of speech workers as the event loop sees it: processes, their sockets, and the streams on them.

Why processes: the WebRTC media path (aiortc) keeps one Python process busy on one core and holds its
GIL; recognisers and synthesisers are CPU-heavy and must not compete with it. :class:`SpeechWorkers`
runs ``processes`` workers, each a fresh interpreter holding its own engines. Start method: spawn, never
fork (the parent runs an event loop and threads); the interpreter is launched directly
(``python -c <bootstrap> <fd>`` with the parent's ``sys.path``) rather than with multiprocessing, whose
spawn re-imports the parent's ``__main__`` in every child (under ``vivavoce serve``, the whole server:
3+ s and ~80 MB per worker) and leaves a resource-tracker process behind.

In the parent the worker's socket is an asyncio transport, so replies are parsed in ``data_received`` on
the event loop (no reader thread, no blocking ``recv``) and writes never block: ``feed`` is fire-and-forget
(request id 0, no reply) and ordered, ``partial`` / ``finish`` are one round trip that also flushes the
feeds before them. Backpressure: if a worker falls behind by more than :data:`WRITE_HIGH_WATER` bytes,
``feed`` waits for it to catch up.

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
import itertools
import pickle
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from media.audio import PCM
from media.stt import DEFAULT_RECOGNIZER
from media.workers.slot import Slot
from media.workers.wire import (
    RecognizerSpec,
    RemoteError,
    SynthesizerSpec,
    WorkerError,
)
from media.workers.worker import EngineConfig


class RecognitionStream:
    """Streaming recognition of one participant, a sequence of utterances, pinned to one worker.

    ``start()`` begins an utterance (waiting for the worker to be up, not for its reply), ``feed()``
    sends 16 kHz mono int16 audio without waiting for the worker, ``partial()`` returns the hypothesis
    after everything fed so far, ``finish()`` the final transcript. If the worker dies, the running
    utterance's calls raise :class:`WorkerDied`; the next ``start()`` moves the stream to a live worker.
    ``close()`` returns the recogniser to the worker's pool. Also an async context manager (closes).
    """

    _ids = itertools.count(1)

    def __init__(self, pool: SpeechWorkers, slot: Slot, language: str | None = None) -> None:
        self._pool = pool
        self._slot = slot
        self.language = language
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
        slot.send((0, self._sid, "start", self.language))

    async def feed(self, pcm: PCM) -> None:
        generation = self._utterance()
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise ValueError(f"feed() takes 1-D int16 audio at 16 kHz, not {pcm.dtype} of shape {pcm.shape}")
        self._slot.check(generation)
        self._slot.send((0, self._sid, "feed", pcm.tobytes()))
        await self._slot.drain()

    async def resume(self) -> None:
        """Take back the last ``finish()``: the utterance goes on (fire-and-forget, in order with the feeds);
        the next ``finish()`` covers all of it, before and after the pause."""
        generation = self._utterance()
        self._slot.check(generation)
        self._slot.send((0, self._sid, "resume", None))

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

    def _move(self, slot: Slot) -> None:
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
        recognizer: RecognizerSpec = DEFAULT_RECOGNIZER,
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
        self._config = EngineConfig(
            recognizer, dict(recognizer_options or {}), synthesizer, dict(synthesizer_options or {}), warm
        )
        if not inprocess:
            for name, spec in (("recognizer", recognizer), ("synthesizer", synthesizer)):
                if not isinstance(spec, str):
                    try:
                        pickle.dumps(spec)
                    except Exception as exc:
                        raise ValueError(f"{name} must be a name or a picklable top-level callable: {exc}") from exc
        self._slots = [Slot(self, i) for i in range(processes)]
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

    def _least_loaded(self) -> Slot:
        return min(self._slots, key=lambda s: (s.load, not s.alive, s.index))

    def recognition(self, language: str | None = None) -> RecognitionStream:
        """A new recognition stream on the least loaded worker, for ``language`` (a BCP 47 tag given to the
        engine as its ``language`` option; None or English: the engine's default)."""
        if self.closed:
            raise WorkerError("speech workers are closed")
        if language is not None and language.split("-")[0].lower() == "en":
            language = None  # every engine's default: English streams share one pool of recognisers
        return RecognitionStream(self, self._least_loaded(), language)

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
