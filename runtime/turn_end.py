"""Has the participant finished? A verdict on the words so far, to choose how long a pause may last.

Sans-I/O and rule-based. Silence alone ends the turn in the middle of "I think the hardest part is…
[1.2 s] …the waiting". When the transcript at a pause is plainly unfinished, the driver waits up to
``max_silence_ms`` instead of the channel's short window (:meth:`runtime.endpointing.Endpointer.hold`);
when it reads as a complete answer, the short window stands. Turn-detector models exist (LiveKit's over
the transcript, Pipecat's Smart Turn over the audio), but none installs from a package registry without a
hub download, so these rules are the model; bench/turn_end.py measures what they cost and save.

Unfinished means, on the last sentence of the text:

* it ends on a comma, an ellipsis or a dash (Whisper writes those for a voice trailing off);
* its last word is one an English sentence does not end on: an article or possessive ("the", "my"), a
  conjunction ("and", "because"), a preposition that needs its object ("of", "to"), a filler ("um", "uh");
* it ends on a linking verb after a noun ("the hardest part is"; "I know what it is" stays complete);
* it ends on "such as", "kind of", "I mean", "like" after a comma;
* it is a rising list: two or more commas, no "and"/"or" before its last item, and no full stop after it
  ("apples, pears, plums");
* the recogniser punctuates (``TurnEndSettings.punctuated``: Whisper does; None: judged from the text,
  capitals or punctuation) and the last sentence of four words or more has no full stop, question or
  exclamation mark: Whisper ends what it hears as a finished sentence with one, and leaves a voice
  stopping mid-sentence open ("And Mr. John Dashwood had then leisure", "he was not an ill"). Short
  fragments ("10 of clubs") often come without one, hence the four words.

Anything else, or an empty transcript (nothing to wait for), is complete.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runtime.types import StrEnum

__all__ = ["TurnEndSettings", "Verdict", "judge", "silence_window"]


class Verdict(StrEnum):
    COMPLETE = "complete"
    UNFINISHED = "unfinished"


@dataclass(frozen=True)
class TurnEndSettings:
    #: Longest pause allowed inside an answer whose words so far are unfinished; at or below the channel's
    #: window the rules are off (silence alone decides).
    max_silence_ms: float = 2000.0
    #: Whether the recogniser writes sentence punctuation (Whisper: True; PocketSphinx: False); None: guess
    #: from each text.
    punctuated: bool | None = None


def _words(*groups: str) -> frozenset[str]:
    return frozenset(word for group in groups for word in group.split())


DANGLING = _words(
    # articles, determiners, possessives ("this", "any", "no", "his", "her" end answers: "I'd like this")
    "a an the my your our their its every",
    # conjunctions and subordinators
    "and or but nor because although unless whereas if than",
    # prepositions that need an object
    "of to at in into onto from with about for by as per via like",
    # fillers and hesitations
    "um umm uh uhh er erm ah eh mm",
    # a clause begun ("I can", "they would" end answers, so modals are not here)
    "i we they he she it's i'm i've i'd we're they're there's that's gonna wanna",
)
# Prepositions end sentences after a pronoun or a verb ("what it's like", "the one I looked at", "what I
# was looking for"), so after those (and after "it's", "they're") they are not taken as dangling.
AT_END_IF_AFTER_PRONOUN = _words("for with about at in like to from of")
PRONOUNS = _words("it that this there what who which whom them him her me us you i he she they we")
LINKING_VERBS = _words("is are was were be been being become became seems")
TRAILING_PHRASES = (("such", "as"), ("kind", "of"), ("sort", "of"), ("i", "mean"), ("you", "know", "what"))
_WORD = re.compile(r"[a-z']+")
_SENTENCE_END = re.compile(r"[.?!]+\s+")
_ABBREVIATION = re.compile(r"\b(Mr|Mrs|Ms|Dr|St|Prof|Jr|Sr|vs|etc|e\.g|i\.e)\.", re.IGNORECASE)
_PUNCTUATED = re.compile(r"[A-Z.,?!;:]")


def judge(text: str, punctuated: bool | None = None) -> Verdict:
    """Is ``text`` (the transcript so far, as a recogniser writes it) an answer that has ended?"""
    stripped = text.strip()
    if not stripped:
        return Verdict.COMPLETE
    if stripped.endswith((",", "...", "…", "-", "\u2014", "\u2013", ";", ":")):
        return Verdict.UNFINISHED
    if stripped.endswith(("?", "!")):
        return Verdict.COMPLETE
    sentence = _SENTENCE_END.split(_ABBREVIATION.sub(r"\1", stripped))[-1]
    words = _WORD.findall(sentence.lower())
    if not words:
        return Verdict.COMPLETE
    last, before = words[-1], words[-2] if len(words) > 1 else ""
    stranded = last in AT_END_IF_AFTER_PRONOUN and (before in PRONOUNS or before.endswith(("ing", "ed", "'s", "'re")))
    if last in DANGLING and not stranded:
        return Verdict.UNFINISHED
    if last in LINKING_VERBS and before and before not in PRONOUNS:
        return Verdict.UNFINISHED
    if any(tuple(words[-len(p) :]) == p for p in TRAILING_PHRASES):
        return Verdict.UNFINISHED
    if _rising_list(sentence):
        return Verdict.UNFINISHED
    if punctuated is None:
        punctuated = bool(_PUNCTUATED.search(stripped))
    if punctuated and not sentence.endswith((".", "?", "!")) and len(words) >= 4:
        return Verdict.UNFINISHED
    return Verdict.COMPLETE


def _rising_list(sentence: str) -> bool:
    if sentence.endswith((".", "?", "!")):
        return False  # the recogniser heard the list close ("Eight of spades, four of clubs, seven of hearts.")
    items = [item.strip() for item in sentence.split(",")]
    if len(items) < 3:
        return False
    last_item = _WORD.findall(items[-1].lower())
    return bool(last_item) and last_item[0] not in ("and", "or") and len(last_item) <= 3


def silence_window(text: str, base_ms: float, settings: TurnEndSettings) -> float:
    """How long the current pause may last before the turn ends, given the words so far."""
    if judge(text, settings.punctuated) is Verdict.UNFINISHED:
        return max(base_ms, settings.max_silence_ms)
    return base_ms
