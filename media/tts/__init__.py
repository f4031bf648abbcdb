"""Text-to-speech engines, by name.

``create_synthesizer("espeak", rate=170)`` builds an engine with its keyword options; see each class
for the options it takes.
"""

from __future__ import annotations

from typing import Any

from media.tts.base import Synthesizer
from media.tts.espeak import EspeakSynthesizer

SYNTHESIZERS: dict[str, type[Synthesizer]] = {"espeak": EspeakSynthesizer}


def create_synthesizer(name: str = "espeak", **options: Any) -> Synthesizer:
    """A new synthesizer ``name`` built with ``options``; :class:`ValueError` for an unknown name."""
    try:
        cls = SYNTHESIZERS[name]
    except KeyError:
        known = ", ".join(sorted(SYNTHESIZERS))
        raise ValueError(f"unknown synthesizer {name!r}; known: {known}") from None
    return cls(**options)
