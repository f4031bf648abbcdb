"""The AI interviewer: a language model proposes the next line, the runtime disposes.

For each answer the model is asked (one streamed call, prompt in
:mod:`runtime.interviewer.prompt`) to propose an action and its words; everything
else is the runtime's (:mod:`runtime.interviewer.policy`): which question comes next,
their wording, the follow-up budget and the clock, the closing, and what a
participant's plain requests mean. The greeting, reminders, resumptions and the
closing never go to the model.

Guarantees, whatever the model or the server does:

* Nothing is said that failed :mod:`runtime.interviewer.speech`'s checks: no JSON,
  tool syntax, markup, reasoning text, praise or leading questions.
* Every turn ends with a spoken next step within the turn's deadline (voice about
  4 s, chat about 15 s): 429 and 5xx answers are retried with backoff inside it, an
  unusable decision is retried once with the reason, and after that (or when the
  deadline passes, or the stream stalls) the scripted interviewer's step is taken,
  recorded as ``fallback: true`` with why.
* A model may end the interview only when the participant's words could mean it.

Streaming: in chat the model's words are previewed as :class:`Delta` pieces once
the action is known and the text so far is clean; in voice (``request.speech``)
each sentence is an :class:`Utterance` as soon as it is complete and checked, so
synthesis starts on the first sentence while the model writes the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from runtime.interviewer import policy, prompt, speech
from runtime.interviewer.decisions import Action, Decision, DecisionError, FieldReader, parse_decision
from runtime.interviewer.policy import Allowance, Intent
from runtime.interviewer.protocol import (
    Delta,
    Interviewer,
    Purpose,
    ReplyPart,
    ReplyRequest,
    TurnEnd,
    Utterance,
)
from runtime.interviewer.scripted import ScriptedInterviewer
from runtime.interviewer.streaming import LiveText
from runtime.llm import (
    BadRequest,
    ChatModel,
    ChatRequest,
    LLMError,
    Prices,
    RateLimited,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from runtime.types import EndReason, Position, StrEnum, UtteranceKind

log = logging.getLogger("vivavoce.interviewer")


class ToolMode(StrEnum):
    AUTO = "auto"  # tools; if the server refuses them, a JSON object from then on
    TOOLS = "tools"
    JSON = "json"


@dataclass(frozen=True)
class LLMSettings:
    default_model: str = "default"
    chat_deadline_s: float = 15.0  # per turn: the participant has something to read by then
    voice_deadline_s: float = 4.0  # per turn: fillers cover the wait
    chunk_timeout_s: float = 30.0  # a stream silent this long has stalled
    max_tokens: int = 200
    tool_mode: ToolMode = ToolMode.AUTO
    seed: int | None = None
    # Send the first question's prompt (one token back) when an interview starts, so a server with a prompt
    # cache (llama.cpp) has read the rules and the study's settings before the first answer: a small local
    # model needs seconds for that. Off by default: on a hosted API it is a paid call per interview.
    warm_up: bool = False


class _Unusable(Exception):
    """This attempt gave nothing usable; the message says why."""


@dataclass
class _Call:
    """What one turn's model calls produced so far."""

    sent_at: float
    usages: list[Usage] = field(default_factory=list)
    attempts: int = 0
    ttft_ms: float | None = None
    reasons: list[str] = field(default_factory=list)


