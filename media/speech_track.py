"""The outbound voice: assistant utterances (:class:`Playback`) played on a paced WebRTC track.

:class:`SpeechTrack` is what aiortc's sender reads: every 20 ms it returns one
frame of 48 kHz mono s16 (960 samples; the Opus encoder upmixes), taken from the
current playback or silence. Audio is appended to a playback as synthesis
produces it; when synthesis is slower than real time the track sends silence
and resumes where it left off, never skipping audio. :meth:`SpeechTrack.stop`
is the barge-in: the current and queued playbacks end at once (the next frame
is silence).

Everything runs on the event loop inside the sender's ``recv()`` calls, so the
per-frame work is kept to one copy of the samples into the frame (a frame inside
one appended chunk is a view of it, silence is one preallocated buffer);
callbacks must be just as cheap.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections import deque
from collections.abc import Callable

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from media.audio import PCM

log = logging.getLogger("vivavoce.webrtc")

OUT_RATE = 48_000
OUT_FRAME_SAMPLES = 960  # 20 ms
OUT_PTIME = OUT_FRAME_SAMPLES / OUT_RATE
TIME_BASE = fractions.Fraction(1, OUT_RATE)
PREBUFFER_S = 0.2  # audio a playback holds before its first frame (unless synthesis has finished)
MAX_LAG_S = 0.1  # behind schedule by more than this (a stalled loop): re-anchor instead of bursting frames out

PlaybackCallback = Callable[["Playback"], None]


class Playback:
    """One assistant utterance: audio arrives with :meth:`append`, the track plays it.

    Times are wall-clock (``clock``, default :func:`time.time`). ``total_samples``
    counts the samples appended so far, so while synthesis is still running
    ``played_fraction`` is relative to the audio that existed at the time.
    ``done`` resolves when the playback has played to its end or was stopped
    (``interrupted``); ``on_finished`` is called only in the first case (a stop
    returns the stopped playbacks to its caller instead). Must be created on
    the event loop (``done`` is a future).

    ``prebuffer_s``: the first frame waits until this much audio is buffered or synthesis has
    completed. eSpeak produces it in a few milliseconds, so this costs nothing on a quiet server;
    on a busy one it keeps a slow second chunk from opening a gap right after the first word
    (the participant hears a stutter, and the recording drifts from the message's start time).
    The wait counts in ``initial_wait``.

    Words: :meth:`append` may say how many words of the text a chunk completes (engines that make whole
    pieces know); :meth:`words_heard` then places a barge-in among them, even while the rest of the reply
    is still being made, where ``played_fraction`` knows only the audio made so far.
    """

    def __init__(
        self,
        id: str,
        text: str = "",
        *,
        on_first_frame: PlaybackCallback | None = None,
        on_finished: PlaybackCallback | None = None,
        clock: Callable[[], float] = time.time,
        prebuffer_s: float = PREBUFFER_S,
    ) -> None:
        self.id = id
        self.text = text
        self.prebuffer_samples = round(prebuffer_s * OUT_RATE)
        self.on_first_frame = on_first_frame
        self.on_finished = on_finished
        self._clock = clock
        self._chunks: deque[PCM] = deque()
        self._offset = 0  # into _chunks[0]
        self._buffered = 0
        self._word_marks: list[tuple[int, int]] = []  # (total_samples, words completed) after each chunk with words
        self.total_samples = 0
        self.played_samples = 0
        self.underruns = 0  # frames of silence sent mid-playback because synthesis lagged
        self.completed = False  # synthesis done: no more append()
        self.interrupted = False
        self.samples_ready_at: float | None = None
        self.first_frame_at: float | None = None
        self.finished_at: float | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return (
            f"Playback({self.id!r}, played={self.played_samples}/{self.total_samples}, "
            f"completed={self.completed}, interrupted={self.interrupted}, done={self.done.done()})"
        )

    def append(self, pcm48: PCM, *, words: int = 0) -> None:
        """Add synthesized audio (48 kHz mono int16) that completes ``words`` more words of the text.
        Ignored once the playback has ended (e.g. stopped)."""
        if self.done.done():
            return
        if self.completed:
            raise RuntimeError(f"playback {self.id} already completed")
        if pcm48.dtype != np.int16 or pcm48.ndim != 1:
            raise TypeError(f"expected 1-D int16 PCM, got {pcm48.dtype} with shape {pcm48.shape}")
        if len(pcm48) == 0:
            return
        if self.samples_ready_at is None:
            self.samples_ready_at = self._clock()
        self._chunks.append(np.ascontiguousarray(pcm48))
        self._buffered += len(pcm48)
        self.total_samples += len(pcm48)
        if words > 0:
            done = self._word_marks[-1][1] if self._word_marks else 0
            self._word_marks.append((self.total_samples, done + words))

    def complete(self) -> None:
        """Synthesis is done: the playback finishes once its buffered audio has been sent."""
        self.completed = True

    @property
    def played_fraction(self) -> float:
        if self.total_samples == 0:
            return 0.0 if self.interrupted or not self.done.done() else 1.0
        return self.played_samples / self.total_samples

    def words_heard(self, total_words: int) -> float:
        """How many of the text's ``total_words`` were heard: the words of the pieces played, and the
        played share of the piece that was playing; without word counts, ``played_fraction`` of them."""
        if not self._word_marks:
            return total_words * self.played_fraction
        start_samples, start_words = 0, 0
        for samples, words in self._word_marks:
            if self.played_samples < samples:
                share = (self.played_samples - start_samples) / (samples - start_samples)
                return min(start_words + share * (words - start_words), total_words)
            start_samples, start_words = samples, words
        tail = self.total_samples - start_samples  # audio after the last counted piece: the rest of the text
        if tail > 0 and self.completed:
            share = (self.played_samples - start_samples) / tail
            return min(start_words + share * (total_words - start_words), total_words)
        return min(start_words, total_words)

    @property
    def exhausted(self) -> bool:
        """Synthesis is done and every sample has been taken."""
        return self.completed and self._buffered == 0

    def take(self, n: int) -> PCM | None:
        """The next ``n`` samples (the last frame zero-padded), or None if they are not there yet.

        Read-only: a frame that lies inside one appended chunk is a view of it (no copy).
        """
        if self._buffered < n and not (self.completed and self._buffered > 0):
            return None
        if self.played_samples == 0 and self._buffered < self.prebuffer_samples and not self.completed:
            return None
        chunk = self._chunks[0]
        if len(chunk) - self._offset >= n:  # the common case: no copy
            out = chunk[self._offset : self._offset + n]
            self._offset += n
            if self._offset == len(chunk):
                self._chunks.popleft()
                self._offset = 0
            self._buffered -= n
            self.played_samples += n
            return out
        out = np.zeros(n, dtype=np.int16)
        filled = 0
        while filled < n and self._chunks:
            chunk = self._chunks[0]
            k = min(n - filled, len(chunk) - self._offset)
            out[filled : filled + k] = chunk[self._offset : self._offset + k]
            filled += k
            self._offset += k
            if self._offset == len(chunk):
                self._chunks.popleft()
                self._offset = 0
        self._buffered -= filled
        self.played_samples += filled
        return out

    def _end(self, at: float, *, interrupted: bool) -> None:
        if self.done.done():
            return
        self.interrupted = interrupted
        self.finished_at = at
        self._chunks.clear()
        self._buffered = 0
        self.done.set_result(None)


def _call(callback: Callable[..., None] | None, *args: object) -> None:
    """Run a user callback without letting it break the sender loop (aiortc would end the track)."""
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:
        log.exception("speech track callback %r failed", callback)


class SpeechTrack(MediaStreamTrack):
    """Outbound audio, paced at 20 ms frames of 48 kHz mono s16: queued playbacks in order, silence otherwise.

    Pacing follows aiortc's ``AudioStreamTrack``: frame ``n`` is due at
    ``start + n * 20 ms`` on a monotonic clock, so sleep jitter does not
    accumulate; if the loop stalled for more than 100 ms the schedule is
    re-anchored rather than sending the backlog in a burst. ``pts`` counts
    samples (time base 1/48000) and never jumps.

    ``stop()`` deliberately means "stop talking" (barge-in) and leaves the
    track live; aiortc calls it when its sender ends, which is harmless.
    :meth:`end` ends the track itself.
    """

    kind = "audio"

    def __init__(
        self,
        *,
        on_frame_sent: Callable[[PCM, float], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.on_frame_sent = on_frame_sent
        self._clock = clock
        self._queue: deque[Playback] = deque()
        self._current: Playback | None = None
        self._start: float | None = None
        self._pts = 0
        self._silence = bytes(2 * OUT_FRAME_SAMPLES)
        self.frames_sent = 0

    @property
    def current(self) -> Playback | None:
        return self._current

    @property
    def pending(self) -> list[Playback]:
        """The current playback (if any) followed by the queued ones."""
        return ([self._current] if self._current is not None else []) + list(self._queue)

    def play(self, playback: Playback) -> None:
        """Queue ``playback`` after the ones already queued."""
        if playback.done.done():
            return
        if self.readyState != "live":
            playback._end(self._clock(), interrupted=True)
            return
        self._queue.append(playback)

    def stop(self) -> list[Playback]:  # type: ignore[override]
        """Barge-in: end the current playback and drop the queued ones, all marked interrupted."""
        stopped = self.pending
        self._current = None
        self._queue.clear()
        now = self._clock()
        for playback in stopped:
            playback._end(now, interrupted=True)
        return stopped

    def end(self) -> list[Playback]:
        """End the track (no more frames; later playbacks are interrupted at once)."""
        stopped = self.stop()
        super().stop()
        return stopped

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._wait_for_slot()
        if self.readyState != "live":
            raise MediaStreamError

        pcm, started, finished = self._next_audio()
        frame = AudioFrame(format="s16", layout="mono", samples=OUT_FRAME_SAMPLES)
        frame.planes[0].update(self._silence if pcm is None else pcm)  # type: ignore[arg-type]  # any buffer
        frame.sample_rate = OUT_RATE
        frame.time_base = TIME_BASE
        frame.pts = self._pts
        self.frames_sent += 1

        now = self._clock()
        if started is not None:
            started.first_frame_at = now
            _call(started.on_first_frame, started)
        if pcm is not None:
            _call(self.on_frame_sent, pcm, now)
        for playback in finished:
            playback._end(now, interrupted=False)
            _call(playback.on_finished, playback)
        return frame

    async def _wait_for_slot(self) -> None:
        if self._start is None:
            self._start = time.monotonic()
            return
        self._pts += OUT_FRAME_SAMPLES
        wait = self._start + self._pts / OUT_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        elif wait < -MAX_LAG_S:
            self._start -= wait  # re-anchor: this frame is due now

    def _next_audio(self) -> tuple[PCM | None, Playback | None, list[Playback]]:
        """The next frame's samples (None: silence), the playback they start, and the playbacks they finish."""
        finished: list[Playback] = []
        while True:
            if self._current is None:
                if not self._queue:
                    return None, None, finished
                self._current = self._queue.popleft()
            playback = self._current
            if playback.exhausted:  # completed with nothing (more) to play
                finished.append(playback)
                self._current = None
                continue
            first = playback.played_samples == 0
            pcm = playback.take(OUT_FRAME_SAMPLES)
            if pcm is None:  # synthesis lags: silence now, resume later
                if not first:
                    playback.underruns += 1
                return None, None, finished
            if playback.exhausted:
                finished.append(playback)
                self._current = None
            return pcm, playback if first else None, finished
