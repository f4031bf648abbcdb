"""A resumed interview's position, caught up with the transcript (runtime/recovery.py): a process that died
between storing a reply and storing the position must not make the next one ask the answered question again."""

from __future__ import annotations

from runtime.recovery import caught_up
from runtime.types import BlueprintContent, Position, Question, UtteranceKind

BP = BlueprintContent(
    "guide",
    "Hello.",
    (Question("q1", "Job?", ("Why?", "More?"), 2), Question("q2", "Home?", (), 0), Question("q3", "Food?", (), 0)),
    "Bye.",
)
GREETING = (UtteranceKind.GREETING, None)


def q(qid: str) -> tuple[UtteranceKind, str]:
    return UtteranceKind.QUESTION, qid


def probe(qid: str) -> tuple[UtteranceKind, str]:
    return UtteranceKind.PROBE, qid


def test_a_stored_position_the_transcript_agrees_with_is_kept_with_its_reminder() -> None:
    stored = Position(1, 0, reminded=True)
    said = [GREETING, q("q1"), q("q2"), (UtteranceKind.REMINDER, "q2")]
    assert caught_up(BP, stored, said) == stored
    assert caught_up(BP, Position(), []) == Position()
    assert caught_up(BP, Position(), [GREETING]) == Position()  # greeted, first question never said


def test_the_next_question_said_but_not_recorded_moves_the_position_to_it() -> None:
    assert caught_up(BP, Position(0, 1), [GREETING, q("q1"), probe("q1"), q("q2")]) == Position(1, 0)
    assert caught_up(BP, Position(-1), [GREETING, q("q1")]) == Position(0, 0)


def test_a_probe_said_but_not_recorded_counts_as_used() -> None:
    assert caught_up(BP, Position(0, 0), [GREETING, q("q1"), probe("q1")]) == Position(0, 1)
    assert caught_up(BP, Position(0, 1), [GREETING, q("q1"), probe("q1"), probe("q1")]) == Position(0, 2)
    # a resume re-asks without resetting the probes
    said = [GREETING, q("q1"), probe("q1"), (UtteranceKind.RESUME, "q1"), probe("q1")]
    assert caught_up(BP, Position(0, 1), said) == Position(0, 2)


def test_a_closing_said_but_not_recorded_closes_the_position() -> None:
    said = [GREETING, q("q1"), q("q2"), q("q3"), (UtteranceKind.CLOSING, None)]
    assert caught_up(BP, Position(2, 0), said) == Position(3, 0)


def test_it_never_moves_back() -> None:
    assert caught_up(BP, Position(2, 0), [GREETING, q("q1"), q("q2")]) == Position(2, 0)
    assert caught_up(BP, Position(3, 0), [GREETING, q("q1"), (UtteranceKind.CLOSING, None)]) == Position(3, 0)
