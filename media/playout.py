"""Assistant speech on its way out: utterances (:class:`Playback`), their queue, and a paced sender for sockets.

A :class:`Playback` is one assistant utterance whose audio arrives while it plays (synthesis runs piece by
piece). A :class:`PlaybackQueue` decides, 20 ms at a time, which samples go out next: the current playback,
then the queued ones, silence while synthesis lags, never skipping audio; :meth:`PlaybackQueue.stop` is the
barge-in. Two transports read it: :class:`~media.speech_track.SpeechTrack` (WebRTC: aiortc's sender asks
for a frame every 20 ms) and :class:`PacedPlayout` (a message socket: Twilio Media Streams, the custom
media socket), which sends frames itself in real time.

Why real time on a socket too, when the far end could buffer the whole reply: a barge-in must cut the
speech within a frame or two, and what was heard must be known to cut the stored message to it. Sent in
real time, what has been sent is what has been played give or take the network. A far end that confirms
playback (Twilio echoes a ``mark`` when the audio before it has played) makes it exact: the playout then
sends a mark every :data:`MARK_EVERY_FRAMES` frames and at each playback's end; a playback finishes when
its end mark comes back, and a stopped one is rewound to its last confirmed mark.

Everything runs on the event loop; callbacks must be cheap.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

import numpy as np

from media.audio import PCM

__all__ = ["MARK_EVERY_FRAMES", "PREBUFFER_S", "PacedPlayout", "Playback", "PlaybackQueue"]

log = logging.getLogger("vivavoce.playout")

PREBUFFER_S = 0.2  # audio a playback holds before its first frame (unless synthesis has finished)
FRAME_S = 0.02
MAX_LAG_S = 0.1  # behind schedule by more than this (a stalled loop): re-anchor instead of bursting frames out
MARK_EVERY_FRAMES = 10  # a confirming far end is asked to confirm every 200 ms of speech

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
        rate: int = 48_000,
    ) -> None:
        self.id = id
        self.text = text
        self.rate = rate  # of the audio appended: the transport's output rate
        self.prebuffer_samples = round(prebuffer_s * rate)
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
        """Add synthesized audio (mono int16 at :attr:`rate`) that completes ``words`` more words of the text.
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

    def rewind_to(self, samples: int) -> None:
        """Only ``samples`` were heard at the far end (a transport that learns it from marks, after a stop):
        what :meth:`words_heard` counts from."""
        self.played_samples = max(0, min(samples, self.played_samples))

    def _end(self, at: float, *, interrupted: bool) -> None:
        if self.done.done():
            return
        self.interrupted = interrupted
        self.finished_at = at
        self._chunks.clear()
        self._buffered = 0
        self.done.set_result(None)


def call_safely(callback: Callable[..., None] | None, *args: object) -> None:
    """Run a user callback without letting it break the sender loop (aiortc would end the track)."""
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:
        log.exception("playout callback %r failed", callback)


