"""Speech-to-text recognizers, by name.

Engines are imported lazily, so importing :mod:`media.stt` loads neither Whisper nor PocketSphinx.

* ``whisper`` (default): Whisper through CTranslate2 (:mod:`media.stt.whisper`), tiny.en for English and
  base for other languages, both shipped as registry packages (MIT); any CTranslate2 Whisper folder with
  ``model=PATH``.
* ``pocketsphinx``: CMU PocketSphinx 5 (BSD-2-Clause), English only; a light engine (streams, ~0.2 of a
  core per stream) but 22.5 % WER on real read speech against 4.9 % for Whisper tiny.en (docs/benchmarks.md).
"""

from __future__ import annotations

import importlib
from typing import Any

from media.stt.base import HostedRecognizer, Recognizer

__all__ = [
    "DEFAULT_RECOGNIZER",
    "HOSTED_RECOGNIZERS",
    "RECOGNIZERS",
    "HostedRecognizer",
    "Recognizer",
    "create_hosted_recognizer",
    "create_recognizer",
]

#: name -> "module:class"; imported on first use.
RECOGNIZERS: dict[str, str] = {
    "whisper": "media.stt.whisper:WhisperRecognizer",
    "pocketsphinx": "media.stt.pocketsphinx:PocketsphinxRecognizer",
}

DEFAULT_RECOGNIZER = "whisper"


def create_recognizer(name: str = DEFAULT_RECOGNIZER, **options: Any) -> Recognizer:
    """A new recognizer (one per stream); ``options`` go to the engine's keyword-only constructor."""
    try:
        target = RECOGNIZERS[name]
    except KeyError:
        raise ValueError(f"unknown recognizer {name!r}; known: {', '.join(sorted(RECOGNIZERS))}") from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    recognizer: Recognizer = cls(**options)
    return recognizer


#: Hosted services (network-bound, async, run on the server's event loop): name -> "module:class".
HOSTED_RECOGNIZERS: dict[str, str] = {
    "openai": "media.stt.openai:OpenAITranscription",
    "deepgram": "media.stt.deepgram:DeepgramRecognition",
}


def create_hosted_recognizer(name: str, **options: Any) -> HostedRecognizer:
    """A new hosted recogniser for one stream (``engine``, ``session``, ``language`` among ``options``)."""
    try:
        target = HOSTED_RECOGNIZERS[name]
    except KeyError:
        raise ValueError(
            f"unknown hosted recognizer {name!r}; known: {', '.join(sorted(HOSTED_RECOGNIZERS))}"
        ) from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    recognizer: HostedRecognizer = cls(**options)
    return recognizer
