"""Schema migrations (Alembic), for SQLite and PostgreSQL alike.

Every schema change is a revision under ``versions/``; :func:`upgrade` brings any
database to the newest one, and ``vivavoce db upgrade`` runs it by hand (``serve``
runs it on start). A SQLite file made before migrations existed (tables, but no
``alembic_version``) is recognised and stamped at the baseline first, so it is
upgraded in place with nothing lost.

Alembic is driven from code, not from an ``alembic.ini``: the script location is
this package and the connection is the caller's (``config.attributes``).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

HERE = Path(__file__).resolve().parent
BASELINE = "0001"


def _config(conn: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = conn
    return cfg


def head() -> str:
    """The newest revision in the code."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    revision = ScriptDirectory.from_config(cfg).get_current_head()
    assert revision is not None
    return revision


def current(engine: Engine) -> str | None:
    """The revision a database is at; None if it has never been migrated."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


# PostgreSQL: processes starting at once (several machines, or a deployment's replicas) migrate one at a time;
# PostgreSQL's DDL is transactional, so the next one finds the schema at the newest revision and does nothing.
MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('vivavoce migrations'))"


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Bring the database to ``revision`` (default: the newest); returns where it ended up."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text(MIGRATION_LOCK))
        cfg = _config(conn)
        tables = set(inspect(conn).get_table_names())
        if "alembic_version" not in tables and "runs" in tables:
            command.stamp(cfg, BASELINE)  # made by the code before migrations: it is the baseline schema
        command.upgrade(cfg, revision)
    reached = current(engine)
    assert reached is not None
    return reached
