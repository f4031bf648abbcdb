"""Hearing digits said on a call that has not joined a run yet: the spoken half of PIN entry.

While a caller is asked for their PIN (api/telephony/pin.py) the call's audio goes through the same
listening chain as an interview's (api/voice.py), without the interview: voice activity detection per
20 ms frame (``--vad``), the endpointer (runtime/endpointing.py) to find where an utterance starts and
ends, and the server's recogniser (the speech workers, or a hosted engine with them behind it) for the
words, which :func:`runtime.spoken_digits.spoken_digits` reads as digits.

Reported to the PIN prompt as :class:`Speaking` (the caller has been talking for ``min_interruption_ms``,
as long as a barge-in on the interviewer: the prompt stops, and the wait for input starts again) and
:class:`Spoken` (an utterance's digits, "" if it said none).

CPU: the detector's few microseconds a frame run on the event loop, as in every voice session;
recognition runs where the voice pipeline's does (worker processes), fed while the caller speaks so only
the tail is left to decode when they stop. Frames arrive in a sync callback; everything else is put on
one queue and handled by one task, in order, so an utterance's end is never handled before its audio.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from api.voice_services import Listener
from media.audio import FRAME_SAMPLES, PCM
from media.stt.base import StreamingRecognition
from media.transport import AudioTransport
from media.vad import create_vad
from runtime.endpointing import Endpointer, EndpointSettings, Interrupting, SpeechEnded, State
from runtime.spoken_digits import spoken_digits

log = logging.getLogger("vivavoce.telephony")

__all__ = ["PIN_ENDPOINTING", "DigitListener", "Speaking", "Spoken"]

PREROLL_FRAMES = 15  # 300 ms before the first voiced frame go to the recogniser too
AUDIO_BATCH_FRAMES = 3  # frames handed to the recogniser together (60 ms)
# A PIN is said in groups ("four two seven, one nine three"): a pause between groups should not split it,
# though if it does, the pieces' digits are joined (api/telephony/pin.py). No early finish: nothing is
# composed during the pause, so there is nothing to win by guessing the end.
PIN_ENDPOINTING = EndpointSettings(eos_silence_ms=800.0, finalize_after_ms=None)


@dataclass(frozen=True)
class Speaking:
    """The caller is speaking (long enough to be no cough or click)."""


@dataclass(frozen=True)
class Spoken:
    """The digits of one utterance ("" if none); ``text`` is what the recogniser wrote."""

    digits: str
    text: str


Heard = Speaking | Spoken


class DigitListener:
    """Listens on ``transport`` until closed, reporting to ``report`` (sync, on the event loop)."""

    def __init__(
        self,
        transport: AudioTransport,
        listener: Listener,
        report: Callable[[Heard], None],
        *,
        vad: str = "webrtc",
        language: str = "en",
        settings: EndpointSettings = PIN_ENDPOINTING,
    ) -> None:
        self.listener = listener
        self.report = report
        self.language = language
        self.vad = create_vad(vad)
        self.endpointer = Endpointer(settings)
        self._preroll: deque[PCM] = deque(maxlen=PREROLL_FRAMES)
        self._batch: list[PCM] = []
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._recognition: StreamingRecognition | None = None
        self._worker = asyncio.create_task(self._handle_events(), name="pin-digit-listener")
        self.closed = False
        transport.bind(on_audio_frame=self.on_audio_frame, on_closed=_ignore, on_frame_sent=_ignore)

    def on_audio_frame(self, pcm: PCM, end_at: float) -> None:
        """Inbound 20 ms frame (sync): the detector and endpointer here, the rest on the queue."""
        if self.closed:
            return
        probability = self.vad.speech_probability(pcm) if len(pcm) == FRAME_SAMPLES else 0.0
        before = self.endpointer.state
        decisions = self.endpointer.frame(end_at, probability)
        if before is State.QUIET and self.endpointer.state is not State.QUIET:
            self._batch = []
            self._events.put_nowait(("segment", [*self._preroll, pcm]))
        elif before is not State.QUIET:
            self._batch.append(pcm)
            if len(self._batch) >= AUDIO_BATCH_FRAMES or decisions or self.endpointer.state is State.QUIET:
                self._events.put_nowait(("audio", self._batch))
                self._batch = []
        self._preroll.append(pcm)
        for decision in decisions:
            if isinstance(decision, Interrupting):  # as long as speech must be to stop the interviewer
                self.report(Speaking())
            elif isinstance(decision, SpeechEnded):
                self._events.put_nowait(("end", None))
            # Noise (a click, a cough) is no utterance: the next segment's start abandons its audio

    async def _handle_events(self) -> None:
        while True:
            kind, payload = await self._events.get()
            try:
                await self._handle(kind, payload)
            except asyncio.CancelledError:
                raise
            except Exception:  # a recogniser that failed (a worker died): this utterance is lost, not the call
                log.exception("hearing a spoken PIN failed (%s)", kind)

    async def _handle(self, kind: str, payload: Any) -> None:
        if kind == "segment":
            if self._recognition is None:
                self._recognition = self.listener.recognition(self.language)
            await self._recognition.start()
            await self._recognition.feed(np.concatenate(payload))
        elif kind == "audio" and self._recognition is not None:
            await self._recognition.feed(np.concatenate(payload))
        elif kind == "end" and self._recognition is not None:
            text = await self._recognition.finish()
            digits = spoken_digits(text)
            log.debug("heard %d digit(s) in %d character(s)", len(digits), len(text))  # never the PIN itself
            self.report(Spoken(digits, text))

    async def close(self) -> None:
        """Stop listening (the call joined its run, or ended); the transport is the next owner's to bind."""
        if self.closed:
            return
        self.closed = True
        self._worker.cancel()
        await asyncio.gather(self._worker, return_exceptions=True)
        if self._recognition is not None:
            try:
                await self._recognition.close()
            except Exception as exc:
                log.debug("ignored while closing a PIN recognition: %r", exc)


def _ignore(*_: object) -> None:
    """The PIN prompt sends nothing to record, and the call's own reader handles its end."""
