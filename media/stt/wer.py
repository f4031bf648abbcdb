"""Word error rate, for tests and benchmarks of :mod:`media.stt` recognizers."""

from __future__ import annotations

import re

_PUNCT = re.compile(r"[^\w\s']|_")
_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(?!\w)(?!\.\d)")
#: Written forms a recogniser may choose where the reference spells the word out.
_SPOKEN = {"mr": "mister", "mrs": "missus", "dr": "doctor", "ok": "okay"}
_ONES = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
_TENS = ("_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def spell_number(n: int) -> str:
    """``n`` (0 to 999,999,999) in words, as it is read: 10 -> "ten", 1234 -> "one thousand two hundred thirty four"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for size, name in ((1_000_000, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            head, rest = divmod(n, size)
            return f"{spell_number(head)} {name}" + ("" if rest == 0 else " " + spell_number(rest))
    raise AssertionError(n)


def _spell(match: re.Match[str]) -> str:
    n = int(match[1].replace(",", ""))
    return f" {spell_number(n)} " if n < 1_000_000_000 else match[1]


def normalize_words(text: str) -> list[str]:
    """Lower-case ``text``, strip punctuation and split into words.

    Apostrophes inside words are kept ("don't" stays one word, as in the recognizer's
    dictionary); quotes around words are dropped. Hyphens and other punctuation split words.
    Whole numbers are spelled out ("10" -> "ten") and a few titles written in full ("Mr." ->
    "mister"), so a recogniser that writes digits (Whisper) is not charged for the spelling.
    """
    words = _PUNCT.sub(" ", _NUMBER.sub(_spell, text.lower())).split()
    return [_SPOKEN.get(w, w) for w in (word.strip("'") for word in words) if w]


def word_edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance over words: substitutions + deletions + insertions."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, start=1):
            current.append(
                min(
                    previous[j] + 1,  # deletion
                    current[j - 1] + 1,  # insertion
                    previous[j - 1] + (ref_word != hyp_word),  # substitution or match
                )
            )
        previous = current
    return previous[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / number of reference words.

    Words are compared after lower-casing and stripping punctuation. An empty reference gives
    0.0 for an empty hypothesis and 1.0 otherwise (so the result is always defined); otherwise
    the rate can exceed 1.0 when the hypothesis has many insertions.
    """
    ref = normalize_words(reference)
    hyp = normalize_words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return word_edit_distance(ref, hyp) / len(ref)


def corpus_word_error_rate(pairs: list[tuple[str, str]]) -> float:
    """WER over many utterances: total edits / total reference words (not a mean of per-utterance rates)."""
    edits = 0
    words = 0
    for reference, hypothesis in pairs:
        ref = normalize_words(reference)
        edits += word_edit_distance(ref, normalize_words(hypothesis))
        words += len(ref)
    if words == 0:
        return 0.0 if edits == 0 else 1.0
    return edits / words
