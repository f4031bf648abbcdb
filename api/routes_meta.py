"""Health and the API's own description."""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections import Counter

from aiohttp import web
from pydantic import BaseModel, Field

from api.openapi import Param, RouteTable
from api.schemas import HealthOut
from api.state import STATE

routes = RouteTable()

VERSION = "0.1.0"
OPENAPI = web.AppKey("vivavoce_openapi", dict)


@routes.route("GET", "/healthz", summary="Liveness, live runs, and event-loop lag", tag="meta", response=HealthOut,
              auth=False, params=(Param("reset_lag", "Start a new lag measurement (for benchmarks)"),))  # fmt: skip
async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if "reset_lag" in request.query:  # benchmarks: measure lag over one load level only
        state.loop_lag.reset()
    body = {
        "status": "ok",
        "version": VERSION,
        "live_runs": len(state.live.controllers),
        "loop_lag_ms": state.loop_lag.summary_ms(),
    }
    return web.json_response(body)


class RuntimeOut(BaseModel):
    asyncio_tasks: int = Field(description="Tasks alive on the server's event loop")
    tasks_by_name: dict[str, int] = Field(description="The 20 most frequent task names (coroutine names)")
    threads: int = Field(description="Python threads alive")
    threads_by_name: dict[str, int] = Field(description="Python threads by name, digits dropped (pools grow)")
    open_fds: int | None = Field(description="Open file descriptors (Linux; null elsewhere)")
    live_runs: int
    voice_tasks: int = Field(description="Signalling tasks of voice sessions still running")


def _task_name(task: asyncio.Task[object]) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) or task.get_name()


@routes.route("GET", "/v1/debug/runtime", summary="Counters for leak checks (tasks, threads, file descriptors)",
              tag="meta", response=RuntimeOut)  # fmt: skip
async def debug_runtime(request: web.Request) -> web.Response:
    """Soak tests read this before and after thousands of runs: every figure should come back to its baseline."""
    state = request.app[STATE]
    tasks = [t for t in asyncio.all_tasks() if not t.done()]
    try:
        fds: int | None = len(os.listdir("/proc/self/fd")) - 1  # listdir's own descriptor
    except OSError:
        fds = None
    body = RuntimeOut(
        asyncio_tasks=len(tasks),
        tasks_by_name=dict(Counter(_task_name(t) for t in tasks).most_common(20)),
        threads=threading.active_count(),
        threads_by_name=dict(Counter(re.sub(r"\d+", "N", t.name) for t in threading.enumerate())),
        open_fds=fds,
        live_runs=len(state.live.controllers),
        voice_tasks=len(getattr(state.voice, "_tasks", ())),
    )
    return web.json_response(body.model_dump())


@routes.route("GET", "/openapi.json", summary="This document (OpenAPI 3.1)", tag="meta", auth=False)
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])
