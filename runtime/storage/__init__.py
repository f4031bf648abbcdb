"""Durable storage: SQLAlchemy Core over SQLite (aiosqlite) by default.

:class:`Store` bundles the database handle with its parts: the
:class:`~runtime.storage.catalog.Catalog` (what researchers set up), the
:class:`~runtime.storage.runs.RunStore` (interviews: runs and their sessions) and the
:class:`~runtime.storage.messages.MessageStore` (what was said in them), and the rest beside them.
"""

from __future__ import annotations

from runtime.storage.catalog import Catalog
from runtime.storage.database import Database
from runtime.storage.erasure import Erasure
from runtime.storage.leases import LeaseStore
from runtime.storage.messages import MessageStore, NewMessage
from runtime.storage.review import Review
from runtime.storage.runs import RunFilter, RunStore
from runtime.storage.study_links import StudyLinks
from runtime.storage.webhooks import WebhookStore

__all__ = [
    "Catalog",
    "Database",
    "LeaseStore",
    "MessageStore",
    "NewMessage",
    "RunFilter",
    "RunStore",
    "Store",
    "WebhookStore",
]


class Store:
    def __init__(self, url: str, *, synchronous: str = "FULL") -> None:
        self.db = Database(url, synchronous=synchronous)
        self.catalog = Catalog(self.db)
        self.runs = RunStore(self.db)
        self.messages = MessageStore(self.db)
        self.leases = LeaseStore(self.db, self.runs)
        self.webhooks = WebhookStore(self.db)
        self.erasure = Erasure(self.db)
        self.study_links = StudyLinks(self.db)
        self.review = Review(self.db, self.messages)

    async def open(self) -> None:
        await self.db.create_schema()

    async def close(self) -> None:
        await self.db.close()
