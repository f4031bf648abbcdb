"""Entry point of the local LLM's child process: ``python -m api.local_llm.child PARENT_PID -- SERVER_ARGS``.

It makes sure the child never outlives the vivavoce process that started it, then runs
``python -m llama_cpp.server SERVER_ARGS`` in this interpreter, unchanged. Two guards, because a
killed parent (SIGKILL, OOM) runs no cleanup:

- Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, so the kernel kills this process when its parent dies.
  The parent may already have died before that call, hence the ``getppid`` check right after it.
- Everywhere: a daemon thread that checks once a second whether this process was re-parented
  (``getppid`` changed) and exits if so; it also covers a PDEATHSIG that did not arm.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import runpy
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
WATCH_INTERVAL_S = 1.0


def die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(WATCH_INTERVAL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] != "--":
        raise SystemExit("usage: python -m api.local_llm.child PARENT_PID -- LLAMA_CPP_SERVER_ARGS")
    die_with_parent(int(argv[0]))
    sys.argv = ["llama_cpp.server", *argv[2:]]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
