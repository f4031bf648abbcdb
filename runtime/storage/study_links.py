"""Study links: one reusable link per study for a recruitment panel, one run per participant who opens it.

The participant is recognised by an id the panel puts in the URL
(``?PROLIFIC_PID=…``). :meth:`StudyLinks.claim` records (link, participant) → run in
the transaction that creates the run, and that pair is the primary key, so two
opens at once by the same participant make one run: the second finds the first's.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from runtime.errors import NotFound
from runtime.ids import new_id
from runtime.storage import erasure
from runtime.storage.database import Database, Transaction
from runtime.types import JSON, Run, RunStatus

erasure.erases("study_link_participants")  # an erased run's participant entry goes with it


@dataclass(frozen=True)
class StudyLink:
    id: str
    org_id: str
    token: str
    blueprint_id: str
    channel_id: str
    participant_param: str
    metadata_params: tuple[str, ...]
    max_completes: int | None
    closes_at: float | None
    active: bool
    completion_redirect_url: str | None
    screenout_redirect_url: str | None
    metadata: JSON
    created_at: float

    def is_open(self, now: float) -> bool:
        return self.active and (self.closes_at is None or now < self.closes_at)


@dataclass(frozen=True)
class LinkCounts:
    started: int  # participants who opened it (a run each)
    completed: int  # runs completed


class AlreadyTaken(Exception):
    """This participant has a run from this link already (raised inside the creating transaction)."""


_COLUMNS = (
    "id, org_id, token, blueprint_id, channel_id, participant_param, metadata_params, max_completes, closes_at,"
    " active, completion_redirect_url, screenout_redirect_url, metadata, created_at"
)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _link(v: Any) -> StudyLink:
    return StudyLink(
        id=v[0],
        org_id=v[1],
        token=v[2],
        blueprint_id=v[3],
        channel_id=v[4],
        participant_param=v[5],
        metadata_params=tuple(_json(v[6])),
        max_completes=v[7],
        closes_at=v[8],
        active=bool(v[9]),
        completion_redirect_url=v[10],
        screenout_redirect_url=v[11],
        metadata=_json(v[12]),
        created_at=v[13],
    )


class StudyLinks:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self,
        org_id: str,
        *,
        blueprint_id: str,
        channel_id: str,
        participant_param: str,
        metadata_params: tuple[str, ...],
        max_completes: int | None,
        closes_at: float | None,
        completion_redirect_url: str | None,
        screenout_redirect_url: str | None,
        metadata: JSON,
    ) -> StudyLink:
        now = time.time()
        link = StudyLink(
            new_id("study_link", now=now),
            org_id,
            secrets.token_urlsafe(18),
            blueprint_id,
            channel_id,
            participant_param,
            metadata_params,
            max_completes,
            closes_at,
            True,
            completion_redirect_url,
            screenout_redirect_url,
            metadata,
            now,
        )

        def write(tx: Transaction) -> None:
            tx.change(
                f"INSERT INTO study_links ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    link.id,
                    org_id,
                    link.token,
                    blueprint_id,
                    channel_id,
                    participant_param,
                    json.dumps(list(metadata_params)),
                    max_completes,
                    closes_at,
                    True,
                    completion_redirect_url,
                    screenout_redirect_url,
                    json.dumps(metadata),
                    now,
                ),
            )

        await self.db.write(write)
        return link

    async def get(self, org_id: str, link_id: str) -> StudyLink:
        rows = await self.db.fetch(f"SELECT {_COLUMNS} FROM study_links WHERE id = ? AND org_id = ?", (link_id, org_id))
        if not rows:
            raise NotFound(f"No study link {link_id!r}", param="id")
        return _link(rows[0])

    async def by_token(self, token: str) -> StudyLink | None:
        rows = await self.db.fetch(f"SELECT {_COLUMNS} FROM study_links WHERE token = ?", (token,))
        return _link(rows[0]) if rows else None

    async def list(self, org_id: str, *, limit: int, starting_after: str | None) -> tuple[list[StudyLink], bool]:
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM study_links WHERE org_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (org_id, starting_after or "~", limit + 1),
        )
        return [_link(r) for r in rows[:limit]], len(rows) > limit

    async def update(self, link: StudyLink, **changes: Any) -> StudyLink:
        updated = replace(link, **changes)

        def write(tx: Transaction) -> None:
            tx.change(
                "UPDATE study_links SET max_completes = ?, closes_at = ?, active = ?, completion_redirect_url = ?,"
                " screenout_redirect_url = ?, metadata = ? WHERE id = ?",
                (
                    updated.max_completes,
                    updated.closes_at,
                    updated.active,
                    updated.completion_redirect_url,
                    updated.screenout_redirect_url,
                    json.dumps(updated.metadata),
                    link.id,
                ),
            )

        await self.db.write(write)
        return updated

    async def counts(self, link_id: str) -> LinkCounts:
        rows = await self.db.fetch(
            "SELECT count(*), coalesce(sum(CASE WHEN r.status = ? THEN 1 ELSE 0 END), 0)"
            " FROM study_link_participants p JOIN runs r ON r.id = p.run_id WHERE p.link_id = ?",
            (RunStatus.COMPLETED.value, link_id),
        )
        return LinkCounts(int(rows[0][0]), int(rows[0][1]))

    async def run_of(self, link_id: str, external_id: str) -> str | None:
        rows = await self.db.fetch(
            "SELECT run_id FROM study_link_participants WHERE link_id = ? AND external_id = ?", (link_id, external_id)
        )
        return str(rows[0][0]) if rows else None

    async def link_of_run(self, run_id: str) -> tuple[StudyLink, str] | None:
        """The link a run was made from, and the participant's id on it."""
        rows = await self.db.fetch(
            f"SELECT {', '.join('l.' + c.strip() for c in _COLUMNS.split(','))}, p.external_id"
            " FROM study_link_participants p JOIN study_links l ON l.id = p.link_id WHERE p.run_id = ?",
            (run_id,),
        )
        return (_link(rows[0][:-1]), str(rows[0][-1])) if rows else None

    async def claim(
        self,
        link: StudyLink,
        external_id: str,
        create_run: Callable[[Callable[[Transaction, str], None]], Awaitable[Run]],
    ) -> tuple[str, bool]:
        """The run of this participant on this link: made now (``create_run``), or the one made before.

        Returns (run id, made now). The participant's entry is written in the run's transaction.
        """

        def record(tx: Transaction, run_id: str) -> None:
            inserted = tx.change(
                "INSERT INTO study_link_participants (link_id, external_id, run_id, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (link_id, external_id) DO NOTHING",
                (link.id, external_id, run_id, time.time()),
            )
            if not inserted:
                raise AlreadyTaken(external_id)  # rolls the run back: the participant has one

        try:
            run = await create_run(record)
        except AlreadyTaken:
            existing = await self.run_of(link.id, external_id)
            assert existing is not None
            return existing, False
        return run.id, True
