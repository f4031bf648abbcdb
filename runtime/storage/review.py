"""A run's review in storage: its annotation, its issues, and the messages as corrected.

Every change is one transaction that also stores its event (``run.annotated``,
``run.issue.created``, ``run.issue.updated``, numbered in the run's sequence, and
its webhook deliveries). Rules that depend on what is stored (the message an
issue names, the issue's status, the one correction in force per message) are
checked inside that transaction, after the run's row is locked
(``UPDATE runs SET last_seq = last_seq``: a no-op that holds the row until
commit on PostgreSQL, where two processes could otherwise approve two
corrections of one message at once; SQLite has a single writer anyway).

Annotations and issues are the run's data: erasure deletes them with it
(corrections hold what the participant said).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from runtime.errors import Gone, NotFound
from runtime.ids import new_id
from runtime.review import (
    Annotation,
    Issue,
    IssueChanges,
    IssuePriority,
    IssueStatus,
    IssueType,
    NamedMessage,
    RunAnnotation,
    annotation_fields,
    apply_corrections,
    changed_issue,
    check_new_issue,
    check_one_correction,
    issue_json,
)
from runtime.storage import erasure
from runtime.storage.database import Database, Transaction
from runtime.storage.messages import MessageStore
from runtime.storage.run_log import emit
from runtime.types import EventType, Message, MessageRole

erasure.erases("run_annotations")
erasure.erases("run_issues")

_COLUMNS = (
    "id, run_id, type, status, priority, message_id, correction, correction_reason, note,"
    " created_by, created_at, updated_by, updated_at, approved_by, approved_at"
)


def _issue(v: Sequence[Any]) -> Issue:
    return Issue(
        id=v[0],
        run_id=v[1],
        type=IssueType(v[2]),
        status=IssueStatus(v[3]),
        priority=IssuePriority(v[4]),
        message_id=v[5],
        correction=v[6],
        correction_reason=v[7],
        note=v[8],
        created_by=v[9],
        created_at=v[10],
        updated_by=v[11],
        updated_at=v[12],
        approved_by=v[13],
        approved_at=v[14],
    )


def _values(issue: Issue) -> tuple[Any, ...]:
    return (
        issue.id,
        issue.run_id,
        issue.type.value,
        issue.status.value,
        issue.priority.value,
        issue.message_id,
        issue.correction,
        issue.correction_reason,
        issue.note,
        issue.created_by,
        issue.created_at,
        issue.updated_by,
        issue.updated_at,
        issue.approved_by,
        issue.approved_at,
    )


def _lock_run(tx: Transaction, run_id: str) -> None:
    """Hold the run's row until commit; an erased run takes no review (it would outlive the erasure)."""
    if not tx.change("UPDATE runs SET last_seq = last_seq WHERE id = ? AND erased_at IS NULL", (run_id,)):
        if tx.sql("SELECT 1 FROM runs WHERE id = ?", (run_id,)):
            raise Gone(f"Run {run_id}'s data was erased: it takes no annotation or issue", param="id")
        raise NotFound(f"No run {run_id!r}", param="id")


def _in_force(tx: Transaction, run_id: str, message_id: str) -> list[Issue]:
    rows = tx.sql(
        f"SELECT {_COLUMNS} FROM run_issues WHERE run_id = ? AND message_id = ? AND type = ? AND status = ?",
        (run_id, message_id, IssueType.TRANSCRIBER.value, IssueStatus.APPROVED.value),
    )
    return [_issue(r) for r in rows]


