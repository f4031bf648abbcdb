"""A run's audio as one stereo WAV: participant on the left, assistant on the right, on the run's clock.

Format: 16 kHz, 16-bit PCM, 2 channels. 16 kHz because it is the speech pipeline's native rate: the
participant channel is exactly what the recogniser heard (no resampling back up), the assistant's
48 kHz playback loses only the band above 8 kHz, which carries nothing needed to review or re-transcribe
an interview, and the file is a third of a 48 kHz one (about 230 MB per hour instead of 690 MB; a plain
WAV stays under its 4 GiB limit for 18 hours).

Placement: sample ``round((started_at - origin) * 16000)`` is where a chunk starts, so the file's t=0 is
the run's start whichever session wrote it. Each channel keeps a cursor (where its previous chunk
ended); a chunk that starts within ``jitter_s`` of it is taken to continue that chunk and is placed at
the cursor, so timestamp jitter of 20 ms frames neither clicks nor doubles samples. Alignment error is
therefore bounded by ``jitter_s`` (default 40 ms); a chunk further off (a real pause, a lost frame, a new
session, clock drift larger than the tolerance) is placed at its own timestamp. Gaps are silent.
Audio that still overlaps audio already on the same channel is **mixed** (summed, saturating at full
scale), never overwritten; the other channel is never touched.

Audio at another rate (``add(..., rate=48000)`` for the assistant's playback frames) goes through one
streaming :class:`~media.resample.Resampler` per contiguous stretch, so chunk boundaries are seamless. It
is resampled 100 ms at a time (one call per five 20 ms frames: the per-call overhead is most of the cost
on the event loop), so up to 100 ms of it, plus the resampler's last ~1 ms, is written when the stretch
ends (a discontinuity, :meth:`Recorder.flush` or :meth:`close`); placement is the same either way.

Memory is bounded: the newest ``window_s`` seconds (default 32 s, 2 MB) are kept in RAM and written out
half a window at a time, so ``add`` of a 20 ms frame on the event loop is a copy into an array, not file
I/O; anything older lives only on disk (a late chunk landing there is mixed in with a read-modify-write).
The file is opened ``r+`` if it exists (a later session of the same run keeps placing audio on the same
clock; pass the same ``origin``) and created otherwise. The WAV header is finalised by :meth:`close`:
until then the file on disk may be shorter than :attr:`duration_s`.

Thread-safe (one lock); every method is synchronous and cheap enough for the event loop except
:meth:`close` and :meth:`flush`, which write up to ``window_s`` of audio.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import soundfile as sf

from media.audio import PCM, SAMPLE_RATE
from media.resample import Resampler

__all__ = ["Channel", "Recorder"]

Channel = Literal["participant", "assistant"]
_COLUMNS: dict[str, int] = {"participant": 0, "assistant": 1}
_SILENCE_BLOCK = 1 << 16  # frames of zeros written at a time when extending the file over a gap
_RESAMPLE_EVERY_S = 0.1  # audio at another rate is resampled in pieces of this length, not frame by frame


@dataclass
class _Lane:
    """One channel's continuity state: where its current contiguous stretch goes next."""

    column: int
    rate: int = 0  # input rate of the current stretch (0: no stretch)
    next_time: float = 0.0  # wall-clock time at which a continuing chunk would start
    next_pos: int = 0  # file position (frames) of the stretch's next output sample
    resampler: Resampler | None = None
    held: list[PCM] = field(default_factory=list)  # input not yet resampled (a stretch at another rate)
    held_samples: int = 0


