"""Voice activity detection: is there speech in this 20 ms frame?"""

from __future__ import annotations

import abc

from media.audio import PCM


class VoiceActivityDetector(abc.ABC):
    """Stateful per stream (one instance per participant). Cheap enough to run on the event loop."""

    name: str

    @abc.abstractmethod
    def speech_probability(self, frame: PCM) -> float:
        """Probability (0..1) that ``frame`` (exactly 320 samples, 16 kHz mono) contains speech."""

    def reset(self) -> None:  # noqa: B027 - optional hook: stateless detectors need nothing
        """Forget state between utterances or streams."""
