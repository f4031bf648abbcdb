"""Text-to-speech engines, by name.

``create_synthesizer("espeak", rate=170)`` builds an engine with its keyword options; see each class
for the options it takes. Engines are imported on first use (Piper loads onnxruntime).

Embedded: ``piper`` (neural, the default English voice) and ``espeak`` (formant, every language eSpeak NG
has, and the fallback). :func:`embedded_for_language` picks one for a blueprint's language.
"""

from __future__ import annotations

import importlib
from typing import Any

from media.tts.base import HostedSynthesizer, Synthesizer

__all__ = [
    "AUTO",
    "HOSTED_SYNTHESIZERS",
    "SYNTHESIZERS",
    "HostedSynthesizer",
    "Synthesizer",
    "create_hosted_synthesizer",
    "create_synthesizer",
    "embedded_for_language",
]

#: name -> "module:class"; imported on first use.
SYNTHESIZERS: dict[str, str] = {
    "espeak": "media.tts.espeak:EspeakSynthesizer",
    "piper": "media.tts.piper:PiperSynthesizer",
}

#: Not an engine: "the default voice for the blueprint's language" (see :func:`embedded_for_language`).
AUTO = "auto"


def create_synthesizer(name: str = "espeak", **options: Any) -> Synthesizer:
    """A new synthesizer ``name`` built with ``options``; :class:`ValueError` for an unknown name."""
    try:
        target = SYNTHESIZERS[name]
    except KeyError:
        known = ", ".join(sorted(SYNTHESIZERS))
        raise ValueError(f"unknown synthesizer {name!r}; known: {known}") from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    synthesizer: Synthesizer = cls(**options)
    return synthesizer


def embedded_for_language(name: str, language: str) -> tuple[str, dict[str, Any]]:
    """The embedded engine and options that speak ``language`` (a BCP 47 tag, e.g. ``en``, ``de-AT``).

    ``auto`` and ``piper``: Piper's English voice for English, eSpeak NG otherwise (the bundled Piper
    voice speaks only English). ``espeak``: eSpeak NG's voice for the language (``en`` is ``en-us``).
    """
    primary = language.split("-", 1)[0].lower()
    if name in (AUTO, "piper") and primary == "en":
        return "piper", {}
    if name in (AUTO, "piper", "espeak"):
        return "espeak", {"voice": "en-us" if primary == "en" else language.lower()}
    return name, {}


#: Hosted services (network-bound, async, run on the server's event loop): name -> "module:class".
HOSTED_SYNTHESIZERS: dict[str, str] = {"openai": "media.tts.openai:OpenAISpeech"}


def create_hosted_synthesizer(name: str, **options: Any) -> HostedSynthesizer:
    """A hosted voice (``engine`` and ``session`` among ``options``)."""
    try:
        target = HOSTED_SYNTHESIZERS[name]
    except KeyError:
        known = ", ".join(sorted(HOSTED_SYNTHESIZERS))
        raise ValueError(f"unknown hosted synthesizer {name!r}; known: {known}") from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    synthesizer: HostedSynthesizer = cls(**options)
    return synthesizer
