"""The rules the runtime keeps whoever writes the words: order, budgets, the clock, and plain requests.

Both interviewers go through these, so a model can propose but never override them:

* questions are asked in the guide's order, and a ``verbatim`` question word for word;
* a question gets at most ``max_probes`` follow-ups, and none once the time left is too
  short for the questions still to come (:func:`probe_allowance`);
* the closing is always said, and only the runtime ends an interview;
* a participant who asks to stop, to skip, or what a question means is understood from
  their words alone (:func:`detect_intent`), so even a weak model or no model at all
  answers them correctly, and manipulative or abusive answers never reach a model's say.
"""

from __future__ import annotations

import itertools
import re
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

from runtime.interviewer.protocol import ReplyRequest, Utterance, word_count
from runtime.types import BlueprintContent, Position, StrEnum, UtteranceKind


class Intent(StrEnum):
    STOP = "stop"  # the participant wants to end the interview
    DECLINE = "decline"  # skip this question ("I'd rather not say")
    CLARIFY = "clarify"  # what does the question mean?
    MANIPULATION = "manipulation"  # tries to change the interviewer's role or rules
    ABUSIVE = "abusive"  # abuse aimed at the interviewer


def _rx(*patterns: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


_STOP_EXPLICIT = _rx(
    r"\b(stop|end|quit|finish|cancel) (the|this) (interview|conversation|survey|call|chat)\b",
    r"\bi (want|would like|'?d like|wish) to (stop|quit|end|finish)( (now|here|this))?\b",
    r"\b(can|could|may) we (please )?(stop|end|finish)( (now|here|this))?\b",
    r"\blet'?s (stop|end) (here|now|this)\b",
    r"\bi('m| am) (done|finished) with (this|the interview)\b",
    r"\bno more questions\b",
)
_STOP_SHORT = _rx(  # only when that is (almost) all the answer says
    r"^\W*(stop|quit|i quit|end|goodbye|bye)\W*$",
    r"\bi (have|need|got) to (go|leave)( now)?\b",
    r"\bi('m| am) (done|leaving)\b",
)
_DECLINE = _rx(
    r"^\W*(skip|pass|next( question)?|no comment|prefer not|rather not)\W*(please)?\W*$",
    r"\b(i'?d|i would) (rather|prefer) not (to )?(say|answer|talk about|share|discuss|go into)\b",
    r"\b(rather|prefer) not to (say|answer|talk about|share|discuss)\b",
    r"\bi (don'?t|do not) (want|wish) to (answer|talk about|say|share|discuss)\b",
    r"\b(can|could) we (please )?skip\b",
    r"\bskip (this|that|it|the question)\b",
    r"\bnext question,? please\b",
)
_CLARIFY = _rx(
    r"\bwhat do you mean\b",
    r"\bwhat does (that|this|it|the question) mean\b",
    r"\bi (don'?t|do not) (understand|get) (the|your|that|this) question\b",
    r"\b(can|could|would) you (please )?(rephrase|explain|clarify|repeat|say that again)\b",
    r"\bnot sure what you('re| are)? (mean|asking)\b",
    r"\bwhat are you asking\b",
    r"^\W*(what|sorry|pardon|huh)\W*$",
)
_MANIPULATION = _rx(
    r"\b(ignore|disregard|forget|override) (all |any |your |the |my |previous |prior |above |earlier |these )*"
    r"(instructions|rules|prompts?|guidelines|directions|programming)\b",
    r"\bsystem prompt\b",
    r"\byou are (now|no longer)\b",
    r"\b(act|pretend|roleplay|role-play) (as|to be|you are)\b",
    r"\bdeveloper mode\b|\bjailbreak\b|\bDAN\b",
    r"\bnew (instructions|rules|role)\b",
    r"\b(repeat|print|reveal|show) (me )?(your|the) (instructions|prompt|rules)\b",
)
_ABUSIVE = _rx(
    r"\b(fuck|screw) (you|off|this)\b",
    r"\byou('re| are) (an? )?(fucking )?(idiot|moron|stupid|useless|dumb|pathetic)\b",
    r"\bshut up\b",
    r"\b(stupid|dumb|useless) (bot|machine|robot|ai|computer)\b",
)


def detect_intent(answer: str) -> Intent | None:
    """What the participant is asking of the interview rather than answering, if anything.

    Patterns are precise on purpose (a false "stop" would end an interview): the loose
    ones apply only to short answers, so "I have to go to work at six every day" is an
    answer, "I have to go now" is not.
    """
    text = " ".join(answer.replace("\u2019", "'").split())
    words = word_count(text)
    if not text:
        return None
    if _MANIPULATION.search(text):
        return Intent.MANIPULATION
    if _ABUSIVE.search(text):
        return Intent.ABUSIVE
    if (words <= 15 and _STOP_EXPLICIT.search(text)) or (words <= 6 and _STOP_SHORT.search(text)):
        return Intent.STOP
    if words <= 12 and _DECLINE.search(text):
        return Intent.DECLINE
    if words <= 15 and _CLARIFY.search(text):
        return Intent.CLARIFY
    return None


_WANTS_TO_STOP = _rx(r"\b(stop|quit|end|finish|leave|go|goodbye|bye|done|enough|no more)\b")


def could_mean_stop(answer: str) -> bool:
    """A looser reading than :func:`detect_intent`: whether a model's "end the interview" is plausible at all."""
    return bool(_WANTS_TO_STOP.search(answer))


# --- the clock --------------------------------------------------------------------------


@dataclass(frozen=True)
class Allowance:
    allowed: bool
    reason: str | None = None  # why not


def exchange_seconds(request: ReplyRequest) -> float:
    """How long one question-and-answer takes in this interview.

    Measured between the asks seen so far (median of the gaps), so it adapts to a fast
    typist or a talkative caller; before any answer, an even share of the time limit
    for every question and one follow-up each.
    """
    asks = [e.at for e in request.transcript if e.role == "assistant" and e.kind is not None and e.kind.asks]
    gaps = [later - earlier for earlier, later in itertools.pairwise(asks) if later >= earlier]
    if gaps:
        return statistics.median(gaps)
    n = max(1, len(request.blueprint.questions))
    return (request.max_duration or 0.0) / (2 * n)


def probe_allowance(request: ReplyRequest) -> Allowance:
    """Whether a follow-up on the current question may be asked now.

    No: once its ``max_probes`` are used, or when the time left would not cover this
    follow-up, every question still to come and the closing at the pace measured so far.
    """
    question = request.question
    if question is None:
        return Allowance(False, "no current question")
    if request.position.probes_used >= question.max_probes:
        return Allowance(False, f"max_probes ({question.max_probes}) used")
    remaining = request.remaining
    if remaining is not None:
        per = exchange_seconds(request)
        still_to_ask = len(request.blueprint.questions) - request.position.question_index - 1
        needed = per * (still_to_ask + 1) + per / 2  # this follow-up, the rest, and the closing
        if remaining < needed:
            return Allowance(False, f"time: {remaining:.0f} s left, {needed:.0f} s needed for the rest")
    return Allowance(True)


def avoided_topics(request: ReplyRequest, text: str) -> list[str]:
    """Why ``text`` may not be said: it raises a topic the researcher said never to raise."""
    lowered = text.lower()
    avoid = request.blueprint.interviewer.avoid
    return [f"raises an avoided topic ({topic!r})" for topic in avoid if topic.lower() in lowered]


def repeats(request: ReplyRequest, text: str) -> list[str]:
    """Why ``text`` may not be said: the interviewer already said exactly that in this interview."""
    said = normalized(text)
    for line in request.transcript:
        if line.role == "assistant" and normalized(line.content) == said:
            return ["repeats what was already asked"]
    return []


# --- acknowledgements ---------------------------------------------------------------------

ACKNOWLEDGEMENTS = (
    "Thank you.",
    "Thanks, that's helpful.",
    "I see, thank you.",
    "Thanks for explaining.",
    "Okay, thank you.",
    "Understood, thanks.",
)


def last_acknowledgement(request: ReplyRequest) -> str | None:
    """The interviewer's most recent reaction phrase (the opening sentence of its last line)."""
    for line in reversed(request.transcript):
        if line.role == "assistant" and line.kind not in (UtteranceKind.FILLER, None):
            return first_sentence(line.content)
    return None


def fresh_acknowledgement(request: ReplyRequest, *, seed: int = 0) -> str:
    """A neutral acknowledgement that is not the one said last."""
    last = normalized(last_acknowledgement(request) or "")
    choices = [a for a in ACKNOWLEDGEMENTS if normalized(a) != last]
    return choices[(request.position.question_index + seed) % len(choices)]


def first_sentence(text: str) -> str:
    match = re.match(r"(.+?[.!?])(\s|$)", text.strip())
    return match.group(1) if match else text.strip()


def normalized(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


# --- the steps every interviewer takes the same way -----------------------------------------


def closed(bp: BlueprintContent) -> Position:
    return Position(question_index=len(bp.questions), probes_used=0)


def next_question(bp: BlueprintContent, position: Position) -> Position:
    return Position(question_index=position.question_index + 1)


def ask(
    bp: BlueprintContent, position: Position, *, prefix: str = "", meta: Mapping[str, object] | None = None
) -> Utterance:
    """The question at ``position``, word for word (or the closing after the last one)."""
    meta = meta or {}
    if position.question_index >= len(bp.questions):
        return Utterance(prefix + bp.closing, UtteranceKind.CLOSING, meta=meta)
    question = bp.questions[position.question_index]
    return Utterance(prefix + question.text, UtteranceKind.QUESTION, question.id, meta=meta)


def clarification(request: ReplyRequest) -> str:
    """What to say, without a model, to a participant who asks what the question means."""
    question = request.question
    assert question is not None
    return f"Of course. The question is: {question.text} There is no right or wrong answer; whatever comes to mind."


REDIRECT = "I'd like to keep our conversation on the interview."
NOT_POSSIBLE = "I can't help with that, but I'd like to hear your view."
STOP_CLOSING_PREFIX = "Of course, we can stop here."
DECLINE_PREFIX = "No problem, we can skip that one."