class Review:
    def __init__(self, db: Database, messages: MessageStore) -> None:
        self.db = db
        self.said = messages  # what was said, before corrections

    # --- the annotation -----------------------------------------------------------------------------------------

    async def annotation(self, run_id: str) -> Annotation | None:
        rows = await self.db.fetch(
            "SELECT value, annotated_by, annotated_at FROM run_annotations WHERE run_id = ?", (run_id,)
        )
        return Annotation(RunAnnotation(rows[0][0]), rows[0][1], rows[0][2]) if rows else None

    async def annotate(self, run_id: str, value: RunAnnotation | None, *, by: str, now: float | None = None
                       ) -> Annotation | None:  # fmt: skip
        """Set (or with None clear) the run's annotation; the same value again changes nothing and says nothing."""
        when = time.time() if now is None else now

        def write(tx: Transaction) -> Annotation | None:
            _lock_run(tx, run_id)
            rows = tx.sql("SELECT value, annotated_by, annotated_at FROM run_annotations WHERE run_id = ?", (run_id,))
            before = Annotation(RunAnnotation(rows[0][0]), rows[0][1], rows[0][2]) if rows else None
            if (before.value if before else None) == value:
                return before
            tx.change("DELETE FROM run_annotations WHERE run_id = ?", (run_id,))
            after = None if value is None else Annotation(value, by, when)
            if after is not None:
                tx.change(
                    "INSERT INTO run_annotations (run_id, value, annotated_by, annotated_at) VALUES (?, ?, ?, ?)",
                    (run_id, after.value.value, by, when),
                )
            data = {
                "run_id": run_id,
                **annotation_fields(after),
                "previous": before.value.value if before else None,
                "changed_by": by,
            }
            emit(tx, run_id, EventType.RUN_ANNOTATED, data, when)
            return after

        return await self.db.write(write, run_id=run_id)

    # --- issues ------------------------------------------------------------------------------------------------

    async def create_issue(
        self,
        run_id: str,
        *,
        type: IssueType,
        status: IssueStatus,
        priority: IssuePriority,
        message_id: str | None,
        correction: str | None,
        correction_reason: str | None,
        note: str | None,
        by: str,
        now: float | None = None,
    ) -> Issue:
        when = time.time() if now is None else now
        issue = Issue(
            id=new_id("issue", now=when),
            run_id=run_id,
            type=type,
            status=status,
            priority=priority,
            message_id=message_id,
            correction=correction,
            correction_reason=correction_reason,
            note=note,
            created_by=by,
            created_at=when,
            updated_by=by,
            updated_at=when,
            approved_by=by if status is IssueStatus.APPROVED else None,
            approved_at=when if status is IssueStatus.APPROVED else None,
        )

        def write(tx: Transaction) -> Issue:
            _lock_run(tx, run_id)
            named = None
            if message_id is not None:
                rows = tx.sql("SELECT role FROM messages WHERE id = ? AND run_id = ?", (message_id, run_id))
                if not rows:
                    raise NotFound(f"No message {message_id[:80]!r} in run {run_id}", param="message_id")
                named = NamedMessage(message_id, MessageRole(rows[0][0]))
            check_new_issue(type=type, status=status, message=named, message_id=message_id, correction=correction,
                            correction_reason=correction_reason)  # fmt: skip
            if message_id is not None:
                check_one_correction(issue, _in_force(tx, run_id, message_id))
            tx.change(
                f"INSERT INTO run_issues ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _values(issue),
            )
            emit(tx, run_id, EventType.RUN_ISSUE_CREATED, {"run_id": run_id, "issue": issue_json(issue)}, when)
            return issue

        return await self.db.write(write, run_id=run_id)

    async def update_issue(self, run_id: str, issue_id: str, changes: IssueChanges, *, by: str,
                           now: float | None = None) -> Issue:  # fmt: skip
        """Apply a merge patch to an issue (checked against it as stored, under the run's lock)."""
        when = time.time() if now is None else now

        def write(tx: Transaction) -> Issue:
            _lock_run(tx, run_id)
            rows = tx.sql(f"SELECT {_COLUMNS} FROM run_issues WHERE id = ? AND run_id = ?", (issue_id, run_id))
            if not rows:
                raise NotFound(f"No issue {issue_id!r} in run {run_id}", param="issue_id")
            before = _issue(rows[0])
            after = changed_issue(before, changes, by=by, now=when)
            if after is before:
                return before
            if after.message_id is not None:
                check_one_correction(after, _in_force(tx, run_id, after.message_id))
            tx.change(
                "UPDATE run_issues SET status = ?, priority = ?, correction = ?, correction_reason = ?, note = ?,"
                " updated_by = ?, updated_at = ?, approved_by = ?, approved_at = ? WHERE id = ?",
                (after.status.value, after.priority.value, after.correction, after.correction_reason, after.note,
                 after.updated_by, after.updated_at, after.approved_by, after.approved_at, issue_id),
            )  # fmt: skip
            data = {"run_id": run_id, "issue": issue_json(after), "previous_status": before.status.value}
            emit(tx, run_id, EventType.RUN_ISSUE_UPDATED, data, when)
            return after

        return await self.db.write(write, run_id=run_id)

    async def issue(self, run_id: str, issue_id: str) -> Issue:
        rows = await self.db.fetch(f"SELECT {_COLUMNS} FROM run_issues WHERE id = ? AND run_id = ?", (issue_id, run_id))
        if not rows:
            raise NotFound(f"No issue {issue_id!r} in run {run_id}", param="issue_id")
        return _issue(rows[0])

    async def issues(
        self,
        run_id: str,
        *,
        limit: int | None = None,
        starting_after: str | None = None,
        status: IssueStatus | None = None,
        type: IssueType | None = None,
    ) -> tuple[list[Issue], bool]:
        """A run's issues, newest first; a page of ``limit`` (and whether there are more), or all of them."""
        where = ["run_id = ?", "id < ?"]
        params: list[Any] = [run_id, starting_after or "~"]
        if status is not None:
            where.append("status = ?")
            params.append(status.value)
        if type is not None:
            where.append("type = ?")
            params.append(type.value)
        statement = f"SELECT {_COLUMNS} FROM run_issues WHERE {' AND '.join(where)} ORDER BY id DESC"
        if limit is not None:
            statement += " LIMIT ?"
            params.append(limit + 1)
        rows = await self.db.fetch(statement, params)
        if limit is None:
            return [_issue(r) for r in rows], False
        return [_issue(r) for r in rows[:limit]], len(rows) > limit

    # --- the transcript as readers see it ----------------------------------------------------------------------

    async def corrections(self, run_id: str) -> list[Issue]:
        """The run's corrections in force (approved transcriber issues with a correction)."""
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM run_issues WHERE run_id = ? AND type = ? AND status = ?"
            " AND correction IS NOT NULL",
            (run_id, IssueType.TRANSCRIBER.value, IssueStatus.APPROVED.value),
        )
        return [_issue(r) for r in rows]

    async def messages(self, run_id: str) -> list[Message]:
        """The run's messages with their approved corrections (the original text beside each corrected one)."""
        return apply_corrections(await self.said.list_messages(run_id), await self.corrections(run_id))
