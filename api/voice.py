"""Voice sessions: an audio transport as a participant link, with the listening and speaking pipeline.

The transport (media/transport.py) carries the audio: a WebRTC peer (media/webrtc.py), a phone call
through Twilio Media Streams (api/telephony/), or the custom media socket (api/media_socket.py). The
pipeline below is the same for all of them.

Inbound: 20 ms frames of 16 kHz audio → VAD → :class:`~runtime.endpointing.Endpointer`
→ speech events for the conversation, and the audio of each segment streamed to
a recogniser in a worker process while the participant speaks, so that only
the tail is left to decode when they stop.

Outbound: each assistant message is synthesised piece by piece on the server's synthesis threads
(:mod:`media.synthesis`; Piper for English, eSpeak NG for other languages), resampled to the
transport's rate (48 kHz WebRTC, 8 kHz a phone line) and queued on its paced playout; when
it has been played (or cut by a barge-in) the controller gets a
:class:`~api.live.PlaybackReport` with its latency breakdown.

Latency anchors (docs/latency.md): for the first message after an answer,
T0 = end of the last voiced frame, and the six stages telescope exactly to
T_out - T0: eos (T0 → decision), eos_wait (decision → turn committed),
transcriber (committed → final transcript), llm (transcript → reply text),
tts (text → first samples), initial_wait (first samples → first frame sent).

Races it guards against: inbound frames arrive in a sync callback; every
decision is put on one queue and handled by one task, in order, so a
``SpeechEnded`` is never processed before the ``SpeechStarted`` it closes,
and the recogniser sees its audio in order. Recognition is finished early when a
pause reaches ``finalize_after_ms`` (so the transcript is ready when the silence
window closes); if the participant resumes, the recogniser is told the utterance
goes on (``resume``: Whisper keeps a long enough decoded stretch as a closed piece
and decodes the rest with what follows; a streaming engine keeps the early text
and starts afresh). The early transcript also decides how long the pause may
last (:mod:`runtime.turn_end`): the endpointer holds the turn open from the
pause until that verdict, up to the longest window, and then ends it after the
short window if the words read as a complete answer. A playback
finishing after the link was replaced or closed reports to a controller that
ignores stale links.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from api.live import PlaybackReport, RunController
from api.voice_services import Listener, Recordings, VoiceServices
from media.audio import FRAME_SAMPLES, PCM, SAMPLE_RATE
from media.playout import Playback
from media.recording import Recorder
from media.resample import Resampler
from media.stt.base import StreamingRecognition
from media.synthesis import Speaker
from media.transport import AudioTransport
from media.vad import create_vad
from media.webrtc import VoicePeer
from runtime.endpointing import (
    Endpointer,
    EndpointSettings,
    Interrupting,
    Pausing,
    Resumed,
    SpeechEnded,
    SpeechStarted,
    State,
)
from runtime.errors import StorageUnavailable
from runtime.serialize import message_json
from runtime.turn_end import TurnEndSettings, silence_window
from runtime.types import ChannelSettings, LatencyBreakdown, Message, SessionType, UtteranceKind

log = logging.getLogger("vivavoce.voice")

__all__ = ["Listener", "Recordings", "VoiceLink", "VoiceServices", "cut_to_played", "synthesize_into"]

PREROLL_FRAMES = 15  # 300 ms of audio before the first voiced frame goes to the recogniser too
PARTIAL_EVERY_FRAMES = 15  # ask for a partial caption every 300 ms of speech
AUDIO_BATCH_FRAMES = 3  # speech frames handed to the recogniser together (60 ms); any decision flushes them
MAX_PAUSE_SAMPLES = 10 * SAMPLE_RATE  # audio held while an early finish is pending (the pause is < 1 s)
DEFAULT_TURN_END = TurnEndSettings()
SAY_AGAIN = "Sorry, your answer could not be saved. Please say it again."


def _ms(seconds: float) -> float:
    return round(max(seconds, 0.0) * 1000.0, 3)


@dataclass
class AnswerTiming:
    """The anchors of one participant answer, for the reply's latency breakdown."""

    t0: float  # end of the last voiced frame
    decided_at: float  # end-of-speech decision
    committed_at: float  # turn handed on (after any hold)
    transcript_at: float  # final transcript ready


