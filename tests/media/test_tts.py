"""eSpeak NG synthesis (through the espeakng-loader wheel), the TTS registry, and the spoken-answer fixtures."""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from media.audio import PCM, SAMPLE_RATE
from media.tts import SYNTHESIZERS, create_synthesizer, espeak
from media.tts.espeak import EspeakSynthesizer

ANSWERS = Path(__file__).resolve().parents[2] / "fixtures" / "answers"

SENTENCE = "Thank you for telling me about your work at the hospital."
PARAGRAPH = (
    "Thank you, that was really helpful. Now I would like to ask you a few questions about where you live. "
    "How long have you lived in your current home, and what do you like most about the area? "
    "Please take your time, there are no right or wrong answers."
)


@pytest.fixture(scope="module")
def tts() -> EspeakSynthesizer:
    return EspeakSynthesizer()


def rms(pcm: PCM) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))


def test_native_rate_and_defaults(tts: EspeakSynthesizer) -> None:
    assert tts.name == "espeak"
    assert tts.sample_rate == 22050
    assert (tts.voice, tts.rate, tts.pitch) == ("en-us", 160, 50)


def test_sentence_is_audible_and_plausibly_long(tts: EspeakSynthesizer) -> None:
    chunks = list(tts.synthesize(SENTENCE))
    assert chunks
    for chunk in chunks:
        assert chunk.dtype == np.int16
        assert chunk.ndim == 1
    pcm = np.concatenate(chunks)
    seconds = len(pcm) / tts.sample_rate
    assert 1.0 < seconds < 6.0  # 11 words at 160 wpm is about 4 s
    assert rms(pcm) > 300  # clearly not silence (about -40 dBFS)
    whole = tts.synthesize_all(SENTENCE)
    assert whole.dtype == np.int16
    assert abs(len(whole) - len(pcm)) < 0.1 * len(pcm)  # same text, same length (up to eSpeak's jitter)


def test_faster_rate_gives_shorter_audio() -> None:
    slow = EspeakSynthesizer(rate=120).synthesize_all(SENTENCE)
    fast = EspeakSynthesizer(rate=240).synthesize_all(SENTENCE)
    assert len(fast) < 0.8 * len(slow)


class _GatedQueue(queue.SimpleQueue[Any]):
    """Holds eSpeak inside its callback after the first chunk until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.puts = 0
        self.gate = threading.Event()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self.puts += 1
        if self.puts == 1:
            self.gate.wait(timeout=30)


def test_first_chunk_arrives_before_synthesis_completes(
    tts: EspeakSynthesizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic: eSpeak is held inside its callback after the first chunk, and that chunk still comes out."""
    gated = _GatedQueue()
    job_class = espeak._Job
    monkeypatch.setattr(espeak, "_Job", lambda: job_class(out=gated))
    gen = tts.synthesize(PARAGRAPH)
    first = next(gen)
    try:
        assert len(first) > 0
        assert gated.puts == 1  # nothing else has been produced yet ...
        assert espeak._ENGINE is not None and espeak._ENGINE._job is not None  # ... and espeak_Synth is running
    finally:
        gated.gate.set()
    remaining = list(gen)
    assert sum(len(c) for c in remaining) > 10 * len(first)


def test_time_to_first_chunk_is_less_than_total_time(tts: EspeakSynthesizer) -> None:
    start = time.perf_counter()
    gen = tts.synthesize(PARAGRAPH)
    next(gen)
    first = time.perf_counter() - start
    rest = list(gen)
    total = time.perf_counter() - start
    assert rest
    assert first < total


def test_long_text_yields_several_chunks(tts: EspeakSynthesizer) -> None:
    chunks = list(tts.synthesize(PARAGRAPH))
    assert len(chunks) > 10
    assert len(np.concatenate(chunks)) / tts.sample_rate > 8.0


