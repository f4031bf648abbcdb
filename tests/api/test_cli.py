"""The ``vivavoce`` command: first start creates and prints a key once; ``keys create`` makes more."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import POSTGRES, ServerFactory, database_env

ROOT = Path(__file__).resolve().parents[2]


def vivavoce(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


async def test_keys_create_makes_a_working_key_for_the_first_organization(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    first = await server_factory(data_dir=tmp_path / "data")
    made = vivavoce("keys", "create", "--data-dir", str(tmp_path / "data"), env=database_env(tmp_path / "data"))
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("vv_") and key != first.api_key
    status, runs = await first.request("GET", "/v1/runs", key=key)
    assert status == 200 and runs["object"] == "list"
    # only the hash is stored (database and its write-ahead log)
    for path in (tmp_path / "data").glob("*"):  # SQLite: the files (on PostgreSQL there are none)
        assert key.encode() not in path.read_bytes(), path
    stored = await first.state.store.db.fetch("SELECT key_hash, hint FROM api_keys")
    assert len(stored) == 2 and all(key not in str(value) for row in stored for value in row)


def test_keys_create_before_first_start_explains_what_to_do(empty_database_url: str, tmp_path: Path) -> None:
    env = {"VIVAVOCE_DATABASE_URL": empty_database_url} if POSTGRES else {}
    made = vivavoce("keys", "create", "--data-dir", str(tmp_path / "empty"), env=env)
    assert made.returncode == 1 and "vivavoce serve" in made.stderr


def test_serve_help_lists_the_options() -> None:
    shown = vivavoce("serve", "--help")
    assert shown.returncode == 0
    for option in ("--host", "--port", "--data-dir", "--database-url", "--public-url", "--join-window-s"):
        assert option in shown.stdout
