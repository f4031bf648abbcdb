"""The review rules without a server: which issues may be, where their status may go, and what readers see."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest

from runtime.analysis import collect_responses
from runtime.errors import Conflict, InvalidRequest
from runtime.review import (
    TRANSITIONS,
    Issue,
    IssueChanges,
    IssuePriority,
    IssueStatus,
    IssueType,
    NamedMessage,
    apply_corrections,
    changed_issue,
    check_new_issue,
    check_one_correction,
)
from runtime.transcript import TranscriptFormat, render_transcript
from runtime.types import BlueprintContent, Message, MessageRole, Question, UtteranceKind

T0 = 1_700_000_000.0
S = IssueStatus


def issue(**fields: Any) -> Issue:
    base: dict[str, Any] = {
        "id": "iss_1", "run_id": "run_1", "type": IssueType.TRANSCRIBER, "status": S.OPEN,
        "priority": IssuePriority.MEDIUM, "message_id": "msg_2", "correction": "I teach chemistry",
        "correction_reason": None, "note": None, "created_by": "key_a", "created_at": T0, "updated_by": "key_a",
        "updated_at": T0,
    }  # fmt: skip
    return Issue(**{**base, **fields})


def patch(**fields: Any) -> IssueChanges:
    return IssueChanges(given=frozenset(fields), **fields)


def message(n: int, role: MessageRole, content: str, question_id: str | None = None, **kw: Any) -> Message:
    return Message(f"msg_{n}", "run_1", "ses_1", role, content, question_id, kw.get("kind"), False, False,
                   T0 + n, T0 + n + 0.5, None)  # fmt: skip


def test_every_status_change_is_allowed_or_refused_as_the_table_says() -> None:
    for before, after in itertools.product(S, S):
        if before is after:
            continue
        start = issue(status=before)
        if after in TRANSITIONS[before]:
            moved = changed_issue(start, patch(status=after), by="key_b", now=T0 + 5)
            assert (moved.status, moved.updated_by, moved.updated_at) == (after, "key_b", T0 + 5)
        else:
            with pytest.raises(Conflict) as refused:
                changed_issue(start, patch(status=after), by="key_b", now=T0 + 5)
            assert refused.value.param == "status" and "open" in refused.value.message
    assert TRANSITIONS[S.CLOSED] == {S.OPEN}  # closed ends the review: reopened, never approved straight away


def test_approving_records_who_and_when_and_withdrawing_keeps_that_record() -> None:
    approved = changed_issue(issue(), patch(status=S.APPROVED), by="key_b", now=T0 + 1)
    assert (approved.approved_by, approved.approved_at, approved.corrects_transcript) == ("key_b", T0 + 1, True)
    closed = changed_issue(approved, patch(status=S.CLOSED), by="key_c", now=T0 + 2)
    assert (closed.approved_by, closed.approved_at, closed.corrects_transcript) == ("key_b", T0 + 1, False)
    assert (closed.created_by, closed.updated_by) == ("key_a", "key_c")


def test_a_correction_in_force_changes_only_with_an_explicit_approval() -> None:
    approved = issue(status=S.APPROVED, approved_by="key_a", approved_at=T0)
    for quiet in (patch(correction="I teach physics"), patch(correction=None)):
        with pytest.raises(Conflict) as refused:
            changed_issue(approved, quiet, by="key_b", now=T0 + 1)
        assert refused.value.param == "correction"
    redone = changed_issue(approved, patch(correction="I teach physics", status=S.APPROVED), by="key_b", now=T0 + 1)
    assert (redone.correction, redone.approved_by, redone.approved_at) == ("I teach physics", "key_b", T0 + 1)
    reopened = changed_issue(approved, patch(correction="I teach physics", status=S.OPEN), by="key_b", now=T0 + 1)
    assert reopened.status is S.OPEN and reopened.correction == "I teach physics"


def test_a_cleared_correction_takes_its_reason_and_a_reason_needs_a_correction() -> None:
    start = issue(correction_reason="the subject was dropped")
    cleared = changed_issue(start, patch(correction=None), by="key_b", now=T0 + 1)
    assert (cleared.correction, cleared.correction_reason) == (None, None)
    with pytest.raises(Conflict):
        changed_issue(cleared, patch(correction_reason="why"), by="key_b", now=T0 + 2)
    with pytest.raises(Conflict):
        changed_issue(issue(type=IssueType.RUN, message_id=None, correction=None), patch(correction="x"), by="k",
                      now=T0)  # fmt: skip


def test_a_patch_that_changes_nothing_is_the_same_issue() -> None:
    start = issue(note="listened twice")
    same = changed_issue(start, patch(status=S.OPEN, note="listened twice", priority=IssuePriority.MEDIUM),
                         by="key_b", now=T0 + 9)  # fmt: skip
    assert same is start


@pytest.mark.parametrize(
    ("fields", "error", "param"),
    [
        ({"type": IssueType.RUN, "message_id": "msg_2"}, InvalidRequest, "message_id"),
        ({"type": IssueType.TRANSCRIBER, "message_id": None}, InvalidRequest, "message_id"),
        ({"type": IssueType.INTERRUPTION, "correction": "x"}, InvalidRequest, "correction"),
        ({"correction": None, "correction_reason": "why"}, InvalidRequest, "correction_reason"),
        ({"status": S.CLOSED}, InvalidRequest, "status"),
        ({"message": NamedMessage("msg_2", MessageRole.ASSISTANT)}, Conflict, "message_id"),
        ({"type": IssueType.MESSAGE, "message": NamedMessage("msg_2", MessageRole.USER)}, Conflict, "message_id"),
    ],
)
def test_an_issue_that_cannot_be_is_refused_with_the_field_named(
    fields: dict[str, Any], error: type[Exception], param: str
) -> None:
    args: dict[str, Any] = {"type": IssueType.TRANSCRIBER, "status": S.OPEN, "message_id": "msg_2",
                            "message": NamedMessage("msg_2", MessageRole.USER), "correction": "I teach chemistry",
                            "correction_reason": None}  # fmt: skip
    with pytest.raises(error) as refused:
        check_new_issue(**{**args, **fields})
    assert refused.value.param == param  # type: ignore[attr-defined]


def test_one_correction_in_force_per_message() -> None:
    first = issue(id="iss_1", status=S.APPROVED)
    second = issue(id="iss_2", status=S.APPROVED, correction="I reach")
    with pytest.raises(Conflict) as refused:
        check_one_correction(second, [first])
    assert "iss_1" in refused.value.message
    check_one_correction(first, [first])  # itself is no rival
    check_one_correction(dataclasses.replace(second, message_id="msg_9"), [first])  # another message
    check_one_correction(dataclasses.replace(second, status=S.OPEN), [first])  # proposed, not in force


def test_readers_see_approved_transcriber_corrections_with_the_recognised_text_beside_them() -> None:
    bp = BlueprintContent("b", "Hello.", (Question("q1", "What do you do?"),), "Bye.")
    messages = [
        message(1, MessageRole.ASSISTANT, "What do you do?", "q1", kind=UtteranceKind.QUESTION),
        message(2, MessageRole.USER, "I teach", "q1"),
        message(3, MessageRole.USER, "mostly children", "q1"),
    ]
    issues = [
        issue(status=S.APPROVED),
        issue(id="iss_2", message_id="msg_3", status=S.REJECTED, correction="mostly adults"),  # withdrawn
        issue(id="iss_3", type=IssueType.MESSAGE, message_id="msg_1", status=S.APPROVED, correction="What's your job?"),
    ]
    seen = apply_corrections(messages, issues)
    assert [m.content for m in seen] == ["What do you do?", "I teach chemistry", "mostly children"]
    assert (seen[1].original_content, seen[1].correction_id) == ("I teach", "iss_1")
    assert seen[0] is messages[0] and seen[2] is messages[2] and messages[1].content == "I teach"
    q1 = collect_responses(bp, seen)[0]
    assert (q1["answer"], q1["original_answer"]) == ("I teach chemistry mostly children", "I teach mostly children")
    assert collect_responses(bp, messages)[0]["original_answer"] is None
    txt = render_transcript(TranscriptFormat.TXT, run_id="run_1", run_started_at=T0, messages=seen)
    assert "Participant: I teach chemistry [corrected]" in txt and "Participant: mostly children\n" in txt
    vtt = render_transcript(TranscriptFormat.VTT, run_id="run_1", run_started_at=T0, messages=seen)
    assert "I teach chemistry" in vtt and "corrected" not in vtt
