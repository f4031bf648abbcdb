"""End-of-speech detection: per-frame voice activity in, speech start/end decisions out.

Sans-I/O: the driver feeds one verdict per 20 ms frame with the wall-clock
time at the frame's end; no clock is read here, so tests replay frames with
made-up times.

Decisions and the latency anchors they carry:

* :class:`SpeechStarted` once a segment has ``min_speech_ms`` of voiced audio;
  shorter bursts (a cough, a click, a door) end as :class:`Noise` and are not turns.
* :class:`Interrupting` once the segment reaches ``min_interruption_ms`` of
  voiced audio: the driver's cue to stop the interviewer if it is speaking.
* :class:`Pausing` after ``finalize_after_ms`` of silence inside speech (shorter than the
  window): the driver's cue to finish recognition early, so the transcript is ready when the
  window closes; :class:`Resumed` if the participant speaks again before it does, so the driver
  goes on with the same answer (keeping what it recognised before the pause).
* :class:`SpeechEnded` after ``eos_silence_ms`` of silence, or after the window the driver chose for
  this pause with :meth:`Endpointer.hold` (longer when the words so far are unfinished, see
  :mod:`runtime.turn_end`; a hold shorter than the silence already heard ends the turn at the next
  frame). ``last_voiced_at``
  is T0 of the latency breakdown (the end of the last voiced frame) and
  ``decided_at`` is the end-of-speech decision, so ``eos = decided_at - T0``.

Races it guards against: a short pause inside an answer (shorter than the
silence window) does not end the turn; voiced frames during the silence
window resume the same segment instead of starting a new one.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.types import StrEnum

FRAME_S = 0.020


class State(StrEnum):
    QUIET = "quiet"
    CANDIDATE = "candidate"  # voiced audio, not yet long enough to be speech
    SPEECH = "speech"


@dataclass(frozen=True)
class EndpointSettings:
    eos_silence_ms: float = 500.0
    min_speech_ms: float = 200.0
    min_interruption_ms: float = 400.0
    threshold: float = 0.5  # speech probability above which a frame counts as voiced
    # Silence after which recognition is finished speculatively; None (or >= the window) never.
    finalize_after_ms: float | None = 200.0


@dataclass(frozen=True)
class SpeechStarted:
    onset_at: float  # start of the segment's first voiced frame
    decided_at: float


@dataclass(frozen=True)
class Interrupting:
    onset_at: float
    decided_at: float


@dataclass(frozen=True)
class SpeechEnded:
    onset_at: float
    last_voiced_at: float  # T0
    decided_at: float


@dataclass(frozen=True)
class Pausing:
    last_voiced_at: float
    decided_at: float


@dataclass(frozen=True)
class Resumed:
    at: float


@dataclass(frozen=True)
class Noise:
    onset_at: float
    ended_at: float


Decision = SpeechStarted | Interrupting | Pausing | Resumed | SpeechEnded | Noise


class Endpointer:
    def __init__(self, settings: EndpointSettings = EndpointSettings()) -> None:
        self.settings = settings
        self.state = State.QUIET
        self._onset = 0.0
        self._last_voiced = 0.0
        self._voiced_ms = 0.0
        self._silence_ms = 0.0
        self._interrupting = False
        self._pausing = False
        self._hold_ms: float | None = None  # this pause's window, when the driver has chosen one

    def hold(self, silence_ms: float) -> None:
        """End the turn after ``silence_ms`` of this pause instead of ``eos_silence_ms``; forgotten when
        speech resumes. Only meaningful during speech (a no-op otherwise)."""
        if self.state is State.SPEECH:
            self._hold_ms = silence_ms

    @property
    def window_ms(self) -> float:
        """The silence that ends the current pause's turn."""
        return self.settings.eos_silence_ms if self._hold_ms is None else self._hold_ms

    def frame(self, end_at: float, probability: float) -> list[Decision]:
        """Feed the verdict for the 20 ms frame that ended at ``end_at``."""
        s = self.settings
        voiced = probability >= s.threshold
        out: list[Decision] = []
        if self.state is State.QUIET:
            if voiced:
                self.state = State.CANDIDATE
                self._onset = end_at - FRAME_S
                self._voiced_ms = 0.0
                self._interrupting = False
            else:
                return out
        if voiced:
            self._hold_ms = None
            if self._pausing:
                self._pausing = False
                out.append(Resumed(end_at))
            self._voiced_ms += FRAME_S * 1000
            self._silence_ms = 0.0
            self._last_voiced = end_at
            if self.state is State.CANDIDATE and self._voiced_ms >= s.min_speech_ms:
                self.state = State.SPEECH
                out.append(SpeechStarted(self._onset, end_at))
            if self.state is State.SPEECH and not self._interrupting and self._voiced_ms >= s.min_interruption_ms:
                self._interrupting = True
                out.append(Interrupting(self._onset, end_at))
            return out
        self._silence_ms += FRAME_S * 1000
        if self.state is State.CANDIDATE and self._silence_ms >= min(s.eos_silence_ms, s.min_speech_ms):
            self.state = State.QUIET
            out.append(Noise(self._onset, self._last_voiced))
        elif self.state is State.SPEECH and self._silence_ms >= self.window_ms:
            self.state = State.QUIET
            self._pausing = False
            self._hold_ms = None
            out.append(SpeechEnded(self._onset, self._last_voiced, end_at))
        elif (
            self.state is State.SPEECH
            and not self._pausing
            and s.finalize_after_ms is not None
            and self._silence_ms >= s.finalize_after_ms
        ):
            self._pausing = True
            out.append(Pausing(self._last_voiced, end_at))
        return out

    def reset(self) -> None:
        self.state = State.QUIET
        self._pausing = False
        self._hold_ms = None
        self._silence_ms = 0.0
        self._voiced_ms = 0.0
