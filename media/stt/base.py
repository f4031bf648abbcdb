"""Speech-to-text, streaming: audio is fed while the participant speaks, so little is left at the end."""

from __future__ import annotations

import abc
from typing import Protocol

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


class StreamingRecognition(Protocol):
    """One participant's recognition as the voice pipeline drives it (async): a sequence of utterances.

    :class:`media.workers.RecognitionStream` is one (an embedded :class:`Recognizer` in a worker
    process); so are the hosted recognisers (:class:`HostedRecognizer`) and the fallback between them
    (:class:`media.fallback.FallbackRecognition`).
    """

    async def start(self) -> None: ...

    async def feed(self, pcm: PCM) -> None: ...

    async def partial(self) -> str: ...

    async def finish(self) -> str: ...

    async def close(self) -> None: ...


class HostedRecognizer(abc.ABC):
    """A recognition service reached over the network, for one participant's stream.

    Async, on the event loop: the work is done elsewhere and this only waits for it. Failures raise
    :class:`media.hosted.HostedError`. The final transcript is the service's text (with its casing and
    punctuation: it is what a researcher reads).
    """

    name: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin a new utterance."""

    @abc.abstractmethod
    async def feed(self, pcm: PCM) -> None:
        """Add audio (16 kHz mono int16)."""

    @abc.abstractmethod
    async def partial(self) -> str:
        """The interim transcript so far ("" if the service gives none)."""

    @abc.abstractmethod
    async def finish(self) -> str:
        """End the utterance and return its final transcript."""

    async def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release the stream's connection, if any."""
