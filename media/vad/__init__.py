"""Voice activity detectors, by name.

Engines are imported lazily, so ``create_vad("webrtc")`` does not load ONNX Runtime.

Default: ``webrtc``. On the spoken fixtures (tests/media/test_vad.py) it detects 95-100 % of the
speech frames with no onset lag, where Silero detects 94-98 % and starts 40-100 ms late, which
would delay barge-in and shorten short answers; with its hangover trimmed it also finds the end
of speech sooner (5-17 ms after it, against Silero's 15-127 ms), and every millisecond there is a
millisecond of reply latency; it costs ~3.5 us of CPU per 20 ms frame against
Silero's ~150 us (ONNX Runtime). Silero's strength, ignoring clicks and noise, matters less here
because the endpointer already drops bursts shorter than ``min_speech_ms``. Choose ``silero`` for
noisy rooms.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from media.audio import FRAME_SAMPLES, PCM
from media.vad.base import VoiceActivityDetector

__all__ = ["DEFAULT_VAD", "VADS", "VoiceActivityDetector", "check_frame", "create_vad"]

#: name -> "module:class"; imported on first use.
VADS: dict[str, str] = {
    "webrtc": "media.vad.webrtc:WebRtcVad",
    "silero": "media.vad.silero:SileroVad",
}

DEFAULT_VAD = "webrtc"


def create_vad(name: str = DEFAULT_VAD, **options: Any) -> VoiceActivityDetector:
    """A new detector (one per stream); ``options`` go to the engine's keyword-only constructor."""
    try:
        target = VADS[name]
    except KeyError:
        raise ValueError(f"unknown VAD {name!r}; known: {', '.join(sorted(VADS))}") from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    detector: VoiceActivityDetector = cls(**options)
    return detector


def check_frame(frame: PCM) -> None:
    """Raise ValueError unless ``frame`` is one 20 ms frame: 1-D int16 numpy array of 320 samples."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.int16 or frame.ndim != 1:
        kind = f"{frame.dtype} array of shape {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"VAD frame must be a 1-D int16 numpy array of {FRAME_SAMPLES} samples, not {kind}")
    if len(frame) != FRAME_SAMPLES:
        raise ValueError(
            f"VAD frame must be exactly {FRAME_SAMPLES} samples (20 ms at 16 kHz), not {len(frame)}; "
            "split audio into 20 ms frames first"
        )
