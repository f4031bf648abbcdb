"""G.711 μ-law, the telephone network's audio encoding (Twilio Media Streams carry it at 8 kHz).

One byte per sample: a sign, a 3-bit segment (exponent) and a 4-bit step inside it, inverted, as ITU-T
G.711 specifies. Both directions are table lookups with numpy (256 entries to decode, 65,536 to
encode: one per int16 value), so a 20 ms frame costs a fancy-index, not a Python loop. Python's
``audioop`` did this but is deprecated (removed in 3.13), and its DeprecationWarning is an error in
the suite; tests/media/test_g711.py checks these tables against it value by value while it exists.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from media.audio import PCM

__all__ = ["MULAW_RATE", "decode_mulaw", "encode_mulaw"]

MULAW_RATE = 8_000  # what the telephone network (and Twilio) carries
_BIAS = 0x84  # 132: added before the segment search so every segment starts on a power of two
_BIAS14 = 0x21  # the same bias on the 14-bit magnitude that encoding works on (G.711's reference code)
_CLIP14 = 8159  # the largest 14-bit magnitude that still fits after the bias


def _decode_table() -> PCM:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _encode_table() -> npt.NDArray[np.uint8]:
    x = np.arange(-32768, 32768, dtype=np.int32) >> 2  # 14 bits, as G.711 encodes (arithmetic shift)
    mask = np.where(x < 0, 0x7F, 0xFF)  # the sign, folded into the final inversion
    magnitude = np.minimum(np.abs(x), _CLIP14) + _BIAS14
    segment = np.floor(np.log2(magnitude)).astype(np.int32) - 5  # the position of the top bit, 0..7
    step = (magnitude >> (segment + 1)) & 0x0F
    code = np.where(segment > 7, 0x7F, (segment << 4) | step)  # full scale: the loudest code
    return (code ^ mask).astype(np.uint8)


_DECODE = _decode_table()
_ENCODE = _encode_table()


def decode_mulaw(data: bytes) -> PCM:
    """μ-law bytes → int16 samples (same count)."""
    return _DECODE[np.frombuffer(data, dtype=np.uint8)]


def encode_mulaw(pcm: PCM) -> bytes:
    """int16 samples → μ-law bytes (same count)."""
    return _ENCODE[pcm.astype(np.int32) + 32768].tobytes()
