"""``vivavoce serve --workers N``: N server processes on this machine, one port, one PostgreSQL database.

The parent does what must happen once per machine, then supervises:

* before any worker starts: checks the port is free, runs the migrations and the
  first-start bootstrap (the API key is printed once, by the parent), and starts the
  local LLM (``--local-llm``: one per machine, its URL handed to every worker);
* starts the workers: each is ``vivavoce serve`` with the same options plus the hidden
  ``--as-worker I``, listening on the same port with ``SO_REUSEPORT`` (the kernel spreads
  new connections over them by their addresses' hash); a worker prints one line once
  it is ready, and its log lines name it (``worker-I/PID``);
* a worker that dies is started again (after a backoff if it keeps dying young); its
  runs are taken over at once by their participants' next connections, and the others
  claimed when its heartbeat runs out (runtime/storage/leases.py);
* SIGTERM or SIGINT: every worker drains (hands its runs over, tells its participants to
  reconnect) and exits, then the parent; SIGHUP: the workers are restarted one at a time
  (each drains first), e.g. after an upgrade, with the others serving meanwhile;
* each worker dies with the parent (``PR_SET_PDEATHSIG`` to SIGTERM, so it drains too).

Speech recognition workers are per server process (a server's pool talks to its own
children over pipes); each worker gets an equal share of the machine's cores unless
``--speech-processes`` says otherwise, so the machine's total stays one per core.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import dataclasses
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from api.config import ServerConfig

log = logging.getLogger("vivavoce.supervisor")

READY = "vivavoce worker ready"  # the line a worker prints once it listens
START_TIMEOUT_S = 120.0  # a worker not ready by then is killed (and the start fails)
STOP_GRACE_S = 30.0  # a worker still draining after this is killed
YOUNG_S = 10.0  # a worker dying younger than this is restarted after a growing backoff...
BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)  # ...of these
PR_SET_PDEATHSIG = 1


def worker_speech_processes(config: ServerConfig) -> int:
    """Each worker's share of the machine's cores for recognition (one worker process per core in all)."""
    return max(1, (os.cpu_count() or 1) // config.workers)


def check_port_free(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (another server has it), or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return f"cannot resolve {host}: {exc.strerror or exc}"
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def die_with_parent(parent_pid: int) -> None:
    """In a worker: be sent SIGTERM (and so drain) when the supervisor dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # it died before the call
        os.kill(os.getpid(), signal.SIGTERM)
        return

    def watch() -> None:  # where PDEATHSIG is not available
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


@dataclass
class Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    young_deaths: int = 0  # in a row
    retiring: bool = False  # the supervisor stopped it on purpose
    ready: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None