class PlaybackQueue:
    """Playbacks in order: which samples go out next, and which playbacks that starts or finishes."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._queue: deque[Playback] = deque()
        self._current: Playback | None = None

    @property
    def current(self) -> Playback | None:
        return self._current

    @property
    def pending(self) -> list[Playback]:
        """The current playback (if any) followed by the queued ones."""
        return ([self._current] if self._current is not None else []) + list(self._queue)

    def play(self, playback: Playback) -> None:
        """Queue ``playback`` after the ones already queued."""
        if not playback.done.done():
            self._queue.append(playback)

    def stop(self) -> list[Playback]:
        """Barge-in: end the current playback and drop the queued ones, all marked interrupted."""
        stopped = self.pending
        self._current = None
        self._queue.clear()
        now = self._clock()
        for playback in stopped:
            playback._end(now, interrupted=True)
        return stopped

    def next_audio(self, n: int) -> tuple[PCM | None, Playback | None, list[Playback]]:
        """The next ``n`` samples (None: silence), the playback they start, and the playbacks they finish
        (which the caller ends: at once, or when the far end confirms it played them)."""
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
            pcm = playback.take(n)
            if pcm is None:  # synthesis lags: silence now, resume later
                if not first:
                    playback.underruns += 1
                return None, None, finished
            if playback.exhausted:
                finished.append(playback)
                self._current = None
            return pcm, playback if first else None, finished


class PacedPlayout:
    """Playbacks sent over a message socket as 20 ms frames at ``rate``, in real time (see the module docs).

    ``send(pcm)`` puts one frame on the wire (encoded as the socket wants it); silence is not sent.
    With ``send_mark`` the far end confirms playback: call :meth:`marked` with each mark it echoes.
    Pacing is the SpeechTrack's: frame ``n`` is due at ``start + n * 20 ms`` on a monotonic clock,
    re-anchored after a stall longer than 100 ms, and when the queue runs dry.
    """

    def __init__(
        self,
        rate: int,
        send: Callable[[PCM], Awaitable[None]],
        *,
        send_mark: Callable[[str], Awaitable[None]] | None = None,
        on_frame_sent: Callable[[PCM, float], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rate = rate
        self.frame_samples = round(rate * FRAME_S)
        self.on_frame_sent = on_frame_sent
        self._send = send
        self._send_mark = send_mark
        self._clock = clock
        self._queue = PlaybackQueue(clock)
        self._marks: dict[str, tuple[Playback, int, bool]] = {}  # name -> (playback, samples before it, is its end)
        self._confirmed: dict[str, int] = {}  # playback id -> samples the far end confirmed
        self._unconfirmed: list[Playback] = []  # fully sent, end mark not yet echoed
        self._names = itertools.count(1)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.frames_sent = 0
        self.closed = False

    @property
    def pending(self) -> list[Playback]:
        """Playbacks not yet finished: being sent, queued, or sent and awaiting the far end's confirmation."""
        return [*self._unconfirmed, *self._queue.pending]

    def play(self, playback: Playback) -> None:
        if self.closed:
            playback._end(self._clock(), interrupted=True)
            return
        self._queue.play(playback)
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="paced-playout")

    def stop(self) -> list[Playback]:
        """Barge-in: the stopped playbacks, interrupted; with marks, each rewound to what was confirmed heard."""
        unconfirmed, self._unconfirmed = self._unconfirmed, []
        stopped = unconfirmed + self._queue.stop()
        now = self._clock()
        for playback in unconfirmed:
            playback._end(now, interrupted=True)
        if self._send_mark is not None:
            for playback in stopped:
                playback.rewind_to(self._confirmed.pop(playback.id, 0))
            self._marks.clear()
        return stopped

    def marked(self, name: str) -> None:
        """The far end echoed mark ``name``: the audio before it has played. Unknown names are ignored."""
        entry = self._marks.pop(name, None)
        if entry is None:
            return
        playback, samples, is_end = entry
        self._confirmed[playback.id] = max(samples, self._confirmed.get(playback.id, 0))
        if is_end and playback in self._unconfirmed:
            self._unconfirmed.remove(playback)
            self._confirmed.pop(playback.id, None)
            for stale in [k for k, (p, _, _) in self._marks.items() if p is playback]:
                del self._marks[stale]
            playback._end(self._clock(), interrupted=False)
            call_safely(playback.on_finished, playback)

    async def close(self) -> list[Playback]:
        """No more frames: the playbacks still pending are interrupted and returned."""
        self.closed = True
        stopped = self.stop()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return stopped

    async def _mark(self, playback: Playback, *, end: bool) -> None:
        assert self._send_mark is not None
        name = f"m{next(self._names)}"
        self._marks[name] = (playback, playback.played_samples, end)
        await self._send_mark(name)

    async def _run(self) -> None:
        start: float | None = None
        n = 0
        while True:
            if not self._queue.pending:
                self._wake.clear()
                await self._wake.wait()
                start = None
            if start is None:
                start, n = time.monotonic(), 0
            else:
                n += 1
                wait = start + n * FRAME_S - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif wait < -MAX_LAG_S:
                    start -= wait  # re-anchor: this frame is due now
            try:
                await self._next_frame()
            except asyncio.CancelledError:
                raise
            except Exception:  # the socket is going away: the transport's close ends the playbacks
                log.debug("playout send failed", exc_info=True)

    async def _next_frame(self) -> None:
        current = self._queue.current
        pcm, started, finished = self._queue.next_audio(self.frame_samples)
        now = self._clock()
        if started is not None:
            started.first_frame_at = now
            call_safely(started.on_first_frame, started)
            current = started
        if pcm is not None:
            await self._send(np.ascontiguousarray(pcm))
            self.frames_sent += 1
            call_safely(self.on_frame_sent, pcm, now)
            playing = self._queue.current or current
            if (
                self._send_mark is not None
                and playing is not None
                and playing not in finished
                and playing.played_samples % (MARK_EVERY_FRAMES * self.frame_samples) == 0
            ):
                await self._mark(playing, end=False)
        for playback in finished:
            if self._send_mark is None:
                playback._end(now, interrupted=False)
                call_safely(playback.on_finished, playback)
            else:
                self._unconfirmed.append(playback)
                await self._mark(playback, end=True)
