"""The model's words while they stream: previewed in chat, spoken sentence by sentence in voice.

Nothing is let through before it is known to be sayable: the action must be known
(a follow-up the runtime would overrule, or an end of interview, is never streamed),
a chat preview stops at the first character that could never be said, and a voice
sentence is checked whole (:mod:`runtime.interviewer.speech`) before it becomes an
utterance. One question per turn: what a model writes after its question is not said.
"""

from __future__ import annotations

from typing import Any, Protocol

from runtime.interviewer import policy, speech
from runtime.interviewer.decisions import Action
from runtime.interviewer.policy import Allowance
from runtime.interviewer.protocol import Delta, ReplyPart, ReplyRequest, Utterance
from runtime.types import Question, UtteranceKind


class SpeakingTurn(Protocol):
    """What of a turn the stream reads and updates."""

    request: ReplyRequest
    allowance: Allowance
    clarify: bool
    question: Question | None
    spoken: list[Utterance]  # yielded this turn (voice)
    previewed: str  # sent as deltas this turn (chat)

    def base_meta(self) -> dict[str, Any]: ...


class LiveText:
    """Previews (chat) or speaks (voice) the model's words while they stream, once they are known to be sayable."""

    def __init__(self, turn: SpeakingTurn, action: Action) -> None:
        self.turn = turn
        self.action = action
        self.splitter = speech.SentenceSplitter()
        self.text = ""
        self.broken = False  # something unsayable arrived: stop previewing, let the decision decide
        self.open = self._streamable()

    def _streamable(self) -> bool:
        if self.action is Action.END_INTERVIEW:
            return False
        if self.action is Action.FOLLOW_UP and not self.turn.allowance.allowed:
            return False
        return not (self.turn.clarify and self.action is not Action.REPHRASE)

    def feed(self, text: str) -> list[ReplyPart]:
        if not self.open or self.broken:
            return []
        self.text += text
        if not self.turn.request.speech:
            if not self.turn.previewed:
                text = text.lstrip()
                if not text:
                    return []
            if not speech.safe_prefix(self.text) or "<" in self.text:
                self.broken = True
                return []
            self.turn.previewed += text
            return [Delta(text)]
        return self._sentences(list(self.splitter.feed(text)))

    def finish(self) -> list[ReplyPart]:
        if not self.open or self.broken or not self.turn.request.speech:
            return []
        return self._sentences(self.splitter.flush(), last=True)

    def _sentences(self, sentences: list[str], *, last: bool = False) -> list[ReplyPart]:
        turn, out = self.turn, list[ReplyPart]()
        question = turn.question
        assert question is not None
        for sentence in sentences:
            sentence = speech.clean(sentence)
            asks = "?" in sentence
            if self.action is Action.FOLLOW_UP and asks:
                found = (
                    speech.question_problems(sentence)
                    + policy.avoided_topics(turn.request, sentence)
                    + policy.repeats(turn.request, sentence)
                )
                kind = UtteranceKind.PROBE
            elif self.action is Action.REPHRASE:
                found = speech.question_problems(sentence) if asks else speech.problems(sentence, max_words=30)
                kind = UtteranceKind.REPHRASE
            elif self.action is Action.REDIRECT:
                found = speech.problems(sentence, max_words=30) + (["a question"] if asks else [])
                kind = UtteranceKind.REDIRECT
            elif self.action is Action.FOLLOW_UP:  # what leads into the follow-up question
                found = speech.acknowledgement_problems(sentence, max_words=30)
                kind = UtteranceKind.ACKNOWLEDGEMENT
            else:
                found = speech.acknowledgement_problems(sentence)
                kind = UtteranceKind.ACKNOWLEDGEMENT
            if found or (kind is UtteranceKind.ACKNOWLEDGEMENT and len(turn.spoken) >= 2):
                self.broken = True
                return out
            if kind is UtteranceKind.ACKNOWLEDGEMENT and self.action in (Action.NEXT_QUESTION, Action.SKIP):
                last_ack = policy.last_acknowledgement(turn.request)
                if not turn.spoken and policy.normalized(sentence) == policy.normalized(last_ack or ""):
                    self.broken = True
                    return out
            utterance = Utterance(sentence, kind, question.id, meta={**turn.base_meta(), "action": self.action.value})
            turn.spoken.append(utterance)
            out.append(utterance)
            if asks:  # one question per turn: what follows it is not said
                self.broken = True
                break
        return out