def test_closing_the_generator_aborts_synthesis(tts: EspeakSynthesizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopping early (barge-in) aborts eSpeak mid-text; the next call starts clean."""
    expected = len(tts.synthesize_all(SENTENCE))
    gated = _GatedQueue()
    job_class = espeak._Job
    monkeypatch.setattr(espeak, "_Job", lambda: job_class(out=gated))
    gen = tts.synthesize(PARAGRAPH)
    next(gen)
    gen.close()  # sets the cancel flag while eSpeak is still inside its callback
    gated.gate.set()
    monkeypatch.undo()
    again = tts.synthesize_all(SENTENCE)  # waits for the engine lock, so the aborted call has ended
    assert gated.puts == 2  # the first chunk, then only the end-of-stream marker: nothing after the abort
    assert abs(len(again) - expected) < 0.1 * expected  # no leftover audio from the aborted paragraph


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_text_yields_no_audio(tts: EspeakSynthesizer, text: str) -> None:
    """Documented choice: empty or whitespace-only text produces no chunks rather than an error."""
    assert list(tts.synthesize(text)) == []
    pcm = tts.synthesize_all(text)
    assert pcm.dtype == np.int16
    assert len(pcm) == 0


@pytest.mark.parametrize(
    "text",
    [
        "H\u00e9llo \u2014 \u201cquoted\u201d \u2018text\u2019\u2026 na\u00efve caf\u00e9, 50% off!!! ???",
        "日本語のテキスト и русский текст, مرحبا",
        "<speak>not SSML</speak> & <b>tags</b> {braces} [brackets] $100 #1 @home ~~~",
        "emoji 🙂🎉 and \x00 nul \x07 bell \ud800 lone surrogate",
        "...!!!???,,,;;;",
        "a" * 2000,
    ],
)
def test_unicode_and_punctuation_do_not_crash(tts: EspeakSynthesizer, text: str) -> None:
    pcm = tts.synthesize_all(text)
    assert pcm.dtype == np.int16
    assert tts.synthesize_all("still working").size > 0


def test_concurrent_calls_are_serialised_and_correct(tts: EspeakSynthesizer) -> None:
    other = EspeakSynthesizer(rate=300, pitch=80)
    expected = {id(tts): len(tts.synthesize_all(SENTENCE)), id(other): len(other.synthesize_all(SENTENCE))}
    results: dict[tuple[int, int], int] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(engine: EspeakSynthesizer, slot: int) -> None:
        try:
            barrier.wait()
            results[(id(engine), slot)] = sum(len(c) for c in engine.synthesize(SENTENCE))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(e, i)) for i, e in enumerate([tts, other, tts, other])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(results) == 4
    for (engine_id, _), n in results.items():
        # each call keeps its own rate: same length as alone, give or take eSpeak's small random variation
        assert abs(n - expected[engine_id]) < 0.1 * expected[engine_id]


def test_interleaved_generators_in_one_thread(tts: EspeakSynthesizer) -> None:
    a = tts.synthesize(PARAGRAPH)
    b = tts.synthesize(SENTENCE)
    first_a = next(a)
    first_b = next(b)
    assert len(first_a) and len(first_b)
    assert sum(len(c) for c in a) > 0
    assert sum(len(c) for c in b) > 0


def test_invalid_options() -> None:
    with pytest.raises(ValueError, match="voice"):
        EspeakSynthesizer(voice="no-such-voice-xyz")
    with pytest.raises(ValueError, match="rate"):
        EspeakSynthesizer(rate=10)
    with pytest.raises(ValueError, match="pitch"):
        EspeakSynthesizer(pitch=101)


def test_registry() -> None:
    assert SYNTHESIZERS["espeak"] == "media.tts.espeak:EspeakSynthesizer"
    tts = create_synthesizer("espeak", rate=200, pitch=40)
    assert isinstance(tts, EspeakSynthesizer)
    assert (tts.rate, tts.pitch) == (200, 40)
    assert isinstance(create_synthesizer(), EspeakSynthesizer)


def test_registry_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"unknown synthesizer 'nope'.*espeak"):
        create_synthesizer("nope")


def test_fixture_manifest_matches_files() -> None:
    manifest = json.loads((ANSWERS / "answers.json").read_text())
    assert 6 <= len(manifest) <= 8
    assert len({e["id"] for e in manifest}) == len(manifest)
    for entry in manifest:
        assert entry["file"] == f"{entry['id']}.wav"
        assert entry["text"].strip()
        path = ANSWERS / entry["file"]
        assert path.is_file(), path
        info = sf.info(str(path))
        assert info.samplerate == SAMPLE_RATE
        assert info.channels == 1
        assert info.subtype == "PCM_16"
        assert abs(info.frames / info.samplerate - entry["duration_s"]) < 0.010
        assert 1.5 <= entry["duration_s"] <= 4.0
        assert 0 < entry["speech_start_s"] < entry["speech_end_s"] < entry["duration_s"]
        pcm, _ = sf.read(str(path), dtype="int16")
        start, end = (round(entry[k] * SAMPLE_RATE) for k in ("speech_start_s", "speech_end_s"))
        assert not pcm[: start - 1].any() and not pcm[end + 1 :].any()  # digital silence around the speech
        assert rms(pcm[start:end]) > 300


def test_noise_and_silence_fixtures() -> None:
    click, rate = sf.read(str(ANSWERS / "noise_click.wav"), dtype="int16")
    assert rate == SAMPLE_RATE and click.ndim == 1
    loud = np.flatnonzero(click)
    assert 0.05 < (loud[-1] - loud[0] + 1) / rate < 0.07  # a 60 ms burst
    assert loud[0] / rate > 0.3 and (len(click) - loud[-1]) / rate > 0.3  # between silences
    quiet, rate = sf.read(str(ANSWERS / "silence_2s.wav"), dtype="int16")
    assert rate == SAMPLE_RATE and quiet.ndim == 1
    assert len(quiet) == 2 * SAMPLE_RATE and not quiet.any()


def test_fixtures_are_small() -> None:
    assert sum(p.stat().st_size for p in ANSWERS.iterdir()) < 1_000_000
