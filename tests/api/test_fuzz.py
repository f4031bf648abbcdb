"""An outside fuzzer holds the server to its own description: `schemathesis run /openapi.json --checks all`.

schemathesis (not ours) generates requests from /openapi.json, valid and invalid, and checks every answer:
no 5xx, schema-valid requests accepted and invalid ones refused, statuses, content types and bodies as
documented, `Allow` on a 405, auth not ignored. It runs against a real server here, with the bounds and the
two things JSON Schema cannot say in tests/api/fuzz/ (its config and hooks).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from tests.conftest import UNIT, ServerFactory

ROOT = Path(__file__).resolve().parents[2]
FUZZ = Path(__file__).resolve().parent / "fuzz"


def schemathesis_command() -> list[str]:
    beside = Path(sys.executable).with_name("schemathesis")
    found = str(beside) if beside.exists() else shutil.which("schemathesis")
    assert found, "schemathesis is a dev dependency (pip install -e '.[dev]')"
    return [found]


async def test_schemathesis_with_every_check_finds_nothing(server_factory: ServerFactory, tmp_path: Path) -> None:
    server = await server_factory()

    async def no_dns(host: str, port: int) -> list[tuple[Any, ...]]:
        raise OSError(f"{host}: the fuzz run resolves no names")  # generated webhook URLs reach nowhere

    server.state.webhook_guard._getaddrinfo = no_dns
    command = [
        *schemathesis_command(),
        "--no-color",
        "--config-file",
        str(FUZZ / "schemathesis.toml"),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "all",
        "-H",
        f"Authorization: Bearer {server.api_key}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SCHEMATHESIS_HOOKS": "tests.api.fuzz.hooks"}
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 900 * UNIT)
    report = out.decode(errors="replace")
    summary = report[report.rfind("SUMMARY") :]
    (tmp_path / "schemathesis.txt").write_text(report)
    failures = report[report.find("FAILURES") : report.find("WARNINGS")]
    assert proc.returncode == 0, (failures[:30_000] or report[-10_000:]) + summary
    assert "Tested:" in summary and "failure" not in summary.lower(), summary
