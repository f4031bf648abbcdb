"""Reviewing a run after the fact: its annotation, its issues, and the transcript corrections they approve.

A researcher marks a whole run ``correct``, ``incorrect`` or ``critical`` (its
*annotation*), and opens *issues* about what went wrong: a participant's words
misheard (``transcriber``), an interviewer message (``message``), a tool call,
a turn ended too early (``end_of_sentence``), a barge-in (``interruption``), or
the run as a whole (``run``). An issue moves between ``open``, ``approved``,
``rejected`` and ``closed``; who made it and who last changed it are kept.

A ``transcriber`` issue may carry a ``correction``: what the participant really
said. Once the issue is ``approved`` the correction is what readers of the run
see (the transcript in every format, ``responses``, the study exports), with
the recognised text kept beside it as ``original_content``. The stored message
is never changed: the record stays auditable, and rejecting or closing the issue
withdraws the correction. A ``message`` issue may carry a correction too (what
the interviewer should have said), kept for the record but never applied: the
transcript says what was said.

Everything here is pure: storage (:mod:`runtime.storage.review`) reads the
message an issue names and the issue as stored, and calls these rules inside
the transaction that writes the result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.errors import Conflict, InvalidRequest
from runtime.serialize import iso
from runtime.types import Message, MessageRole, StrEnum


class RunAnnotation(StrEnum):
    """A reviewer's verdict on a whole run."""

    CORRECT = "correct"
    INCORRECT = "incorrect"
    CRITICAL = "critical"


class IssueType(StrEnum):
    TRANSCRIBER = "transcriber"  # the recogniser misheard a participant message
    MESSAGE = "message"  # an interviewer message was wrong
    TOOL_CALL = "tool_call"
    END_OF_SENTENCE = "end_of_sentence"  # the participant's turn was ended too early (or too late)
    RUN = "run"  # the run as a whole: no message
    INTERRUPTION = "interruption"  # a barge-in that should (not) have stopped the interviewer

    @property
    def needs_message(self) -> bool:
        """A transcriber or message issue is about one message, which it must name."""
        return self in (IssueType.TRANSCRIBER, IssueType.MESSAGE)

    @property
    def takes_message(self) -> bool:
        return self is not IssueType.RUN

    @property
    def takes_correction(self) -> bool:
        return self.needs_message

    @property
    def role(self) -> MessageRole | None:
        """The role of the message this type of issue is about, if it is about one role only."""
        return {IssueType.TRANSCRIBER: MessageRole.USER, IssueType.MESSAGE: MessageRole.ASSISTANT}.get(self)


class IssueStatus(StrEnum):
    OPEN = "open"
    APPROVED = "approved"
    REJECTED = "rejected"
    CLOSED = "closed"


