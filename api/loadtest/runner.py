"""Schedule simulated callers against one server, then check what they did against the server's records.

Bounds: callers start over ``ramp_s``; each keeps starting runs while the
duration lasts or the run budget is not used up; a caller that failed
``max_consecutive_failures`` sessions in a row stops; everything is abandoned
at the hard deadline (``duration_s + grace_s``, or ``deadline_s``); the final
check of transcripts has its own time limit. Every request goes to the
configured origin only (see :mod:`api.loadtest.config`).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from api.loadtest.callers import CALLERS, CallerContext, Counters, JoinTarget, SessionRecord
from api.loadtest.config import ConfigError, LoadtestConfig, Origin, check_target, join_ws_url
from api.loadtest.server_api import ApiError, ServerApi, describe

LATENCY_STAGES = ("network", "initial_wait", "transcriber", "eos", "eos_wait", "llm", "tts")
REFUSALS = (400, 401, 403, 404, 409, 413)  # a run could not be created for a reason that retrying will not change


@dataclass
class LoadtestResult:
    config: LoadtestConfig
    origin: str
    tag: str  # metadata["loadtest"] on every run it created
    blueprint_id: str | None
    started_at: float
    finished_at: float = 0.0
    sessions: list[SessionRecord] = field(default_factory=list)
    timeline: list[tuple[float, int, int, int]] = field(default_factory=list)  # t, callers, connected, open
    aborted: str | None = None  # the whole test was stopped early (a refusal, an unusable server)
    deadline_hit: bool = False
    verified: bool = False
    verify_note: str | None = None

    @property
    def failed_sessions(self) -> list[SessionRecord]:
        return [s for s in self.sessions if not s.ok]


# --- where runs come from ---------------------------------------------------------------------


class TargetSource(abc.ABC):
    name: str

    @abc.abstractmethod
    async def next(self, caller: int) -> JoinTarget | None:
        """A run to join, or None when there are no more."""


class ApiTargets(TargetSource):
    """Create each run through ``POST /v1/runs``; its join URL must be on the target origin."""

    name = "api"

    def __init__(self, api: ServerApi, origin: Origin, blueprint_id: str, channel_id: str, tag: str) -> None:
        self.api, self.origin = api, origin
        self.blueprint_id, self.channel_id, self.tag = blueprint_id, channel_id, tag

    async def next(self, caller: int) -> JoinTarget:
        t0 = time.perf_counter()
        run = await self.api.create_run(
            self.blueprint_id, self.channel_id, metadata={"loadtest": self.tag, "caller": str(caller)}
        )
        create_ms = (time.perf_counter() - t0) * 1000
        join_url = str(run["join_url"])
        ws_url = join_ws_url(join_url, self.origin, source="join URL returned by the server")
        return JoinTarget(join_url, ws_url, run_id=str(run["id"]), source=self.name, create_ms=create_ms)


class FileTargets(TargetSource):
    """Join URLs from a file, each used once, in order."""

    name = "file"

    def __init__(self, urls: Iterable[str], origin: Origin) -> None:
        self.urls = list(urls)
        self.origin = origin
        self._next = 0

    async def next(self, caller: int) -> JoinTarget | None:
        if self._next >= len(self.urls):
            return None
        url = self.urls[self._next]
        self._next += 1
        return JoinTarget(url, join_ws_url(url, self.origin), source=self.name)


class Budget:
    """Runs left to start across all callers (None: unlimited, within the duration)."""

    def __init__(self, total: int | None) -> None:
        self.left = total

    def take(self) -> bool:
        if self.left is None:
            return True
        if self.left <= 0:
            return False
        self.left -= 1
        return True


# --- the run ---------------------------------------------------------------------------------


async def run_loadtest(config: LoadtestConfig, *, counters: Counters | None = None) -> LoadtestResult:
    """Run the load test described by ``config``. Raises :class:`ConfigError` before any traffic if refused."""
    origin = check_target(config.url, allow_remote=config.allow_remote)
    if config.join_urls is not None:
        for n, url in enumerate(config.join_urls, 1):
            join_ws_url(url, origin, source=f"join URL #{n}")
    counters = counters if counters is not None else Counters()
    loop = asyncio.get_running_loop()
    result = LoadtestResult(config, str(origin), secrets.token_hex(4), config.blueprint_id, time.time())
    api = ServerApi(
        origin,
        config.api_key,
        connect_timeout_s=config.connect_timeout_s,
        request_timeout_s=config.request_timeout_s,
    )
    ws_http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
    start = loop.time()
    try:
        async with api:
            source: TargetSource
            if config.join_urls is not None:
                source = FileTargets(config.join_urls, origin)
            else:
                if result.blueprint_id is None:
                    try:
                        result.blueprint_id = await api.first_published_blueprint()
                    except Exception as exc:
                        result.aborted = f"cannot find a published blueprint: {describe(exc)}"
                        return result
                assert config.channel_id is not None
                source = ApiTargets(api, origin, result.blueprint_id, config.channel_id, result.tag)
            await _schedule(config, result, source, ws_http, counters, start)
            await _verify(config, result, api)
    finally:
        await ws_http.close()
        result.finished_at = time.time()
    return result


async def _schedule(
    config: LoadtestConfig,
    result: LoadtestResult,
    source: TargetSource,
    ws_http: aiohttp.ClientSession,
    counters: Counters,
    start: float,
) -> None:
    loop = asyncio.get_running_loop()
    deadline = start + config.hard_deadline_s
    duration_end = None if config.duration_s is None else start + config.duration_s
    gate = asyncio.Event() if config.sync_start else None
    stop = asyncio.Event()
    budget = Budget(config.total_runs)
    announced: set[int] = set()

    def announce(index: int) -> None:
        """A caller's first session is ready (or will not be): with sync_start, the last one opens the gate."""
        announced.add(index)
        if gate is not None and len(announced) >= config.callers:
            gate.set()

    ctx = CallerContext(
        http=ws_http,
        persona=config.persona,
        counters=counters,
        connect_timeout_s=config.connect_timeout_s,
        read_timeout_s=config.read_timeout_s,
        reconnect_window_s=config.reconnect_window_s,
        max_turns=config.max_turns_per_run,
        deadline=deadline,
        start_gate=gate,
        on_ready=announce,
    )
    caller_cls = CALLERS[config.kind]
    seed = config.seed if config.seed is not None else secrets.randbits(32)

    def abort(reason: str) -> None:
        if result.aborted is None:
            result.aborted = reason
        stop.set()
        if gate is not None:
            gate.set()

    async def caller_loop(index: int) -> None:
        offset = config.ramp_s * index / config.callers
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), offset)  # ramp: wait for our slot (or the end)
        caller = caller_cls(index, ctx, random.Random(seed * 100_003 + index))
        counters.callers_active += 1
        failures = 0
        try:
            while not stop.is_set() and loop.time() < deadline:
                if duration_end is not None and loop.time() >= duration_end:
                    break
                if not budget.take():
                    break
                try:
                    target = await source.next(index)
                except ConfigError as exc:
                    abort(str(exc))
                    break
                except Exception as exc:
                    rec = SessionRecord(index, config.kind, None, source.name)
                    rec.fail(f"create run: {describe(exc)}")
                    rec.ended_at = time.time()
                    counters.runs_failed += 1
                    counters.error(rec.failure or "")
                    if isinstance(exc, ApiError) and exc.status in REFUSALS:  # will not fix itself: stop everyone
                        result.sessions.append(rec)
                        abort(f"the server refused to create a run ({describe(exc)})")
                        break
                else:
                    if target is None:
                        break
                    rec = await caller.session(target)
                result.sessions.append(rec)
                announce(index)
                if rec.ok:
                    failures = 0
                    continue
                failures += 1
                if failures >= config.max_consecutive_failures:
                    break
                with contextlib.suppress(TimeoutError):  # back off a little before the next try
                    await asyncio.wait_for(stop.wait(), min(0.5 * failures, max(deadline - loop.time(), 0)))
        finally:
            counters.callers_active -= 1
            announce(index)

    async def sample() -> None:
        while True:
            result.timeline.append(
                (round(loop.time() - start, 3), counters.callers_active, counters.connected, counters.sessions_open)
            )
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample())
    tasks = [asyncio.create_task(caller_loop(i)) for i in range(config.callers)]
    try:
        # sessions give up at the deadline by themselves; this is the backstop
        _, late = await asyncio.wait(tasks, timeout=max(deadline - loop.time(), 0) + 5.0)
        if late:
            result.deadline_hit = True
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        result.timeline.append(
            (round(loop.time() - start, 3), counters.callers_active, counters.connected, counters.sessions_open)
        )
    if any(s.failure and s.failure.startswith("deadline") for s in result.sessions):
        result.deadline_hit = True


