"""WebRTC VAD (the GMM detector from Chromium's WebRTC, via ``webrtcvad-wheels``): tiny and very fast."""

from __future__ import annotations

from collections import deque

import numpy as np
import webrtcvad  # type: ignore[import-untyped]

from media.audio import PCM, SAMPLE_RATE
from media.vad import check_frame
from media.vad.base import VoiceActivityDetector

DEFAULT_AGGRESSIVENESS = 2
PEAK_WINDOW_FRAMES = 100  # 2 s of voiced frames set the level that trimming compares against


class WebRtcVad(VoiceActivityDetector):
    """Binary decision per 20 ms frame: :meth:`speech_probability` returns exactly 0.0 or 1.0.

    ``aggressiveness`` (0..3, default 2) trades recall for fewer false alarms: 0 calls almost
    anything speech, 3 is the strictest. On the spoken fixtures 2 detected more speech than 3
    (99 % against 97 % of the loud frames; 86 % against 82 % with white noise at 14 dB SNR), while
    3's lower false-alarm rate came almost entirely from a shorter hangover after speech, and both
    flagged the same 6 frames of the 60 ms click (see :mod:`media.vad` for the measurements).

    Hangover trimming: the detector keeps calling frames speech for ~100 ms after the voice
    stops (its hangover), and that tail would delay every end-of-speech decision. A frame it
    calls speech but that is more than ``trim_below_peak_db`` (default 30 dB) quieter than the
    loudest voiced frame of the last 2 s counts as silence. On the spoken fixtures this moves
    the detected end of speech from 6-117 ms after the true end to 5-17 ms, with the same recall;
    real speech is never 30 dB below its own recent peak for long, and noise 14 dB below speech
    is not trimmed. ``None`` turns it off.

    Known quirk: on a fresh (or reset) detector fed steady background noise, the first ~4 frames
    come out as speech while the detector's noise model settles.
    """

    name = "webrtc"

    def __init__(
        self, *, aggressiveness: int = DEFAULT_AGGRESSIVENESS, trim_below_peak_db: float | None = 30.0
    ) -> None:
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, not {aggressiveness!r}")
        if trim_below_peak_db is not None and trim_below_peak_db <= 0:
            raise ValueError(f"trim_below_peak_db must be positive or None, not {trim_below_peak_db!r}")
        self.aggressiveness = aggressiveness
        self.trim_below_peak_db = trim_below_peak_db
        self._vad = webrtcvad.Vad(aggressiveness)
        self._peaks: deque[float] = deque(maxlen=PEAK_WINDOW_FRAMES)  # power of recent voiced frames

    def speech_probability(self, frame: PCM) -> float:
        check_frame(frame)
        if not self._vad.is_speech(frame.tobytes(), SAMPLE_RATE):
            return 0.0
        if self.trim_below_peak_db is None:
            return 1.0
        power = float(np.mean(frame.astype(np.float64) ** 2))
        self._peaks.append(power)
        return 0.0 if power * 10.0 ** (self.trim_below_peak_db / 10.0) < max(self._peaks) else 1.0

    def reset(self) -> None:
        # The C detector keeps adaptive noise statistics and a hangover counter; a new one forgets them.
        self._vad = webrtcvad.Vad(self.aggressiveness)
        self._peaks.clear()
