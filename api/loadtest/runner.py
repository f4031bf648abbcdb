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
import logging
import random
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from api.loadtest.callers import CallerContext, Counters, JoinTarget, SessionRecord, caller_class
from api.loadtest.config import (
    CHANNEL_KINDS,
    ConfigError,
    LoadtestConfig,
    Origin,
    check_target,
    is_loopback,
    join_ws_url,
)
from api.loadtest.server_api import ApiError, ServerApi, describe
from api.loadtest.synthetic import SyntheticParticipant
from media.stt.wer import normalize_words, word_edit_distance, word_error_rate
from runtime.llm.openai_compat import OpenAICompatModel

log = logging.getLogger("vivavoce.loadtest")

LATENCY_STAGES = ("network", "initial_wait", "transcriber", "eos", "eos_wait", "llm", "tts")
# voice: the stages that telescope from the end of the participant's speech to the reply's first frame sent
VOICE_STAGES = ("eos", "eos_wait", "transcriber", "llm", "tts", "initial_wait")
# a spoken answer counts as stored when a user message's words are within this word error rate of the
# fixture's text: the embedded recogniser gets single fixture answers to 0.4-0.45 through the Opus link,
# while any two different fixtures are at least 0.78 apart (so an answer is not matched to another one)
VOICE_MATCH_MAX_WER = 0.6
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
    channel_kinds: dict[str, str] = field(default_factory=dict)  # channel id → caller kind
    synthetic_answers: dict[str, int] | None = None  # by the model / canned instead, with a synthetic persona

    @property
    def failed_sessions(self) -> list[SessionRecord]:
        return [s for s in self.sessions if not s.ok]


# --- where runs come from ---------------------------------------------------------------------


class TargetSource(abc.ABC):
    name: str

    @abc.abstractmethod
    async def next(self, caller: int) -> JoinTarget | None:
        """A run to join, or None when there are no more."""

    def kind_for(self, caller: int) -> str:
        """The kind of caller that joins this source's runs for caller number ``caller``."""
        return "chat"


class ApiTargets(TargetSource):
    """Create each run through ``POST /v1/runs``; its join URL must be on the target origin."""

    name = "api"

    def __init__(self, api: ServerApi, origin: Origin, blueprint_id: str, channels: dict[str, str], tag: str) -> None:
        self.api, self.origin = api, origin
        self.blueprint_id, self.tag = blueprint_id, tag
        self.channels = list(channels.items())  # (channel id, caller kind); caller i uses channels[i % n]

    def kind_for(self, caller: int) -> str:
        return self.channels[caller % len(self.channels)][1]

    async def next(self, caller: int) -> JoinTarget:
        t0 = time.perf_counter()
        channel_id = self.channels[caller % len(self.channels)][0]
        run = await self.api.create_run(
            self.blueprint_id, channel_id, metadata={"loadtest": self.tag, "caller": str(caller)}
        )
        create_ms = (time.perf_counter() - t0) * 1000
        join_url = str(run["join_url"])
        ws_url = join_ws_url(join_url, self.origin, source="join URL returned by the server")
        return JoinTarget(join_url, ws_url, run_id=str(run["id"]), source=self.name, create_ms=create_ms)


class FileTargets(TargetSource):
    """Join URLs from a file, each used once, in order."""

    name = "file"

    def __init__(self, urls: Iterable[str], origin: Origin, kind: str = "chat") -> None:
        self.urls = list(urls)
        self.origin = origin
        self.kind = kind
        self._next = 0

    def kind_for(self, caller: int) -> str:
        return self.kind

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
                source = FileTargets(config.join_urls, origin, "chat" if config.kind == "auto" else config.kind)
            else:
                if result.blueprint_id is None:
                    try:
                        result.blueprint_id = await api.first_published_blueprint()
                    except Exception as exc:
                        result.aborted = f"cannot find a published blueprint: {describe(exc)}"
                        return result
                try:
                    result.channel_kinds = await _channel_kinds(config, api)
                except (ApiError, ConfigError) as exc:
                    result.aborted = str(exc) if isinstance(exc, ConfigError) else f"channel: {describe(exc)}"
                    return result
                except Exception as exc:
                    result.aborted = f"cannot read the channel: {describe(exc)}"
                    return result
                source = ApiTargets(api, origin, result.blueprint_id, result.channel_kinds, result.tag)
            kinds = {source.kind_for(i) for i in range(config.callers)}
            voice = None
            if "voice" in kinds:
                from api.loadtest.voice import VoiceAnswers

                try:
                    voice = VoiceAnswers.load(config.persona)
                except ConfigError as exc:
                    result.aborted = str(exc)
                    return result
            with _loopback_ice(origin if "voice" in kinds else None):
                await _schedule(config, result, source, ws_http, counters, start, voice=voice)
            await _verify(config, result, api)
    finally:
        await ws_http.close()
        result.finished_at = time.time()
    return result


async def _channel_kinds(config: LoadtestConfig, api: ServerApi) -> dict[str, str]:
    """Each channel's caller kind from its type (``GET /v1/channels/{id}``); an explicit ``kind`` must agree."""
    kinds: dict[str, str] = {}
    for channel_id in config.channel_ids:
        channel = await api.get_channel(channel_id)
        kind = CHANNEL_KINDS.get(str(channel.get("type")))
        if kind is None:
            raise ConfigError(f"channel {channel_id} has type {channel.get('type')!r}, which no caller can join")
        if config.kind != "auto" and kind != config.kind:
            raise ConfigError(
                f"channel {channel_id} is a {channel.get('type')} channel but --kind is {config.kind}; "
                "leave --kind at auto or pick a matching channel"
            )
        kinds[channel_id] = kind
    return kinds