class Recorder:
    """Stereo WAV writer placing each chunk at its wall-clock offset from ``origin`` (see module docs)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        origin: float,
        rate: int = SAMPLE_RATE,
        jitter_s: float = 0.04,
        window_s: float = 32.0,
    ) -> None:
        self.path = Path(path)
        self.origin = origin
        self.rate = rate
        self.jitter_s = jitter_s
        self._lock = threading.Lock()
        if self.path.exists() and self.path.stat().st_size > 0:
            self._file = sf.SoundFile(self.path, mode="r+")
            if self._file.channels != 2 or self._file.samplerate != rate:
                found = f"{self._file.channels} channel(s) at {self._file.samplerate} Hz"
                self._file.close()
                raise ValueError(f"{self.path} is {found}, not a stereo {rate} Hz recording")
            self._disk = int(self._file.frames)
        else:
            self._file = sf.SoundFile(self.path, mode="w+", samplerate=rate, channels=2, subtype="PCM_16", format="WAV")
            self._disk = 0
        # RAM window over file frames [_disk, _disk + len(_win)); rows [0, _hi) hold audio not yet on disk.
        self._win: npt.NDArray[np.int16] = np.zeros((max(2, int(window_s * rate)), 2), dtype=np.int16)
        self._hi = 0
        self._lanes = {name: _Lane(column) for name, column in _COLUMNS.items()}
        self.closed = False

    # --- public API -------------------------------------------------------------------------

    @property
    def duration_s(self) -> float:
        """Length of the recording so far (both channels, including silence), in seconds."""
        return (self._disk + self._hi) / self.rate

    @property
    def frames(self) -> int:
        return self._disk + self._hi

    def add(self, channel: Channel, pcm: PCM, started_at: float, *, rate: int | None = None) -> None:
        """Place mono ``pcm`` (at ``rate``, default the recording's) on ``channel`` starting at wall-clock
        ``started_at`` (seconds since the epoch)."""
        lane = self._lanes.get(channel)
        if lane is None:
            raise ValueError(f"channel must be 'participant' or 'assistant', not {channel!r}")
        rate = rate or self.rate
        samples = np.asarray(pcm)
        if samples.ndim != 1:
            raise ValueError(f"expected mono audio (1-D), got shape {samples.shape}")
        if samples.dtype != np.int16:
            raise ValueError(f"expected int16 PCM, got {samples.dtype}")
        with self._lock:
            if self.closed:
                raise ValueError("recorder is closed")
            if len(samples) == 0:
                return
            continuing = lane.rate == rate and abs(started_at - lane.next_time) <= self.jitter_s
            if not continuing:
                self._end_stretch(lane)
                lane.rate = rate
                lane.next_time = started_at
                lane.next_pos = round((started_at - self.origin) * self.rate)
                lane.resampler = Resampler(rate, self.rate) if rate != self.rate else None
            lane.next_time += len(samples) / rate
            if lane.resampler is None:
                self._place(lane, samples)
                return
            # one resampler call per 100 ms rather than per 20 ms frame: on the event loop, the call
            # overhead is most of the cost; the stream (and so the file) is the same either way
            lane.held.append(samples)
            lane.held_samples += len(samples)
            if lane.held_samples >= _RESAMPLE_EVERY_S * rate:
                self._resample_held(lane)

    def flush(self) -> None:
        """End every channel's current stretch and write everything held in memory to the file."""
        with self._lock:
            self._flush()

    def close(self) -> None:
        """Flush and close the file (finalising the WAV header). Idempotent."""
        with self._lock:
            if self.closed:
                return
            try:
                self._flush()
            finally:
                self.closed = True
                self._file.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- internals (lock held) ----------------------------------------------------------------

    def _flush(self) -> None:
        if self.closed:
            return
        for lane in self._lanes.values():
            self._end_stretch(lane)
        self._spill(self._disk + self._hi)
        self._file.flush()

    def _resample_held(self, lane: _Lane) -> None:
        if lane.resampler is not None and lane.held:
            held = lane.held[0] if len(lane.held) == 1 else np.concatenate(lane.held)
            self._place(lane, lane.resampler.process(held))
        lane.held = []
        lane.held_samples = 0

    def _end_stretch(self, lane: _Lane) -> None:
        if lane.resampler is not None:
            self._resample_held(lane)
            self._place(lane, lane.resampler.flush())
        lane.rate = 0
        lane.resampler = None

    def _place(self, lane: _Lane, x: PCM) -> None:
        pos = lane.next_pos
        lane.next_pos += len(x)
        if pos < 0:  # before the run started: drop that part
            x = x[-pos:]
            pos = 0
        if len(x) == 0:
            return
        end = pos + len(x)
        size = len(self._win)
        if end - self._disk > size:
            self._spill(max(end - size, self._disk + size // 2))
        if pos < self._disk:
            k = min(end, self._disk) - pos
            self._mix_on_disk(lane.column, x[:k], pos)
            x = x[k:]
            pos += k
        if len(x):
            rel = pos - self._disk
            column = self._win[rel : rel + len(x), lane.column]
            if rel >= self._hi:  # nothing there yet: a plain copy (the common case)
                column[:] = x
            else:
                column[:] = np.clip(column.astype(np.int32) + x, -32768, 32767)
            self._hi = max(self._hi, rel + len(x))

    def _spill(self, target: int) -> None:
        """Write the file up to frame ``target`` (window rows first, then silence) and slide the window."""
        count = target - self._disk
        if count <= 0:
            return
        data = min(self._hi, count)
        self._file.seek(self._disk)
        if data:
            self._file.write(self._win[:data])
        silence = count - data
        if silence:
            zeros = np.zeros((min(silence, _SILENCE_BLOCK), 2), dtype=np.int16)
            while silence:
                n = min(silence, len(zeros))
                self._file.write(zeros[:n])
                silence -= n
        keep = self._hi - data
        if keep:
            self._win[:keep] = self._win[data : self._hi]
        self._win[keep : self._hi] = 0
        self._hi = keep
        self._disk = target

    def _mix_on_disk(self, column: int, x: PCM, pos: int) -> None:
        self._file.seek(pos)
        existing = self._file.read(len(x), dtype="int16", always_2d=True)
        existing[:, column] = np.clip(existing[:, column].astype(np.int32) + x, -32768, 32767)
        self._file.seek(pos)
        self._file.write(existing)