class Supervisor:
    """The parent of ``--workers`` processes. ``argv`` is the ``serve`` command line (``serve …``)."""

    def __init__(self, config: ServerConfig, argv: Sequence[str], *, env: dict[str, str] | None = None,
                 out: TextIO = sys.stdout) -> None:  # fmt: skip
        self.config = config
        self.argv = list(argv)
        self.env = dict(os.environ if env is None else env)
        self.out = out
        self.workers = [Worker(i) for i in range(1, config.workers + 1)]
        self._stop = asyncio.Event()
        self._restart_all = asyncio.Event()
        self._watchers: set[asyncio.Task[None]] = set()

    # --- starting --------------------------------------------------------------------------

    def command(self, worker: Worker) -> list[str]:
        return [sys.executable, "-m", "api.cli", *self.argv, "--as-worker", str(worker.index)]

    def worker_env(self) -> dict[str, str]:
        env = {**self.env, "PYTHONUNBUFFERED": "1", "VIVAVOCE_PARENT_PID": str(os.getpid())}
        if "VIVAVOCE_SPEECH_PROCESSES" not in env:  # a --speech-processes option still wins
            env["VIVAVOCE_SPEECH_PROCESSES"] = str(worker_speech_processes(self.config))
        return env

    async def start(self, worker: Worker) -> None:
        worker.ready = asyncio.Event()
        worker.retiring = False
        worker.proc = await asyncio.create_subprocess_exec(
            *self.command(worker),
            env=self.worker_env(),
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        worker.started_at = time.monotonic()
        worker.reader = asyncio.create_task(self._forward(worker, worker.proc), name=f"worker-{worker.index}-out")

    async def _forward(self, worker: Worker, proc: asyncio.subprocess.Process) -> None:
        """Pass the worker's printed lines on (its logs go to stderr directly); notice its ready line."""
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace").rstrip("\n")
            if text.startswith(READY):
                worker.ready.set()
            print(text, file=self.out, flush=True)

    async def started(self, worker: Worker) -> bool:
        """Start ``worker`` and wait until it is ready; False if it died or hung first."""
        await self.start(worker)
        assert worker.proc is not None
        exited = asyncio.create_task(worker.proc.wait())
        ready = asyncio.create_task(worker.ready.wait())
        done, _ = await asyncio.wait({exited, ready}, timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        for task in (exited, ready):
            if task not in done:
                task.cancel()
        if ready in done:
            return True
        if exited not in done:
            worker.proc.kill()
            await worker.proc.wait()
        return False

    # --- running -----------------------------------------------------------------------------

    async def run(self) -> int:
        """Start every worker, keep them running until SIGTERM/SIGINT, then drain them all. Returns the exit
        status: 1 if the workers could not be started."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._restart_all.set)
        try:
            results = await asyncio.gather(*(self.started(w) for w in self.workers))
            if not all(results):
                failed = [w.index for w, ok in zip(self.workers, results, strict=True) if not ok]
                print(f"vivavoce: worker(s) {failed} did not start; stopping", file=sys.stderr, flush=True)
                return 1
            serving = f"{len(self.workers)} worker processes serving {self.config.base_url}"
            print(f"vivavoce: {serving} (supervisor pid {os.getpid()}; SIGHUP restarts them one at a time)",
                  file=self.out, flush=True)  # fmt: skip
            for worker in self.workers:
                self._watch(worker)
            while not self._stop.is_set():
                stop = asyncio.create_task(self._stop.wait())
                restart = asyncio.create_task(self._restart_all.wait())
                await asyncio.wait({stop, restart}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                restart.cancel()
                if self._restart_all.is_set() and not self._stop.is_set():
                    self._restart_all.clear()
                    await self.rolling_restart()
            return 0
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.stop_all()

    def _watch(self, worker: Worker) -> None:
        task = asyncio.create_task(self._supervise(worker), name=f"watch-worker-{worker.index}")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _supervise(self, worker: Worker) -> None:
        """Restart ``worker`` whenever it exits without being asked to (backing off if it dies young)."""
        while not self._stop.is_set():
            assert worker.proc is not None
            code = await worker.proc.wait()
            if worker.retiring or self._stop.is_set():
                return
            lived = time.monotonic() - worker.started_at
            worker.young_deaths = worker.young_deaths + 1 if lived < YOUNG_S else 0
            delay = BACKOFF_S[min(worker.young_deaths, len(BACKOFF_S)) - 1] if worker.young_deaths else 0.0
            how = f"signal {-code}" if code < 0 else f"status {code}"
            log.warning("worker %d (pid %d) exited with %s after %.0f s; starting it again in %.1f s",
                        worker.index, worker.proc.pid, how, lived, delay)  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return
            if not await self.started(worker):
                log.error("worker %d did not start again; trying once more", worker.index)

    async def rolling_restart(self) -> None:
        """Each worker in turn drains and is started again (new code, new settings), the others serving."""
        log.info("restarting %d workers one at a time", len(self.workers))
        for worker in self.workers:
            if self._stop.is_set():
                return
            await self.retire(worker)
            if not await self.started(worker):
                log.error("worker %d did not start again after the restart", worker.index)
            self._watch(worker)

    async def retire(self, worker: Worker) -> None:
        """Ask ``worker`` to drain and exit (SIGTERM), killing it if it takes longer than ``STOP_GRACE_S``."""
        proc = worker.proc
        if proc is None or proc.returncode is not None:
            return
        worker.retiring = True
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            log.warning("worker %d (pid %d) still draining after %.0f s; killing it", worker.index, proc.pid,
                        STOP_GRACE_S)  # fmt: skip
            proc.kill()
            await proc.wait()
        if worker.reader is not None:
            await worker.reader

    async def stop_all(self) -> None:
        self._stop.set()
        await asyncio.gather(*(self.retire(w) for w in self.workers))
        for task in list(self._watchers):
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
