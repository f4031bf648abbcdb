"""What may be said to a participant: cleaning and checking a model's words before anyone sees them.

A model's text is only ever a proposal. Before it is shown or spoken it is cleaned
(hidden reasoning such as ``<think>…</think>`` removed, a leading "Interviewer:"
dropped, quotes and spacing tidied) and checked: anything that is not plain speech
(JSON, tool syntax, markup, code, links, control characters), a leak of the
interviewer's machinery ("as an AI", "my instructions"), praise, a leading question,
or a reply far too long is refused, and the caller falls back. :class:`SentenceSplitter`
cuts a stream of text into sentences, so a voice reply's first sentence can be spoken
while the rest is still being written.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

_THINK = re.compile(r"<(think|thinking|reasoning)>.*?(</\1>|$)", re.IGNORECASE | re.DOTALL)
_ROLE_PREFIX = re.compile(r"^\s*(interviewer|assistant|ai|moderator|bot)\s*:\s*", re.IGNORECASE)
_MARKUP = re.compile(r"[{}\[\]<>`*#|\\~^=]|https?:|www\.|:\s*//|\b\w+\(|\"\w+\"\s*:")
_LEAK = re.compile(
    r"\b(as an ai|language model|large language model|system prompt|my (instructions|prompt|programming)"
    r"|i am an ai|i'm an ai|tool call|function call|json)\b",
    re.IGNORECASE,
)
_PRAISE = re.compile(
    r"\b(great(?! (deal|many|number|amount|lengths|distance))|excellent|wonderful|fantastic|amazing|awesome"
    r"|brilliant|perfect|impressive|fascinating"
    r"|interesting|love (that|this|it|hearing)|good (answer|point|question)|well said|nice)\b",
    re.IGNORECASE,
)
_LEADING = re.compile(
    r"^\s*(don'?t you (think|agree|feel)|wouldn'?t you (say|agree)|isn'?t it (true|the case)|surely"
    r"|do you agree that|would you agree that|you must)\b",
    re.IGNORECASE,
)


def clean(text: str) -> str:
    """The speakable part of a model's text: reasoning, role labels, wrapping quotes and extra spaces removed."""
    text = _THINK.sub(" ", text)
    text = _ROLE_PREFIX.sub("", text)
    text = " ".join(text.split())
    if len(text) >= 2 and text[0] in "\"'“" and text[-1] in "\"'”":
        text = text[1:-1].strip()
    return text


def problems(text: str, *, max_words: int = 60) -> list[str]:
    """Why ``text`` may not be said as it is; empty if it may."""
    found: list[str] = []
    if not text.strip():
        return ["empty"]
    if any(unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs") for c in text):
        found.append("control characters")
    if _MARKUP.search(text):
        found.append("markup, code or links")
    if _LEAK.search(text):
        found.append("talks about the interviewer's machinery")
    if len(text.split()) > max_words:
        found.append(f"longer than {max_words} words")
    letters = sum(c.isalpha() for c in text)
    if letters < max(1, len(text) // 2):
        found.append("not mostly words")
    return found


def question_problems(text: str, *, max_words: int = 40) -> list[str]:
    """:func:`problems`, and: one open question, at the end, not leading."""
    found = problems(text, max_words=max_words)
    if text.count("?") != 1 or not text.rstrip().endswith("?"):
        found.append("not exactly one question, at the end")
    if _LEADING.search(text) or any(_LEADING.search(s) for s in split_sentences(text)):
        found.append("a leading question")
    if _PRAISE.search(text):
        found.append("evaluative praise")
    return found


def acknowledgement_problems(text: str, *, max_words: int = 14) -> list[str]:
    """:func:`problems` for a brief neutral reaction: short, no question, no praise."""
    found = problems(text, max_words=max_words)
    if "?" in text:
        found.append("a question where an acknowledgement was wanted")
    if _PRAISE.search(text):
        found.append("evaluative praise")
    return found


def safe_prefix(text: str) -> bool:
    """Whether a streamed prefix may be previewed: nothing in it so far that could never be said."""
    ignorable = {"not mostly words", "empty"}
    return all(p in ignorable for p in problems(text, max_words=10_000))


# --- sentences -------------------------------------------------------------------------------

_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "e.g", "i.e", "approx", "no"})
_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)")


def split_sentences(text: str) -> list[str]:
    splitter = SentenceSplitter()
    return [*splitter.feed(text), *splitter.flush()]


class SentenceSplitter:
    """Cuts streamed text into sentences: a sentence is complete once whitespace follows its end mark.

    "Dr." and similar abbreviations and decimals ("3.5") do not end a sentence.
    """

    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, text: str) -> Iterable[str]:
        self._buffer += text
        out: list[str] = []
        start = 0
        for match in _END.finditer(self._buffer):
            before = self._buffer[start : match.start()]
            token = before.split()[-1] if before.split() else ""
            initial = len(token) == 1 and token.isupper() and token != "I"
            if match.group().startswith(".") and (token.lower().rstrip(".") in _ABBREVIATIONS or initial):
                continue
            sentence = self._buffer[start : match.end()].strip()
            if sentence:
                out.append(sentence)
            start = match.end()
        self._buffer = self._buffer[start:]
        return out

    def flush(self) -> list[str]:
        rest, self._buffer = self._buffer.strip(), ""
        return [rest] if rest else []
