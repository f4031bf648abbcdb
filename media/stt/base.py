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
        """The final transcript of the utterance so far, as the engine writes it (Whisper capitalises and
        punctuates; PocketSphinx gives lower-case words). Called early, at a pause, by drivers that finish
        recognition before the turn has surely ended; :meth:`resume` takes that back."""

    def partial(self) -> str | None:
        """A caption for everything fed so far, worked out now (engines that do not stream decode on demand);
        None (the default): what the last :meth:`feed` returned stands."""
        return None

    def resume(self) -> bool:
        """The utterance goes on after a :meth:`finish` (the pause was not its end): more audio follows and
        the next :meth:`finish` covers the whole utterance. False (the default) if the engine cannot: the
        driver then keeps the text finished so far and starts a new utterance for the rest."""
        return False

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

    async def resume(self) -> None:
        """Take back the last ``finish()``: the participant went on after a pause, the utterance goes on."""

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
