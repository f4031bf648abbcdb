"""Is an answer finished? The rules of runtime/turn_end.py on what recognisers write."""

from __future__ import annotations

import pytest

from runtime.turn_end import TurnEndSettings, Verdict, judge, silence_window

UNFINISHED = [
    "I think the hardest part is...",  # Whisper's ellipsis for a voice trailing off
    "I think the hardest part is",  # a linking verb after a noun (PocketSphinx: no punctuation)
    "So I went to the",
    "and then because",
    "We moved here because",
    "My favourite thing is, um",
    "Um",
    "I like the people and",
    "I like apples, pears, plums",  # a rising list
    "We have dogs, cats,",
    "It was kind of",
    "There are things such as",
    "What I really want is to",
    "I mean, the main reason is my",
    "I was going to say -",
    "And Mr. John Dashwood had then leisure",  # Whisper, no full stop: the voice stopped mid-sentence
    "Mr. John Dashwood had then leisure to consider how much there",
]
COMPLETE = [
    "",
    "Yes.",
    "No.",
    "I work as a nurse at the city hospital.",
    "i live in a small town near the coast",  # PocketSphinx never punctuates: only the words count
    "10 of clubs",  # short fragments come without a full stop
    "Thank you.",
    "I know what it is.",
    "That's what I was looking for.",
    "I'm not sure what it's like.",
    "That's the one I looked at.",
    "I like apples, pears and plums.",
    "Eight of spades, four of clubs, seven of hearts.",  # a list the recogniser heard closed
    "Why do you ask?",
    "Go forward 10 meters.",
    "I think I can.",
    "I'd like this.",
    "I don't have any.",
]


@pytest.mark.parametrize("text", UNFINISHED)
def test_unfinished(text: str) -> None:
    assert judge(text) is Verdict.UNFINISHED


@pytest.mark.parametrize("text", COMPLETE)
def test_complete(text: str) -> None:
    assert judge(text) is Verdict.COMPLETE


def test_a_punctuating_recogniser_leaves_unfinished_sentences_open() -> None:
    assert judge("he was not an ill", punctuated=True) is Verdict.UNFINISHED  # Whisper, unsure: lower case
    assert judge("he was not an ill", punctuated=False) is Verdict.COMPLETE  # PocketSphinx: words only
    assert judge("he was not an ill") is Verdict.COMPLETE  # guessed: no capitals, no punctuation
    assert judge("10 of clubs", punctuated=True) is Verdict.COMPLETE  # a short fragment
    assert judge("He was not an ill-disposed young man.", punctuated=True) is Verdict.COMPLETE


def test_abbreviations_do_not_end_sentences() -> None:
    assert judge("And Mr. John.") is Verdict.COMPLETE  # one sentence, with its full stop
    assert judge("I asked Dr. Smith and") is Verdict.UNFINISHED


def test_the_last_sentence_decides() -> None:
    assert judge("I work at the hospital. And I") is Verdict.UNFINISHED
    assert judge("I work at the hospital and. I like it.") is Verdict.COMPLETE


def test_silence_window() -> None:
    settings = TurnEndSettings(max_silence_ms=2000)
    assert silence_window("I went to the", 500, settings) == 2000
    assert silence_window("I went to the shop.", 500, settings) == 500
    assert silence_window("I went to the", 2500, settings) == 2500  # never shorter than the channel's window
