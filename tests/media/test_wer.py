"""Word error rate and the word normalisation it compares on (media/stt/wer.py)."""

from __future__ import annotations

import pytest

from media.stt.wer import corpus_word_error_rate, normalize_words, spell_number, word_error_rate


@pytest.mark.parametrize(
    ("reference", "hypothesis", "expected"),
    [
        ("the cat sat on the mat", "the cat sat on the mat", 0.0),
        ("the cat sat on the mat", "the cat sat on a mat", 1 / 6),  # one substitution
        ("the cat sat on the mat", "the cat on the mat", 1 / 6),  # one deletion
        ("the cat sat on the mat", "the cat sat on the red mat", 1 / 6),  # one insertion
        ("a b c d", "a x c", 0.5),  # substitution + deletion
        ("the cat sat", "the cat sat on the mat", 1.0),  # three insertions
        ("hello world", "", 1.0),  # everything deleted
        ("yes", "no no no", 3.0),  # can exceed 1
        ("Hello, World!", "hello world", 0.0),  # case and punctuation ignored
        ("I'm not sure.", "i'm not sure", 0.0),  # apostrophes inside words kept
        ("I'm not sure", "i am not sure", 2 / 3),  # ... so contractions differ from their expansion
        ("well-known", "well known", 0.0),  # hyphen splits words
        ("  spaced   out  ", "spaced out", 0.0),
        ("", "", 0.0),
        ("", "anything", 1.0),
        ("...", "", 0.0),  # only punctuation: no words
        ("go forward ten meters", "Go forward 10 meters.", 0.0),  # digits are read out
        ("four queen of clubs", "4 queen of clothes", 1 / 4),  # ... and a wrong word still counts
        ("and mister john dashwood", "And Mr. John Dashwood", 0.0),  # titles in full
        ("ten of clubs", "ten of close", 1 / 3),
    ],
)
def test_word_error_rate(reference: str, hypothesis: str, expected: float) -> None:
    assert word_error_rate(reference, hypothesis) == pytest.approx(expected)


def test_word_error_rate_is_levenshtein_not_position_matching() -> None:
    # A single leading insertion must cost one edit, not shift every later word into a substitution.
    reference = "one two three four five six seven eight nine ten"
    assert word_error_rate(reference, "zero " + reference) == pytest.approx(0.1)
    assert word_error_rate(reference, reference.replace("one ", "")) == pytest.approx(0.1)


def test_corpus_word_error_rate_weights_by_words() -> None:
    pairs = [("a b c d e f g h i j", "a b c d e f g h i j"), ("yes", "no")]
    assert corpus_word_error_rate(pairs) == pytest.approx(1 / 11)
    assert corpus_word_error_rate([]) == 0.0


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (40, "forty"),
        (99, "ninety nine"),
        (100, "one hundred"),
        (305, "three hundred five"),
        (1234, "one thousand two hundred thirty four"),
        (2_000_010, "two million ten"),
    ],
)
def test_numbers_are_spelled_as_read(n: int, words: str) -> None:
    assert spell_number(n) == words


def test_normalisation_spells_whole_numbers_only() -> None:
    assert normalize_words("1,500 people, 3.5 kg, room 12b") == [
        "one", "thousand", "five", "hundred", "people", "3", "5", "kg", "room", "12b"
    ]  # fmt: skip
