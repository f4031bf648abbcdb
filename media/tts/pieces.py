"""A reply cut into the pieces that a voice synthesises one at a time, so its first audio comes early.

Neural voices such as Piper's do not stream: one call turns a whole text into audio, in time roughly
proportional to its length (~0.1 s of CPU per second of speech). Synthesising the reply sentence by
sentence lets the first sentence play while the next is made; cutting the first sentence at its clauses,
and a long first clause after a few words, bounds the wait for the first audio whatever the reply.
Later pieces may be longer: each only has to be ready before the audio ahead of it has played.

Splitting happens at punctuation followed by a space or the end (``3.5`` and ``e.g.x`` stay whole);
each clause keeps the mark that closed it, since the voices were trained with punctuation in their
input and use it for intonation (a question rises, a comma continues).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SENTENCE_END = frozenset(".?!…")
#: Words of the first piece at most: about 1-1.5 s of speech, ~0.1 s to synthesise on a free core.
FIRST_PIECE_WORDS = 5
#: A later sentence longer than this is split at its clauses (bounds any one synthesis call).
MAX_PIECE_WORDS = 40

_CLAUSE = re.compile(r"(.*?)([.?!…,;:]+)(?=\s|$)|(.+?)$", re.DOTALL)


@dataclass(frozen=True)
class Clause:
    """Words up to a punctuation mark, and that mark ("" when the text ends without one or is cut at a word)."""

    text: str
    punctuation: str = ""

    @property
    def ends_sentence(self) -> bool:
        return any(ch in SENTENCE_END for ch in self.punctuation)

    @property
    def words(self) -> int:
        return len(self.text.split())

    @property
    def spoken(self) -> str:
        return self.text + self.punctuation


def clauses(text: str) -> list[Clause]:
    """The clauses of ``text`` in order, whitespace normalised, empty ones dropped."""
    out: list[Clause] = []
    for match in _CLAUSE.finditer(text):
        words = " ".join((match.group(1) if match.group(2) else match.group(3) or "").split())
        mark = match.group(2) or ""
        if words:
            out.append(Clause(words, mark))
        elif mark and out:  # punctuation with no words of its own ("Really?!" or " ...") closes the clause before
            last = out[-1]
            out[-1] = Clause(last.text, last.punctuation + mark)
    return out


def sentences(found: list[Clause]) -> list[list[Clause]]:
    """Clauses grouped into sentences (the last one may be unfinished)."""
    groups: list[list[Clause]] = [[]]
    for clause in found:
        groups[-1].append(clause)
        if clause.ends_sentence:
            groups.append([])
    return [g for g in groups if g]


def pieces(text: str, *, first_words: int = FIRST_PIECE_WORDS, max_words: int = MAX_PIECE_WORDS) -> list[list[Clause]]:
    """``text`` as the pieces to synthesise in order, each a list of clauses.

    The first sentence goes clause by clause (its first clause cut after ``first_words`` words if longer);
    every later sentence is one piece, unless it has more than ``max_words`` words, then it goes by clauses.
    """
    groups = sentences(clauses(text))
    out: list[list[Clause]] = []
    for i, sentence in enumerate(groups):
        if i > 0 and sum(c.words for c in sentence) <= max_words:
            out.append(sentence)
            continue
        for clause in sentence:
            out.append([clause])
    if out and out[0][0].words > first_words:
        head = out[0][0]
        words = head.text.split()
        out[0:1] = [[Clause(" ".join(words[:first_words]))], [Clause(" ".join(words[first_words:]), head.punctuation)]]
    return out
