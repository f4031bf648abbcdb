"""Embedded speech synthesis on threads of the server process, shared fairly by every voice session.

Why threads: eSpeak NG and onnxruntime (Piper) release the GIL while they work, so synthesis in threads
costs the event loop nothing but the hand-over of each chunk, and a reply does not wait behind
recognition in a worker process (measured with eSpeak in the workers: tts p50 850 ms at 10 callers).

Why a scheduler: a Piper piece takes 50-400 ms of CPU, and several replies are often made at once.
Work is taken piece by piece (one ``next()`` of an engine's chunk iterator), earliest deadline first:
a reply's deadline is when its playback would run dry, ``first chunk time + audio made so far``, and a
reply that has made nothing yet is due on arrival. So a new reply's first piece goes ahead of a reply
whose audio is seconds ahead of its playback, yet a playback about to run dry is served first.

Engines are chosen by the blueprint's language (:func:`media.tts.embedded_for_language`) and created
once per (engine, options) on a synthesis thread; one that fails to load (a missing voice package, a
broken model file, a language eSpeak NG lacks) is logged and replaced by eSpeak NG's en-us voice, so the
interview still speaks.

Threads are named ``{thread_name_prefix}_{n}`` for the operating system too, so their CPU can be told
apart from the event loop's (bench/voice.py); eSpeak's own short-lived threads inherit the name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from media.audio import PCM
from media.tts import AUTO, create_synthesizer, embedded_for_language
from media.tts.base import Synthesizer

log = logging.getLogger("vivavoce.synthesis")

__all__ = ["Speaker", "SpeechChunk", "SynthesisThreads", "name_os_thread"]


class SpeechChunk(NamedTuple):
    """Audio of a reply as it is made: mono int16 at ``rate``, and the words of the text it completes
    (0: not known, see :meth:`media.tts.base.Synthesizer.speak`)."""

    pcm: PCM
    rate: int
    words: int = 0


class Speaker(Protocol):
    """What a voice session speaks with: the reply's chunks as produced; stopping the iteration early
    cancels the rest."""

    def synthesize(self, text: str) -> AsyncIterator[SpeechChunk]: ...


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` (first 15 bytes) in ``/proc``; Linux only, best effort.
    Python 3.11 names threads only for itself; threads started from this one inherit the OS name."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


_END = object()
_LAST_RESORT = ("espeak", (("voice", "en-us"),))


@dataclass(eq=False)
class _Job:
    text: str
    engine_key: tuple[str, tuple[tuple[str, Any], ...]]
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    deadline: float = field(default_factory=time.monotonic)  # due on arrival
    first_at: float | None = None
    made_s: float = 0.0  # seconds of audio made so far
    busy: bool = False
    cancelled: bool = False
    chunks: Iterator[tuple[PCM, int]] | None = None
    rate: int = 0

    def post(self, item: Any) -> None:
        """Hand ``item`` to the consumer on its loop (from a synthesis thread)."""
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled = True


class SynthesisThreads:
    """``threads`` synthesis threads for every voice session of this server (see the module docs).

    ``synthesizer``: an engine name, or ``auto`` (Piper for English, eSpeak NG for other languages);
    ``options``: per engine name, the options to build it with (e.g. ``{"piper": {"model": path}}``).
    ``warm``: languages whose engine :meth:`start` loads, so the first reply does not wait for a model.
    """

    def __init__(
        self,
        *,
        synthesizer: str = AUTO,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        threads: int = 1,
        warm: tuple[str, ...] = ("en",),
        thread_name_prefix: str = "synthesis",
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self.synthesizer = synthesizer
        self.options = {name: dict(o) for name, o in (options or {}).items()}
        self.threads = threads
        self.warm = warm
        self.thread_name_prefix = thread_name_prefix
        self._jobs: list[_Job] = []
        self._cond = threading.Condition()
        self._engines: dict[tuple[str, tuple[tuple[str, Any], ...]], Synthesizer] = {}
        self._engines_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._warming: list[asyncio.Future[Synthesizer]] = []
        self._stopping = False
        self.closed = False

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the threads and begin loading the engines of the ``warm`` languages (idempotent).

        Loading goes on in the background (a Piper voice takes 1.5-5 s): a first join does not wait for
        it, and a reply that comes before it is ready waits for that engine only (:meth:`warmed`)."""
        if self.closed:
            raise RuntimeError("synthesis threads are closed")
        if not self._threads:
            for i in range(self.threads):
                thread = threading.Thread(
                    target=self._run, name=f"{self.thread_name_prefix}_{i}", args=(i,), daemon=True
                )
                thread.start()
                self._threads.append(thread)
            self._warming = [
                asyncio.ensure_future(asyncio.to_thread(self._engine, self.engine_key(language)))
                for language in self.warm
            ]

    async def warmed(self) -> None:
        """Wait until the ``warm`` engines are loaded (a failure to load was logged and replaced)."""
        await asyncio.gather(*self._warming, return_exceptions=True)

    async def close(self) -> None:
        """Stop the threads after the pieces they are making; pending syntheses end."""
        if self.closed:
            return
        self.closed = True
        with self._cond:
            self._stopping = True
            jobs, self._jobs = self._jobs, []
            self._cond.notify_all()
        for job in jobs:
            job.post(_END)
        await self.warmed()
        threads, self._threads = self._threads, []
        for thread in threads:
            await asyncio.to_thread(thread.join, 30.0)

    # --- API ----------------------------------------------------------------------------------------

    def engine_key(self, language: str) -> tuple[str, tuple[tuple[str, Any], ...]]:
        name, options = embedded_for_language(self.synthesizer, language)
        merged = {**self.options.get(name, {}), **options}
        return name, tuple(sorted(merged.items()))

    def speaker(self, language: str) -> Speaker:
        """A :class:`Speaker` for ``language`` (a blueprint's BCP 47 tag)."""
        return _LanguageSpeaker(self, language)

    async def synthesize(self, text: str, *, language: str = "en") -> AsyncIterator[SpeechChunk]:
        """The chunks of ``text`` spoken in ``language``, as each piece is made."""
        if self.closed:
            raise RuntimeError("synthesis threads are closed")
        if not self._threads:
            await self.start()
        job = _Job(text, self.engine_key(language), asyncio.get_running_loop())
        with self._cond:
            self._jobs.append(job)
            self._cond.notify()
        try:
            while True:
                item = await job.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            with self._cond:
                job.cancelled = True
                self._cond.notify()

    @property
    def pending(self) -> int:
        """Syntheses queued or running."""
        with self._cond:
            return len(self._jobs)

    # --- the threads ------------------------------------------------------------------------------

    def _engine(self, key: tuple[str, tuple[tuple[str, Any], ...]]) -> Synthesizer:
        with self._engines_lock:
            engine = self._engines.get(key)
            if engine is None:
                name, options = key[0], dict(key[1])
                try:
                    engine = create_synthesizer(name, **options)
                except Exception:
                    if key == _LAST_RESORT:
                        raise
                    log.exception("synthesizer %s %s could not be loaded; speaking with eSpeak NG en-us", name, options)
                    engine = self._engines.get(_LAST_RESORT) or create_synthesizer("espeak", voice="en-us")
                    self._engines[_LAST_RESORT] = engine
                self._engines[key] = engine
            return engine

    def _next_job(self) -> _Job | None:
        """The job to advance (marked busy): cancelled ones first (to be dropped), then earliest deadline."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                idle = [job for job in self._jobs if not job.busy]
                if idle:
                    job = min(idle, key=lambda j: (not j.cancelled, j.deadline))
                    job.busy = True
                    return job
                self._cond.wait()

    def _run(self, index: int) -> None:
        name_os_thread(f"{self.thread_name_prefix}_{index}")
        while (job := self._next_job()) is not None:
            finished = job.cancelled or self._step(job)
            with self._cond:
                job.busy = False
                if finished:
                    with contextlib.suppress(ValueError):
                        self._jobs.remove(job)
                    if job.chunks is not None:
                        with contextlib.suppress(Exception):
                            job.chunks.close()  # type: ignore[attr-defined]
                self._cond.notify()

    def _step(self, job: _Job) -> bool:
        """Make one more piece of ``job``; True when it is finished (or failed)."""
        try:
            if job.chunks is None:
                engine = self._engine(job.engine_key)
                job.rate = engine.sample_rate
                job.chunks = iter(engine.speak(job.text))
            chunk = next(job.chunks, None)
        except Exception as exc:
            job.post(exc)
            return True
        if chunk is None:
            job.post(_END)
            return True
        pcm, words = chunk
        now = time.monotonic()
        if job.first_at is None:
            job.first_at = now
        job.made_s += len(pcm) / job.rate
        job.deadline = job.first_at + job.made_s
        job.post(SpeechChunk(pcm, job.rate, words))
        return False


@dataclass(frozen=True)
class _LanguageSpeaker:
    threads: SynthesisThreads
    language: str

    def synthesize(self, text: str) -> AsyncIterator[SpeechChunk]:
        return self.threads.synthesize(text, language=self.language)
