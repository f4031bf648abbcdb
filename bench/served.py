"""A `vivavoce serve` subprocess for the benchmarks that measure one server process (voice, soak).

Imported by the bench scripts as a sibling module (they run as ``python bench/NAME.py``).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOG_LINES = 200  # how much of the server's output a benchmark keeps


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    data: Path, port: int, *, log: list[str] | None = None, timeout_s: float = 60.0, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start the server on 127.0.0.1:``port`` with a fresh data dir; return it and what its first start
    printed (``key``, ``chat_channel``). Its output is read until it exits, or a full pipe would block
    the server (and its speech workers) on their next log line; the newest lines go to ``log``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--data-dir", str(data), "--port", str(port),
         "--ice-host-address", "127.0.0.1", "--log-level", "WARNING"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
    )  # fmt: skip
    info: dict[str, str] = {}
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    for line in proc.stdout:
        if m := re.search(r"API key \(shown once, store it now\): (\S+)", line):
            info["key"] = m.group(1)
        if m := re.search(r"chat channel (\S+);", line):
            info["chat_channel"] = m.group(1)
        if line.startswith("Demo interview") or time.monotonic() > deadline:
            break
    if "key" not in info:
        proc.kill()
        raise RuntimeError("the server did not start")
    threading.Thread(target=_keep_reading, args=(proc, log if log is not None else []), daemon=True).start()
    return proc, info


def _keep_reading(proc: subprocess.Popen[str], into: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        into.append(line.rstrip())
        del into[:-LOG_LINES]
