"""What a researcher reads besides the transcript: answers per question, and how the run went.

Everything here is derived from stored messages, so it can be recomputed for
any finished run and never disagrees with the transcript.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from runtime.interviewer import word_count
from runtime.types import LATENCY_STAGES, BlueprintContent, Message, MessageRole, Run, Session, UtteranceKind


def collect_responses(blueprint: BlueprintContent, messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The participant's answer to each question of ``blueprint``, in blueprint order.

    A participant message is stored with the question it answers (the one the
    participant had heard when it arrived), and that is what counts: not the order
    of messages, which an answer re-sent after a reconnect, words typed during the
    greeting or an addition sent while the interviewer moved on would shift.

    Runs stored before messages carried their question are read by order instead:
    an assistant message with a ``question_id`` makes that question current until the
    closing, and participant messages count towards the current question.
    """
    ids = {q.id for q in blueprint.questions}
    by_id: dict[str, list[Message]] = {q.id: [] for q in blueprint.questions}
    probes: dict[str, set[str]] = {q.id: set() for q in blueprint.questions}
    declined: set[str] = set()
    flags: dict[str, list[str]] = {q.id: [] for q in blueprint.questions}
    attributed = any(m.role is MessageRole.USER and m.question_id is not None for m in messages)
    current: str | None = None
    for m in messages:
        if m.role is MessageRole.ASSISTANT:
            if m.question_id is not None:
                current = m.question_id
                if m.kind is UtteranceKind.PROBE and current in probes:
                    probes[current].add(_reply_of(m))
            elif m.kind is UtteranceKind.CLOSING:
                current = None
            skipped = m.meta.get("declined_question_id")
            if isinstance(skipped, str) and skipped in ids:
                declined.add(skipped)
        elif m.role is MessageRole.USER and m.content.strip():
            answers = m.question_id if attributed else current
            if answers in by_id:
                by_id[answers].append(m)
                flags[answers] += [f for f in m.meta.get("flags", ()) if isinstance(f, str)]
    return [
        {
            "question_id": q.id,
            "question": q.text,
            "answer": " ".join(m.content.strip() for m in by_id[q.id]),
            "original_answer": _original_answer(by_id[q.id]),
            "message_ids": [m.id for m in by_id[q.id]],
            "probes_asked": len(probes[q.id]),
            "declined": q.id in declined,
            "flags": sorted(set(flags[q.id])),
        }
        for q in blueprint.questions
    ]


def _original_answer(answer: Sequence[Message]) -> str | None:
    """The answer as recognised, when a reviewer's correction (runtime/review.py) changed part of it; else None."""
    if all(m.original_content is None for m in answer):
        return None
    return " ".join((m.content if m.original_content is None else m.original_content).strip() for m in answer)


def _reply_of(message: Message) -> str:
    """One follow-up may be spoken as several messages (a sentence each): they share its turn."""
    turn = message.meta.get("turn")
    return str(turn) if turn is not None else message.id


def analyse(
    blueprint: BlueprintContent, messages: Sequence[Message], sessions: Sequence[Session], run: Run
) -> dict[str, Any]:
    """Counts and timings for one run: coverage, talk balance, reconnections and latency per stage."""
    responses = collect_responses(blueprint, messages)
    assistant = [m for m in messages if m.role is MessageRole.ASSISTANT]
    user = [m for m in messages if m.role is MessageRole.USER]
    duration = None if run.started_at is None or run.ended_at is None else round(run.ended_at - run.started_at, 3)
    return {
        "questions_total": len(blueprint.questions),
        "questions_answered": sum(1 for r in responses if r["answer"]),
        "probes_asked": sum(r["probes_asked"] for r in responses),
        "questions_declined": sum(1 for r in responses if r["declined"]),
        "flagged_messages": [m.id for m in user if m.meta.get("flags")],
        "fallbacks": sum(1 for m in assistant if m.meta.get("fallback")),
        "reminders": sum(1 for m in assistant if m.kind is UtteranceKind.REMINDER),
        "participant_words": sum(word_count(m.content) for m in user),
        "interviewer_words": sum(word_count(m.content) for m in assistant),
        "sessions": len(sessions),
        "reconnects": max(0, len(sessions) - 1),
        "duration_s": duration,
        "latency": latency_summary(messages),
    }


def latency_summary(messages: Sequence[Message]) -> dict[str, dict[str, float | int | None]]:
    """p50, p95 and sample count per latency stage (milliseconds) over the assistant messages.

    Percentiles use linear interpolation between closest ranks (numpy's default),
    so small samples give values between what was measured rather than jumping
    to the slowest turn; they are rounded to 3 decimals. Stages that never
    occurred (None) are left out; a stage with no samples reports None.
    """
    samples: dict[str, list[float]] = {stage: [] for stage in LATENCY_STAGES}
    for m in messages:
        if m.role is MessageRole.ASSISTANT and m.latency is not None:
            for stage, value in m.latency.as_dict().items():
                if value is not None:
                    samples[stage].append(value)
    return {
        stage: {"p50": _percentile(values, 50), "p95": _percentile(values, 95), "count": len(values)}
        for stage, values in samples.items()
    }


def _percentile(values: Sequence[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    value = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return round(value, 3)
