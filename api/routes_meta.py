"""Health and the API's own description."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import threading
import tracemalloc
from collections import Counter
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from api.openapi import Param, RouteTable
from api.params import check_query, flag
from api.schemas import HealthOut
from api.state import STATE

routes = RouteTable()

VERSION = "0.1.0"
OPENAPI = web.AppKey("vivavoce_openapi", dict)


@routes.route("GET", "/healthz", summary="Liveness, live runs, and event-loop lag", tag="meta", response=HealthOut,
              auth=False, also=(503,),
              params=(Param("reset_lag", "Start a new lag measurement (for benchmarks)"),))  # fmt: skip
async def healthz(request: web.Request) -> web.Response:
    """503 while draining, so that a load balancer's health check stops sending participants here."""
    state = request.app[STATE]
    if "reset_lag" in request.query:  # benchmarks: measure lag over one load level only
        state.loop_lag.reset()
    draining = state.live.draining
    body = {
        "status": "draining" if draining else "ok",
        "version": VERSION,
        "process": state.live.ownership.id,
        "live_runs": len(state.live.controllers),
        "loop_lag_ms": state.loop_lag.summary_ms(),
    }
    return web.json_response(body, status=503 if draining else 200)


class RuntimeOut(BaseModel):
    asyncio_tasks: int = Field(description="Tasks alive on the server's event loop")
    tasks_by_name: dict[str, int] = Field(description="The 20 most frequent task names (coroutine names)")
    threads: int = Field(description="Python threads alive")
    threads_by_name: dict[str, int] = Field(description="Python threads by name, digits dropped (pools grow)")
    open_fds: int | None = Field(description="Open file descriptors (Linux; null elsewhere)")
    live_runs: int
    voice_tasks: int = Field(description="Signalling tasks of voice sessions still running")
    python_objects: int = Field(description="Objects tracked by the garbage collector (a leak grows this)")
    python_heap_bytes: int | None = Field(
        description="Python heap in use, if the server runs with PYTHONTRACEMALLOC set; else null"
    )
    python_heap_top: list[str] = Field(description="With PYTHONTRACEMALLOC: the 15 source lines holding most heap")
    objects_by_type: dict[str, int] | None = Field(
        description="With ?objects=true: the 25 most numerous object types the garbage collector tracks"
    )
    speculation: dict[str, Any] = Field(
        description="Voice replies composed during the pause: started, used, wasted, and how early (lead_ms)"
    )


def _count_types(objects: list[object], n: int) -> dict[str, int]:
    counts = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objects)
    return dict(counts.most_common(n))


def _heap_top(n: int) -> list[str]:
    """Where the Python heap is held (slow on a big heap: a leak hunt, not a health check)."""
    stats = tracemalloc.take_snapshot().statistics("lineno")[:n]
    return [f"{s.traceback[0].filename}:{s.traceback[0].lineno} {s.size} B in {s.count} blocks" for s in stats]


def _task_name(task: asyncio.Task[object]) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) or task.get_name()


@routes.route("GET", "/v1/debug/runtime", summary="Counters for leak checks (tasks, threads, file descriptors)",
              tag="meta", response=RuntimeOut, errors=(400,),
              params=(Param("objects", "true: also count objects by type (slow)", {"type": "boolean"}),
                      Param("collect", "true: run a full garbage collection first, so that only live objects "
                            "count (slow)", {"type": "boolean"})))  # fmt: skip
async def debug_runtime(request: web.Request) -> web.Response:
    """Soak tests read this before and after thousands of runs: every figure should come back to its baseline."""
    check_query(request, ("objects", "collect"))
    by_type, collect = (flag(request, name) for name in ("objects", "collect"))
    state = request.app[STATE]
    if collect:  # cyclic garbage (aiortc leaves plenty) is not a leak: count what survives a full collection
        gc.collect()
    objects = gc.get_objects()
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
        python_objects=len(objects),
        python_heap_bytes=tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None,
        python_heap_top=_heap_top(15) if tracemalloc.is_tracing() else [],
        objects_by_type=_count_types(objects, 25) if by_type else None,
        speculation=state.live.speculation.as_dict(),
    )
    return web.json_response(body.model_dump())


@routes.route("GET", "/openapi.json", summary="This document (OpenAPI 3.1)", tag="meta", auth=False)
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])
