"""Health and the API's own description."""

from __future__ import annotations

from aiohttp import web

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


@routes.route("GET", "/openapi.json", summary="This document (OpenAPI 3.1)", tag="meta", auth=False)
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])
