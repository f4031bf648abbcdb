"""The scripted interviewer: what it says for each purpose and where it leaves the interview."""

from __future__ import annotations

import pytest

from runtime.interviewer import Purpose, ReplyPart, ReplyRequest, ScriptedInterviewer, TurnEnd, Utterance, word_count
from runtime.types import BlueprintContent, Position, Question, UtteranceKind

QUESTIONS = (
    Question(
        "q1", "What do you do?", probes=("What does a typical day look like?", "Who do you work with?"), max_probes=3
    ),
    Question("q2", "What do you enjoy?"),
    Question("q3", "What would you change?", max_probes=0),
    Question("q4", "Anything else?"),
)
BP = BlueprintContent(name="Work", greeting="Hello!", questions=QUESTIONS, closing="Thank you for your time.")
EMPTY = BlueprintContent(name="Empty", greeting="Hello!", questions=(), closing="Nothing to ask, goodbye.")
LONG = "I have been a nurse for ten years"


def plan(purpose: Purpose, position: Position, *, answer: str = "", bp: BlueprintContent = BP) -> list[ReplyPart]:
    """What the interviewer says: whole utterances, then exactly one TurnEnd."""
    parts = ScriptedInterviewer().plan(ReplyRequest(bp, position, purpose, answer=answer))
    assert isinstance(parts[-1], TurnEnd)
    assert all(isinstance(part, Utterance) for part in parts[:-1])
    return parts


def test_start_greets_and_asks_the_first_question() -> None:
    assert plan(Purpose.START, Position()) == [
        Utterance("Hello!", UtteranceKind.GREETING),
        Utterance("What do you do?", UtteranceKind.QUESTION, "q1"),
        TurnEnd(Position(0)),
    ]


def test_start_without_questions_goes_straight_to_the_closing() -> None:
    assert plan(Purpose.START, Position(), bp=EMPTY) == [
        Utterance("Hello!", UtteranceKind.GREETING),
        Utterance("Nothing to ask, goodbye.", UtteranceKind.CLOSING),
        TurnEnd(Position(0), completes=True),
    ]


def test_any_purpose_before_the_start_greets() -> None:
    for purpose in (Purpose.RESUME, Purpose.REMINDER, Purpose.ANSWER):
        parts = plan(purpose, Position(), answer=LONG)
        assert parts[0] == Utterance("Hello!", UtteranceKind.GREETING)
        assert parts[-1] == TurnEnd(Position(0))


def test_resume_repeats_the_current_question() -> None:
    pos = Position(1, probes_used=1)
    assert plan(Purpose.RESUME, pos) == [
        Utterance("Welcome back. What do you enjoy?", UtteranceKind.RESUME, "q2"),
        TurnEnd(pos),
    ]


def test_reminder_repeats_the_current_question_and_keeps_the_position() -> None:
    pos = Position(2, reminded=True)
    assert plan(Purpose.REMINDER, pos) == [
        Utterance("Are you still there? Take your time. What would you change?", UtteranceKind.REMINDER, "q3"),
        TurnEnd(pos),
    ]


@pytest.mark.parametrize("position", [Position(), Position(1, 1), Position(len(QUESTIONS))])
def test_time_up_says_the_closing_and_completes(position: Position) -> None:
    assert plan(Purpose.TIME_UP, position) == [
        Utterance(
            "We have reached the time we have for this interview. Thank you for your time.", UtteranceKind.CLOSING
        ),
        TurnEnd(Position(len(QUESTIONS)), completes=True),
    ]


def test_long_answer_acknowledges_and_asks_the_next_question() -> None:
    assert plan(Purpose.ANSWER, Position(0, probes_used=2), answer=LONG) == [
        Utterance("Thank you. What do you enjoy?", UtteranceKind.QUESTION, "q2"),
        TurnEnd(Position(1)),
    ]


def test_acknowledgements_rotate_from_question_to_question() -> None:
    acks = []
    for index in range(len(QUESTIONS)):
        first = plan(Purpose.ANSWER, Position(index), answer=LONG)[0]
        assert isinstance(first, Utterance)
        acks.append(next(a for a in ScriptedInterviewer.ACKNOWLEDGEMENTS if first.text.startswith(a)))

    assert acks == ["Thank you.", "Thanks, that's helpful.", "I see, thank you.", "Thank you."]


def test_answer_to_the_last_question_closes_and_completes() -> None:
    assert plan(Purpose.ANSWER, Position(3), answer=LONG) == [
        Utterance("Thank you. Thank you for your time.", UtteranceKind.CLOSING),
        TurnEnd(Position(4), completes=True),
    ]


def test_short_answers_get_the_questions_probes_in_order_then_the_generic_one() -> None:
    probes = []
    for used in range(3):
        utterance, end = plan(Purpose.ANSWER, Position(0, probes_used=used), answer="Nursing.")
        assert isinstance(utterance, Utterance)
        assert utterance.kind is UtteranceKind.PROBE
        assert utterance.question_id == "q1"
        assert end == TurnEnd(Position(0, probes_used=used + 1))
        probes.append(utterance.text)

    assert probes == ["What does a typical day look like?", "Who do you work with?", ScriptedInterviewer.GENERIC_PROBE]


def test_short_answer_moves_on_once_the_probes_are_used_up() -> None:
    assert plan(Purpose.ANSWER, Position(0, probes_used=3), answer="Nursing.") == [
        Utterance("Thank you. What do you enjoy?", UtteranceKind.QUESTION, "q2"),
        TurnEnd(Position(1)),
    ]
    assert plan(Purpose.ANSWER, Position(2), answer="Nothing.")[-1] == TurnEnd(Position(3))  # max_probes=0


def test_probe_threshold_is_six_words_by_default() -> None:
    five, six = "one two three four five", "one two three four five six"
    assert word_count(five) == 5

    short = plan(Purpose.ANSWER, Position(1), answer=five)[0]
    enough = plan(Purpose.ANSWER, Position(1), answer=six)[0]
    assert isinstance(short, Utterance)
    assert isinstance(enough, Utterance)
    assert short.kind is UtteranceKind.PROBE
    assert enough.kind is UtteranceKind.QUESTION


def test_probe_threshold_is_configurable() -> None:
    request = ReplyRequest(BP, Position(1), Purpose.ANSWER, answer="I enjoy the people")
    first = ScriptedInterviewer(probe_below_words=3).plan(request)[0]
    assert isinstance(first, Utterance)
    assert first.kind is UtteranceKind.QUESTION


def test_after_the_closing_any_reply_says_the_closing_again() -> None:
    done = Position(len(QUESTIONS))
    for purpose in (Purpose.ANSWER, Purpose.RESUME, Purpose.REMINDER):
        assert plan(purpose, done, answer=LONG) == [
            Utterance("Thank you for your time.", UtteranceKind.CLOSING),
            TurnEnd(done, completes=True),
        ]


async def test_reply_streams_the_same_parts_as_plan() -> None:
    interviewer = ScriptedInterviewer()
    request = ReplyRequest(BP, Position(), Purpose.START)
    parts = [part async for part in interviewer.reply(request)]
    assert parts == interviewer.plan(request)
