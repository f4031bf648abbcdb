"""The deterministic interviewer: the guide read in order, with probes for short answers.

It is the default (``interviewer.type: "scripted"``) and the LLM interviewer's fallback
for any turn the model cannot serve, so it answers every request the runtime can make,
keeps every rule in :mod:`runtime.interviewer.policy`, and needs no network.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from runtime.interviewer import policy
from runtime.interviewer.policy import Intent
from runtime.interviewer.protocol import Interviewer, Purpose, ReplyPart, ReplyRequest, TurnEnd, Utterance, word_count
from runtime.types import EndReason, Position, UtteranceKind


class ScriptedInterviewer(Interviewer):
    """Greeting, questions in order, probes for short answers, closing.

    An answer shorter than ``probe_below_words`` words earns a probe (the question's
    own probes in order, then a generic one) while :func:`~policy.probe_allowance`
    allows one: within the question's ``max_probes`` and while the clock leaves time
    for the questions still to come.
    """

    GENERIC_PROBE = "Could you tell me a little more about that?"
    ACKNOWLEDGEMENTS = policy.ACKNOWLEDGEMENTS[:3]

    def __init__(self, *, probe_below_words: int = 6) -> None:
        self.probe_below_words = probe_below_words

    async def reply(self, request: ReplyRequest) -> AsyncIterator[ReplyPart]:
        for part in self.plan(request):
            yield part

    def plan(self, request: ReplyRequest) -> list[ReplyPart]:
        bp, pos = request.blueprint, request.position
        if request.purpose is Purpose.TIME_UP:
            text = f"We have reached the time we have for this interview. {bp.closing}"
            return [Utterance(text, UtteranceKind.CLOSING), TurnEnd(policy.closed(bp), completes=True)]
        if request.purpose is Purpose.START or not pos.started:
            return [Utterance(bp.greeting, UtteranceKind.GREETING), *self._ask(request, Position(question_index=0))]
        question = request.question
        if question is None:  # closing already said; say it again
            return [Utterance(bp.closing, UtteranceKind.CLOSING), TurnEnd(pos, completes=True)]
        if request.purpose is Purpose.RESUME:
            return [Utterance(f"Welcome back. {question.text}", UtteranceKind.RESUME, question.id), TurnEnd(pos)]
        if request.purpose is Purpose.REMINDER:
            text = f"Are you still there? Take your time. {question.text}"
            return [Utterance(text, UtteranceKind.REMINDER, question.id), TurnEnd(pos)]
        if request.purpose is Purpose.REASK:
            return [Utterance(question.text, UtteranceKind.REASK, question.id), TurnEnd(pos)]
        return self.answer(request)

    def answer(
        self, request: ReplyRequest, *, intent: Intent | None = None, acknowledge: bool = True
    ) -> list[ReplyPart]:
        """The reply to an answer; also the LLM interviewer's fallback for one turn (``acknowledge=False``
        when it has already said something this turn)."""
        intent = policy.detect_intent(request.answer) if intent is None else intent
        handled = self.plain_request(request, intent)
        if handled is not None:
            return handled
        bp, pos = request.blueprint, request.position
        question = request.question
        assert question is not None
        short = word_count(request.answer) < self.probe_below_words
        if short and policy.probe_allowance(request).allowed:
            probe = question.probes[pos.probes_used] if pos.probes_used < len(question.probes) else self.GENERIC_PROBE
            return [
                Utterance(probe, UtteranceKind.PROBE, question.id),
                TurnEnd(Position(pos.question_index, pos.probes_used + 1)),
            ]
        ack = self.ACKNOWLEDGEMENTS[pos.question_index % len(self.ACKNOWLEDGEMENTS)]
        return self._ask(request, policy.next_question(bp, pos), prefix=f"{ack} " if acknowledge else "")

    def plain_request(self, request: ReplyRequest, intent: Intent | None) -> list[ReplyPart] | None:
        """The reply to a participant who asks to stop or skip, asks what the question means, or tries to
        steer the interviewer: the same with or without a model. None for an ordinary answer."""
        bp, pos = request.blueprint, request.position
        question = request.question
        assert question is not None
        if intent is Intent.STOP:
            text = f"{policy.STOP_CLOSING_PREFIX} {bp.closing}"
            return [
                Utterance(text, UtteranceKind.CLOSING, meta={"action": "end_interview"}),
                TurnEnd(policy.closed(bp), completes=True, end_reason=EndReason.PARTICIPANT_ENDED),
            ]
        if intent is Intent.DECLINE:
            meta = {"action": "skip", "declined_question_id": question.id}
            return self._ask(request, policy.next_question(bp, pos), prefix=f"{policy.DECLINE_PREFIX} ", meta=meta)
        if intent is Intent.CLARIFY:
            return [
                Utterance(
                    policy.clarification(request), UtteranceKind.REPHRASE, question.id, meta={"action": "rephrase"}
                ),
                TurnEnd(pos),
            ]
        if intent in (Intent.MANIPULATION, Intent.ABUSIVE):
            lead = policy.NOT_POSSIBLE if intent is Intent.MANIPULATION else policy.REDIRECT
            meta = {"action": "redirect", "flag": intent.value}
            return [
                Utterance(f"{lead} {question.text}", UtteranceKind.REDIRECT, question.id, meta=meta),
                TurnEnd(pos, flags=(intent.value,)),
            ]
        return None

    @staticmethod
    def _ask(
        request: ReplyRequest, pos: Position, *, prefix: str = "", meta: Mapping[str, object] | None = None
    ) -> list[ReplyPart]:
        bp = request.blueprint
        utterance = policy.ask(bp, pos, prefix=prefix, meta=meta)
        if utterance.kind is UtteranceKind.CLOSING:
            return [utterance, TurnEnd(policy.closed(bp), completes=True)]
        return [utterance, TurnEnd(pos)]
