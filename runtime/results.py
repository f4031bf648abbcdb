"""What a finished interview yields for the researcher: a summary, and the structured result they asked for.

Run once per finished run by a durable job (api/jobs.py). With a model configured,
the summary is written by it (per question and overall, from the answers as stored)
and, when the blueprint has a ``result_schema``, the result is extracted by it and
validated with ``jsonschema``; an invalid result is sent back once with the validation
errors, and if it is still invalid the result is ``None`` with ``result_error`` saying
why. Without a model the summary is extractive (the answers' opening words), and a
wanted result is reported as not extracted: nothing is invented.

The prompts are bounded (each answer cut to :data:`ANSWER_WORDS` words), versioned
(:data:`ANALYSIS_PROMPT_VERSION`, recorded with the summary) and ask for JSON only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator

from runtime.interviewer.decisions import DecisionError
from runtime.llm import ChatMessage, ChatModel, ChatRequest, LLMError, Prices, Usage
from runtime.llm.protocol import collect
from runtime.types import BlueprintContent

log = logging.getLogger("vivavoce.results")

ANALYSIS_PROMPT_VERSION = "analysis-v1"
ANSWER_WORDS = 250
EXCERPT_WORDS = 30


@dataclass
class Outcome:
    summary: dict[str, Any]
    result: dict[str, Any] | None = None
    result_error: str | None = None
    usages: list[Usage] = field(default_factory=list)
    calls: int = 0
    model: str | None = None

    def usage(self, prices: Prices) -> dict[str, Any] | None:
        """The analysis' LLM use, in the shape run totals take (see runtime.storage.run_log.add_usage)."""
        if not self.calls or self.model is None:
            return None
        total = Usage(
            sum(u.input_tokens for u in self.usages),
            sum(u.output_tokens for u in self.usages),
            sum(u.cached_tokens for u in self.usages),
        )
        cost = prices.cost(self.model, total)
        return {
            "calls": self.calls,
            "input_tokens": total.input_tokens,
            "output_tokens": total.output_tokens,
            "cached_tokens": total.cached_tokens,
            "cost_usd": cost,
        }


