"""``vivavoce serve`` as a real subprocess (durability and multi-process tests)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import UNIT, database_env

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One server process on ``data_dir`` (and, on PostgreSQL, the test database of ``database_of``, default it);
    ``args`` are more options of ``vivavoce serve``."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *args: str,
        database_of: Path | None = None,
        env: dict[str, str] | None = None,
        ready: str = "Demo interview",
    ) -> None:
        self.data_dir, self.port, self.args = data_dir, port, args
        self.database_of = database_of or data_dir
        self.env = env or {}
        self.ready = ready  # the line printed once it serves (the banner's last)
        self.output: list[str] = []  # what it printed (and logged)
        self._pump: asyncio.Task[None] | None = None
        self.url = f"http://127.0.0.1:{port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.api_key: str | None = None
        self.banner: dict[str, str] = {}

    async def start(self) -> None:
        self.api_key = None
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **database_env(self.database_of), **self.env}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "api.cli", "serve", "--data-dir", str(self.data_dir), "--port", str(self.port),
            "--log-level", "WARNING", *self.args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert self.proc.stdout is not None
        while True:
            line = (await asyncio.wait_for(self.proc.stdout.readline(), 30 * UNIT)).decode()
            assert line, "server exited before it was ready"
            self.output.append(line)
            if m := re.search(r"API key \(shown once, store it now\): (\S+)", line):
                self.api_key = m.group(1)
            if m := re.search(r"Demo blueprint (\S+); chat channel (\S+);", line):
                self.banner = {"blueprint_id": m.group(1), "channel_id": m.group(2)}
            if line.startswith(self.ready):
                self._pump = asyncio.create_task(self._read_the_rest(self.proc.stdout))
                return

    async def _read_the_rest(self, stdout: asyncio.StreamReader) -> None:
        """Keep reading what it prints (its log lines too), so that a full pipe never blocks it."""
        while line := await stdout.readline():
            self.output.append(line.decode(errors="replace"))

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        if self._pump is not None:
            await self._pump
        return code

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)  # a test may have paused it
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 10 * UNIT)
        if self._pump is not None:
            await asyncio.wait_for(self._pump, 10 * UNIT)
