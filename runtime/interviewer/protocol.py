"""What every interviewer is given and what it gives back.

:meth:`Interviewer.reply` is an async iterator of :class:`Delta` pieces (streamed text,
shown in chat as ``message.delta`` frames) and whole :class:`Utterance` s (each one
stored as a message and then sent or spoken), ending with exactly one
:class:`TurnEnd` that says where the interview stands afterwards.

The runtime never trusts an interviewer with timing: the driver measures how long
the reply took (the ``llm`` stage) around the iterator.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime.types import BlueprintContent, EndReason, Position, Question, StrEnum, UtteranceKind


class Purpose(StrEnum):
    """Why a reply is being asked for."""

    START = "start"  # first connection: greet and ask the first question
    ANSWER = "answer"  # the participant answered; react and move on
    RESUME = "resume"  # the participant reconnected; pick up where we were
    REMINDER = "reminder"  # half the idle timeout passed in silence
    REASK = "reask"  # the current question was cut off before it was heard: ask it again
    TIME_UP = "time_up"  # max duration reached: close politely


@dataclass(frozen=True)
class Exchange:
    """One line of the interview as the participant experienced it (an interrupted line: the words played)."""

    role: str  # "assistant" or "user"
    content: str
    question_id: str | None = None  # assistant: the question it belongs to; user: the question it answers
    kind: UtteranceKind | None = None
    at: float = 0.0  # when it was said


@dataclass(frozen=True)
class ReplyRequest:
    blueprint: BlueprintContent
    position: Position
    purpose: Purpose
    answer: str = ""  # the participant's words since the question was put (ANSWER only)
    transcript: Sequence[Exchange] = ()  # so far, oldest first
    now: float = 0.0
    started_at: float | None = None  # the run's start: with max_duration, the clock the runtime keeps
    max_duration: float | None = None
    speech: bool = False  # voice: yield each sentence as soon as it is ready, for synthesis

    @property
    def question(self) -> Question | None:
        """The question being asked, if any."""
        questions = self.blueprint.questions
        return questions[self.position.question_index] if 0 <= self.position.question_index < len(questions) else None

    @property
    def remaining(self) -> float | None:
        """Seconds left before the time limit, if there is one."""
        if self.started_at is None or self.max_duration is None:
            return None
        return self.started_at + self.max_duration - self.now


@dataclass(frozen=True)
class Delta:
    """A streamed piece of the next utterance's text (a preview: the stored utterance is what counts).

    ``restart``: drop what was previewed so far (the interviewer is writing the reply again).
    """

    text: str
    restart: bool = False


@dataclass(frozen=True)
class Utterance:
    text: str
    kind: UtteranceKind
    question_id: str | None = None
    # Stored with the message: how it was made (model, prompt_version, action, fallback, usage, ...).
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class TurnEnd:
    position: Position
    completes: bool = False  # the interview is over once these utterances are delivered
    end_reason: EndReason | None = None  # why, if not simply completed (e.g. the participant asked to stop)
    flags: tuple[str, ...] = ()  # what the answer was flagged as (off_topic, manipulation, abusive)
    # The turn's record (usage, ...) when its last utterance was already out before it was known:
    # the driver adds it to the last message of the turn.
    record: Mapping[str, Any] = field(default_factory=dict, compare=False)


ReplyPart = Delta | Utterance | TurnEnd


class Interviewer(abc.ABC):
    @abc.abstractmethod
    def reply(self, request: ReplyRequest) -> AsyncIterator[ReplyPart]:
        """Yield the next utterances, ending with exactly one :class:`TurnEnd`."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what the interviewer holds (connections to a model)."""

    async def prepare(self, request: ReplyRequest) -> None:  # noqa: B027 - optional hook
        """The interview is starting (``request`` is its START): get ready for its first answer, e.g. warm a
        model server's prompt cache while the participant reads the greeting. Failures are the hook's own."""


def word_count(text: str) -> int:
    return len(text.split())
