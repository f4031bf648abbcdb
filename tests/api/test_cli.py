"""The ``vivavoce`` command: first start creates and prints a key once; ``keys create`` makes more."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ServerFactory

ROOT = Path(__file__).resolve().parents[2]


def vivavoce(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


async def test_keys_create_makes_a_working_key_for_the_first_organization(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    first = await server_factory(data_dir=tmp_path / "data")
    made = vivavoce("keys", "create", "--data-dir", str(tmp_path / "data"))
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("vv_") and key != first.api_key
    status, runs = await first.request("GET", "/v1/runs", key=key)
    assert status == 200 and runs["object"] == "list"
    # only the hash is stored (database and its write-ahead log)
    for path in (tmp_path / "data").iterdir():
        assert key.encode() not in path.read_bytes(), path


def test_keys_create_before_first_start_explains_what_to_do(tmp_path: Path) -> None:
    made = vivavoce("keys", "create", "--data-dir", str(tmp_path / "empty"))
    assert made.returncode == 1 and "vivavoce serve" in made.stderr


def test_serve_help_lists_the_options() -> None:
    shown = vivavoce("serve", "--help")
    assert shown.returncode == 0
    for option in ("--host", "--port", "--data-dir", "--database-url", "--public-url", "--join-window-s"):
        assert option in shown.stdout
