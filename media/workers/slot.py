"""One speech worker as the event loop sees it: its process (or thread), its socket, and the calls waiting on it.

A :class:`Slot` survives restarts of its worker (``generation`` counts them); replies and the end of the
connection arrive through :class:`ParentProtocol` on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import pickle
import queue
import socket
import sys
from collections.abc import Awaitable
from concurrent.futures import Future as ConcurrentFuture
from typing import TYPE_CHECKING, Any

from media.workers.wire import (
    HEADER,
    WRITE_HIGH_WATER,
    Frames,
    RemoteError,
    Reply,
    Request,
    WorkerDied,
    WorkerError,
    WorkerTimeout,
    encode,
)
from media.workers.worker import BOOTSTRAP, QueueChannel, thread_main

if TYPE_CHECKING:
    from media.workers.pool import SpeechWorkers

log = logging.getLogger("media.workers")


class _Waiter:
    """Where replies to one request go: a future (one reply) or a queue (a synthesis' chunks)."""

    __slots__ = ("future", "queue")

    def __init__(self, future: asyncio.Future[Any] | None = None, q: asyncio.Queue[Reply] | None = None) -> None:
        self.future = future
        self.queue = q

    def deliver(self, reply: Reply) -> bool:
        """Pass a reply on; True if the request is complete."""
        if self.queue is not None:
            self.queue.put_nowait(reply)
            return reply[1] != "chunk"
        future = self.future
        assert future is not None
        if not future.done():
            _, kind, payload = reply
            if kind == "ok":
                future.set_result(payload)
            elif kind == "err":
                future.set_exception(RemoteError(*payload))
            else:
                future.set_exception(payload if isinstance(payload, BaseException) else WorkerError(str(payload)))
        return True


class _ProcessHandle:
    """A worker process, its socket transport, and a task that is done once the process is reaped."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid = process.pid
        self.transport: asyncio.Transport | None = None
        self.exited: asyncio.Task[int] = asyncio.get_running_loop().create_task(process.wait())

    def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    def close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    async def wait(self, timeout: float) -> bool:
        """Wait until the process has exited and been reaped; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.exited)
        except TimeoutError:
            return False
        return True