# --- the check against the server's records ----------------------------------------------------


def _stages_sum(breakdown: dict[str, Any] | None, stages: Iterable[str]) -> float | None:
    if not breakdown:
        return None
    values = [breakdown.get(s) for s in stages]
    present = [float(v) for v in values if isinstance(v, int | float)]
    return sum(present) if present else None


def compare(rec: SessionRecord, run: dict[str, Any]) -> dict[str, Any]:
    """What the server stored for ``rec``'s run, against what the caller did and measured."""
    transcript = run.get("transcript") or []
    by_client_id = {m.get("client_id"): m for m in transcript if m.get("role") == "user" and m.get("client_id")}
    by_id = {m.get("id"): m for m in transcript}
    made = [u for u in rec.utterances if u.sends > 0]
    missing = [u.client_id for u in made if u.client_id not in by_client_id]
    missing_acked = [u.client_id for u in made if u.acked and u.client_id not in by_client_id]
    mismatched = [
        u.client_id
        for u in made
        if u.client_id in by_client_id and by_client_id[u.client_id].get("content") != u.content.strip()
    ]
    turns = []
    for turn in rec.turns:
        reply = by_id.get(turn.reply_id) if turn.reply_id else None
        if reply is None or turn.latency_ms is None:
            continue
        breakdown = reply.get("latency_breakdown")
        turns.append(
            {
                "client_id": turn.client_id,
                "reply_id": turn.reply_id,
                "caller_ms": round(turn.latency_ms, 3),
                "server_turn_ms": _stages_sum(breakdown, ("initial_wait", "llm")),
                "server_stages_ms": _stages_sum(breakdown, LATENCY_STAGES),
            }
        )
    return {
        "status": run.get("status"),
        "end_reason": run.get("end_reason"),
        "utterances": len(made),
        "stored_user_messages": len(by_client_id),
        "missing": missing,
        "missing_acked": missing_acked,
        "content_mismatch": mismatched,
        "turns": turns,
    }


async def _verify(config: LoadtestConfig, result: LoadtestResult, api: ServerApi) -> None:
    if not config.verify:
        result.verify_note = "skipped (--no-verify)"
        return
    if not config.api_key:
        result.verify_note = "skipped: no --api-key to read transcripts with"
        return
    todo = [s for s in result.sessions if s.run_id]
    if not todo:
        result.verify_note = "no runs to check"
        return
    limit = asyncio.Semaphore(config.verify_concurrency)

    async def one(rec: SessionRecord) -> None:
        assert rec.run_id is not None
        async with limit:
            try:
                run = await api.get_run(rec.run_id, "transcript")
            except Exception as exc:
                rec.verification = {"error": describe(exc)}
                return
        rec.verification = compare(rec, run)

    budget = min(config.request_timeout_s + 0.05 * len(todo), 300.0)
    try:
        async with asyncio.timeout(budget):
            await asyncio.gather(*(one(s) for s in todo))
    except TimeoutError:
        result.verify_note = f"incomplete: the check of {len(todo)} runs took longer than {budget:.0f} s"
    for rec in todo:
        if rec.verification is None:
            rec.verification = {"error": "not checked (time limit)"}
    result.verified = True
