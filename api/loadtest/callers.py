"""Simulated participants. One class per channel kind; each drives one session from join to ``run.ended``.

A caller gets a :class:`JoinTarget` (a join URL, already checked to be on the
target origin) and returns a :class:`SessionRecord`: what it measured and how
the session ended. Scheduling (ramp, budgets, deadlines) and the comparison
with the server's stored data are the runner's job. :class:`Caller` owns what every
kind shares (the session's bookkeeping, reconnecting with backoff after a drop, the
``session.ready`` measures); a kind implements one connection (:meth:`Caller._connect`)
and registers in ``CALLERS``
(:class:`api.loadtest.voice.VoiceSimCaller`, the WebRTC participant, is loaded
only when asked for, by :func:`caller_class`).

Chat measures, all on the caller's clock (``time.perf_counter``); the voice caller's are in
:mod:`api.loadtest.voice`:

* ``join_ms``: websocket connect started → ``session.ready`` received (first connection of the run).
* ``first_message_ms``: websocket connect started → first interviewer ``message`` frame.
* ``turn_ms``: the caller's answer written to the socket → the first interviewer ``message``
  frame after it. The typing delay comes before the send and is not included. A turn
  interrupted by a reconnect is recorded but not measured.
* ``ack_ms``: the answer written → its ``message.ack`` (the server stored it).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import aiohttp

from api.loadtest.config import Persona
from api.loadtest.server_api import describe

# interviewer message kinds that wait for the participant's answer (greeting and closing do not)
ANSWERABLE = frozenset({"question", "probe", "resume", "reminder"})
NOT_ANSWERABLE = frozenset({"greeting", "closing", "filler"})
CLOSE_REPLACED = 4001
TYPING_EVERY_S = 2.0


@dataclass(frozen=True)
class JoinTarget:
    join_url: str  # as the server returned it or the file held it
    ws_url: str  # checked to be on the target origin
    run_id: str | None = None  # known when the run was created through the API
    source: str = "api"  # api | file
    create_ms: float | None = None  # POST /v1/runs round trip


@dataclass
class Utterance:
    """One answer the caller made."""

    client_id: str
    content: str
    sent_at: float | None = None  # perf_counter when last written to a socket
    acked: bool = False
    sends: int = 0
    answer_id: str | None = None  # voice: the pre-rendered answer spoken
    optional: bool = False  # voice: cut short by a drop or the run's end, so the server may not have it


@dataclass
class Turn:
    client_id: str
    latency_ms: float | None = None  # answer sent → first interviewer message
    ack_ms: float | None = None
    reply_id: str | None = None  # the interviewer message that answered it
    reply_kind: str | None = None
    interrupted: bool = False  # a reconnect came between the answer and the reply: not measured
    barge_in: bool = False  # voice: spoken over the interviewer
    overlap: bool = False  # voice: the interviewer was audible when the caller stopped speaking: not measured

    def as_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "latency_ms": _r(self.latency_ms),
            "ack_ms": _r(self.ack_ms),
            "reply_id": self.reply_id,
            "reply_kind": self.reply_kind,
            "interrupted": self.interrupted,
            "barge_in": self.barge_in,
            "overlap": self.overlap,
        }


@dataclass
class SessionRecord:
    """One run as one caller experienced it."""

    caller: int
    kind: str
    join_url: str | None
    source: str
    run_id: str | None = None
    started_at: float = field(default_factory=time.time)  # wall clock
    ended_at: float | None = None
    ok: bool = False
    failure: str | None = None  # why the session counts as failed
    end_status: str | None = None  # from run.ended
    end_reason: str | None = None
    create_ms: float | None = None
    join_ms: float | None = None
    rejoin_ms: list[float] = field(default_factory=list)
    first_message_ms: float | None = None
    first_audio_ms: float | None = None  # voice: offer sent → first audible interviewer frame
    barge_ins: list[dict[str, Any]] = field(default_factory=list)  # voice: see api.loadtest.voice
    turns: list[Turn] = field(default_factory=list)
    utterances: list[Utterance] = field(default_factory=list)
    reconnects: int = 0
    frames_in: int = 0
    frames_out: int = 0
    errors: list[str] = field(default_factory=list)  # error frames and drops that did not end the session
    verification: dict[str, Any] | None = None  # filled in by the runner from the server's transcript

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        self.ok = False

    def as_json(self) -> dict[str, Any]:
        return {
            "caller": self.caller,
            "kind": self.kind,
            "run_id": self.run_id,
            "source": self.source,
            "started_at": round(self.started_at, 3),
            "ended_at": None if self.ended_at is None else round(self.ended_at, 3),
            "ok": self.ok,
            "failure": self.failure,
            "end_status": self.end_status,
            "end_reason": self.end_reason,
            "create_ms": _r(self.create_ms),
            "join_ms": _r(self.join_ms),
            "rejoin_ms": [_r(x) for x in self.rejoin_ms],
            "first_message_ms": _r(self.first_message_ms),
            "first_audio_ms": _r(self.first_audio_ms),
            "barge_ins": self.barge_ins,
            "turns": [t.as_json() for t in self.turns],
            "utterances": [
                {"client_id": u.client_id, "acked": u.acked, "sends": u.sends}
                | ({"answer_id": u.answer_id, "content": u.content, "optional": u.optional} if u.answer_id else {})
                for u in self.utterances
            ],
            "reconnects": self.reconnects,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "errors": self.errors,
            "verification": self.verification,
        }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


@dataclass
class Counters:
    """Live figures for the progress display (the runner samples them)."""

    callers_active: int = 0
    connected: int = 0  # websockets open
    sessions_open: int = 0  # between session.ready and the end of the connection
    runs_started: int = 0
    runs_completed: int = 0
    runs_failed: int = 0
    turns: int = 0
    errors: int = 0
    last_error: str = ""
    recent_turn_ms: list[float] = field(default_factory=list)

    def error(self, reason: str) -> None:
        self.errors += 1
        self.last_error = reason

    def turn(self, ms: float) -> None:
        self.turns += 1
        self.recent_turn_ms.append(ms)
        if len(self.recent_turn_ms) > 4000:
            del self.recent_turn_ms[:2000]


@dataclass
class CallerContext:
    """What every caller shares: the websocket client, persona, limits and live counters."""

    http: aiohttp.ClientSession  # for websockets; no connection limit
    persona: Persona
    counters: Counters
    connect_timeout_s: float
    read_timeout_s: float
    reconnect_window_s: float
    max_turns: int
    deadline: float  # loop.time() after which every session is abandoned
    start_gate: asyncio.Event | None = None  # answers wait for it (all callers start together)
    on_ready: Callable[[int], None] | None = None  # called with the caller's index at each session.ready
    media_timeout_s: float = 5.0  # voice: no audio from the server for this long drops the connection
    voice: Any = None  # voice: the loaded answers (api.loadtest.voice.VoiceAnswers)
    synthetic: Any = None  # chat: answers written by an LLM persona (api.loadtest.synthetic.SyntheticParticipant)


class JoinRefused(Exception):
    """The server turned the join down for good (a 4xx answer): connecting again cannot help."""


class CallerState(Protocol):
    """What :class:`Caller` reads and writes of a kind's per-run state."""

    rec: SessionRecord
    ended: bool  # run.ended arrived
    fatal: str | None  # a reason not to reconnect (e.g. another connection took the run over)


