"""Event-loop lag: how late the loop runs a callback that asked to run at a given time.

Everything in a process shares one event loop; CPU work that sneaks onto it
(decoding, resampling, JSON of a large transcript) shows up here first. The
monitor sleeps ``interval`` seconds at a time and records how much longer each
sleep took; /healthz reports p50, p99 and max over the recent samples.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import numpy as np


class LoopLagMonitor:
    def __init__(self, *, interval: float = 0.05, samples: int = 1200) -> None:
        self.interval = interval
        self.lags: deque[float] = deque(maxlen=samples)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def reset(self) -> None:
        self.lags.clear()

    def summary_ms(self) -> dict[str, float | None]:
        if not self.lags:
            return {"p50": None, "p99": None, "max": None}
        values = np.array(self.lags) * 1000.0
        return {
            "p50": round(float(np.percentile(values, 50)), 3),
            "p99": round(float(np.percentile(values, 99)), 3),
            "max": round(float(values.max()), 3),
        }

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.lags.append(max(loop.time() - due, 0.0))