class IssuePriority(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


# Where an issue may go from each status. Closed is the end of the review: only reopening leads out of it,
# so a closed issue is never approved (or rejected) by a stray click without someone reopening it first.
TRANSITIONS: Mapping[IssueStatus, frozenset[IssueStatus]] = {
    IssueStatus.OPEN: frozenset({IssueStatus.APPROVED, IssueStatus.REJECTED, IssueStatus.CLOSED}),
    IssueStatus.APPROVED: frozenset({IssueStatus.OPEN, IssueStatus.REJECTED, IssueStatus.CLOSED}),
    IssueStatus.REJECTED: frozenset({IssueStatus.OPEN, IssueStatus.APPROVED, IssueStatus.CLOSED}),
    IssueStatus.CLOSED: frozenset({IssueStatus.OPEN}),
}
CREATED_AS = (IssueStatus.OPEN, IssueStatus.APPROVED)  # a new issue is open, or approved at once (a reviewer's fix)

MAX_CORRECTION = 32_768  # the longest participant message (docs/protocol.md)
MAX_REASON = 2000
MAX_NOTE = 4000


@dataclass(frozen=True)
class Annotation:
    value: RunAnnotation
    annotated_by: str  # the API key (key_...)
    annotated_at: float


@dataclass(frozen=True)
class Issue:
    id: str
    run_id: str
    type: IssueType
    status: IssueStatus
    priority: IssuePriority
    message_id: str | None
    correction: str | None
    correction_reason: str | None
    note: str | None
    created_by: str
    created_at: float
    updated_by: str
    updated_at: float
    approved_by: str | None = None  # who approved it last, and when (kept if it is later withdrawn)
    approved_at: float | None = None

    @property
    def corrects_transcript(self) -> bool:
        """Whether this issue's correction is in force: an approved transcriber issue with a correction."""
        approved = self.status is IssueStatus.APPROVED
        return self.type is IssueType.TRANSCRIBER and approved and self.correction is not None


@dataclass(frozen=True)
class NamedMessage:
    """What the rules need to know of the message an issue names (read in the writing transaction)."""

    id: str
    role: MessageRole


@dataclass(frozen=True)
class IssueChanges:
    """A merge patch of an issue: only the fields in ``given`` change (``None`` clears one that may be cleared)."""

    given: frozenset[str]
    status: IssueStatus | None = None
    priority: IssuePriority | None = None
    correction: str | None = None
    correction_reason: str | None = None
    note: str | None = None


def check_new_issue(
    *,
    type: IssueType,
    status: IssueStatus,
    message: NamedMessage | None,
    message_id: str | None,
    correction: str | None,
    correction_reason: str | None,
) -> None:
    """Refuse an issue that cannot be: the body's own rules (400) and the named message's (409).

    ``message`` is the stored message ``message_id`` names in this run; the caller answers 404 when there is none.
    """
    if status not in CREATED_AS:
        raise InvalidRequest(f"a new issue is open or approved, not {status.value}", param="status")
    if message_id is not None and not type.takes_message:
        raise InvalidRequest("a run issue is about the whole run: it names no message", param="message_id")
    if message_id is None and type.needs_message:
        raise InvalidRequest(f"a {type.value} issue names the message it is about (message_id)", param="message_id")
    if correction is not None and not type.takes_correction:
        raise InvalidRequest(
            f"only transcriber and message issues carry a correction, not {type.value} issues", param="correction"
        )
    if correction_reason is not None and correction is None:
        raise InvalidRequest(
            "correction_reason explains a correction: send the correction too", param="correction_reason"
        )
    if message is not None and type.role is not None and message.role is not type.role:
        whose = "a participant's" if type.role is MessageRole.USER else "an interviewer's"
        raise Conflict(
            f"message {message.id} is {_whose(message.role)}, but a {type.value} issue is about {whose} message",
            param="message_id",
        )


def _whose(role: MessageRole) -> str:
    return {MessageRole.USER: "the participant's", MessageRole.ASSISTANT: "the interviewer's"}.get(role, role.value)


def changed_issue(issue: Issue, changes: IssueChanges, *, by: str, now: float) -> Issue:
    """The issue after a merge patch, or a 409 saying why the patch cannot apply to it as it stands.

    A correction in force cannot change quietly: altering or clearing the correction of an approved issue
    needs ``status: approved`` in the same patch (an explicit re-approval, recorded as such).
    """
    given = changes.given
    status = changes.status if "status" in given and changes.status is not None else issue.status
    if status is not issue.status and status not in TRANSITIONS[issue.status]:
        raise Conflict(
            f"issue {issue.id} is {issue.status.value}; it can become "
            + ", ".join(sorted(s.value for s in TRANSITIONS[issue.status]))
            + f" but not {status.value}",
            param="status",
        )
    correction = changes.correction if "correction" in given else issue.correction
    if correction is not None and not issue.type.takes_correction:
        raise Conflict(
            f"issue {issue.id} is a {issue.type.value} issue: only transcriber and message issues carry a correction",
            param="correction",
        )
    reason = changes.correction_reason if "correction_reason" in given else issue.correction_reason
    if correction is None:
        if "correction_reason" in given and reason is not None:
            raise Conflict(f"issue {issue.id} has no correction for correction_reason to explain",
                           param="correction_reason")  # fmt: skip
        reason = None  # the reason of a cleared correction goes with it
    recorrected = correction != issue.correction
    stays_approved = issue.status is IssueStatus.APPROVED and status is IssueStatus.APPROVED
    if recorrected and stays_approved and "status" not in given:
        raise Conflict(
            f"issue {issue.id} is approved: to change its correction, approve it again in the same request "
            '("status": "approved"), or reopen it first',
            param="correction",
        )
    approving = status is IssueStatus.APPROVED and (issue.status is not IssueStatus.APPROVED or recorrected)
    updated = dataclasses.replace(
        issue,
        status=status,
        priority=changes.priority if "priority" in given and changes.priority is not None else issue.priority,
        correction=correction,
        correction_reason=reason,
        note=changes.note if "note" in given else issue.note,
        approved_by=by if approving else issue.approved_by,
        approved_at=now if approving else issue.approved_at,
    )
    if updated == issue:
        return issue  # nothing changed: no write, no event, the same updated_at
    return dataclasses.replace(updated, updated_by=by, updated_at=now)


def check_one_correction(issue: Issue, in_force: Iterable[Issue]) -> None:
    """A message has at most one correction in force: a second approval is refused, naming the first."""
    if not issue.corrects_transcript:
        return
    for other in in_force:
        if other.id != issue.id and other.message_id == issue.message_id and other.corrects_transcript:
            raise Conflict(
                f"message {issue.message_id} already has an approved correction (issue {other.id}); "
                "reject or close that issue first, or change its correction",
                param="status",
            )


def apply_corrections(messages: Sequence[Message], issues: Iterable[Issue]) -> list[Message]:
    """The messages as readers see them: each with its approved correction, the recognised text kept beside it."""
    corrections = {i.message_id: i for i in issues if i.corrects_transcript and i.message_id is not None}
    if not corrections:
        return list(messages)
    out = []
    for m in messages:
        issue = corrections.get(m.id)
        if issue is None or issue.correction is None or m.role is not MessageRole.USER:
            out.append(m)
        else:
            out.append(dataclasses.replace(m, content=issue.correction, original_content=m.content,
                                           correction_id=issue.id))  # fmt: skip
    return out


# --- JSON ---------------------------------------------------------------------------------------------------------


def issue_json(issue: Issue) -> dict[str, Any]:
    return {
        "id": issue.id,
        "object": "issue",
        "run_id": issue.run_id,
        "type": issue.type.value,
        "status": issue.status.value,
        "priority": issue.priority.value,
        "message_id": issue.message_id,
        "correction": issue.correction,
        "correction_reason": issue.correction_reason,
        "note": issue.note,
        "applied": issue.corrects_transcript,
        "created_by": issue.created_by,
        "created_at": iso(issue.created_at),
        "updated_by": issue.updated_by,
        "updated_at": iso(issue.updated_at),
        "approved_by": issue.approved_by,
        "approved_at": iso(issue.approved_at),
    }


def annotation_fields(annotation: Annotation | None) -> dict[str, Any]:
    """The run object's annotation fields."""
    if annotation is None:
        return {"annotation": None, "annotated_by": None, "annotated_at": None}
    return {
        "annotation": annotation.value.value,
        "annotated_by": annotation.annotated_by,
        "annotated_at": iso(annotation.annotated_at),
    }
