"""The μ-law codec (media/g711.py): known code points, audioop's tables where it still exists, round trips."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest

from media.g711 import decode_mulaw, encode_mulaw

EVERY_SAMPLE = np.arange(-32768, 32768, dtype=np.int16)


def test_known_code_points() -> None:
    # silence is 0xFF (all bits inverted), the loudest codes are 0x80 (+) and 0x00 (-)
    assert encode_mulaw(np.array([0, 32767, -32768, 1000, -1000], dtype=np.int16)) == bytes(
        [0xFF, 0x80, 0x00, 0xCE, 0x4E]
    )
    assert decode_mulaw(bytes([0xFF, 0x7F, 0x80, 0x00, 0xCE, 0x4E])).tolist() == [0, 0, 32124, -32124, 988, -988]


def test_tables_match_audioop_value_by_value() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            audioop = importlib.import_module("audioop")
        except ImportError:  # Python 3.13 removed it
            pytest.skip("audioop is gone from this Python")
    assert encode_mulaw(EVERY_SAMPLE) == audioop.lin2ulaw(EVERY_SAMPLE.tobytes(), 2)
    every_code = bytes(range(256))
    assert decode_mulaw(every_code).tobytes() == audioop.ulaw2lin(every_code, 2)


def test_round_trip_keeps_every_code_and_stays_within_a_step() -> None:
    every_code = bytes(range(256))
    decoded = decode_mulaw(every_code)
    # each code decodes to a value that encodes back to itself (0x7F, "negative zero", becomes 0xFF)
    assert encode_mulaw(decoded) == every_code.replace(b"\x7f", b"\xff")
    error = np.abs(decode_mulaw(encode_mulaw(EVERY_SAMPLE)).astype(np.int32) - EVERY_SAMPLE)
    # quantisation is logarithmic: at most half a step, 1/32 of the magnitude, plus the finest step near zero
    assert (error <= np.abs(EVERY_SAMPLE.astype(np.int32)) / 30 + 8).all()


def test_speech_band_tone_survives_with_telephone_quality() -> None:
    t = np.arange(8000) / 8000
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    back = decode_mulaw(encode_mulaw(tone)).astype(np.float64)
    noise = back - tone
    snr_db = 10 * np.log10(np.sum(tone.astype(np.float64) ** 2) / np.sum(noise**2))
    assert snr_db > 35  # G.711's ~38 dB for a loud tone
    assert len(encode_mulaw(tone)) == len(tone)