class LLMInterviewer(Interviewer):
    def __init__(
        self, model: ChatModel, *, settings: LLMSettings = LLMSettings(), prices: Prices | None = None
    ) -> None:
        self.model = model
        self.settings = settings
        self.prices = prices or Prices()
        self.scripted = ScriptedInterviewer()
        self._no_tools: set[str] = set()  # models whose server refused tools: JSON from then on

    async def aclose(self) -> None:
        await self.model.aclose()

    def model_name(self, request: ReplyRequest) -> str:
        return request.blueprint.interviewer.model or self.settings.default_model

    async def prepare(self, request: ReplyRequest) -> None:
        if not self.settings.warm_up or not request.blueprint.questions:
            return
        # the first answer's request as it will be sent, but for the answer itself: its tools and system prompt
        first = replace(request, position=Position(0), purpose=Purpose.ANSWER, answer="")
        chat = _Turn(self, first, clarify=False).chat_request(None, max_tokens=1)
        try:
            async for _ in self.model.stream(chat, timeout=self.settings.chunk_timeout_s * 2):
                pass
        except LLMError as exc:
            log.info("warming the model's prompt cache failed: %s", exc)

    async def reply(self, request: ReplyRequest) -> AsyncIterator[ReplyPart]:
        if request.purpose is not Purpose.ANSWER or request.question is None:
            for part in self.scripted.plan(request):
                yield part
            return
        intent = policy.detect_intent(request.answer)
        if intent is not None and intent is not Intent.CLARIFY:  # the runtime's to answer, not the model's
            for part in self.scripted.plain_request(request, intent) or ():
                yield _with_meta(part, {"rule": intent.value})
            return
        async for part in _Turn(self, request, clarify=intent is Intent.CLARIFY).run():
            yield part


