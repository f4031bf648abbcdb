"""Text-to-speech, in chunks: the first audio is ready before the whole reply is synthesised."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterator

from media.audio import PCM


class Synthesizer(abc.ABC):
    """CPU-heavy: drivers call it from a worker, never the event loop."""

    name: str
    sample_rate: int

    @abc.abstractmethod
    def synthesize(self, text: str) -> Iterator[PCM]:
        """Yield mono int16 chunks at :attr:`sample_rate` as they are produced."""

    def speak(self, text: str) -> Iterator[tuple[PCM, int]]:
        """Like :meth:`synthesize`, each chunk with the number of words of ``text`` it completes (0: not
        known, or inside a word group). Engines that make whole pieces say so: a barge-in is then cut at
        the words really heard even while the rest of the reply is still being made."""
        for chunk in self.synthesize(text):
            yield chunk, 0


class HostedSynthesizer(abc.ABC):
    """A speech service reached over the network: async, on the event loop; failures raise
    :class:`media.hosted.HostedError`."""

    name: str
    sample_rate: int

    @abc.abstractmethod
    def stream(self, text: str) -> AsyncIterator[PCM]:
        """Mono int16 chunks at :attr:`sample_rate` as they arrive."""