class Slot:
    """One worker as seen from the event loop; survives restarts (``generation`` counts them)."""

    def __init__(self, pool: SpeechWorkers, index: int) -> None:
        self.pool = pool
        self.index = index
        self.generation = 0
        self.alive = False
        self.load = 0  # recognition streams pinned here + syntheses running
        self.pid: int | None = None
        self.waiters: dict[int, _Waiter] = {}
        self._ids = itertools.count(1)
        self._starting: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[Any] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._proc: _ProcessHandle | None = None  # process mode
        self._inbox: queue.SimpleQueue[Request] | None = None  # thread mode
        self._thread: ConcurrentFuture[None] | None = None

    def __repr__(self) -> str:
        return f"<speech worker {self.index} pid={self.pid} generation={self.generation} alive={self.alive}>"

    # lifecycle

    async def ensure_started(self) -> None:
        if self.alive:
            return
        if self.pool.closed:
            raise WorkerError("speech workers are closed")
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._start(), name=f"speech-worker-{self.index}")
        starting = self._starting
        try:
            await asyncio.shield(starting)
        finally:
            if starting.done() and self._starting is starting:
                self._starting = None

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._proc is not None:  # a dead predecessor: make sure it is gone
            await self._proc.wait(self.pool.stop_timeout)
        self.generation += 1
        generation = self.generation
        self._ready = loop.create_future()
        self._writable.set()
        self.alive = True
        if self.pool.inprocess:
            self._inbox = queue.SimpleQueue()
            deliver = functools.partial(self._deliver_threadsafe, loop, generation)
            self._thread = self.pool._executor().submit(thread_main, self.pool._config, self._inbox, deliver)
            self._thread.add_done_callback(functools.partial(self._thread_finished, loop, generation))
            self.pid = os.getpid()
        else:
            parent_sock, child_sock = socket.socketpair()
            try:
                # A fresh interpreter (the "spawn" start method), launched directly rather than through
                # multiprocessing, whose spawn re-imports the parent's __main__ in every child: under
                # `vivavoce serve` that is the whole server (3+ s and ~80 MB per worker).
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    BOOTSTRAP,
                    str(child_sock.fileno()),
                    pass_fds=(child_sock.fileno(),),
                    stdin=asyncio.subprocess.DEVNULL,
                )
            except BaseException:
                parent_sock.close()
                self.alive = False
                raise
            finally:
                child_sock.close()
            self._proc = proc = _ProcessHandle(process)
            self.pid = process.pid
            path = pickle.dumps(sys.path, protocol=pickle.HIGHEST_PROTOCOL)
            try:
                parent_sock.sendall(len(path).to_bytes(HEADER, "little") + path)
                parent_sock.setblocking(False)
                transport, _ = await loop.create_unix_connection(
                    lambda: ParentProtocol(self, generation), sock=parent_sock
                )
            except BaseException:
                parent_sock.close()
                proc.kill()
                self._lost(generation, WorkerDied(f"speech worker {self.index} could not be connected"))
                raise
            transport.write(encode((0, 0, "config", pickle.dumps(self.pool._config, pickle.HIGHEST_PROTOCOL))))
            transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
            proc.transport = transport  # type: ignore[assignment]
        try:
            async with asyncio.timeout(self.pool.start_timeout):
                info = await self._ready
        except BaseException as exc:
            self.kill()
            self._lost(generation, WorkerDied(f"speech worker {self.index} did not start: {exc!r}"))
            raise
        if info["error"] is not None:
            error = RemoteError(*info["error"])
            await self.stop(self.pool.stop_timeout)
            raise error

    def _deliver_threadsafe(self, loop: asyncio.AbstractEventLoop, generation: int, reply: Reply) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(self._on_reply, generation, reply)

    def _thread_finished(self, loop: asyncio.AbstractEventLoop, generation: int, done: ConcurrentFuture[None]) -> None:
        exc = None if done.cancelled() else done.exception()
        error = WorkerDied(f"speech worker {self.index} " + (f"crashed: {exc!r}" if exc else "stopped"))
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._lost, generation, error)

    async def stop(self, timeout: float) -> None:
        """Ask the worker to exit and wait for it; kill it if it does not exit within ``timeout``."""
        generation = self.generation
        if self.alive:
            with contextlib.suppress(WorkerError, OSError):
                self.send((0, 0, "stop", None))
        proc = self._proc
        if proc is not None:
            if not await proc.wait(timeout):
                log.warning("speech worker %d (pid %s) did not stop; killing it", self.index, proc.pid)
                proc.kill()
                await proc.wait(timeout)
            proc.close_transport()
            self._proc = None
        elif self._thread is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout):
                    await asyncio.wrap_future(self._thread)
            self._thread = None
        self._lost(generation, WorkerDied(f"speech worker {self.index} stopped"), expected=True)

    def kill(self, reason: str = "was killed") -> None:
        """Abandon the worker at once: its pending calls fail with :class:`WorkerDied` and the next stream or
        synthesis starts a new one. A process gets SIGKILL; a thread cannot be killed, so it is told to exit
        without replying once its current engine call returns (it keeps that executor thread until then)."""
        if not self.alive:
            return
        if self._proc is not None:
            self._proc.kill()
        elif self._inbox is not None:
            self._inbox.put((0, 0, QueueChannel.CRASH, None))
        self._lost(self.generation, WorkerDied(f"speech worker {self.index} (pid {self.pid}) {reason}"), expected=True)

    # messages

    def send(self, request: Request) -> None:
        if self._proc is not None and self._proc.transport is not None:
            self._proc.transport.write(encode(request))
        elif self._inbox is not None:
            self._inbox.put(request)
        else:
            raise WorkerDied(f"speech worker {self.index} is not running")

    async def drain(self) -> None:
        if not self._writable.is_set():
            await self._writable.wait()

    def check(self, generation: int) -> None:
        if not self.alive or generation != self.generation:
            raise WorkerDied(f"speech worker {self.index} died; the utterance running there was lost")

    async def call(self, generation: int, sid: int, op: str, payload: Any = None) -> Any:
        self.check(generation)
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiters[rid] = _Waiter(future=future)
        try:
            self.send((rid, sid, op, payload))
            return await self.wait(future)
        finally:
            self.waiters.pop(rid, None)

    async def wait(self, awaitable: Awaitable[Any]) -> Any:
        timeout = self.pool.reply_timeout
        if timeout is None:
            return await awaitable
        try:
            async with asyncio.timeout(timeout):
                return await awaitable
        except TimeoutError:
            log.error("speech worker %d gave no reply within %.1f s; killing it", self.index, timeout)
            self.kill(f"was killed: no reply within {timeout} s")
            raise WorkerTimeout(f"speech worker {self.index} gave no reply within {timeout} s") from None

    def open_stream(self) -> tuple[int, asyncio.Queue[Reply]]:
        rid = next(self._ids)
        q: asyncio.Queue[Reply] = asyncio.Queue()
        self.waiters[rid] = _Waiter(q=q)
        return rid, q

    def _on_reply(self, generation: int, reply: Reply) -> None:
        if generation != self.generation:
            return
        rid = reply[0]
        if rid == 0:
            if reply[1] == "ready" and self._ready is not None and not self._ready.done():
                self.pid = reply[2]["pid"]
                self._ready.set_result(reply[2])
            return
        waiter = self.waiters.get(rid)
        if waiter is not None and waiter.deliver(reply):
            self.waiters.pop(rid, None)

    def _lost(self, generation: int, error: WorkerDied, *, expected: bool = False) -> None:
        """The worker of ``generation`` is gone: fail everything that waits on it."""
        if generation != self.generation or not self.alive:
            return
        self.alive = False
        self._writable.set()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
            self._ready.exception()  # mark retrieved: _start() reports it
        waiters, self.waiters = self.waiters, {}
        for rid, waiter in waiters.items():
            waiter.deliver((rid, "died", error))
        self._inbox = None
        if self._proc is not None:
            self._proc.close_transport()
        if not expected and not self.pool.closed:
            log.error("%s; %d pending call(s) failed", error, len(waiters))

    def connection_lost(self, generation: int) -> None:
        if self.pool.closed:
            self._lost(generation, WorkerDied(f"speech worker {self.index} stopped"), expected=True)
        else:
            self._lost(generation, WorkerDied(f"speech worker {self.index} (pid {self.pid}) exited unexpectedly"))


class ParentProtocol(asyncio.Protocol):
    def __init__(self, slot: Slot, generation: int) -> None:
        self.slot = slot
        self.generation = generation
        self.frames = Frames()

    def data_received(self, data: bytes) -> None:
        for reply in self.frames.feed(data):
            self.slot._on_reply(self.generation, reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.slot.connection_lost(self.generation)

    def pause_writing(self) -> None:
        if self.generation == self.slot.generation:
            self.slot._writable.clear()

    def resume_writing(self) -> None:
        if self.generation == self.slot.generation:
            self.slot._writable.set()
