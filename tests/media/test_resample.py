"""media.resample: streaming equals one-shot, quality (SNR, alias/image rejection) and cost."""

from __future__ import annotations

import time

import numpy as np
import pytest

from media.audio import PCM
from media.resample import Downsampler48to16, Resampler, Upsampler, resample, webrtc_to_pcm16k
from tests.conftest import UNIT

AMPLITUDE = 10_000.0


def sine(freq: float, seconds: float, rate: int, amplitude: float = AMPLITUDE) -> PCM:
    t = np.arange(int(seconds * rate)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def stereo_frames(mono: PCM) -> list[np.ndarray]:
    """Split 48 kHz mono into aiortc-shaped packed stereo frames: (1, 1920) int16."""
    packed = np.stack([mono, mono], axis=1).reshape(1, -1)
    return [packed[:, i : i + 1920] for i in range(0, packed.shape[1], 1920)]


def snr_db(reference: np.ndarray, signal: np.ndarray) -> float:
    error = signal.astype(np.float64) - reference
    return float(10 * np.log10(np.sum(reference**2) / np.sum(error**2)))


def level_db(signal: np.ndarray, freq: float, rate: int) -> float:
    """Level of the component at ``freq`` relative to AMPLITUDE (Hann-windowed DFT bin)."""
    x = signal.astype(np.float64)
    window = np.hanning(len(x))
    t = np.arange(len(x)) / rate
    amplitude = 2 * np.abs(np.sum(x * window * np.exp(-2j * np.pi * freq * t))) / np.sum(window)
    return float(20 * np.log10(max(amplitude, 1e-9) / AMPLITUDE))


# --- 48 kHz stereo -> 16 kHz mono ------------------------------------------------------------


def test_downsampler_frame_shape_and_length() -> None:
    d = Downsampler48to16()
    frame = np.zeros((1, 1920), dtype=np.int16)
    out = d.process(frame)
    assert out.dtype == np.int16 and out.shape == (320,)
    assert webrtc_to_pcm16k(frame).shape == (320,)


def test_downsampler_streaming_equals_one_shot() -> None:
    x = sine(1000, 1.0, 48_000) + sine(5000, 1.0, 48_000, 3000)
    frames = stereo_frames(x)
    d = Downsampler48to16()
    streamed = np.concatenate([d.process(f) for f in frames])
    whole = Downsampler48to16().process(np.concatenate(frames, axis=1))
    assert len(streamed) == len(whole) == 16_000
    assert np.max(np.abs(streamed.astype(int) - whole)) <= 1


def test_downsampler_uneven_chunks_equal_one_shot() -> None:
    x = sine(700, 0.5, 48_000)
    packed = np.stack([x, x], axis=1).reshape(1, -1)
    d = Downsampler48to16()
    rng = np.random.default_rng(1)
    pieces: list[PCM] = []
    i = 0
    while i < packed.shape[1]:
        n = 2 * int(rng.integers(1, 1500))  # whole stereo samples, lengths not multiples of 3
        pieces.append(d.process(packed[:, i : i + n]))
        i += n
    streamed = np.concatenate(pieces)
    whole = Downsampler48to16().process(packed)
    assert len(streamed) == len(whole) == 8000
    assert np.max(np.abs(streamed.astype(int) - whole)) <= 1


def test_downsampler_planar_and_mono_layouts() -> None:
    x = sine(440, 0.1, 48_000)
    packed = Downsampler48to16().process(np.stack([x, x], axis=1).reshape(1, -1))
    planar = Downsampler48to16().process(np.stack([x, x]))
    mono = Downsampler48to16(channels=1).process(x)
    assert np.array_equal(packed, planar)
    assert np.max(np.abs(packed.astype(int) - mono)) <= 1


def test_downsampler_averages_channels() -> None:
    left = sine(1000, 0.1, 48_000)
    right = np.zeros_like(left)
    out = Downsampler48to16().process(np.stack([left, right], axis=1).reshape(1, -1))
    assert level_db(out[100:], 1000, 16_000) == pytest.approx(-6.02, abs=0.05)


@pytest.mark.parametrize("freq", [1000, 3000, 6000])
def test_downsampler_passband_snr(freq: int) -> None:
    d = Downsampler48to16()
    out = np.concatenate([d.process(f) for f in stereo_frames(sine(freq, 1.0, 48_000))])
    m = np.arange(len(out)) - Downsampler48to16.DELAY
    reference = AMPLITUDE * np.sin(2 * np.pi * freq * m / 16_000)
    assert snr_db(reference[100:], out[100:]) > 70


@pytest.mark.parametrize(("freq", "min_rejection"), [(9000, 70), (10_000, 70), (12_500, 70), (15_000, 70)])
def test_downsampler_rejects_aliases(freq: int, min_rejection: float) -> None:
    d = Downsampler48to16()
    out = np.concatenate([d.process(f) for f in stereo_frames(sine(freq, 1.0, 48_000))])
    alias = abs((freq + 8000) % 16_000 - 8000)
    assert level_db(out[200:], alias, 16_000) < -min_rejection


def test_downsampler_is_cheap() -> None:
    d = Downsampler48to16()
    frame = np.random.default_rng(0).integers(-8000, 8000, size=(1, 1920), dtype=np.int16)
    for _ in range(100):
        d.process(frame)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(200):
            d.process(frame)
        best = min(best, (time.perf_counter() - t0) / 200)
    assert best < 100e-6 * UNIT  # typically ~12 us; generous for loaded machines


# --- any rate -> 48 kHz ----------------------------------------------------------------------


@pytest.mark.parametrize("rate", [22_050, 16_000, 24_000, 44_100])
def test_upsampler_length_and_one_shot_equality(rate: int) -> None:
    x = sine(1000, 0.73, rate) + sine(3100, 0.73, rate, 2000)
    whole = resample(x, rate, 48_000)
    assert len(whole) == -(-len(x) * 48_000 // rate)
    up = Upsampler(rate)
    rng = np.random.default_rng(rate)
    pieces: list[PCM] = []
    i = 0
    while i < len(x):
        n = int(rng.integers(1, 3000))
        pieces.append(up.process(x[i : i + n]))
        i += n
    pieces.append(up.flush())
    streamed = np.concatenate(pieces)
    assert len(streamed) == len(whole)
    assert np.max(np.abs(streamed.astype(int) - whole)) <= 1


@pytest.mark.parametrize(("rate", "freq"), [(22_050, 1000), (22_050, 7000), (16_000, 1000), (24_000, 4000)])
def test_upsampler_snr_no_delay(rate: int, freq: int) -> None:
    out = resample(sine(freq, 1.0, rate), rate, 48_000)
    reference = AMPLITUDE * np.sin(2 * np.pi * freq * np.arange(len(out)) / 48_000)
    inner = slice(100, len(out) - 100)  # away from the edges (the signal starts and ends abruptly)
    assert snr_db(reference[inner], out[inner]) > 75


def test_upsampler_rejects_images() -> None:
    out = resample(sine(8000, 1.0, 22_050), 22_050, 48_000)
    assert level_db(out, 22_050 - 8000, 48_000) < -85


def test_upsampler_flush_resets_for_a_new_stream() -> None:
    up = Upsampler(22_050)
    x = sine(500, 0.2, 22_050)
    first = np.concatenate((up.process(x), up.flush()))
    second = np.concatenate((up.process(x), up.flush()))
    assert np.array_equal(first, second)


def test_resampler_downsampling_and_identity() -> None:
    x = sine(1000, 1.0, 22_050)
    out = resample(x, 22_050, 16_000)
    assert len(out) == 16_000
    reference = AMPLITUDE * np.sin(2 * np.pi * 1000 * np.arange(len(out)) / 16_000)
    assert snr_db(reference[100:-100], out[100:-100]) > 75
    same = Resampler(16_000, 16_000)
    assert np.array_equal(np.concatenate((same.process(x), same.flush())), x)
    # a tone above the new Nyquist frequency is removed, not aliased to 16000 - 9500 = 6500 Hz
    high = resample(sine(9500, 1.0, 22_050), 22_050, 16_000)
    assert level_db(high[100:-100], 6500, 16_000) < -70


def test_upsampler_saturates_instead_of_wrapping() -> None:
    square = np.tile(np.array([32767] * 20 + [-32768] * 20, dtype=np.int16), 50)
    out = resample(square, 22_050, 48_000)
    assert out.dtype == np.int16
    phase = (np.arange(len(out)) * 22_050 / 48_000) % 40  # position in the square wave's period
    high = (phase > 3) & (phase < 17)
    low = (phase > 23) & (phase < 37)
    # Gibbs overshoot beyond full scale clips there; wrapping around would flip the sign
    assert int(out[high].min()) > 30_000 and int(out[low].max()) < -30_000
    assert int(out.max()) == 32767 and int(out.min()) == -32768
