"""The wire between the event loop and a speech worker: length-prefixed pickles, and the errors.

One ``socket.socketpair`` per worker (what ``multiprocessing.Pipe(duplex=True)`` is on Unix) carries
requests ``(request_id, stream_id, op, payload)`` and replies ``(request_id, kind, payload)``; audio travels
as raw ``int16`` bytes, text as ``str``, and nothing else crosses the boundary (engines named by string are
created in the worker with :func:`media.stt.create_recognizer` / :func:`media.tts.create_synthesizer`;
engine callables must be picklable top-level functions or classes). Request id 0 asks for no reply.
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Callable
from typing import Any

from media.stt.base import Recognizer
from media.tts.base import Synthesizer

RecognizerSpec = Callable[[], Recognizer] | str
SynthesizerSpec = Callable[[], Synthesizer] | str
Request = tuple[int, int, str, Any]  # (request_id, stream_id, op, payload); request_id 0: no reply wanted
Reply = tuple[int, str, Any]  # (request_id, kind, payload)

SPARE_RECOGNIZERS = 2  # idle recognisers a warm worker keeps loaded for the next streams
#: Bytes queued towards one worker before ``feed`` waits (about 30 s of 16 kHz audio).
WRITE_HIGH_WATER = 1 << 20
HEADER = 4  # little-endian uint32 length before each pickle
RECV_CHUNK = 1 << 18

# --- errors ---------------------------------------------------------------------------------------


class WorkerError(RuntimeError):
    """A speech worker could not do what was asked."""


class WorkerDied(WorkerError):
    """The worker process ended (crashed, was killed, or the pool closed) before replying."""


class WorkerTimeout(WorkerError, TimeoutError):
    """No reply within ``reply_timeout``; the worker has been killed."""


class RemoteError(WorkerError):
    """The engine raised in the worker; ``remote_type`` and ``remote_traceback`` describe it."""

    def __init__(self, remote_type: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{remote_type}: {message}")
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback


def error_payload(exc: BaseException) -> tuple[str, str, str]:
    return type(exc).__name__, str(exc), "".join(traceback.format_exception(exc))


# --- framing ---------------------------------------------------------------------------------------


def encode(message: Request | Reply) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(body).to_bytes(HEADER, "little") + body


class Frames:
    """Incremental parser for length-prefixed pickles."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buf = self.buffer
        buf += data
        out: list[Any] = []
        pos, end = 0, len(buf)
        view = memoryview(buf)
        try:
            while end - pos >= HEADER:
                size = int.from_bytes(view[pos : pos + HEADER], "little")
                if end - pos - HEADER < size:
                    break
                out.append(pickle.loads(view[pos + HEADER : pos + HEADER + size]))
                pos += HEADER + size
        finally:
            view.release()
        if pos:
            del buf[:pos]
        return out
