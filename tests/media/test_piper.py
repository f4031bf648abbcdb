"""Piper's English voice (the bundled "joe" medium, run with onnxruntime), text pieces, and voice choice.

Intelligibility is checked the way a listener would: the audio, resampled to 16 kHz, goes through the
PocketSphinx recogniser (itself ~29 % WER on human speech). The voice samples noise (VITS), so each
synthesis differs a little: measured over 8 syntheses of ``REPLY``, WER 0.05-0.37 (mean 0.21: "little"
heard as "ill", "that" as "ben"); asserted ``<= 0.5``. Garbled audio (wrong ids or rate) scores ~0.9.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from media.audio import PCM
from media.resample import resample
from media.stt import create_recognizer
from media.stt.wer import word_error_rate
from media.tts import AUTO, create_synthesizer, embedded_for_language
from media.tts.espeak import EspeakSynthesizer, phonemize
from media.tts.pieces import Clause, clauses, pieces
from media.tts.piper import QUIET, PiperSynthesizer

REPLY = "Thank you, that is really helpful. Could you tell me a little more about a typical day at work?"
WER_THRESHOLD = 0.5


@pytest.fixture(scope="module")
def piper() -> PiperSynthesizer:
    return PiperSynthesizer()


def rms(pcm: PCM) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))


def heard(pcm: PCM, rate: int) -> str:
    recognizer = create_recognizer("pocketsphinx")
    recognizer.start()
    recognizer.feed(np.asarray(resample(pcm, rate, 16_000), dtype=np.int16))
    return recognizer.finish()


def test_the_default_voice_is_joe_at_22050_hz(piper: PiperSynthesizer) -> None:
    assert piper.name == "piper"
    assert piper.sample_rate == 22_050
    assert isinstance(create_synthesizer("piper"), PiperSynthesizer)


def test_a_reply_comes_piece_by_piece_and_is_understood(piper: PiperSynthesizer) -> None:
    chunks = list(piper.synthesize(REPLY))
    assert len(chunks) == len(pieces(REPLY)) == 3  # "Thank you," / "that is really helpful." / the question
    for chunk in chunks:
        assert chunk.dtype == np.int16 and chunk.ndim == 1
        assert rms(chunk) > 300  # speech, not silence
    first, whole = chunks[0], np.concatenate(chunks)
    assert len(first) / piper.sample_rate < 1.2  # "Thank you," is short: the reply starts soon
    assert 3.0 < len(whole) / piper.sample_rate < 9.0  # 20 words
    assert word_error_rate(REPLY, heard(whole, piper.sample_rate)) <= WER_THRESHOLD


VOICED = 328  # -40 dBFS: a vowel or a voiced consonant; a soft onset ("th", "f") stays under it for 30-40 ms


def ms_before(pcm: np.ndarray, rate: int, above: int) -> float:
    """Milliseconds of audio before the first sample louder than ``above``."""
    return 1000 * int(np.flatnonzero(np.abs(pcm.astype(np.int32)) > above)[0]) / rate


def test_a_reply_starts_with_its_first_sound_and_later_pieces_keep_their_pauses(piper: PiperSynthesizer) -> None:
    """The voice opens every inference with ~30-50 ms of digital silence: on a reply's first piece that is only
    waiting (trimmed to 10 ms before the first sound); between pieces it is the pause of a clause (kept)."""
    rate = piper.sample_rate
    first, second, *_ = piper.synthesize(REPLY)
    assert ms_before(first, rate, QUIET) <= 11
    assert ms_before(second, rate, QUIET) >= 25
    untrimmed = piper.run(piper.phonemes(pieces(REPLY)[0]))
    assert (
        ms_before(untrimmed, rate, QUIET) >= 25
    )  # (its length is not comparable: each inference samples its durations)


def test_trimming_keeps_a_soft_first_consonant(piper: PiperSynthesizer) -> None:
    """The "th" of "three" rises from the silence for 30-40 ms under -40 dBFS before the vowel: cutting it
    made Whisper hear "B91 857" for "three nine one, eight five seven"; the participant hears "ree"."""
    first, *_ = piper.synthesize("Three nine one, eight five seven.")
    assert ms_before(first, piper.sample_rate, VOICED) >= 25
    after_a_pause = np.concatenate([np.zeros(piper.sample_rate // 5, dtype=np.int16), first])  # as it is heard
    text = heard(after_a_pause, piper.sample_rate).lower()
    assert text.startswith(("three", "3")), text


def test_phonemes_keep_stress_and_punctuation(piper: PiperSynthesizer) -> None:
    question = piper.phonemes([Clause("where do you live", "?")])
    statement = piper.phonemes([Clause("I live in town", ","), Clause("near the river", ".")])
    assert question.endswith("?")
    assert "\u02c8" in question  # primary stress (IPA ˈ): the voices were trained with it  # noqa: RUF003
    assert statement.count(",") == 1 and statement.endswith(".")


def test_a_question_mark_changes_the_audio(piper: PiperSynthesizer) -> None:
    """Punctuation reaches the model: the same words asked and stated give different phoneme ids."""
    voice = piper._voice
    assert voice.phoneme_ids(piper.phonemes([Clause("you live here", "?")])) != voice.phoneme_ids(
        piper.phonemes([Clause("you live here", ".")])
    )


def test_slower_length_scale_gives_longer_audio(piper: PiperSynthesizer) -> None:
    normal = np.concatenate(list(piper.synthesize(REPLY)))
    slow = np.concatenate(list(PiperSynthesizer(length_scale=1.5).synthesize(REPLY)))
    assert len(slow) > 1.25 * len(normal)


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "...", "?!"])
def test_text_without_words_gives_no_audio(piper: PiperSynthesizer, text: str) -> None:
    assert list(piper.synthesize(text)) == []


@pytest.mark.parametrize("text", ["Ünïcödé çafé — naïve? 😀", "a\x00b\x07c", "3.5 % of 10,000 people!"])
def test_unusual_text_is_spoken_without_error(piper: PiperSynthesizer, text: str) -> None:
    assert sum(len(c) for c in piper.synthesize(text)) > 0


def test_concurrent_syntheses_share_one_model(piper: PiperSynthesizer) -> None:
    other = PiperSynthesizer()
    assert other._voice is piper._voice  # loaded once per process
    results: dict[int, list[PCM]] = {}
    errors: list[BaseException] = []

    def work(slot: int) -> None:
        try:
            results[slot] = list((piper if slot % 2 else other).synthesize(REPLY))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    for chunks in results.values():
        assert len(chunks) == 3
        assert word_error_rate(REPLY, heard(np.concatenate(chunks), piper.sample_rate)) <= WER_THRESHOLD


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Piper voice file"):
        PiperSynthesizer(model=tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="length_scale"):
        PiperSynthesizer(length_scale=10)
    with pytest.raises(ValueError, match="first_words"):
        PiperSynthesizer(first_words=0)


# --- pieces ---------------------------------------------------------------------------------------


def test_clauses_keep_their_punctuation() -> None:
    assert clauses("Well, it costs 3.5 dollars. Really?!  Yes") == [
        Clause("Well", ","),
        Clause("it costs 3.5 dollars", "."),
        Clause("Really", "?!"),
        Clause("Yes"),
    ]
    assert clauses("Hmm ... fine.") == [Clause("Hmm", "..."), Clause("fine", ".")]
    assert clauses("") == []


def test_first_sentence_goes_by_clauses_later_ones_whole() -> None:
    spoken = [[c.spoken for c in p] for p in pieces("Thanks, that helps. Where do you live, and since when? Okay.")]
    assert spoken == [["Thanks,"], ["that helps."], ["Where do you live,", "and since when?"], ["Okay."]]


def test_a_long_first_clause_is_cut_after_a_few_words() -> None:
    text = "Could you tell me a little more about what a typical day looks like for you?"
    spoken = [[c.spoken for c in p] for p in pieces(text, first_words=5)]
    assert spoken == [["Could you tell me a"], ["little more about what a typical day looks like for you?"]]
    assert " ".join(s for p in spoken for s in p) == text  # nothing lost or repeated


def test_a_very_long_later_sentence_is_split_at_clauses() -> None:
    long = ", ".join(["and then some more words here"] * 8) + "."
    got = pieces("Hi. " + long, max_words=20)
    assert len(got) == 1 + 8
    assert all(len(p) == 1 for p in got)


# --- choosing a voice by language -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "language", "expected"),
    [
        (AUTO, "en", ("piper", {})),
        (AUTO, "en-GB", ("piper", {})),
        (AUTO, "de", ("espeak", {"voice": "de"})),
        ("piper", "fr", ("espeak", {"voice": "fr"})),
        ("espeak", "en", ("espeak", {"voice": "en-us"})),
        ("espeak", "pt-BR", ("espeak", {"voice": "pt-br"})),
    ],
)
def test_the_embedded_voice_follows_the_language(
    name: str, language: str, expected: tuple[str, dict[str, str]]
) -> None:
    assert embedded_for_language(name, language) == expected


def test_espeak_speaks_the_languages_piper_does_not() -> None:
    german = EspeakSynthesizer(voice="de")
    assert german.synthesize_all("Guten Tag, wie geht es Ihnen?").size > 0
    assert phonemize("Guten Tag", "de") != phonemize("Guten Tag", "en-us")
