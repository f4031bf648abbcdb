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

    Messages are walked in order. Every assistant message that carries a
    ``question_id`` (question, probe, resume, reminder) makes that question
    current, and participant messages count towards the current question, so an
    answer given across probes and reconnections is collected in one place. The
    closing makes no question current: words said after it answer nothing.
    """
    by_id: dict[str, list[Message]] = {q.id: [] for q in blueprint.questions}
    probes = dict.fromkeys(by_id, 0)
    current: str | None = None
    for m in messages:
        if m.role is MessageRole.ASSISTANT:
            if m.question_id is not None:
                current = m.question_id
                if m.kind is UtteranceKind.PROBE and current in probes:
                    probes[current] += 1
            elif m.kind is UtteranceKind.CLOSING:
                current = None
        elif m.role is MessageRole.USER and current in by_id and m.content.strip():
            by_id[current].append(m)
    return [
        {
            "question_id": q.id,
            "question": q.text,
            "answer": " ".join(m.content.strip() for m in by_id[q.id]),
            "message_ids": [m.id for m in by_id[q.id]],
            "probes_asked": probes[q.id],
        }
        for q in blueprint.questions
    ]


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
        "probes_asked": sum(1 for m in assistant if m.kind is UtteranceKind.PROBE),
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