S = TypeVar("S", bound=CallerState)


class Caller(abc.ABC, Generic[S]):
    """A simulated participant of one channel kind."""

    kind: ClassVar[str]

    def __init__(self, index: int, ctx: CallerContext, rng: random.Random) -> None:
        self.index = index
        self.ctx = ctx
        self.rng = rng
        self.sessions = 0

    async def session(self, target: JoinTarget) -> SessionRecord:
        """Join ``target``, take part until the run ends (or fails), and say how it went. Never raises."""
        self.sessions += 1
        rec = SessionRecord(self.index, self.kind, target.join_url, target.source, run_id=target.run_id)
        rec.create_ms = target.create_ms
        state = self._new_state(rec)
        counters = self.ctx.counters
        counters.runs_started += 1
        try:
            async with asyncio.timeout_at(self.ctx.deadline):
                await self._reconnecting(target, state)
        except TimeoutError:
            rec.fail("deadline: the run was still in progress at the hard deadline")
        except Exception as exc:  # a bug here must not take the whole load test down
            rec.fail(f"caller error: {describe(exc)}")
        finally:
            await self._wind_up(state)
            rec.ended_at = time.time()
        if rec.failure is None and state.ended and rec.end_reason == "completed":
            rec.ok = True
            counters.runs_completed += 1
        else:
            if rec.failure is None:
                rec.fail(f"run ended: {rec.end_reason}" if state.ended else "ended without run.ended")
            counters.runs_failed += 1
            counters.error(rec.failure or "")
        return rec

    async def _reconnecting(self, target: JoinTarget, state: S) -> None:
        """Connect, and again after each drop with jittered exponential backoff, until the run ends, the
        join is refused, or no connection has reached ``session.ready`` for ``ctx.reconnect_window_s``."""
        rec = state.rec
        drop_since: float | None = None
        backoff = 0.5
        while True:
            try:
                reached_ready, outcome = await self._connect(target, state)
            except JoinRefused as exc:
                rec.fail(f"join refused: {exc}")
                return
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                reached_ready, outcome = False, f"connect failed: {describe(exc)}"
            if state.ended:
                return
            if state.fatal is not None:
                rec.fail(state.fatal)
                return
            now = time.monotonic()
            if reached_ready or drop_since is None:
                drop_since, backoff = now, 0.5
            rec.errors.append(outcome)
            self.ctx.counters.error(outcome)
            if now - drop_since >= self.ctx.reconnect_window_s:
                rec.fail(f"dropped: {outcome}; no reconnect within {self.ctx.reconnect_window_s:g} s")
                return
            rec.reconnects += 1
            left = self.ctx.reconnect_window_s - (now - drop_since)
            await asyncio.sleep(min(backoff * self.rng.uniform(0.5, 1.0), max(left, 0.05)))
            backoff = min(backoff * 2, 8.0)

    def _session_ready(self, rec: SessionRecord, ms: float) -> None:
        """``session.ready`` arrived ``ms`` after the connection was started: a join, or a rejoin."""
        if rec.join_ms is None:
            rec.join_ms = ms
        else:
            rec.rejoin_ms.append(ms)
        self.ctx.counters.sessions_open += 1
        if self.ctx.on_ready is not None:
            self.ctx.on_ready(self.index)

    @abc.abstractmethod
    def _new_state(self, rec: SessionRecord) -> S:
        """The kind's state for one run, kept across its connections."""

    @abc.abstractmethod
    async def _connect(self, target: JoinTarget, state: S) -> tuple[bool, str]:
        """One connection: (whether ``session.ready`` arrived, why it ended). Raises :class:`JoinRefused`
        when the server refuses the join for good; network errors are retried."""

    async def _wind_up(self, state: S) -> None:
        """After the last connection (also on the deadline or a caller error): stop the kind's tasks."""


