"""Word error rate, for tests and benchmarks of :mod:`media.stt` recognizers."""

from __future__ import annotations

import re

_PUNCT = re.compile(r"[^\w\s']|_")


def normalize_words(text: str) -> list[str]:
    """Lower-case ``text``, strip punctuation and split into words.

    Apostrophes inside words are kept ("don't" stays one word, as in the recognizer's
    dictionary); quotes around words are dropped. Hyphens and other punctuation split words.
    """
    words = _PUNCT.sub(" ", text.lower()).split()
    return [w for w in (word.strip("'") for word in words) if w]


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
