"""Speech-to-text, streaming: audio is fed while the participant speaks, so little is left at the end."""

from __future__ import annotations

import abc

from media.audio import PCM


class Recognizer(abc.ABC):
    """One utterance at a time, per stream. CPU-heavy: drivers call it from a worker, never the event loop."""

    name: str

    @abc.abstractmethod
    def start(self) -> None:
        """Begin a new utterance."""

    @abc.abstractmethod
    def feed(self, pcm: PCM) -> str:
        """Add audio (16 kHz mono); returns the partial hypothesis so far (may be empty)."""

    @abc.abstractmethod
    def finish(self) -> str:
        """End the utterance and return the final transcript (lower case words, no punctuation)."""

    def adaptation(self) -> object | None:
        """What this recogniser has learnt of the audio channel (e.g. a cepstral mean), to start
        another one from; None if nothing (the default)."""
        return None

    def adapt(self, state: object) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Start from another recogniser's :meth:`adaptation` instead of learning from scratch."""
