"""Bodies of the review routes (api/routes_review.py): a run's annotation, and its issues.

What JSON Schema can say about an issue is said here, so a client (and the fuzzer) knows it before
sending: a ``run`` issue names no message, ``transcriber`` and ``message`` issues name one, only they
carry a ``correction``, and a ``correction_reason`` comes with a correction. What depends on stored
data (the message's role, the issue's status, one approved correction per message) is checked by the
server and answered 404 or 409.

Kept apart from :mod:`api.schemas`, which imports :class:`IssueOut` for the run object.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue
from pydantic.config import JsonDict

from api.errors import NOT_BLANK
from runtime.review import MAX_CORRECTION, MAX_NOTE, MAX_REASON, IssuePriority, IssueStatus, IssueType, RunAnnotation

_CORRECTING: list[JsonValue] = [t.value for t in IssueType if t.takes_correction]
_NAMING: list[JsonValue] = [t.value for t in IssueType if t.needs_message]


def _string(name: str) -> JsonDict:
    """'``name`` is given, as a string' (null counts as absent, as the server reads it)."""
    return {"required": [name], "properties": {name: {"type": "string"}}}


_ISSUE_RULES: JsonDict = {
    "allOf": [
        {"if": {"required": ["type"], "properties": {"type": {"const": IssueType.RUN.value}}},
         "then": {"properties": {"message_id": {"type": "null"}}}},
        {"if": {"required": ["type"], "properties": {"type": {"enum": _NAMING}}}, "then": _string("message_id")},
        {"if": _string("correction"), "then": {"properties": {"type": {"enum": _CORRECTING}}}},
        {"if": _string("correction_reason"), "then": _string("correction")},
    ]
}  # fmt: skip


def _correction() -> Any:
    return Field(
        None,
        min_length=1,
        max_length=MAX_CORRECTION,
        pattern=NOT_BLANK,
        description="What was really said (transcriber: applied to the transcript once approved)",
    )


def _reason() -> Any:
    return Field(None, min_length=1, max_length=MAX_REASON, description="Why the correction (needs a correction)")


def _note() -> Any:
    return Field(None, min_length=1, max_length=MAX_NOTE, description="The reviewer's description of the issue")


class RunPatch(BaseModel):
    """A JSON merge patch of a run: its ``annotation`` (null clears it)."""

    model_config = ConfigDict(extra="forbid")

    annotation: RunAnnotation | None = Field(None, description="A reviewer's verdict on the run; null clears it")


class IssueIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_ISSUE_RULES)

    type: IssueType
    message_id: str | None = Field(
        None, max_length=64, description="The message it is about (required for transcriber and message issues)"
    )
    status: Literal["open", "approved"] = Field(
        "open", description="approved at once: a reviewer's own correction, in force from now"
    )
    priority: IssuePriority = IssuePriority.MEDIUM
    correction: str | None = _correction()
    correction_reason: str | None = _reason()
    note: str | None = _note()


class IssuePatch(BaseModel):
    """A JSON merge patch of an issue: null clears ``correction`` (and its reason), ``correction_reason``, ``note``."""

    model_config = ConfigDict(extra="forbid")

    status: IssueStatus = Field(None, description="open, approved, rejected, closed (closed: only reopened)")  # type: ignore[assignment]
    priority: IssuePriority = Field(None)  # type: ignore[assignment]
    correction: str | None = _correction()
    correction_reason: str | None = _reason()
    note: str | None = _note()


class IssueOut(BaseModel):
    id: str
    object: Literal["issue"]
    run_id: str
    type: IssueType
    status: IssueStatus
    priority: IssuePriority
    message_id: str | None
    correction: str | None
    correction_reason: str | None
    note: str | None
    applied: bool = Field(description="Its correction is in force: shown in the transcript, responses and exports")
    created_by: str = Field(description="The API key that opened it (key_...)")
    created_at: str
    updated_by: str
    updated_at: str
    approved_by: str | None = Field(description="Who approved it last (kept if it was withdrawn since)")
    approved_at: str | None
