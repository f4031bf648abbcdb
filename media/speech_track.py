"""The outbound voice: assistant utterances (:class:`~media.playout.Playback`) played on a paced WebRTC track.

:class:`SpeechTrack` is what aiortc's sender reads: every 20 ms it returns one
frame of 48 kHz mono s16 (960 samples; the Opus encoder upmixes), taken from the
current playback or silence (a :class:`~media.playout.PlaybackQueue` decides
which). Audio is appended to a playback as synthesis produces it; when synthesis
is slower than real time the track sends silence and resumes where it left off,
never skipping audio. :meth:`SpeechTrack.stop` is the barge-in: the current and
queued playbacks end at once (the next frame is silence).

Everything runs on the event loop inside the sender's ``recv()`` calls, so the
per-frame work is kept to one copy of the samples into the frame (a frame inside
one appended chunk is a view of it, silence is one preallocated buffer);
callbacks must be just as cheap.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from media.audio import PCM
from media.playout import MAX_LAG_S, PREBUFFER_S, Playback, PlaybackQueue, call_safely

__all__ = ["OUT_RATE", "PREBUFFER_S", "Playback", "SpeechTrack"]

OUT_RATE = 48_000
OUT_FRAME_SAMPLES = 960  # 20 ms
OUT_PTIME = OUT_FRAME_SAMPLES / OUT_RATE
TIME_BASE = fractions.Fraction(1, OUT_RATE)


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
        self._queue = PlaybackQueue(clock)
        self._start: float | None = None
        self._pts = 0
        self._silence = bytes(2 * OUT_FRAME_SAMPLES)
        self.frames_sent = 0

    @property
    def current(self) -> Playback | None:
        return self._queue.current

    @property
    def pending(self) -> list[Playback]:
        """The current playback (if any) followed by the queued ones."""
        return self._queue.pending

    def play(self, playback: Playback) -> None:
        """Queue ``playback`` after the ones already queued."""
        if playback.done.done():
            return
        if self.readyState != "live":
            playback._end(self._clock(), interrupted=True)
            return
        self._queue.play(playback)

    def stop(self) -> list[Playback]:  # type: ignore[override]
        """Barge-in: end the current playback and drop the queued ones, all marked interrupted."""
        return self._queue.stop()

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

        pcm, started, finished = self._queue.next_audio(OUT_FRAME_SAMPLES)
        frame = AudioFrame(format="s16", layout="mono", samples=OUT_FRAME_SAMPLES)
        frame.planes[0].update(self._silence if pcm is None else pcm)  # type: ignore[arg-type]  # any buffer
        frame.sample_rate = OUT_RATE
        frame.time_base = TIME_BASE
        frame.pts = self._pts
        self.frames_sent += 1

        now = self._clock()
        if started is not None:
            started.first_frame_at = now
            call_safely(started.on_first_frame, started)
        if pcm is not None:
            call_safely(self.on_frame_sent, pcm, now)
        for playback in finished:
            playback._end(now, interrupted=False)
            call_safely(playback.on_finished, playback)
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
