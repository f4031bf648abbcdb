"""WebRTC VAD (the GMM detector from Chromium's WebRTC, via ``webrtcvad-wheels``): tiny and very fast."""

from __future__ import annotations

import webrtcvad  # type: ignore[import-untyped]

from media.audio import PCM, SAMPLE_RATE
from media.vad import check_frame
from media.vad.base import VoiceActivityDetector

DEFAULT_AGGRESSIVENESS = 2


class WebRtcVad(VoiceActivityDetector):
    """Binary decision per 20 ms frame: :meth:`speech_probability` returns exactly 0.0 or 1.0.

    ``aggressiveness`` (0..3, default 2) trades recall for fewer false alarms: 0 calls almost
    anything speech, 3 is the strictest. On the spoken fixtures 2 detected more speech than 3
    (99 % against 97 % of the loud frames; 86 % against 82 % with white noise at 14 dB SNR), while
    3's lower false-alarm rate came almost entirely from a shorter hangover after speech, and both
    flagged the same 6 frames of the 60 ms click (see :mod:`media.vad` for the measurements).

    Known quirk: on a fresh (or reset) detector fed steady background noise, the first ~4 frames
    come out as speech while the detector's noise model settles.
    """

    name = "webrtc"

    def __init__(self, *, aggressiveness: int = DEFAULT_AGGRESSIVENESS) -> None:
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, not {aggressiveness!r}")
        self.aggressiveness = aggressiveness
        self._vad = webrtcvad.Vad(aggressiveness)

    def speech_probability(self, frame: PCM) -> float:
        check_frame(frame)
        return 1.0 if self._vad.is_speech(frame.tobytes(), SAMPLE_RATE) else 0.0

    def reset(self) -> None:
        # The C detector keeps adaptive noise statistics and a hangover counter; a new one forgets them.
        self._vad = webrtcvad.Vad(self.aggressiveness)
