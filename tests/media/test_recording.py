"""media.recording.Recorder: wall-clock placement, silence, channels, sessions, resampling, bounded memory."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from media.audio import PCM
from media.recording import Recorder
from tests.conftest import UNIT

RATE = 16_000
T0 = 1_700_000_000.0  # run start (seconds since the epoch)


def tone(seconds: float, freq: float = 440.0, rate: int = RATE, amplitude: float = 8000.0) -> PCM:
    t = np.arange(round(seconds * rate)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def marker(n: int = 160, value: int = 1000) -> PCM:
    """A block of constant non-zero samples: its first sample locates it exactly."""
    return np.full(n, value, dtype=np.int16)


def read(path: Path) -> np.ndarray:
    data, rate = sf.read(path, dtype="int16", always_2d=True)
    assert rate == RATE
    assert data.shape[1] == 2
    return np.asarray(data)


def first_nonzero(column: np.ndarray) -> int:
    return int(np.flatnonzero(column)[0])


def test_file_is_stereo_16k_wav(tmp_path: Path) -> None:
    path = tmp_path / "run.wav"
    with Recorder(path, origin=T0) as rec:
        rec.add("participant", marker(), T0 + 0.5)
    info = sf.info(path)
    assert (info.channels, info.samplerate, info.format, info.subtype) == (2, RATE, "WAV", "PCM_16")
    assert info.frames == round(0.5 * RATE) + 160


@pytest.mark.parametrize("offset", [0.0, 0.00003, 1.23456, 7.77777, 100.0001])
def test_alignment_within_one_sample(tmp_path: Path, offset: float) -> None:
    path = tmp_path / "run.wav"
    with Recorder(path, origin=T0) as rec:
        rec.add("participant", marker(), T0 + offset)
        rec.add("assistant", marker(), T0 + offset + 0.3)
    data = read(path)
    assert abs(first_nonzero(data[:, 0]) - offset * RATE) <= 1
    assert abs(first_nonzero(data[:, 1]) - (offset + 0.3) * RATE) <= 1


def test_gaps_are_silent_and_channels_separate(tmp_path: Path) -> None:
    path = tmp_path / "run.wav"
    a, b = tone(0.5, 300), tone(0.25, 500)
    with Recorder(path, origin=T0) as rec:
        rec.add("participant", a, T0 + 1.0)
        rec.add("assistant", b, T0 + 2.0)
        rec.add("participant", a, T0 + 3.0)
        assert rec.duration_s == pytest.approx(3.5)
    data = read(path)
    left, right = data[:, 0], data[:, 1]
    assert len(data) == 3.5 * RATE
    assert np.array_equal(left[16_000:24_000], a) and np.array_equal(left[48_000:56_000], a)
    assert np.array_equal(right[32_000:36_000], b)
    # everything else is silence, on each channel independently
    assert not left[:16_000].any() and not left[24_000:48_000].any()
    assert not right[:32_000].any() and not right[36_000:].any()


def test_two_sessions_with_a_gap(tmp_path: Path) -> None:
    path = tmp_path / "run.wav"
    first, second, late = tone(1.0, 300), tone(0.5, 700), marker(320, -1234)
    with Recorder(path, origin=T0) as rec:
        rec.add("participant", first, T0 + 0.5)
        rec.add("assistant", first, T0 + 1.0)
    assert sf.info(path).frames == 2.0 * RATE
    # a later session of the same run: same origin, audio placed after a 10 s gap, and a late chunk
    # lands in the silence before the first session's audio
    with Recorder(path, origin=T0) as rec:
        assert rec.duration_s == pytest.approx(2.0)
        rec.add("participant", second, T0 + 12.0)
        rec.add("participant", late, T0 + 0.1)
    data = read(path)
    assert len(data) == 12.5 * RATE
    left, right = data[:, 0], data[:, 1]
    assert np.array_equal(left[8000:24_000], first)
    assert np.array_equal(right[16_000:32_000], first)
    assert np.array_equal(left[192_000:200_000], second)
    assert not left[24_000:192_000].any() and not right[32_000:].any() and not right[:16_000].any()
    assert np.array_equal(left[1600:1920], late)
    assert not left[:1600].any() and not left[1920:8000].any()


def test_overlap_on_one_channel_is_mixed_with_saturation(tmp_path: Path) -> None:
    path = tmp_path / "run.wav"
    with Recorder(path, origin=T0, jitter_s=0.0) as rec:
        rec.add("assistant", marker(1600, 1000), T0 + 1.0)
        rec.add("assistant", marker(1600, 2000), T0 + 1.05)  # overlaps the last 800 samples
        rec.add("assistant", marker(160, 32000), T0 + 2.0)
        rec.add("assistant", marker(160, 32000), T0 + 2.0)
    right = read(path)[:, 1]
    assert np.all(right[16_000:16_800] == 1000)
    assert np.all(right[16_800:17_600] == 3000)
    assert np.all(right[17_600:18_400] == 2000)
    assert np.all(right[32_000:32_160] == 32767)


def test_jittery_frame_timestamps_stay_contiguous(tmp_path: Path) -> None:
    path = tmp_path / "run.wav"
    signal = tone(2.0, 440) + 100  # non-zero first sample
    rng = np.random.default_rng(3)
    with Recorder(path, origin=T0) as rec:
        for i in range(0, len(signal), 320):
            jitter = float(rng.uniform(-0.015, 0.015))
            rec.add("participant", signal[i : i + 320], T0 + 1.0 + i / RATE + jitter)
    left = read(path)[:, 0]
    start = first_nonzero(left)
    assert abs(start - RATE) <= 0.015 * RATE
    assert np.array_equal(left[start : start + len(signal)], signal)  # no clicks, no doubled samples


def test_resumes_at_the_timestamp_after_a_real_pause(tmp_path: Path) -> None:
    path = tmp_path / "run.wav"
    with Recorder(path, origin=T0) as rec:
        rec.add("participant", marker(320), T0 + 1.0)
        rec.add("participant", marker(320, 7), T0 + 1.0 + 0.02 + 0.2)  # 200 ms after the first ended
    left = read(path)[:, 0]
    assert first_nonzero(left) == RATE
    assert int(np.flatnonzero(left == 7)[0]) == RATE + 320 + 3200


def test_48k_frames_are_resampled_seamlessly_and_aligned(tmp_path: Path) -> None:
    path = tmp_path / "run.wav"
    signal48 = tone(1.0, 1000, rate=48_000)
    with Recorder(path, origin=T0) as rec:
        for i in range(0, len(signal48), 960):
            jitter = 0.002 * (i // 960 % 3)
            rec.add("assistant", signal48[i : i + 960], T0 + 2.0 + i / 48_000 + jitter, rate=48_000)
    right = read(path)[:, 1].astype(np.float64)
    n = np.arange(len(right))
    expected = 8000 * np.sin(2 * np.pi * 1000 * (n - 2 * RATE) / RATE) * ((n >= 2 * RATE) & (n < 3 * RATE))
    inner = slice(2 * RATE + 100, 3 * RATE - 100)
    error = right[inner] - expected[inner]
    snr = 10 * np.log10(np.sum(expected[inner] ** 2) / np.sum(error**2))
    assert snr > 60  # a click at any of the 50 frame boundaries would ruin this
    assert len(right) == 3 * RATE
    assert not right[: 2 * RATE - 50].any()


def test_audio_before_the_origin_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "run.wav"
    with Recorder(path, origin=T0) as rec:
        rec.add("participant", np.arange(1, 321, dtype=np.int16), T0 - 0.01)
    left = read(path)[:, 0]
    assert len(left) == 160 and left[0] == 161


def test_late_audio_older_than_the_memory_window_is_mixed_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "run.wav"
    signal = tone(3.0, 300)
    with Recorder(path, origin=T0, window_s=0.5) as rec:
        for i in range(0, len(signal), 320):
            rec.add("participant", signal[i : i + 320], T0 + i / RATE)
        rec.add("assistant", marker(800, 55), T0 + 0.25)  # long since written to disk
        rec.add("participant", marker(160, 10), T0 + 0.5, rate=None)
        assert len(rec._win) == 8000  # the window never grows
    data = read(path)
    assert len(data) == 3 * RATE
    assert np.all(data[4000:4800, 1] == 55) and not data[:4000, 1].any() and not data[4800:, 1].any()
    expected = signal.copy()
    expected[8000:8160] += 10
    assert np.array_equal(data[:, 0], expected)


def test_rejects_a_file_of_another_format(tmp_path: Path) -> None:
    path = tmp_path / "mono.wav"
    sf.write(path, np.zeros(100, dtype=np.int16), 8000)
    with pytest.raises(ValueError, match="not a stereo 16000 Hz"):
        Recorder(path, origin=T0)


def test_one_hour_run_in_bounded_memory(tmp_path: Path) -> None:
    """An hour of 20 ms participant frames plus 4 s assistant turns every 10 s (48 kHz, in 20 ms frames), the
    way the voice link adds them. Allocations are traced over the last 10 minutes: holding the audio in
    RAM would show up there as ~38 MB; the recorder keeps only its window while the file grows to ~230 MB."""
    path = tmp_path / "hour.wav"
    frame = tone(0.02, 300)
    turn = tone(4.0, 500, rate=48_000)
    started = time.perf_counter()
    with Recorder(path, origin=T0) as rec:
        window_bytes = rec._win.nbytes
        for i in range(3600 * 50):
            if i == 3000 * 50:
                tracemalloc.start()
            t = T0 + i * 0.02
            rec.add("participant", frame, t)
            if i % 500 == 0:  # every 10 s, a 4 s assistant turn in 20 ms frames
                for j in range(0, len(turn), 960):
                    rec.add("assistant", turn[j : j + 960], t + j / 48_000, rate=48_000)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert rec._win.nbytes == window_bytes
        assert rec.duration_s == 3600
    elapsed = time.perf_counter() - started
    print(f"recorder: 1 h in {elapsed:.1f} s, traced peak over the last 10 min {peak / 2**10:.0f} KiB")
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    info = sf.info(path)
    assert info.frames == 3600 * RATE
    assert elapsed < 60 * UNIT
