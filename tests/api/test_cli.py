"""The ``vivavoce`` command: first start creates and prints a key once; ``keys create`` makes more."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import POSTGRES, ServerFactory, database_env, sqlite_only

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


def vivavoce_in(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command run from another directory, as a user would (the project is importable, not the cwd)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


async def test_orgs_create_and_list_and_a_key_for_the_new_org_sees_only_its_data(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    first = await server_factory(data_dir=tmp_path / "data")
    env = database_env(tmp_path / "data")
    made = vivavoce("orgs", "create", "Lab of Phonetics", "--data-dir", str(tmp_path / "data"), env=env)
    assert made.returncode == 0, made.stderr
    org_id = made.stdout.strip()
    assert org_id.startswith("org_") and "keys create --org" in made.stderr
    listed = vivavoce("orgs", "list", "--data-dir", str(tmp_path / "data"), env=env)
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()
    assert rows[0].split() == ["id", "keys", "created", "(UTC)", "retention", "name"]
    assert [r.split()[1] for r in rows[1:]] == ["1", "0"]  # the default org has the first key, the new one none
    assert rows[-1].startswith(org_id) and rows[-1].endswith("Lab of Phonetics")

    for org in (org_id, "Lab of Phonetics"):  # by id or by name
        key = vivavoce("keys", "create", "--org", org, "--data-dir", str(tmp_path / "data"), env=env)
        assert key.returncode == 0, key.stderr
        status, channels = await first.request("GET", "/v1/channels", key=key.stdout.strip())
        assert status == 200 and channels["data"] == []  # the demo channels belong to the first org


def test_keys_create_for_an_unknown_org_says_so(empty_database_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"VIVAVOCE_DATABASE_URL": empty_database_url} if POSTGRES else {}
    if not POSTGRES:
        assert vivavoce("orgs", "create", "x", "--data-dir", str(data)).returncode == 1  # no database yet
    assert vivavoce("db", "upgrade", "--data-dir", str(data), env=env).returncode == 0
    made = vivavoce("keys", "create", "--org", "org_nope", "--data-dir", str(data), env=env)
    assert made.returncode == 1
    assert "no organization 'org_nope'" in made.stderr and "vivavoce orgs list" in made.stderr
    assert "Traceback" not in made.stderr and made.stdout == ""


@sqlite_only("the database file a command run elsewhere must not create")
def test_data_commands_run_elsewhere_leave_no_empty_database_behind(tmp_path: Path) -> None:
    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()
    for args in (("keys", "create"), ("orgs", "list"), ("orgs", "create", "x")):
        made = vivavoce_in(elsewhere, *args)
        assert made.returncode == 1, made
        assert "no database at" in made.stderr and "--data-dir" in made.stderr and "Traceback" not in made.stderr
    assert list(elsewhere.iterdir()) == []