class _ChatState:
    """One run's state across reconnects."""

    def __init__(self, rec: SessionRecord) -> None:
        self.rec = rec
        self.ws: aiohttp.ClientWebSocketResponse | None = None  # live and past session.ready
        self.pending: list[Utterance] = []  # sent (or due) but not acknowledged, in order
        self.awaiting: tuple[Utterance, Turn] | None = None  # answer waiting for the interviewer's reply
        self.answer_task: asyncio.Task[None] | None = None
        self.deferred: dict[str, Any] | None = None  # a question that came while an answer was unacknowledged
        self.ended = False
        self.fatal: str | None = None
        self.first_connect_at: float | None = None
        self.turn_by_client_id: dict[str, Turn] = {}
        self.history: list[tuple[str, str]] = []  # (role, content): what a synthetic participant answers to


class ChatCaller(Caller[_ChatState]):
    """A participant on the chat websocket (docs/protocol.md), with the reference client's delivery rules."""

    kind = "chat"

    def _new_state(self, rec: SessionRecord) -> _ChatState:
        return _ChatState(rec)

    async def _connect(self, target: JoinTarget, state: _ChatState) -> tuple[bool, str]:
        try:
            return await self._connection(target.ws_url, state)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (400, 401, 403, 404, 410):
                raise JoinRefused(describe(exc)) from exc
            raise

    async def _wind_up(self, state: _ChatState) -> None:
        if state.answer_task is not None:
            state.answer_task.cancel()
            with contextlib.suppress(BaseException):
                await state.answer_task

    async def _connection(self, ws_url: str, state: _ChatState) -> tuple[bool, str]:
        """One websocket connection: (whether session.ready arrived, why it ended)."""
        rec, ctx = state.rec, self.ctx
        t0 = time.perf_counter()
        if state.first_connect_at is None:
            state.first_connect_at = t0
        async with asyncio.timeout(ctx.connect_timeout_s):
            ws = await ctx.http.ws_connect(
                ws_url,
                autoping=True,
                autoclose=True,
                max_msg_size=4 * 1024 * 1024,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
            )
        ctx.counters.connected += 1
        ready = False
        try:
            while True:
                try:
                    msg = await ws.receive(timeout=ctx.read_timeout_s)
                except TimeoutError:
                    return ready, f"nothing received for {ctx.read_timeout_s:g} s"
                now = time.perf_counter()
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    if ws.close_code == CLOSE_REPLACED:
                        state.fatal = "replaced: another connection took the run over (close 4001)"
                    return ready, f"closed by the server (code {ws.close_code})"
                if msg.type is aiohttp.WSMsgType.ERROR:
                    return ready, f"websocket error: {describe(ws.exception() or Exception('unknown'))}"
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    rec.errors.append(f"unexpected {msg.type.name} frame")
                    continue
                rec.frames_in += 1
                try:
                    frame = json.loads(msg.data)
                    kind = frame["type"]
                except (ValueError, KeyError, TypeError):
                    rec.errors.append("a frame that is not a JSON object with a type")
                    continue
                if kind == "session.ready" and not ready:
                    ready = True
                    self._session_ready(rec, (now - t0) * 1000)
                    await self._on_ready(ws, state, frame)
                elif kind == "message":
                    self._on_message(state, frame.get("message") or {}, now)
                elif kind == "message.ack":
                    self._on_ack(state, frame, now)
                elif kind == "run.ended":
                    state.ended = True
                    rec.end_status, rec.end_reason = frame.get("status"), frame.get("reason")
                    return ready, "run ended"
                elif kind == "error":
                    code = str(frame.get("code"))
                    rec.errors.append(f"error frame: {code}")
                    ctx.counters.error(f"error frame: {code}")
                    if code == "replaced":
                        state.fatal = "replaced: another connection took the run over"
                # typing, message.delta, pong and unknown types need nothing
                if state.fatal is not None:
                    return ready, state.fatal
        finally:
            if ready:
                ctx.counters.sessions_open -= 1
            ctx.counters.connected -= 1
            state.ws = None
            if state.awaiting is not None:  # the reply, if any, will not be measurable
                state.awaiting[1].interrupted = True
                state.awaiting = None
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await ws.close()

    async def _on_ready(self, ws: aiohttp.ClientWebSocketResponse, state: _ChatState, frame: dict[str, Any]) -> None:
        """Take the run id, mark pending answers the server already has, re-send the rest in order."""
        rec = state.rec
        rec.run_id = rec.run_id or frame.get("run_id")
        stored = {m.get("client_id") for m in frame.get("messages") or [] if isinstance(m, dict)}
        for u in list(state.pending):
            if u.client_id in stored:
                u.acked = True
                state.pending.remove(u)
        state.ws = ws
        for u in list(state.pending):
            await self._send(state, u)
        messages = [m for m in frame.get("messages") or [] if isinstance(m, dict)]
        state.history = [
            (str(m["role"]), str(m.get("content", ""))) for m in messages if m.get("role") in ("assistant", "user")
        ]
        if messages and messages[-1].get("role") == "assistant" and not state.pending:
            self._maybe_answer(state, messages[-1])

    def _on_message(self, state: _ChatState, message: dict[str, Any], now: float) -> None:
        if message.get("role") != "assistant":
            return
        state.history.append(("assistant", str(message.get("content", ""))))
        rec = state.rec
        if rec.first_message_ms is None and state.first_connect_at is not None:
            rec.first_message_ms = (now - state.first_connect_at) * 1000
        if state.awaiting is not None:
            utterance, turn = state.awaiting
            state.awaiting = None
            if utterance.sent_at is not None:
                turn.latency_ms = (now - utterance.sent_at) * 1000
                turn.reply_id, turn.reply_kind = message.get("id"), message.get("kind")
                self.ctx.counters.turn(turn.latency_ms)
        self._maybe_answer(state, message)

    def _on_ack(self, state: _ChatState, frame: dict[str, Any], now: float) -> None:
        client_id = frame.get("client_id")
        for u in state.pending:
            if u.client_id == client_id:
                u.acked = True
                state.pending.remove(u)
                turn = state.turn_by_client_id.get(u.client_id)
                if turn is not None and turn.ack_ms is None and u.sent_at is not None and u.sends == 1:
                    turn.ack_ms = (now - u.sent_at) * 1000
                if not state.pending and state.deferred is not None:
                    self._maybe_answer(state, state.deferred)
                return

    def _maybe_answer(self, state: _ChatState, message: dict[str, Any]) -> None:
        kind = message.get("kind")
        if kind in NOT_ANSWERABLE or (kind is not None and kind not in ANSWERABLE):
            return
        if state.answer_task is not None and not state.answer_task.done():
            return  # an answer is being typed
        if state.pending:  # an answer is in flight (re-sent after a reconnect): answer this once it is stored
            state.deferred = message
            return
        state.deferred = None
        if len(state.rec.utterances) >= self.ctx.max_turns:
            state.fatal = f"the interview did not end after {self.ctx.max_turns} answers"
            return
        state.answer_task = asyncio.create_task(self._answer(state))

    async def _answer(self, state: _ChatState) -> None:
        """Type (the persona's delay, with ``typing`` frames), then send; a dropped socket keeps it pending."""
        gate = self.ctx.start_gate
        if gate is not None and not gate.is_set():
            await gate.wait()
        delay = self.ctx.persona.typing_delay_ms.sample(self.rng) / 1000.0
        end = time.monotonic() + delay
        if self.ctx.synthetic is not None:  # the model writes while the persona "types"
            content = await self.ctx.synthetic.answer(state.history, self.rng)
        else:
            content = self.ctx.persona.answer(self.rng)
        state.history.append(("user", content))
        while (left := end - time.monotonic()) > 0:
            if self.ctx.persona.typing_indicator and left > TYPING_EVERY_S / 2 and state.ws is not None:
                with contextlib.suppress(Exception):
                    await state.ws.send_str('{"type":"typing"}')
                    state.rec.frames_out += 1
            await asyncio.sleep(min(left, TYPING_EVERY_S))
        rec = state.rec
        n = len(rec.utterances) + 1
        client_id = f"lt{self.index}-{self.sessions}-{n}-{secrets.token_hex(6)}"
        u = Utterance(client_id, content)
        rec.utterances.append(u)
        turn = Turn(client_id)
        rec.turns.append(turn)
        state.turn_by_client_id[client_id] = turn
        state.pending.append(u)
        if state.ws is not None:
            await self._send(state, u)
        else:
            turn.interrupted = True  # sent after the reconnect: not measured

    async def _send(self, state: _ChatState, u: Utterance) -> None:
        ws = state.ws
        if ws is None:
            return
        frame = json.dumps({"type": "message", "content": u.content, "client_id": u.client_id})
        turn = state.turn_by_client_id.get(u.client_id)
        if u.sends == 0 and turn is not None and not turn.interrupted:
            state.awaiting = (u, turn)
        elif turn is not None:
            turn.interrupted = True
        u.sends += 1
        u.sent_at = time.perf_counter()
        try:
            await ws.send_str(frame)
            state.rec.frames_out += 1
        except Exception:
            pass  # the receive loop sees the drop; the answer stays pending and is re-sent


CALLERS: dict[str, type[Caller[Any]]] = {ChatCaller.kind: ChatCaller}


def caller_class(kind: str) -> type[Caller[Any]]:
    """The caller class for a kind; the voice caller (aiortc, numpy) is imported on first use."""
    if kind == "voice" and kind not in CALLERS:
        from api.loadtest.voice import VoiceSimCaller

        CALLERS[kind] = VoiceSimCaller
    return CALLERS[kind]
