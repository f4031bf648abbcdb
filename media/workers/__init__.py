"""Speech recognition and synthesis in worker processes, driven from asyncio.

Three ideas, one module each: :mod:`~media.workers.wire` (the messages and errors between the event loop
and a worker), :mod:`~media.workers.worker` (the worker's loop, in a process or a thread) and
:mod:`~media.workers.pool` (:class:`SpeechWorkers` and :class:`RecognitionStream`, on the event loop).
"""

from __future__ import annotations

from media.workers.pool import RecognitionStream, SpeechWorkers
from media.workers.wire import WRITE_HIGH_WATER, RemoteError, WorkerDied, WorkerError, WorkerTimeout

__all__ = [
    "IN_WORKER_PROCESS",
    "WRITE_HIGH_WATER",
    "RecognitionStream",
    "RemoteError",
    "SpeechWorkers",
    "WorkerDied",
    "WorkerError",
    "WorkerTimeout",
]

#: Set in a worker process before the engine factories are unpickled (modules they import can check it).
IN_WORKER_PROCESS = False
