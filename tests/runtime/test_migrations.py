"""Schema migrations: a new database is built by them (SQLite and PostgreSQL), and a file from before them is upgraded
in place (SQLite only: there were no PostgreSQL databases before migrations)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from runtime.storage import Store, migrations
from runtime.storage.database import sync_engine
from runtime.storage.schema import metadata
from runtime.types import MessageRole, RunStatus
from tests.conftest import sqlite_only

ROOT = Path(__file__).resolve().parents[2]
# Made by commit a501cd3's code (create_all): the demo run and one finished interview.
LEGACY = ROOT / "fixtures" / "db" / "pre_alembic.sqlite"


def _differences(url: str) -> list[object]:
    engine = sync_engine(url)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata))
    finally:
        engine.dispose()


async def test_a_new_database_is_built_by_the_migrations_and_matches_the_tables_in_code(
    empty_database_url: str,
) -> None:
    engine = sync_engine(empty_database_url)
    try:
        assert migrations.current(engine) is None
        store = Store(empty_database_url)
        await store.open()
        await store.close()
        assert migrations.current(engine) == migrations.head()
    finally:
        engine.dispose()
    assert _differences(empty_database_url) == []


@sqlite_only("the files made before migrations were SQLite files")
async def test_a_database_made_before_migrations_is_upgraded_in_place_with_nothing_lost(tmp_path: Path) -> None:
    path = tmp_path / "legacy.db"
    shutil.copy(LEGACY, path)
    before = sqlite3.connect(path)
    counts = {t: before.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("runs", "messages", "events")}
    before.close()
    assert counts["messages"] == 3 and counts["runs"] == 2  # the demo run and one interview

    store = Store(f"sqlite+aiosqlite:///{path}")
    await store.open()
    try:
        (run_id,) = [r for (r,) in await store.db.fetch("SELECT run_id FROM run_metadata WHERE value = 'legacy'")]
        run = await store.runs.get_run(run_id)
        assert run.status is RunStatus.COMPLETED and run.participant.name == "Ada"
        messages = await store.messages.list_messages(run_id)
        assert [m.role for m in messages] == [MessageRole.ASSISTANT, MessageRole.ASSISTANT, MessageRole.USER]
        assert messages[2].content == "I build bridges for a living." and messages[2].client_id == "c1"
        assert messages[1].latency is not None and messages[1].latency.llm == 2.0
        events = await store.runs.list_events(run_id)
        assert [e.seq for e in events] == list(range(1, run.last_seq + 1))  # every event kept, gapless
        assert sum(1 for _ in await store.db.fetch("SELECT seq FROM events")) == counts["events"]
    finally:
        await store.close()
    assert _differences(f"sqlite+aiosqlite:///{path}") == []


@sqlite_only("it upgrades a SQLite file made before migrations")
def test_db_upgrade_command_reports_the_revisions(tmp_path: Path) -> None:
    shutil.copy(LEGACY, tmp_path / "vivavoce.db")
    args = [sys.executable, "-m", "api.cli", "db", "upgrade", "--data-dir", str(tmp_path)]
    first = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert f"empty -> {migrations.head()}" in first.stdout  # never migrated before: stamped, then upgraded
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and f"{migrations.head()} -> {migrations.head()}" in again.stdout


def test_db_upgrade_command_builds_an_empty_database_and_hides_its_password(empty_database_url: str) -> None:
    url = empty_database_url.replace("postgres@", "postgres:not-needed@", 1)  # trust auth ignores it
    args = [sys.executable, "-m", "api.cli", "db", "upgrade", "--database-url", url]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"empty -> {migrations.head()}" in done.stdout
    assert "not-needed" not in done.stdout
    assert _differences(empty_database_url) == []