@contextlib.contextmanager
def _loopback_ice(origin: Origin | None) -> Iterator[None]:
    """Voice callers against a loopback server offer loopback ICE candidates (aioice never does by itself).

    Process-global while the load test runs, and restored after it (a server in the same process
    that was configured the same way keeps working).
    """
    if origin is None or not is_loopback(origin.host):
        yield
        return
    import aioice.ice

    from media.webrtc import configure_host_addresses

    saved = aioice.ice.get_host_addresses
    configure_host_addresses(["::1"] if ":" in origin.host else ["127.0.0.1"])
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = saved


async def _schedule(
    config: LoadtestConfig,
    result: LoadtestResult,
    source: TargetSource,
    ws_http: aiohttp.ClientSession,
    counters: Counters,
    start: float,
    *,
    voice: Any = None,
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

    synthetic: SyntheticParticipant | None = None
    if config.persona.description and config.llm_base_url:
        model = OpenAICompatModel(base_url=config.llm_base_url, api_key=config.llm_api_key)
        synthetic = SyntheticParticipant(model, config.persona, model_name=config.llm_model or "default")
    elif config.persona.description:
        log.warning("the persona has a description but no --llm-base-url: it answers from its canned list")
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
        media_timeout_s=config.media_timeout_s,
        voice=voice,
        synthetic=synthetic,
    )
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
        kind = source.kind_for(index)
        caller = caller_class(kind)(index, ctx, random.Random(seed * 100_003 + index))
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
                    rec = SessionRecord(index, kind, None, source.name)
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
        if synthetic is not None:
            result.synthetic_answers = {"model": synthetic.answered, "canned": synthetic.fell_back}
            await synthetic.model.aclose()
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
    if rec.kind == "voice":
        return compare_voice(rec, run)
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


def compare_voice(rec: SessionRecord, run: dict[str, Any]) -> dict[str, Any]:
    """The voice caller's answers against the stored user messages, in order, by their words.

    Stored voice messages carry no ``client_id``: each answer is matched to the next stored user message
    within :data:`VOICE_MATCH_MAX_WER` of its fixture text (skipping stored messages that match nothing,
    e.g. noise); an answer with no such message is ``missing`` when a stored message is left in its place
    it is ``content_mismatch`` instead. Answers cut short by a drop or the run's end (``optional``) may be
    absent. ``server_turn_ms`` is the sum of the six stages from the end of speech to the reply's first
    frame sent (eos … initial_wait): the caller's ``turn_ms`` covers the same span plus the network both
    ways and the caller's jitter buffer.
    """
    transcript = run.get("transcript") or []
    users = [m for m in transcript if m.get("role") == "user"]
    by_id = {m.get("id"): m for m in transcript}
    made = [u for u in rec.utterances if u.sends > 0]
    matched: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    mismatched: list[str] = []
    pos = 0
    for u in made:
        hit = next(
            (j for j in range(pos, len(users)) if word_error_rate(u.content, users[j].get("content") or "")
             <= VOICE_MATCH_MAX_WER),
            None,
        )  # fmt: skip
        if hit is not None:
            matched[u.client_id] = users[hit]
            pos = hit + 1
        elif u.optional:
            continue
        elif pos < len(users):
            mismatched.append(u.client_id)
            matched[u.client_id] = users[pos]
            pos += 1
        else:
            missing.append(u.client_id)
    edits = words = 0
    for u in made:
        if u.client_id in matched:
            ref = normalize_words(u.content)
            edits += word_edit_distance(ref, normalize_words(matched[u.client_id].get("content") or ""))
            words += len(ref)
    turns = []
    for turn in rec.turns:
        reply = by_id.get(turn.reply_id) if turn.reply_id else None
        if reply is None or turn.latency_ms is None:
            continue
        breakdown = reply.get("latency_breakdown") or {}
        anchored = breakdown.get("eos") is not None  # timed from the end of this answer's speech
        server = _stages_sum(breakdown, VOICE_STAGES) if anchored else None
        turns.append(
            {
                "client_id": turn.client_id,
                "reply_id": turn.reply_id,
                "caller_ms": round(turn.latency_ms, 3),
                "server_turn_ms": server,
                "server_stages_ms": _stages_sum(breakdown, ("network", *VOICE_STAGES)) if anchored else None,
                "network_ms": breakdown.get("network"),
            }
        )
    interrupted = {m.get("id") for m in transcript if m.get("role") == "assistant" and m.get("is_interrupted")}
    barge_ins = [
        {**b, "stored_interrupted": any(i in interrupted for i in b.get("message_ids") or [])} for b in rec.barge_ins
    ]
    return {
        "status": run.get("status"),
        "end_reason": run.get("end_reason"),
        "utterances": len(made),
        "optional": sum(1 for u in made if u.optional),
        "stored_user_messages": len(users),
        "missing": missing,
        "missing_acked": [c for c in missing if any(u.acked and u.client_id == c for u in made)],
        "content_mismatch": mismatched,
        "wer": round(edits / words, 4) if words else None,
        "wer_words": words,
        "turns": turns,
        "barge_ins": barge_ins,
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
