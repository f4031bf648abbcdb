"""Reading a PIN said aloud from what a recogniser wrote (runtime/spoken_digits.py)."""

from __future__ import annotations

import pytest

from runtime.spoken_digits import spoken_digits


@pytest.mark.parametrize(
    "text",
    [
        "four two seven, one nine three",  # said in two groups (PocketSphinx: lower-case words)
        "Four two seven one nine three.",
        "4, 2, 7, 1, 9, 3.",  # Whisper, digit by digit
        "427193",
        "427 193.",  # Whisper, in groups (measured: Piper's voice over μ-law, tiny.en)
        "427-193",
        "427,193",  # as a number with a thousands separator
        "4-2-7-1-9-3",
        "My PIN is 427193.",  # words around it are not digits
        "Um, it's four two seven... one nine three",
        "forty-two seventy-one ninety-three",  # pairs said as numbers
        "for two seven, one nine three",  # "four" heard as "for", among digits
    ],
)
def test_every_way_of_writing_the_same_six_digits_reads_as_them(text: str) -> None:
    assert spoken_digits(text) == "427193"


@pytest.mark.parametrize(
    ("text", "digits"),
    [
        ("oh five three, eight eight two", "053882"),  # "oh" for zero
        ("O-5-3-8-8-2", "053882"),
        ("zero zero seven, nought four one", "007041"),
        ("oh oh seven", "007"),  # an "oh" next to another "oh" next to a digit
        ("double four, one, triple nine", "441999"),
        ("double oh seven", "007"),
        ("nineteen twelve thirty", "191230"),
        ("forty, one", "401"),  # "forty" alone is 40
        ("one two to three", "1223"),  # "to" among digits is a digit
        ("won two ate", "128"),
    ],
)
def test_zero_as_oh_homophones_pairs_and_repeats(text: str, digits: str) -> None:
    assert spoken_digits(text) == digits


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Hello?",
        "Oh, hello.",  # an "oh" that is no zero
        "I'd like to do the interview, for sure.",  # "to" and "for" among words are words
        "I don't know my PIN.",
        "Thank you.",
    ],
)
def test_speech_without_digits_has_none(text: str) -> None:
    assert spoken_digits(text) == ""


def test_digits_keep_their_order_across_numerals_and_words() -> None:
    assert spoken_digits("4 2 seven, 1 nine 3") == "427193"
    assert spoken_digits("It is 427 and then one nine three") == "427193"