def extractive_summary(responses: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A summary without a model: what each answer began with, and how the interview went."""
    questions = []
    for r in responses:
        words = r["answer"].split()
        if r.get("declined"):
            text = "Declined to answer."
        elif not words:
            text = "No answer."
        else:
            text = " ".join(words[:EXCERPT_WORDS]) + (" …" if len(words) > EXCERPT_WORDS else "")
        questions.append({"question_id": r["question_id"], "summary": text})
    answered = sum(1 for r in responses if r["answer"] and not r.get("declined"))
    declined = sum(1 for r in responses if r.get("declined"))
    overall = (
        f"{answered} of {len(responses)} questions answered" + (f", {declined} declined" if declined else "") + "."
    )
    return {"method": "extractive", "overall": overall, "questions": questions}


class Analyst:
    def __init__(
        self, model: ChatModel | None, *, default_model: str = "default", timeout_s: float = 60.0, max_tokens: int = 800
    ) -> None:
        self.model = model
        self.default_model = default_model
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens

    async def analyse(self, content: BlueprintContent, responses: Sequence[dict[str, Any]]) -> Outcome:
        model_name = content.interviewer.model or self.default_model
        outcome = Outcome(summary=extractive_summary(responses), model=model_name)
        if self.model is None:
            if content.result_schema is not None:
                outcome.result_error = "no model is configured on the server: the result was not extracted"
            return outcome
        digest = _digest(content, responses)
        try:
            outcome.summary = await self._summary(model_name, content, digest, responses, outcome)
        except (LLMError, DecisionError) as exc:
            log.warning("summary by %s failed, extractive summary kept: %s", model_name, exc)
            outcome.summary["model_error"] = str(exc)[:300]
        if content.result_schema is not None:
            outcome.result, outcome.result_error = await self._result(model_name, content, digest, outcome)
        return outcome

    async def _ask(self, model_name: str, messages: list[ChatMessage], outcome: Outcome) -> dict[str, Any]:
        assert self.model is not None
        request = ChatRequest(
            model=model_name, messages=messages, json_mode=True, temperature=0.0, max_tokens=self.max_tokens
        )
        outcome.calls += 1
        whole = await collect(self.model, request, timeout=self.timeout_s)
        if whole.usage is not None:
            outcome.usages.append(whole.usage)
        return _object(whole.text or next((c["arguments"] for c in whole.tool_calls.values()), ""))

    async def _summary(
        self,
        model_name: str,
        content: BlueprintContent,
        digest: str,
        responses: Sequence[dict[str, Any]],
        outcome: Outcome,
    ) -> dict[str, Any]:
        ids = [r["question_id"] for r in responses]
        messages = [
            ChatMessage(
                "system",
                "You summarise research interviews for the researcher, faithfully and neutrally, using only what the "
                "participant said. Reply with only a JSON object: "
                '{"overall": "2-4 sentences", "questions": [{"question_id": "...", "summary": "1-2 sentences"}]} '
                f"with one entry for each of these question ids: {', '.join(ids)}. "
                "For a question the participant declined or did not answer, say so.",
            ),
            ChatMessage("user", digest),
        ]
        data = await self._ask(model_name, messages, outcome)
        overall = data.get("overall")
        given = {q.get("question_id"): q.get("summary") for q in data.get("questions", []) if isinstance(q, dict)}
        if not isinstance(overall, str) or not overall.strip():
            raise DecisionError("the summary has no 'overall' text")
        fallback = {q["question_id"]: q["summary"] for q in outcome.summary["questions"]}
        questions = [
            {"question_id": qid, "summary": given[qid] if isinstance(given.get(qid), str) else fallback[qid]}
            for qid in ids
        ]
        return {
            "method": "llm",
            "model": model_name,
            "prompt_version": ANALYSIS_PROMPT_VERSION,
            "overall": overall.strip(),
            "questions": questions,
        }

    async def _result(
        self, model_name: str, content: BlueprintContent, digest: str, outcome: Outcome
    ) -> tuple[dict[str, Any] | None, str | None]:
        schema = content.result_schema
        assert schema is not None
        validator = Draft202012Validator(schema)
        messages = [
            ChatMessage(
                "system",
                "You extract structured data from a research interview. Use only what the participant said; where "
                "the interview does not say, use null if the schema allows it. Reply with only a JSON object valid "
                f"against this JSON Schema:\n{json.dumps(schema)}",
            ),
            ChatMessage("user", digest),
        ]
        error = "no result"
        for attempt in range(2):
            try:
                candidate = await self._ask(model_name, messages, outcome)
            except (LLMError, DecisionError) as exc:
                error = f"attempt {attempt + 1}: {exc}"
                continue
            problems = sorted(validator.iter_errors(candidate), key=lambda e: list(e.path))
            if not problems:
                return candidate, None
            listed = "; ".join(f"{'/'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in problems[:10])
            error = f"not valid against result_schema: {listed}"
            messages = [
                *messages,
                ChatMessage("assistant", json.dumps(candidate)),
                ChatMessage("user", f"That is not valid against the schema: {listed}. Reply with a corrected object."),
            ]
        return None, error[:2000]


def _digest(content: BlueprintContent, responses: Sequence[dict[str, Any]]) -> str:
    lines = [f'Interview "{content.name}".']
    texts = {q.id: q for q in content.questions}
    for r in responses:
        question = texts[r["question_id"]]
        words = r["answer"].split()
        answer = " ".join(words[:ANSWER_WORDS]) + (" …" if len(words) > ANSWER_WORDS else "")
        if r.get("declined"):
            answer = "(declined to answer)"
        lines.append(f"[{r['question_id']}] Q: {question.text}\nA: {answer or '(no answer)'}")
    return "\n\n".join(lines)


def _object(text: str) -> dict[str, Any]:
    text = text.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        start = text.find("{")
        try:
            value, _ = json.JSONDecoder().raw_decode(text[start:]) if start >= 0 else (None, 0)
        except json.JSONDecodeError as exc:
            raise DecisionError(f"not a JSON object: {exc.msg}") from None
    if not isinstance(value, dict):
        raise DecisionError("not a JSON object")
    return value