class _Turn:
    """One answer's reply: up to two usable-decision attempts inside one deadline, then the fallback."""

    def __init__(self, owner: LLMInterviewer, request: ReplyRequest, *, clarify: bool) -> None:
        self.owner = owner
        self.request = request
        self.clarify = clarify
        self.question = request.question
        assert self.question is not None
        self.model = owner.model_name(request)
        self.allowance: Allowance = policy.probe_allowance(request)
        deadline_s = owner.settings.voice_deadline_s if request.speech else owner.settings.chat_deadline_s
        self.deadline = time.monotonic() + deadline_s
        self.call = _Call(sent_at=time.monotonic())
        self.spoken: list[Utterance] = []  # utterances already yielded this turn (voice)
        self.tail: list[ReplyPart] = []  # voice: the last streamed sentence, said with the turn's record
        self.previewed = ""  # text already sent as deltas (chat)

    def base_meta(self) -> dict[str, Any]:
        return {"model": self.model, "prompt_version": prompt.PROMPT_VERSION}

    async def run(self) -> AsyncIterator[ReplyPart]:
        correction: str | None = None
        for attempt in range(2):
            try:
                decision: Decision | None = None
                async for part in self._attempt(correction):
                    if isinstance(part, Decision):
                        decision = part
                    else:
                        yield part
                assert decision is not None
                for part in self._dispose(decision):
                    yield part
                return
            except (_Unusable, DecisionError) as exc:
                self.call.reasons.append(str(exc))
                log.info("interviewer turn attempt %d unusable (%s): %s", attempt + 1, self.model, exc)
                if self.spoken or isinstance(exc, _Unusable) or self._left() < 0.5:
                    break  # already said something, or out of time: no second attempt
                correction = str(exc)
                if self.previewed:  # the preview was of a reply that will not be sent
                    self.previewed = ""
                    yield Delta("", restart=True)
        if self.previewed:
            yield Delta("", restart=True)
        for part in self._fallback():
            yield part

    def _left(self) -> float:
        return self.deadline - time.monotonic()

    # --- one model call ---------------------------------------------------------------------

    async def _attempt(self, correction: str | None) -> AsyncIterator[ReplyPart | Decision]:
        settings = self.owner.settings
        backoff = 0.25
        while True:
            tools = self.uses_tools()
            chat = self.chat_request(correction)
            self.call.attempts += 1
            streamed = False
            try:
                async with asyncio.timeout(max(self._left(), 0.0)):
                    async for part in self._stream(chat):
                        streamed = True
                        yield part
                return
            except TimeoutError:
                raise _Unusable(f"no usable reply within the turn's deadline ({self._deadline_s():.0f} s)") from None
            except BadRequest as exc:
                if tools and settings.tool_mode is ToolMode.AUTO and not streamed and exc.status in (400, 422):
                    log.warning("model server refused tools for %s (%s); asking for JSON from now on", self.model, exc)
                    self.owner._no_tools.add(self.model)
                    continue
                raise _Unusable(str(exc)) from None
            except LLMError as exc:
                wait = exc.retry_after if isinstance(exc, RateLimited) and exc.retry_after is not None else backoff
                if streamed or self._left() < wait + 0.5:
                    raise _Unusable(str(exc)) from None
                log.info("model call failed (%s), retrying in %.2f s", exc, wait)
                self.call.reasons.append(str(exc))
                await asyncio.sleep(wait)
                backoff *= 2

    def uses_tools(self) -> bool:
        mode = self.owner.settings.tool_mode
        return mode is ToolMode.TOOLS or (mode is ToolMode.AUTO and self.model not in self.owner._no_tools)

    def chat_request(self, correction: str | None, *, max_tokens: int | None = None) -> ChatRequest:
        """What is sent to the model for this turn (``correction``: why the last attempt was refused)."""
        settings = self.owner.settings
        tools = self.uses_tools()
        options = prompt.Options(
            follow_up_allowed=self.allowance.allowed,
            follow_ups_left=self.question.max_probes - self.request.position.probes_used if self.question else 0,
            why_no_follow_up=self.allowance.reason,
            tools=tools,
            correction=correction,
        )
        adapt = not self._next_is_verbatim()
        return ChatRequest(
            model=self.model,
            messages=prompt.build_messages(self.request, options),
            tools=[prompt.respond_tool(options, adapt_next=adapt)] if tools else [],
            tool_choice=prompt.RESPOND if tools else None,
            json_mode=not tools,
            temperature=self.request.blueprint.interviewer.temperature,
            max_tokens=max_tokens or settings.max_tokens,
            seed=settings.seed,
        )

    def _deadline_s(self) -> float:
        return self.owner.settings.voice_deadline_s if self.request.speech else self.owner.settings.chat_deadline_s

    async def _stream(self, chat: ChatRequest) -> AsyncIterator[ReplyPart | Decision]:
        sent_at = time.monotonic()
        content, arguments = "", ""
        content_reader, args_reader = FieldReader(), FieldReader()
        streaming: LiveText | None = None
        held = ""  # text that arrived before the action was known
        timeout = min(self.owner.settings.chunk_timeout_s, max(self._left(), 0.1))
        async for chunk in self.owner.model.stream(chat, timeout=timeout):
            if isinstance(chunk, Usage):
                self.call.usages.append(chunk)
                continue
            if not isinstance(chunk, TextDelta | ToolCallDelta | ReasoningDelta):
                continue
            if self.call.ttft_ms is None:
                self.call.ttft_ms = round((time.monotonic() - sent_at) * 1000.0, 3)
            if isinstance(chunk, ReasoningDelta):
                continue  # never said, never parsed
            if isinstance(chunk, TextDelta):
                content += chunk.text
                new, reader = content_reader.feed(chunk.text), content_reader
            else:
                if chunk.index != 0:
                    continue
                arguments += chunk.arguments
                new, reader = args_reader.feed(chunk.arguments), args_reader
            held += new
            if streaming is None and reader.action is not None:
                streaming = LiveText(self, reader.action)
            if streaming is not None and held:
                for part in streaming.feed(held):
                    yield part
                held = ""
        if streaming is not None:  # the last sentence waits for the turn's record (usage came with the end)
            self.tail = streaming.finish()
        yield parse_decision(arguments or None, content)

    # --- what the runtime makes of the decision -------------------------------------------------

    def _next_is_verbatim(self) -> bool:
        index = self.request.position.question_index + 1
        questions = self.request.blueprint.questions
        return index >= len(questions) or questions[index].verbatim

    def _dispose(self, decision: Decision) -> list[ReplyPart]:
        request, question = self.request, self.question
        assert question is not None
        action = decision.action
        text = speech.clean(decision.text)
        if self.clarify and action is not Action.REPHRASE:
            action, text = Action.REPHRASE, text if not speech.question_problems(text) else ""
        if action is Action.FOLLOW_UP and not self.allowance.allowed:
            self.call.reasons.append(f"follow-up overruled: {self.allowance.reason}")
            action, text = Action.NEXT_QUESTION, ""
        if action is Action.END_INTERVIEW and not policy.could_mean_stop(request.answer):
            raise DecisionError("end_interview, but the participant did not ask to stop; choose another action")
        meta = {**self.base_meta(), "action": action.value}
        if action is Action.FOLLOW_UP:
            found = (
                speech.question_problems(text)
                + policy.avoided_topics(self.request, text)
                + policy.repeats(self.request, text)
            )
            if found and not self.spoken:
                raise DecisionError("the follow-up " + "; ".join(found))
            if found:
                return self._finish_with(self._fallback_parts(), meta)
            spoken_question = any("?" in u.text for u in self.spoken)
            parts: list[ReplyPart] = (
                [] if spoken_question else [Utterance(self._unspoken(text), UtteranceKind.PROBE, question.id)]
            )
            position = Position(request.position.question_index, request.position.probes_used + 1)
            return self._finish_with([*parts, TurnEnd(position)], meta)
        if action is Action.REPHRASE:
            found = speech.question_problems(text) + policy.avoided_topics(self.request, text)
            said = self._unspoken(text) if not found else policy.clarification(request)
            if found:
                meta["rephrase_replaced"] = "; ".join(found)
            return self._finish_with(
                [Utterance(said, UtteranceKind.REPHRASE, question.id), TurnEnd(request.position)], meta
            )
        if action is Action.REDIRECT:
            flag = decision.flag or "off_topic"
            lead = text if not speech.problems(text, max_words=30) and "?" not in text else policy.REDIRECT
            parts = []
            if not self.spoken:
                parts.append(Utterance(lead, UtteranceKind.REDIRECT, question.id))
            parts.append(Utterance(question.text, UtteranceKind.REASK, question.id))
            return self._finish_with([*parts, TurnEnd(request.position, flags=(flag,))], {**meta, "flag": flag})
        if action is Action.END_INTERVIEW:
            bp = request.blueprint
            closing = Utterance(f"{policy.STOP_CLOSING_PREFIX} {bp.closing}", UtteranceKind.CLOSING)
            end = TurnEnd(policy.closed(bp), completes=True, end_reason=EndReason.PARTICIPANT_ENDED)
            return self._finish_with([closing, end], meta)
        # NEXT_QUESTION or SKIP: an acknowledgement, then the guide's next question (or the closing)
        following = policy.next_question(request.blueprint, request.position)
        if action is Action.SKIP:
            meta["declined_question_id"] = question.id
        ack = "" if self.spoken else self._acknowledgement(text, action, meta)
        asked = policy.ask(request.blueprint, following)
        if asked.kind is UtteranceKind.QUESTION and decision.question and not self._next_is_verbatim():
            adapted = speech.clean(decision.question)
            found = speech.question_problems(adapted, max_words=60) + policy.avoided_topics(self.request, adapted)
            if not found:
                asked = Utterance(adapted, asked.kind, asked.question_id)
                meta["adapted_question"] = True
        end = (
            TurnEnd(policy.closed(request.blueprint), completes=True)
            if asked.kind is UtteranceKind.CLOSING
            else TurnEnd(following)
        )
        if request.speech:
            parts = [Utterance(ack, UtteranceKind.ACKNOWLEDGEMENT, question.id)] if ack else []
            return self._finish_with([*parts, asked, end], meta)
        return self._finish_with([_combined(ack, asked) if ack else asked, end], meta)

    def _acknowledgement(self, text: str, action: Action, meta: dict[str, Any]) -> str:
        found = speech.acknowledgement_problems(text) if text else ["none given"]
        if not found and policy.normalized(text) == policy.normalized(policy.last_acknowledgement(self.request) or ""):
            found = ["the same as the last one"]
        if not found:
            return text
        meta["acknowledgement_replaced"] = "; ".join(found)
        if action is Action.SKIP:
            return policy.DECLINE_PREFIX
        return policy.fresh_acknowledgement(self.request)

    def _unspoken(self, text: str) -> str:
        """What of ``text`` has not been spoken yet this turn (voice yields sentences as they come)."""
        if not self.spoken:
            return text
        spoken = " ".join(u.text for u in self.spoken)
        return text[len(spoken) :].strip() if text.startswith(spoken) else text

    def _finish_with(self, parts: list[ReplyPart], meta: dict[str, Any]) -> list[ReplyPart]:
        """Stamp the turn's record on its utterances: usage on the last one, so it is counted once."""
        parts = [p for p in [*self.tail, *parts] if not isinstance(p, Utterance) or p.text.strip()]
        self.tail = []
        said = [p for p in parts if isinstance(p, Utterance)]
        if self.previewed and not self.request.speech and said:  # the preview ends as the message it became
            final = said[0].text
            rest = final[len(self.previewed) :] if final.startswith(self.previewed) else None
            self.previewed = ""
            parts = [Delta(rest) if rest is not None else Delta(final, restart=True), *parts]
        utterances = [i for i, p in enumerate(parts) if isinstance(p, Utterance)]
        out: list[ReplyPart] = []
        for i, part in enumerate(parts):
            if isinstance(part, Utterance):
                stamp = dict(meta)
                if i == utterances[-1]:
                    stamp.update(self._record())
                part = _with_meta(part, stamp)  # type: ignore[assignment]
            elif isinstance(part, TurnEnd) and not utterances:  # all of it was said while it streamed
                part = replace(part, record={**meta, **self._record()})
            out.append(part)
        return out

    def _record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"attempts": self.call.attempts, "ttft_ms": self.call.ttft_ms}
        if self.call.reasons:
            record["notes"] = self.call.reasons[-3:]
        usage = self._usage()
        if usage is not None:
            record["usage"] = usage
        return record

    def _usage(self) -> dict[str, Any] | None:
        if not self.call.usages and not self.call.attempts:
            return None
        total = Usage(
            sum(u.input_tokens for u in self.call.usages),
            sum(u.output_tokens for u in self.call.usages),
            sum(u.cached_tokens for u in self.call.usages),
        )
        cost = self.owner.prices.cost(self.model, total)
        return {
            "model": self.model,
            "calls": self.call.attempts,
            "input_tokens": total.input_tokens,
            "output_tokens": total.output_tokens,
            "cached_tokens": total.cached_tokens,
            "cost_usd": None if cost is None else round(cost, 8),
            "complete": len(self.call.usages) == self.call.attempts,  # a cut stream may not report usage
        }

    # --- falling back ------------------------------------------------------------------------------

    def _fallback_parts(self) -> list[ReplyPart]:
        return self.owner.scripted.answer(
            self.request,
            intent=Intent.CLARIFY if self.clarify else None,
            acknowledge=not self.spoken,
        )

    def _fallback(self) -> list[ReplyPart]:
        reason = self.call.reasons[-1] if self.call.reasons else "no usable reply"
        log.warning("interviewer falls back to the script for this turn (%s): %s", self.model, reason)
        meta = {**self.base_meta(), "fallback": True, "fallback_reason": reason[:300]}
        return self._finish_with(self._fallback_parts(), meta)


def _combined(ack: str, asked: Utterance) -> Utterance:
    return Utterance(f"{ack} {asked.text}", asked.kind, asked.question_id, meta=asked.meta)


def _with_meta(part: ReplyPart, meta: dict[str, Any]) -> ReplyPart:
    if not isinstance(part, Utterance):
        return part
    return Utterance(part.text, part.kind, part.question_id, meta={**part.meta, **meta})
