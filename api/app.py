"""The aiohttp application: wiring of storage, live runs, routes and background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from api import console, join, join_voice, routes_catalog, routes_events, routes_meta, routes_runs
from api.auth import auth_middleware
from api.config import ServerConfig
from api.errors import error_middleware, error_response
from api.live import LiveRuns, LiveSettings
from api.loop_lag import LoopLagMonitor
from api.openapi import RouteTable
from api.state import STATE, AppState
from api.voice import Recordings, VoiceServices
from media.webrtc import configure_host_addresses
from media.workers import SpeechWorkers
from runtime.events import EventHub
from runtime.interviewer import Interviewer, ScriptedInterviewer
from runtime.storage import Store

log = logging.getLogger("vivavoce.app")

TABLES = (
    routes_meta.routes,
    routes_catalog.routes,
    routes_runs.routes,
    routes_events.routes,
    join.routes,
    join_voice.routes,
    console.routes,
)


@web.middleware
async def body_limit_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Refuse an oversized body up front, also on routes that never read one (they would act on the request)."""
    limit = request.app[STATE].config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return error_response(413, "payload_too_large", f"request body is larger than {limit} bytes")
    return await handler(request)  # type: ignore[no-any-return]


def all_routes() -> RouteTable:
    table = RouteTable()
    for t in TABLES:
        table.routes.extend(t.routes)
    return table


def create_app(config: ServerConfig, *, interviewer: Interviewer | None = None) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, body_limit_middleware, auth_middleware], client_max_size=config.max_body_bytes
    )
    store = Store(config.db_url, synchronous=config.sqlite_synchronous)
    hub = EventHub()
    store.db.add_listener(hub.publish)
    live = LiveRuns(store, interviewer or ScriptedInterviewer(), settings=LiveSettings(time_scale=config.time_scale))
    workers = SpeechWorkers(
        processes=config.speech_processes,
        recognizer=config.recognizer,
        recognizer_options=config.recognizer_options,
        synthesizer=config.synthesizer,
        inprocess=config.speech_inprocess,
    )
    synthesis = None
    if config.synthesis_inprocess and not config.speech_inprocess:
        synthesis = SpeechWorkers(
            processes=1,
            inprocess=True,
            recognizer=config.recognizer,
            synthesizer=config.synthesizer,
            warm=False,
            thread_name_prefix="synthesis",  # bench/voice.py tells this CPU apart from the sessions' by name
        )
    voice = VoiceServices(workers, Recordings(config.data_dir / "recordings"), synthesis)
    live.on_run_finished.append(voice.recordings.finish)
    app[STATE] = AppState(config=config, store=store, hub=hub, live=live, voice=voice, loop_lag=LoopLagMonitor())
    table = all_routes()
    table.add_to(app.router)
    app[routes_meta.OPENAPI] = table.document(title="vivavoce", version=routes_meta.VERSION)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_let_participants_go)
    return app


async def _let_participants_go(app: web.Application) -> None:
    """Before aiohttp waits for handlers to finish, stop live runs' timers and close their sockets."""
    await app[STATE].live.close()


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    if state.config.database_url is None:
        state.config.data_dir.mkdir(parents=True, exist_ok=True)
    await state.store.open()
    configure_host_addresses(state.config.ice_host_addresses or None)
    recovered = await state.live.recover()
    if recovered:
        log.info("resumed %d run(s) in progress", recovered)
    sweeper = asyncio.create_task(_sweep(state), name="join-expiry-sweeper")
    state.loop_lag.start()
    yield
    await state.loop_lag.stop()
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper
    await state.live.close()
    await state.voice.close()
    await state.store.close()


async def _sweep(state: AppState) -> None:
    """Fail runs whose join window passed without a join (joins check too, so this is only for the record)."""
    interval = state.config.scaled(state.config.sweep_interval_s)
    while True:
        try:
            expired = await state.live.expire_pending()
            if expired:
                log.info("%d run(s) expired unjoined", expired)
        except Exception:
            log.exception("join-expiry sweep failed")
        await asyncio.sleep(interval)