def cut_to_played(text: str, playback: Playback) -> str:
    """The words of ``text`` that were heard, estimated from the audio played (and, when the engine
    counts them, the words of each piece: see :meth:`Playback.words_heard`)."""
    words = text.split()
    keep = round(min(max(playback.words_heard(len(words)), 0.0), len(words)))
    return " ".join(words[:keep])


async def synthesize_into(speaker: Speaker, playback: Playback) -> None:
    """Speak ``playback.text`` into it, piece by piece, at its rate; it is complete when this returns."""
    resampler: Resampler | None = None
    try:
        async for chunk in speaker.synthesize(playback.text):
            if resampler is None or resampler.rate_in != chunk.rate:  # a fallback engine may speak at another rate
                if resampler is not None:
                    playback.append(resampler.flush())
                resampler = Resampler(chunk.rate, playback.rate)
            playback.append(resampler.process(chunk.pcm), words=chunk.words)
        if resampler is not None:
            playback.append(resampler.flush())
    except Exception:
        log.exception("synthesis failed for %s", playback.id)
    finally:
        playback.complete()


class VoiceLink:
    """One voice session: the pipeline between a transport and the run's controller.

    ``session_type`` is how the session is recorded (``voice``; a phone call's ``inbound`` or
    ``outbound``), ``user_number`` the caller's number on a phone call.
    """

    plays_audio = True

    def __init__(
        self,
        *,
        transport: AudioTransport,
        workers: Listener,
        synthesis: Speaker,
        settings: ChannelSettings,
        vad: str = "webrtc",
        recorder: Recorder | None = None,
        language: str = "en",
        turn_end: TurnEndSettings | None = DEFAULT_TURN_END,
        session_type: SessionType = SessionType.VOICE,
        user_number: str | None = None,
    ) -> None:
        self.transport = transport
        self.session_type = session_type
        self.user_number = user_number
        transport.bind(
            on_audio_frame=self.on_audio_frame, on_closed=self._on_peer_closed, on_frame_sent=self._on_frame_sent
        )
        self.workers = workers
        self.synthesis = synthesis
        self.recorder = recorder
        self.controller: RunController | None = None
        self.connected_at: float | None = None
        self.endpointer = Endpointer(
            EndpointSettings(eos_silence_ms=settings.eos_silence_ms, min_interruption_ms=settings.min_interruption_ms)
        )
        self.vad = create_vad(vad)
        self.language = language
        # the words decide a pause's length only if they can lengthen it
        self.turn_end = turn_end if turn_end and turn_end.max_silence_ms > settings.eos_silence_ms else None
        self._pauses = 0  # counts pauses, so a late verdict on the words of an earlier one is dropped
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._preroll: deque[PCM] = deque(maxlen=PREROLL_FRAMES)
        self._batch: list[PCM] = []  # speech frames not yet queued for the recogniser
        self._recognition: StreamingRecognition | None = None
        self._segment_frames = 0
        self._segment = 0  # counts segments, so a late partial caption of an old one is dropped
        self._partial: asyncio.Task[None] | None = None  # at most one partial request in flight
        self._since_pause: list[PCM] = []  # audio that arrived while an early finish was pending
        self._early: asyncio.Task[str] | None = None  # recognition finished during a pause
        self._answer: AnswerTiming | None = None
        self._playbacks: dict[str, tuple[Playback, Message, float, AnswerTiming | None]] = {}
        self._last_playback_end = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._worker = asyncio.create_task(self._handle_events(), name="voice-events")
        self.closed = False

    # --- ParticipantLink ----------------------------------------------------------------

    @property
    def peer(self) -> VoicePeer:
        """The WebRTC peer, for a WebRTC session."""
        assert isinstance(self.transport, VoicePeer), "not a WebRTC session"
        return self.transport

    @property
    def rtt(self) -> float | None:
        return self.transport.rtt

    async def send(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "typing":
            if frame.get("active"):  # when composing ends, speaking follows: no state change to announce
                self.transport.send_event({"type": "state", "state": "thinking"})
        elif kind == "message.ack":
            message = frame["message"]
            self.transport.send_event({"type": "caption", "role": "user", "final": True, "text": message["content"]})
        elif kind in ("session.ready", "run.ended", "error"):
            self.transport.send_event(frame)

    async def deliver(self, message: Message, run_started_at: float | None) -> None:
        now = time.time()
        anchor = None
        if self._answer is not None and message.kind is not UtteranceKind.GREETING:
            anchor, self._answer = self._answer, None
        playback = Playback(
            message.id, message.content, on_finished=self._on_playback_finished, rate=self.transport.output_rate
        )
        self._playbacks[message.id] = (playback, message, now, anchor)
        self.transport.play(playback)
        self.transport.send_event({"type": "message", "message": message_json(message, run_started_at)})
        self.transport.send_event({"type": "state", "state": "speaking"})
        self._spawn(self._synthesize(playback))

    async def stop_playback(self) -> list[PlaybackReport]:
        stopped = await self.transport.stop_playback()
        reports = [self._report(p) for p in stopped if p.id in self._playbacks]
        for p in stopped:
            self._playbacks.pop(p.id, None)
        self.transport.send_event({"type": "state", "state": "listening"})
        return reports

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.recorder = None
        current = asyncio.current_task()  # close() may run inside one of our own tasks (the run just ended)
        for task in [self._worker, *self._tasks]:
            if task is not current:
                task.cancel()
        for pending in (self._early, self._partial):
            if pending is not None:
                pending.cancel()
        if self._recognition is not None:
            await _quietly(self._recognition.close())
        await self.transport.close()

    def _on_peer_closed(self, reason: str) -> None:
        """ICE failure, page closed, the call hung up, or the participant's track ended: the session ends
        (not the run)."""
        log.info("voice transport closed: %s", reason)
        self._spawn(self._hang_up(reason))

    async def _hang_up(self, reason: str) -> None:
        if self.controller is not None:
            await self.controller.detach(self)  # first: close() cancels every other task of this link
        await self.close(1000, reason)

    def _on_frame_sent(self, pcm: PCM, sent_at: float) -> None:
        if self.recorder is not None:
            self.recorder.add("assistant", pcm, sent_at, rate=self.transport.output_rate)

    # --- speaking -------------------------------------------------------------------------

    async def _synthesize(self, playback: Playback) -> None:
        await synthesize_into(self.synthesis, playback)

    def _on_playback_finished(self, playback: Playback) -> None:
        """From the track, on the event loop: report a fully played message to the controller."""
        if playback.id not in self._playbacks or self.controller is None:
            return
        report = self._report(playback)
        del self._playbacks[playback.id]
        self._last_playback_end = playback.finished_at or time.time()
        if not self._playbacks:
            self.transport.send_event({"type": "state", "state": "listening"})
        self._spawn(self.controller.playback_done(self, report))

    def _report(self, playback: Playback) -> PlaybackReport:
        _, message, text_ready_at, anchor = self._playbacks[playback.id]
        ended_at = playback.finished_at or time.time()
        content = cut_to_played(message.content, playback) if playback.interrupted else message.content
        return PlaybackReport(
            message_id=message.id,
            started_at=playback.first_frame_at,
            ended_at=ended_at,
            content=content,
            interrupted=playback.interrupted,
            latency=self._latency(message, playback, text_ready_at, anchor),
        )

    def _latency(
        self, message: Message, p: Playback, text_ready_at: float, anchor: AnswerTiming | None
    ) -> LatencyBreakdown | None:
        if p.first_frame_at is None or p.samples_ready_at is None:
            return None
        network = None if self.rtt is None else round(self.rtt * 500.0, 3)
        if anchor is not None:
            return LatencyBreakdown(
                network=network,
                eos=_ms(anchor.decided_at - anchor.t0),
                eos_wait=_ms(anchor.committed_at - anchor.decided_at),
                transcriber=_ms(anchor.transcript_at - anchor.committed_at),
                llm=_ms(text_ready_at - anchor.transcript_at),
                tts=_ms(p.samples_ready_at - text_ready_at),
                initial_wait=_ms(p.first_frame_at - p.samples_ready_at),
            )
        if message.kind is UtteranceKind.GREETING and self.connected_at is not None:
            return LatencyBreakdown(network=network, initial_wait=_ms(p.first_frame_at - self.connected_at))
        # queued behind earlier speech, or prompted by a timer: the wait starts when it could have played
        start = max(text_ready_at, self._last_playback_end)
        tts = max(p.samples_ready_at - start, 0.0)
        return LatencyBreakdown(network=network, tts=_ms(tts), initial_wait=_ms(p.first_frame_at - start - tts))

    # --- listening ------------------------------------------------------------------------

    def on_audio_frame(self, pcm: PCM, end_at: float) -> None:
        """Inbound 20 ms frame (sync, on the event loop): cheap work only; the rest goes to the queue."""
        if self.recorder is not None:
            self.recorder.add("participant", pcm, end_at - len(pcm) / SAMPLE_RATE, rate=SAMPLE_RATE)
        probability = self.vad.speech_probability(pcm) if len(pcm) == FRAME_SAMPLES else 0.0
        before = self.endpointer.state
        decisions = self.endpointer.frame(end_at, probability)
        after = self.endpointer.state
        if before is State.QUIET and after is not State.QUIET:
            self._flush_audio()
            self._events.put_nowait(("segment", [*self._preroll, pcm]))
        elif before is not State.QUIET:
            # Batched: one event, one task wake-up and one message to the worker per 60 ms instead of per
            # frame. Every decision (pause, end, resume...) sends what is pending first, so the recogniser
            # has all the audio before any decision about it; a batch only waits while speech goes on.
            self._batch.append(pcm)
            if len(self._batch) >= AUDIO_BATCH_FRAMES or decisions or after is State.QUIET:
                self._flush_audio()
        self._preroll.append(pcm)
        for decision in decisions:
            if isinstance(decision, Pausing):
                self._pauses += 1
                if self.turn_end is not None:  # wait for the verdict on the words (the early transcript)
                    self.endpointer.hold(self.turn_end.max_silence_ms)
            self._events.put_nowait(("decision", decision))

    def _flush_audio(self) -> None:
        if self._batch:
            self._events.put_nowait(("audio", self._batch))
            self._batch = []

    async def _handle_events(self) -> None:
        while True:
            kind, payload = await self._events.get()
            try:
                await self._handle(kind, payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("voice event %s failed", kind)

    async def _handle(self, kind: str, payload: Any) -> None:
        if self.closed:  # the run ended inside one of our own tasks: the recogniser is gone
            return
        if kind == "segment":
            if self._recognition is None:
                self._recognition = self.workers.recognition(self.language)
            await self._recognition.start()
            self._segment_frames = 0
            self._segment += 1
            await self._recognition.feed(np.concatenate(payload))
        elif kind == "audio":
            audio = payload[0] if len(payload) == 1 else np.concatenate(payload)
            if self._early is not None:
                if sum(map(len, self._since_pause)) < MAX_PAUSE_SAMPLES:
                    self._since_pause.append(audio)
            elif self._recognition is not None:
                await self._recognition.feed(audio)
                before = self._segment_frames
                self._segment_frames += len(payload)
                crossed = self._segment_frames // PARTIAL_EVERY_FRAMES > before // PARTIAL_EVERY_FRAMES
                if crossed and self._partial is None:
                    self._partial = asyncio.create_task(self._caption(self._recognition, self._segment))
        elif kind == "decision":
            await self._decide(payload)

    async def _decide(self, decision: Any) -> None:
        ctl = self.controller
        if isinstance(decision, SpeechStarted):
            if ctl is not None:
                await ctl.speech(self, "started")
        elif isinstance(decision, Interrupting):
            if ctl is not None:
                await ctl.speech(self, "interrupting")
        elif isinstance(decision, Pausing):
            if self._recognition is not None and self._early is None:
                self._early = asyncio.create_task(self._recognition.finish(), name="voice-early-finish")
                self._early.add_done_callback(_retrieve)
                if self.turn_end is not None:
                    self._early.add_done_callback(functools.partial(self._on_words_at_pause, self._pauses))
                if ctl is not None:
                    self._spawn(self._speculate(ctl, self._early))
            elif self.turn_end is not None:  # nothing to judge: the short window
                self.endpointer.hold(self.endpointer.settings.eos_silence_ms)
        elif isinstance(decision, Resumed):
            if ctl is not None:
                await ctl.speech(self, "resumed")  # a reply composed on the pause is obsolete
            if self._recognition is not None and self._early is not None:
                await self._continue_after_pause(self._recognition)
        # Noise: nothing to finish; the next segment's start() abandons what was fed
        elif isinstance(decision, SpeechEnded):
            committed_at = time.time()
            text = await self._final_transcript()
            transcript_at = time.time()
            if ctl is None:
                return
            await ctl.speech(self, "ended")
            if not text.strip():
                return
            self._answer = AnswerTiming(decision.last_voiced_at, decision.decided_at, committed_at, transcript_at)
            try:
                stored = await ctl.participant_message(
                    self,
                    text,
                    client_id=None,
                    received_at=transcript_at,
                    spoken=(decision.onset_at, decision.last_voiced_at),
                )
            except StorageUnavailable:  # nothing was stored and the interview did not move on: ask again
                log.warning("a spoken answer could not be stored in run %s", ctl.run_id)
                self.transport.send_event({"type": "error", "code": "storage_unavailable", "message": SAY_AGAIN})
                return
            if stored is not None:
                self.transport.send_event({"type": "caption", "role": "user", "final": True, "text": stored.content})

    async def _speculate(self, ctl: RunController, early: asyncio.Task[str]) -> None:
        """Once the pause's early transcript is ready, let the controller compose its reply ahead
        (api/live/speculation.py): if the turn ends on these words, the reply is ready or under way."""
        try:
            text = await asyncio.shield(early)
        except Exception:
            return
        if early is self._early and text.strip():  # the whole answer so far: the final transcript if it ends here
            await ctl.speculate(self, text)

    async def _caption(self, recognition: StreamingRecognition, segment: int) -> None:
        """A partial caption, off the decision path: waiting for it would hold up the end of the turn
        whenever the worker is behind."""
        try:
            partial = await recognition.partial()
            if partial and segment == self._segment and self._early is None:
                self.transport.send_event({"type": "caption", "role": "user", "final": False, "text": partial})
        except Exception as exc:
            log.debug("partial caption failed: %r", exc)
        finally:
            self._partial = None

    async def _final_transcript(self) -> str:
        """The whole answer: the early result of the last pause, or the utterance finished now."""
        early, self._early = self._early, None
        self._since_pause = []
        if early is not None:
            return await early
        return await self._recognition.finish() if self._recognition is not None else ""

    async def _continue_after_pause(self, recognition: StreamingRecognition) -> None:
        """The participant spoke again: the utterance goes on, starting with the pause's audio.

        The early result is not waited for: ``resume`` follows the ``finish`` on the worker, in order,
        and the recogniser keeps what it can of it (see the module docs).
        """
        self._early = None
        await recognition.resume()
        if self._since_pause:
            await recognition.feed(np.concatenate(self._since_pause))
        self._since_pause = []

    def _on_words_at_pause(self, pause: int, early: asyncio.Task[str]) -> None:
        """The verdict on the words at a pause: how long it may last (runtime/turn_end.py)."""
        if pause != self._pauses or self.turn_end is None or self.endpointer.state is not State.SPEECH:
            return  # speech resumed, or the turn ended, since
        base = self.endpointer.settings.eos_silence_ms
        text = "" if early.cancelled() or early.exception() is not None else early.result()
        self.endpointer.hold(silence_window(text, base, self.turn_end))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a task's failure as seen (it is awaited, or dropped when the link closes)."""
    if not task.cancelled():
        task.exception()


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception as exc:
        log.debug("ignored during close: %r", exc)
