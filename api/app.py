"""The aiohttp application: wiring of storage, live runs, routes and background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from api import (
    console,
    join,
    join_voice,
    mcp,
    media_socket,
    routes_catalog,
    routes_events,
    routes_exports,
    routes_meta,
    routes_org,
    routes_review,
    routes_runs,
    routes_study_links,
    routes_webhooks,
    telephony,
)
from api.auth import auth_middleware
from api.config import ServerConfig
from api.errors import error_middleware, error_response
from api.jobs import JobRunner
from api.live import Interviewers, LiveRuns, LiveSettings, Ownership
from api.loop_lag import LoopLagMonitor
from api.openapi import RouteTable
from api.state import STATE, AppState
from api.voice import Recordings, VoiceServices
from api.webhooks import AddressGuard, DeliveryWorker
from media.synthesis import SynthesisThreads
from media.tts import embedded_for_language
from media.webrtc import configure_host_addresses
from media.workers import SpeechWorkers
from runtime.events import EventHub
from runtime.interviewer import Interviewer
from runtime.interviewer.llm import LLMInterviewer, LLMSettings, ToolMode
from runtime.llm import ChatModel, Prices
from runtime.llm.openai_compat import OpenAICompatModel
from runtime.results import Analyst
from runtime.storage import Store, leases
from runtime.webhooks import RetryPolicy

log = logging.getLogger("vivavoce.app")

TABLES = (
    routes_meta.routes,
    routes_catalog.routes,
    routes_runs.routes,
    routes_review.routes,
    routes_events.routes,
    routes_webhooks.routes,
    routes_org.routes,
    routes_study_links.routes,
    routes_exports.routes,
    mcp.routes,
    join.routes,
    join_voice.routes,
    media_socket.routes,
    telephony.routes,
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
    model, prices = language_model(config)
    interviewers = Interviewers(
        fixed=interviewer,
        llm=None if model is None else LLMInterviewer(model, settings=llm_settings(config), prices=prices),
    )
    live = LiveRuns(
        store,
        interviewers,
        settings=LiveSettings(time_scale=config.time_scale, speculate=config.speculate),
        ownership=Ownership(store.leases, shared=store.db.shared, slot=config.slot, lease_s=config.lease_s),
    )
    analyst = Analyst(model, default_model=config.llm_model or "default", timeout_s=max(60.0, config.llm_timeout_s))
    jobs = JobRunner(store, analyst, prices, time_scale=config.time_scale, owner=lambda: live.ownership.id)
    voice = VoiceServices(
        _speech_workers(config),
        Recordings(config.data_dir / "recordings"),
        _synthesis(config),
        hosted_stt=config.hosted_engine("stt"),
        hosted_tts=config.hosted_engine("tts"),
    )
    live.on_run_finished.append(voice.recordings.finish)
    guard = AddressGuard(allow_private=config.webhooks_allow_private)
    deliveries = DeliveryWorker(
        store.webhooks,
        guard,
        policy=RetryPolicy(
            base_s=config.scaled(config.webhook_retry_base_s),
            cap_s=config.scaled(config.webhook_retry_cap_s),
            window_s=config.scaled(config.webhook_retry_window_s),
        ),
        timeout_s=config.webhook_timeout_s,
        poll_s=config.scaled(config.webhook_poll_s),
    )
    store.db.add_listener(deliveries.on_event)
    app[STATE] = AppState(
        config=config,
        store=store,
        hub=hub,
        live=live,
        voice=voice,
        loop_lag=LoopLagMonitor(),
        webhook_guard=guard,
        webhooks=deliveries,
        jobs=jobs,
    )
    table = all_routes()
    table.add_to(app.router)
    app[routes_meta.OPENAPI] = table.document(title="vivavoce", version=routes_meta.VERSION)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_let_participants_go)
    for engine in (voice.hosted_stt, voice.hosted_tts):
        if engine is not None:  # the key's variable is named, never its value
            key = "set" if engine.api_key() else "not set"
            log.info("hosted %s; embedded engines behind it; key from $%s (%s)", engine.describe(), engine.key_env, key)
    return app


def language_model(config: ServerConfig) -> tuple[ChatModel | None, Prices]:
    """The server's model for the AI interviewer and analyses (None: none configured), and its prices."""
    prices = Prices.parse(config.llm_prices) if config.llm_prices else Prices()
    if config.llm_base_url is None:
        return None, prices
    return OpenAICompatModel(base_url=config.llm_base_url, api_key=config.llm_api_key), prices


def llm_settings(config: ServerConfig) -> LLMSettings:
    return LLMSettings(
        default_model=config.llm_model or "default",
        chat_deadline_s=config.llm_timeout_s,
        voice_deadline_s=config.llm_voice_timeout_s,
        tool_mode=ToolMode(config.llm_tool_mode),
        warm_up=config.llm_warm_up,
    )


def _speech_workers(config: ServerConfig) -> SpeechWorkers:
    """Recognition workers; they synthesise too only when synthesis is not on threads of this process
    (then with one engine, the configured one for English: a worker holds one synthesiser)."""
    synthesizer = "espeak" if config.synthesis_inprocess else embedded_for_language(config.synthesizer, "en")[0]
    return SpeechWorkers(
        processes=config.speech_processes,
        recognizer=config.recognizer,
        recognizer_options=config.recognizer_options,
        synthesizer=synthesizer,
        inprocess=config.speech_inprocess,
    )


def _synthesis(config: ServerConfig) -> SynthesisThreads | None:
    if not config.synthesis_inprocess:
        return None
    # the thread name tells bench/voice.py this CPU apart from the sessions'
    return SynthesisThreads(
        synthesizer=config.synthesizer, threads=config.synthesis_threads, thread_name_prefix="synthesis"
    )


async def _let_participants_go(app: web.Application) -> None:
    """Drain, once the listening socket is closed and before aiohttp waits for handlers to finish: let every
    live run go (released for another process to take on) and send its participant to reconnect."""
    await app[STATE].live.hand_over()


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    if state.config.database_url is None:
        state.config.data_dir.mkdir(parents=True, exist_ok=True)
    await state.store.open()
    # PostgreSQL: SSE readers here see every process's events, and runs taken over elsewhere are let go here
    await state.store.db.follow_other_processes(
        state.hub, channels={leases.CHANNEL: state.live.on_notice}, on_gap=state.live.on_notice_gap
    )
    configure_host_addresses(state.config.ice_host_addresses or None)
    recovered = await state.live.recover()
    if recovered:
        log.info("resumed %d run(s) in progress", recovered)
    state.live.start()
    sweeper = asyncio.create_task(_sweep(state), name="join-expiry-sweeper")
    state.loop_lag.start()
    state.webhooks.start()
    state.jobs.start()
    yield
    await state.jobs.stop()
    await state.webhooks.close()
    await state.loop_lag.stop()
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper
    await state.live.hand_over()
    await state.live.interviewers.aclose()
    await state.voice.close()
    await state.store.close()


async def _sweep(state: AppState) -> None:
    """Fail runs whose join window passed without a join (joins check too, so this is only for the record),
    and erase the runs whose organization's retention period has passed."""
    interval = state.config.scaled(state.config.sweep_interval_s)
    while True:
        try:
            expired = await state.live.expire_pending()
            if expired:
                log.info("%d run(s) expired unjoined", expired)
        except Exception:
            log.exception("join-expiry sweep failed")
        try:
            erased = await routes_org.erase_expired(state)
            if erased:
                log.info("%d run(s) erased: their organization's retention period had passed", erased)
        except Exception:
            log.exception("retention sweep failed")
        await asyncio.sleep(interval)
