"""Hosted engines with the embedded ones behind them: a failure costs one utterance's engine, not the interview.

:class:`FallbackRecognition` drives a hosted recogniser and keeps the utterance's audio; if the service
fails (refused, timed out, an error status or close, a malformed answer) it logs why and recognises that
utterance with the embedded engine from the kept audio. The next utterance tries the service again.

:class:`FallbackSpeaker` asks a hosted voice for the reply sentence by sentence; if a sentence fails,
it logs why and the embedded voice speaks the rest of the reply (from that sentence, or from the next
one if part of it had already been heard). Sentence requests also make the first audio come early.

Both run on the event loop (the hosted engines are network-bound); the embedded ones run where they
always do (recognition in worker processes, synthesis on the synthesis threads).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import numpy as np

from media.audio import PCM, SAMPLE_RATE
from media.hosted import HostedError
from media.stt.base import HostedRecognizer, StreamingRecognition
from media.synthesis import Speaker, SpeechChunk
from media.tts.base import HostedSynthesizer
from media.tts.pieces import clauses, sentences

log = logging.getLogger("vivavoce.hosted")

MAX_KEPT_S = 120  # audio kept per utterance for a fallback (a longer answer falls back on its last 2 min)


class FallbackRecognition:
    """A :class:`~media.stt.base.StreamingRecognition`: the hosted recogniser, else the embedded one."""

    def __init__(self, hosted: HostedRecognizer, embedded: Callable[[], StreamingRecognition], *, what: str) -> None:
        self.hosted = hosted
        self.embedded_factory = embedded
        self.what = what  # for the log line, e.g. "openai stt (whisper-1 at https://...)"
        self._embedded: StreamingRecognition | None = None
        self._kept: list[PCM] = []
        self._kept_samples = 0
        self._failed: str | None = None
        self._before: list[str] = []  # what was heard before a pause the participant spoke on after (resume)
        self._last = ""  # the last finish's text
        self.fallbacks = 0  # utterances recognised by the embedded engine

    async def start(self) -> None:
        self._before = []
        await self._begin()

    async def resume(self) -> None:
        """The participant went on after an early finish: a hosted service is asked per utterance, so the
        text heard before the pause is kept and the rest is a new utterance whose text follows it."""
        before = [*self._before, self._last] if self._last else list(self._before)
        await self._begin()
        self._before = before

    async def _begin(self) -> None:
        self._kept, self._kept_samples, self._failed, self._last = [], 0, None, ""
        try:
            await self.hosted.start()
        except HostedError as exc:
            self._fail(exc)

    async def feed(self, pcm: PCM) -> None:
        self._kept.append(pcm)
        self._kept_samples += len(pcm)
        while self._kept_samples - len(self._kept[0]) >= MAX_KEPT_S * SAMPLE_RATE:
            self._kept_samples -= len(self._kept.pop(0))
        if self._failed is None:
            try:
                await self.hosted.feed(pcm)
            except HostedError as exc:
                self._fail(exc)

    async def partial(self) -> str:
        if self._failed is not None:
            return ""
        try:
            return await self.hosted.partial()
        except HostedError as exc:
            self._fail(exc)
            return ""

    async def finish(self) -> str:
        self._last = await self._finish()
        return " ".join(part for part in [*self._before, self._last] if part)

    async def _finish(self) -> str:
        kept, self._kept, self._kept_samples = self._kept, [], 0
        if self._failed is None:
            try:
                return await self.hosted.finish()
            except HostedError as exc:
                self._fail(exc)
        self.fallbacks += 1
        if self._embedded is None:
            self._embedded = self.embedded_factory()
        await self._embedded.start()
        if kept:
            await self._embedded.feed(np.concatenate(kept))
        return await self._embedded.finish()

    async def close(self) -> None:
        await self.hosted.close()
        if self._embedded is not None:
            await self._embedded.close()

    def _fail(self, exc: HostedError) -> None:
        if self._failed is None:
            self._failed = str(exc)
            log.warning("hosted %s failed: %s; this answer is recognised by the embedded engine", self.what, exc)


class FallbackSpeaker:
    """A :class:`~media.synthesis.Speaker`: the hosted voice sentence by sentence, else the embedded one."""

    def __init__(self, hosted: HostedSynthesizer, embedded: Speaker, *, what: str) -> None:
        self.hosted = hosted
        self.embedded = embedded
        self.what = what
        self.fallbacks = 0  # replies finished by the embedded voice

    async def synthesize(self, text: str) -> AsyncIterator[SpeechChunk]:
        groups = sentences(clauses(text))
        for i, sentence in enumerate(groups):
            spoken = " ".join(c.spoken for c in sentence)
            words = sum(c.words for c in sentence)
            pending: PCM | None = None  # held back so the sentence's last chunk can carry its word count
            try:
                async for pcm in self.hosted.stream(spoken):
                    if len(pcm) == 0:
                        continue
                    if pending is not None:
                        yield SpeechChunk(pending, self.hosted.sample_rate)
                    pending = pcm
                if pending is not None:
                    yield SpeechChunk(pending, self.hosted.sample_rate, words)
            except HostedError as exc:
                self.fallbacks += 1
                if pending is not None:
                    yield SpeechChunk(pending, self.hosted.sample_rate)
                rest = groups[i + 1 :] if pending is not None else groups[i:]
                log.warning("hosted %s failed: %s; the embedded voice speaks the rest of this reply", self.what, exc)
                remaining = " ".join(c.spoken for s in rest for c in s)
                if remaining:
                    async for chunk in self.embedded.synthesize(remaining):
                        yield chunk
                return
