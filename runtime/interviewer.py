"""What the interviewer says next, given the guide, where the interview stands, and what was said.

The :class:`Interviewer` protocol is deliberately streaming: :meth:`Interviewer.reply`
is an async iterator of :class:`Delta` pieces and whole :class:`Utterance` s, ending
with one :class:`TurnEnd` that says where the interview stands afterwards. The
scripted default yields whole utterances only; an LLM-backed interviewer can
yield deltas as tokens arrive and the driver forwards them as ``message.delta``.

The runtime never trusts an interviewer with timing: it measures how long the
reply took (the ``llm`` stage) around the iterator.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from runtime.types import BlueprintContent, Position, StrEnum, UtteranceKind


class Purpose(StrEnum):
    """Why a reply is being asked for."""

    START = "start"  # first connection: greet and ask the first question
    ANSWER = "answer"  # the participant answered; react and move on
    RESUME = "resume"  # the participant reconnected; pick up where we were
    REMINDER = "reminder"  # half the idle timeout passed in silence
    TIME_UP = "time_up"  # max duration reached: close politely


@dataclass(frozen=True)
class ReplyRequest:
    blueprint: BlueprintContent
    position: Position
    purpose: Purpose
    answer: str = ""  # the participant's words since the last question (ANSWER only)
    transcript: Sequence[tuple[str, str]] = ()  # (role, content) so far, oldest first


@dataclass(frozen=True)
class Delta:
    """A streamed piece of the next utterance's text."""

    text: str


@dataclass(frozen=True)
class Utterance:
    text: str
    kind: UtteranceKind
    question_id: str | None = None


@dataclass(frozen=True)
class TurnEnd:
    position: Position
    completes: bool = False  # the interview is over once these utterances are delivered


ReplyPart = Delta | Utterance | TurnEnd


class Interviewer(abc.ABC):
    @abc.abstractmethod
    def reply(self, request: ReplyRequest) -> AsyncIterator[ReplyPart]:
        """Yield the next utterances, ending with exactly one :class:`TurnEnd`."""


def word_count(text: str) -> int:
    return len(text.split())


class ScriptedInterviewer(Interviewer):
    """Deterministic: greeting, questions in order, probes for short answers, closing.

    An answer shorter than ``probe_below_words`` words earns a probe (the
    question's own probes in order, then a generic one) until the question's
    ``max_probes`` is used up.
    """

    GENERIC_PROBE = "Could you tell me a little more about that?"
    ACKNOWLEDGEMENTS = ("Thank you.", "Thanks, that's helpful.", "I see, thank you.")

    def __init__(self, *, probe_below_words: int = 6) -> None:
        self.probe_below_words = probe_below_words

    async def reply(self, request: ReplyRequest) -> AsyncIterator[ReplyPart]:
        for part in self.plan(request):
            yield part

    def plan(self, request: ReplyRequest) -> list[ReplyPart]:
        bp, pos = request.blueprint, request.position
        questions = bp.questions
        if request.purpose is Purpose.TIME_UP:
            text = f"We have reached the time we have for this interview. {bp.closing}"
            return [Utterance(text, UtteranceKind.CLOSING), TurnEnd(_closed(bp, pos), completes=True)]
        if request.purpose is Purpose.START or not pos.started:
            first = Position(question_index=0)
            return [
                Utterance(bp.greeting, UtteranceKind.GREETING),
                *self._ask(bp, first, prefix=""),
            ]
        if pos.question_index >= len(questions):  # closing already said; say it again
            return [Utterance(bp.closing, UtteranceKind.CLOSING), TurnEnd(pos, completes=True)]
        current = questions[pos.question_index]
        if request.purpose is Purpose.RESUME:
            return [
                Utterance(f"Welcome back. {current.text}", UtteranceKind.RESUME, current.id),
                TurnEnd(pos),
            ]
        if request.purpose is Purpose.REMINDER:
            text = f"Are you still there? Take your time. {current.text}"
            return [Utterance(text, UtteranceKind.REMINDER, current.id), TurnEnd(pos)]
        # ANSWER
        if word_count(request.answer) < self.probe_below_words and pos.probes_used < current.max_probes:
            probe = current.probes[pos.probes_used] if pos.probes_used < len(current.probes) else self.GENERIC_PROBE
            return [
                Utterance(probe, UtteranceKind.PROBE, current.id),
                TurnEnd(Position(pos.question_index, pos.probes_used + 1)),
            ]
        ack = self.ACKNOWLEDGEMENTS[pos.question_index % len(self.ACKNOWLEDGEMENTS)]
        following = Position(question_index=pos.question_index + 1)
        if following.question_index >= len(questions):
            return [Utterance(f"{ack} {bp.closing}", UtteranceKind.CLOSING), TurnEnd(following, completes=True)]
        return self._ask(bp, following, prefix=f"{ack} ")

    @staticmethod
    def _ask(bp: BlueprintContent, pos: Position, *, prefix: str) -> list[ReplyPart]:
        if not bp.questions:
            return [Utterance(bp.closing, UtteranceKind.CLOSING), TurnEnd(_closed(bp, pos), completes=True)]
        question = bp.questions[pos.question_index]
        return [Utterance(prefix + question.text, UtteranceKind.QUESTION, question.id), TurnEnd(pos)]


def _closed(bp: BlueprintContent, pos: Position) -> Position:
    return Position(question_index=len(bp.questions), probes_used=0)
