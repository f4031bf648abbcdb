"""What voice sessions share in one server: speech workers, synthesis, hosted engines, recordings.

Split from api/voice.py (the pipeline of one session): these live as long as the server, and every
voice transport (WebRTC, a phone call, the custom media socket) draws its listener and speaker here.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from media.fallback import FallbackRecognition, FallbackSpeaker
from media.hosted import HostedEngine
from media.recording import Recorder
from media.resample import single_threaded_blas
from media.stt import create_hosted_recognizer
from media.stt.base import StreamingRecognition
from media.synthesis import Speaker, SpeechChunk, SynthesisThreads
from media.tts import create_hosted_synthesizer
from media.workers import SpeechWorkers
from runtime.types import Run

__all__ = ["Listener", "Recordings", "VoiceServices"]


class Recordings:
    """Open recorders of live runs, and where every run's file lives."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.open: dict[str, Recorder] = {}

    def path(self, run_id: str) -> Path:
        return self.directory / f"{run_id}.wav"

    def recorder(self, run: Run, *, rate: int = 16_000) -> Recorder:
        """The run's recorder, opened on first use: at ``rate`` (8 kHz for a phone call, whose audio is no
        wider; a run's channel, so its rate, never changes)."""
        if run.id not in self.open:
            assert run.started_at is not None
            self.directory.mkdir(parents=True, exist_ok=True)
            self.open[run.id] = Recorder(self.path(run.id), origin=run.started_at, rate=rate)
        return self.open[run.id]

    def finish(self, run_id: str) -> None:
        recorder = self.open.pop(run_id, None)
        if recorder is not None:
            recorder.close()

    def close_all(self) -> None:
        for run_id in list(self.open):
            self.finish(run_id)


class VoiceServices:
    """What voice sessions share in one server: speech workers, recorders, and signalling tasks.

    Recognition runs in worker processes (Whisper decodes at each pause, ~0.08 s
    of CPU per second of speech with tiny.en; PocketSphinx holds the GIL while it
    decodes). Synthesis runs in threads of this process by default
    (:class:`~media.synthesis.SynthesisThreads`): eSpeak NG and onnxruntime release
    the GIL while they work, and a worker busy decoding would otherwise make every
    reply wait behind recognition (measured: tts p50 850 ms at 10 callers).
    ``synthesis`` may also be speech workers (processes).

    Hosted engines (``hosted_stt``, ``hosted_tts``) run on this event loop, through one HTTP
    session, with the embedded engines behind them for any utterance they fail (:mod:`media.fallback`).
    """

    def __init__(
        self,
        workers: SpeechWorkers,
        recordings: Recordings,
        synthesis: SynthesisThreads | SpeechWorkers | None = None,
        *,
        hosted_stt: HostedEngine | None = None,
        hosted_tts: HostedEngine | None = None,
    ) -> None:
        # the resamplers' small matrix products run on the event loop: one BLAS thread, no spinning helpers
        single_threaded_blas()
        self.workers = workers
        self.synthesis = synthesis or workers
        self.recordings = recordings
        self.hosted_stt = hosted_stt
        self.hosted_tts = hosted_tts
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started: asyncio.Task[None] | None = None

    async def ready(self) -> SpeechWorkers:
        """The speech workers, started on first use: a chat-only server never pays for them."""
        if self._started is None:
            self._started = asyncio.create_task(self._start())
        await asyncio.shield(self._started)
        return self.workers

    def spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def speaker(self, language: str) -> Speaker:
        """What a session in ``language`` (the blueprint's) speaks with."""
        embedded: Speaker
        if isinstance(self.synthesis, SynthesisThreads):
            embedded = self.synthesis.speaker(language)
        else:
            embedded = _WorkerSpeaker(self.synthesis)  # speech workers: the one engine they were started with
        if self.hosted_tts is None:
            return embedded
        hosted = create_hosted_synthesizer(self.hosted_tts.service, engine=self.hosted_tts, session=self.http())
        return FallbackSpeaker(hosted, embedded, what=self.hosted_tts.describe())

    def listener(self, language: str) -> Listener:
        """What a session in ``language`` is recognised by."""
        if self.hosted_stt is None:
            return self.workers
        return _HostedListener(self, self.hosted_stt, language)

    def http(self) -> aiohttp.ClientSession:
        """The HTTP session of the hosted engines, opened on first use."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def _start(self) -> None:
        await self.workers.start()
        if self.synthesis is not self.workers:
            await self.synthesis.start()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.recordings.close_all()
        if self._http is not None:
            await self._http.close()
        if self._started is not None:
            await self.workers.close()
            if self.synthesis is not self.workers:
                await self.synthesis.close()


class Listener(Protocol):
    """Where a voice session's recognition streams come from: speech workers, or a hosted service."""

    def recognition(self, language: str | None = None) -> StreamingRecognition: ...


class _HostedListener:
    def __init__(self, services: VoiceServices, engine: HostedEngine, language: str) -> None:
        self.services = services
        self.engine = engine
        self.language = language

    def recognition(self, language: str | None = None) -> StreamingRecognition:
        language = language or self.language
        hosted = create_hosted_recognizer(
            self.engine.service, engine=self.engine, session=self.services.http(), language=language
        )
        embedded = functools.partial(self.services.workers.recognition, language)
        return FallbackRecognition(hosted, embedded, what=self.engine.describe())


class _WorkerSpeaker:
    """Speech workers as a :class:`~media.synthesis.Speaker` (their chunks carry no word counts)."""

    def __init__(self, workers: SpeechWorkers) -> None:
        self.workers = workers

    async def synthesize(self, text: str) -> AsyncIterator[SpeechChunk]:
        async for pcm, rate in self.workers.synthesize(text):
            yield SpeechChunk(pcm, rate)
