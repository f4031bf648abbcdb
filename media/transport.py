"""What the voice pipeline needs from an audio transport, and the inbound half every socket transport shares.

The speech pipeline (api/voice.py ``VoiceLink``: VAD, endpointing, recognition, synthesis, barge-in) does
not care how audio travels. A transport:

* hands on the participant's audio as 20 ms frames of 16 kHz mono int16, each with the wall-clock time
  its last sample was spoken (``on_audio_frame(pcm320, end_at)``);
* plays :class:`~media.playout.Playback` objects at its :attr:`AudioTransport.output_rate` (synthesis is
  resampled to it), reports each frame it sends (``on_frame_sent``, for the recording), and stops at once
  on a barge-in, returning what it cut;
* carries the pipeline's events (state, captions, messages) if it has a way to (a WebRTC data channel,
  the custom socket's JSON frames; a phone line has none);
* says when the far end went away (``on_closed(reason)``, once).

Transports: :class:`media.webrtc.VoicePeer` (WebRTC, 48 kHz out), and the socket transports of
api/telephony (Twilio Media Streams, μ-law 8 kHz) and api/media_socket.py (PCM16 at 16 or 24 kHz).

:class:`InboundAudio` turns a socket's audio chunks (any length, at the socket's rate) into the
pipeline's frames, stamped the way :func:`media.webrtc.consume_audio` stamps RTP: media time (samples
counted since the stream began) plus the smallest ``received - media time`` seen so far, so frames that
arrive in a bunch keep their real spacing and a silence window is the participant's silence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from media.audio import FRAME_SAMPLES, PCM, SAMPLE_RATE
from media.playout import Playback
from media.resample import Resampler

__all__ = ["MAX_CLOCK_JUMP_S", "AudioTransport", "InboundAudio"]

MAX_CLOCK_JUMP_S = 1.0  # audio this much later than its media time starts a new clock offset (a stall, a gap)

AudioFrameCallback = Callable[[PCM, float], None]


class AudioTransport(Protocol):
    """A participant's audio connection, as the voice pipeline sees it (see the module docs)."""

    output_rate: int  # the rate playbacks are made at

    @property
    def rtt(self) -> float | None:
        """Round trip to the far end in seconds, if measured (half of it is the latency's ``network``)."""

    def bind(
        self,
        *,
        on_audio_frame: AudioFrameCallback,
        on_closed: Callable[[str], None],
        on_frame_sent: Callable[[PCM, float], None],
    ) -> None:
        """Where inbound frames, the far end's departure and each sent frame are reported (sync, cheap)."""

    def play(self, playback: Playback) -> None:
        """Queue an utterance after the ones already queued."""

    async def stop_playback(self) -> list[Playback]:
        """Barge-in: stop speaking now; the playbacks cut, interrupted, with what was heard of each."""

    def send_event(self, event: dict[str, Any]) -> None:
        """A pipeline event (state, caption, message, session.ready, run.ended, error); may be dropped."""

    async def close(self) -> None:
        """Hang up: stop playback and release the connection. Idempotent."""


class InboundAudio:
    """A socket's inbound audio at ``rate`` → 20 ms frames of 16 kHz with the time they were spoken."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._resampler = None if rate == SAMPLE_RATE else Resampler(rate, SAMPLE_RATE)
        self._pending = np.empty(0, dtype=np.int16)
        self._offset: float | None = None  # wall clock minus media clock, from the least-delayed chunk
        self._received = 0  # input samples so far
        self._emitted = 0  # 16 kHz samples handed on so far
        self._last_end = 0.0

    def feed(self, pcm: PCM, received_at: float) -> list[tuple[PCM, float]]:
        """A chunk of audio received at ``received_at``: the complete frames it makes, with their end times."""
        self._received += len(pcm)
        media_end = self._received / self.rate
        lateness = received_at - media_end
        if self._offset is None or lateness < self._offset or lateness - self._offset > MAX_CLOCK_JUMP_S:
            self._offset = lateness
        out = self._resampler.process(pcm) if self._resampler is not None else pcm
        pending = np.concatenate((self._pending, out)) if len(self._pending) else out
        n = len(pending) // FRAME_SAMPLES
        frames = []
        for i in range(n):
            self._emitted += FRAME_SAMPLES
            # never earlier than the previous frame, when a faster chunk has just moved the offset back
            self._last_end = max(self._offset + self._emitted / SAMPLE_RATE, self._last_end)
            frames.append((pending[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES], self._last_end))
        self._pending = pending[n * FRAME_SAMPLES :]
        return frames
