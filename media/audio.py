"""Audio conventions shared by every engine.

Inside vivavoce, speech is 16 kHz mono signed 16-bit PCM held in numpy
``int16`` arrays ("pcm16"); the pipeline works in 20 ms frames of 320 samples.
WebRTC delivers 48 kHz stereo and wants 48 kHz back; conversions live in
:mod:`media.resample`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16_000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 320

PCM = npt.NDArray[np.int16]


def duration_s(pcm: PCM, rate: int = SAMPLE_RATE) -> float:
    return len(pcm) / rate


def silence(seconds: float, rate: int = SAMPLE_RATE) -> PCM:
    return np.zeros(round(seconds * rate), dtype=np.int16)
