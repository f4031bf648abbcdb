"""The voice caller: a real WebRTC participant (:class:`media.caller.VoiceCaller`) that speaks pre-rendered answers.

Per run it offers through ``POST {join_url}/offer`` (on the target origin only,
redirects not followed), waits for the peer connection and the ``session.ready``
event on the ``events`` data channel, and then, for every interviewer question,
probe, resume or reminder:

* usually waits until the interviewer has finished (a ``state: listening`` event
  after the message, then 0.25 s without audible frames), thinks (the persona's
  ``think_ms``, or with ``pause_probability`` a longer ``pause_ms``), and speaks a
  fixture answer (``voice_answers``, or with ``short_answer_ratio`` a
  ``voice_short_answers`` one) in real time;
* with ``barge_in_probability`` it waits for the interviewer's voice instead,
  lets it speak ``barge_in_after_ms`` and then speaks over it (if it is still
  speaking by then; otherwise the answer is an ordinary one).

Measures, on the caller's wall clock (``time.time()``, which :class:`VoiceCaller`
stamps received frames and events with):

* ``join_ms``: offer sent → ``session.ready`` event (first connection of the run).
* ``first_message_ms``: offer sent → first interviewer ``message`` event.
* ``first_audio_ms``: offer sent → first audible interviewer frame received.
* ``turn_ms``: the end of the caller's speech → the first audible frame received
  after it. The end of speech is the time the answer's last frame was sent minus
  the fixture's trailing silence (``duration_s - speech_end_s`` in
  ``answers.json``). Not measured when the interviewer was audible during the
  last 0.3 s of the caller's speech (``overlap``) or the connection dropped.
* ``ack_ms``: the end of speech → the final user ``caption`` event (the server
  stored its transcript of the answer).
* ``barge_in_ms``: the start of the caller's speech (first frame sent plus the
  fixture's ``speech_start_s``) over an audible interviewer → the last audible
  interviewer frame received before the caller stopped speaking.

A connection is dropped when the peer connection fails or closes, or when no
audio frame at all arrives for ``media_timeout_s`` (the server sends silence
between utterances, and pings on the data channel every 2 s); the caller then
re-offers with backoff for ``reconnect_window_s``, like the chat caller. An
answer cut short by a drop (or the run's end) is marked ``optional``: the
server's transcript need not have it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf
from yarl import URL

from api.loadtest.callers import (
    ANSWERABLE,
    NOT_ANSWERABLE,
    Caller,
    JoinRefused,
    JoinTarget,
    SessionRecord,
    Turn,
    Utterance,
)
from api.loadtest.config import ConfigError, Persona

if TYPE_CHECKING:
    from media.caller import Heard, VoiceCaller

SAMPLE_RATE = 16_000
OVERLAP_S = 0.3  # interviewer audio this close before the end of the caller's speech: the turn is not measured
QUIET_S = 0.25  # "the interviewer has finished": no audible frame for this long after ``listening``
PLAYING_S = 0.3  # "the interviewer is speaking": an audible frame within this long
REFUSED = (400, 401, 403, 404, 409, 410)  # offers answered like this are not retried
DEAD_STATES = ("failed", "closed")


# --- the answers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoiceAnswer:
    """One pre-rendered answer: 16 kHz mono PCM and where its speech starts and ends."""

    id: str
    text: str
    pcm: np.ndarray
    duration_s: float
    speech_start_s: float
    speech_end_s: float

    @property
    def trailing_s(self) -> float:
        """Silence after the speech: the caller stopped speaking this long before its last frame."""
        return max(self.duration_s - self.speech_end_s, 0.0)


@dataclass(frozen=True)
class VoiceAnswers:
    folder: Path
    by_id: dict[str, VoiceAnswer]

    @classmethod
    def load(cls, persona: Persona) -> VoiceAnswers:
        """Read ``answers.json`` and the WAV files the persona names; :class:`ConfigError` if unusable."""
        folder = persona.voice_answers_dir
        manifest_path = folder / "answers.json"
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"voice answers: cannot read {manifest_path}: {exc}") from None
        if not isinstance(manifest, list):
            raise ConfigError(f"voice answers: {manifest_path} must be a JSON list of answers")
        entries = {str(a.get("id")): a for a in manifest if isinstance(a, dict)}
        by_id: dict[str, VoiceAnswer] = {}
        for answer_id in (*persona.voice_answers, *persona.voice_short_answers):
            if answer_id in by_id:
                continue
            entry = entries.get(answer_id)
            if entry is None:
                raise ConfigError(f"voice answers: {answer_id!r} is not in {manifest_path}")
            try:
                pcm, rate = sf.read(folder / str(entry["file"]), dtype="int16", always_2d=False)
                text = str(entry["text"])
                start, end = float(entry["speech_start_s"]), float(entry["speech_end_s"])
            except (OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
                raise ConfigError(f"voice answers: {answer_id!r} in {manifest_path}: {exc}") from None
            if rate != SAMPLE_RATE or pcm.ndim != 1:
                raise ConfigError(f"voice answers: {entry['file']} must be 16 kHz mono (is {rate} Hz, {pcm.ndim}-D)")
            duration = len(pcm) / SAMPLE_RATE
            if not 0 <= start < end <= duration + 0.02:
                raise ConfigError(f"voice answers: {answer_id!r}: need 0 <= speech_start_s < speech_end_s <= length")
            by_id[answer_id] = VoiceAnswer(answer_id, text, pcm, duration, start, end)
        return cls(folder, by_id)


# --- analysis of what the caller heard (pure functions of Heard) ------------------------------------


def first_audible_between(heard: Heard, after: float, until: float | None = None) -> float | None:
    """Arrival time of the first audible frame received in ``(after, until]``."""
    times, audible = heard.times, heard.audible
    for j in range(bisect.bisect_right(times, after), len(times)):
        if until is not None and times[j] > until:
            break
        if audible[j]:
            return times[j]
    return None


def last_audible_between(heard: Heard, after: float, until: float) -> float | None:
    times, audible = heard.times, heard.audible
    for j in range(bisect.bisect_right(times, until) - 1, -1, -1):
        if times[j] <= after:
            break
        if audible[j]:
            return times[j]
    return None


def reply_audio(heard: Heard, speech_end: float, until: float | None) -> tuple[float | None, bool]:
    """(first audible frame after ``speech_end``, whether the interviewer overlapped the end of the speech)."""
    overlap = last_audible_between(heard, speech_end - OVERLAP_S, speech_end) is not None
    return first_audible_between(heard, speech_end, until), overlap


def barge_in_reaction(heard: Heard, onset: float, speech_end: float) -> tuple[str, float | None]:
    """How the interviewer reacted to the caller speaking over it: (outcome, milliseconds until its audio stopped)."""
    if (
        last_audible_between(heard, onset - PLAYING_S, onset) is None
        and first_audible_between(heard, onset, onset + 0.02) is None
    ):
        return "interviewer_silent", None  # it had stopped already: not a barge-in after all
    stop = last_audible_between(heard, onset, speech_end)
    if stop is None:
        return "stopped_before_onset", None
    return "stopped", (stop - onset) * 1000


# --- the caller ---------------------------------------------------------------------------------


@dataclass
class _Spoken:
    """One answer spoken on one connection."""

    utterance: Utterance
    turn: Turn
    answer: VoiceAnswer
    since: float  # the previous answer's end of speech (or the connection's start)
    started: float | None = None  # first frame sent
    onset: float | None = None  # started + speech_start_s
    done: float | None = None  # last frame sent
    speech_end: float | None = None  # done - trailing silence
    barge: dict[str, Any] | None = None


@dataclass
class _VoiceState:
    rec: SessionRecord
    vc: VoiceCaller | None = None
    connected_at: float = 0.0
    answer_task: asyncio.Task[None] | None = None
    speaking: _Spoken | None = None  # the answer being (or last) spoken on this connection
    deferred: tuple[int, float] | None = None  # an answerable message that came while an answer was spoken
    spoken: list[_Spoken] = field(default_factory=list)  # on the current connection
    last_speech_end: float = 0.0
    ended: bool = False
    fatal: str | None = None
    first_connect_at: float | None = None


def offer_base(ws_url: str) -> str:
    """The join URL to offer to, from the (origin-checked) websocket URL: same origin, without ``/ws``."""
    url = URL(ws_url)
    path = url.path[: -len("/ws")] if url.path.endswith("/ws") else url.path
    return str(url.with_scheme({"ws": "http", "wss": "https"}.get(url.scheme, url.scheme)).with_path(path))


class VoiceSimCaller(Caller[_VoiceState]):
    """A participant on a ``webrtc_voice`` channel: a real aiortc peer speaking fixture answers in real time."""

    kind = "voice"

    def _new_state(self, rec: SessionRecord) -> _VoiceState:
        return _VoiceState(rec)

    async def _connect(self, target: JoinTarget, state: _VoiceState) -> tuple[bool, str]:
        from media.caller import OfferRefused

        try:
            return await self._connection(offer_base(target.ws_url), state)
        except OfferRefused as exc:
            message = exc.body.get("error", {}).get("message") if isinstance(exc.body, dict) else None
            detail = f"offer answered HTTP {exc.status}" + (f" ({message})" if message else "")
            if exc.status in REFUSED:
                raise JoinRefused(detail) from exc
            return False, f"connect failed: {detail}"

    async def _connection(self, url: str, state: _VoiceState) -> tuple[bool, str]:
        """One peer connection: (whether session.ready arrived, why it ended)."""
        from media.caller import VoiceCaller

        rec, ctx = state.rec, self.ctx
        vc = VoiceCaller()
        t0 = time.time()
        first = state.first_connect_at is None
        if first:
            state.first_connect_at = t0
        state.spoken, state.speaking, state.deferred = [], None, None
        connected = ready = False
        try:
            await vc.join(ctx.http, url, timeout=ctx.connect_timeout_s, follow_redirects=False)
            connected = True
            ctx.counters.connected += 1
            state.vc, state.connected_at = vc, time.time()
            state.last_speech_end = state.connected_at
            idx = 0
            while True:
                reason = await self._next_event(vc, state, idx)
                if reason is not None:
                    return ready, reason
                event, at = vc.events[idx], vc.event_times[idx]
                idx += 1
                rec.frames_in += 1
                kind = event.get("type")
                if kind == "session.ready" and not ready:
                    ready = True
                    rec.run_id = rec.run_id or event.get("run_id")
                    self._session_ready(rec, (at - t0) * 1000)
                elif kind == "message":
                    self._on_message(vc, state, event.get("message") or {}, idx - 1, at)
                elif kind == "run.ended":
                    state.ended = True
                    rec.end_status, rec.end_reason = event.get("status"), event.get("reason")
                    return ready, "run ended"
                elif kind == "error":
                    rec.errors.append(f"error event: {event.get('code')}: {event.get('message')}")
        finally:
            task = state.answer_task
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                state.answer_task = None
            state.vc = None
            self._settle(vc, state, t0, first=first)
            if ready:
                ctx.counters.sessions_open -= 1
            if connected:
                ctx.counters.connected -= 1
            with contextlib.suppress(Exception):  # shielded: a caller stopped mid-close must not leak its sockets
                await asyncio.shield(vc.close())

    async def _next_event(self, vc: VoiceCaller, state: _VoiceState, idx: int) -> str | None:
        """Wait until event ``idx`` exists (None) or the connection is dead (why)."""
        while len(vc.events) <= idx:
            reason = self._dead(vc, state)
            if reason is not None:
                return reason
            with contextlib.suppress(TimeoutError):
                await vc.wait_for(lambda: len(vc.events) > idx or vc.pc.connectionState in DEAD_STATES, 0.25)
        return None

    def _dead(self, vc: VoiceCaller, state: _VoiceState) -> str | None:
        if state.fatal is not None:
            return state.fatal
        pc_state = vc.pc.connectionState
        if pc_state in DEAD_STATES:
            return f"peer connection {pc_state}"
        last = vc.heard.times[-1] if vc.heard.times else state.connected_at
        if time.time() - last > self.ctx.media_timeout_s:
            return f"no audio from the server for {self.ctx.media_timeout_s:g} s"
        if vc.channel.readyState == "closed":
            return "events channel closed"
        return None

    # --- answering ------------------------------------------------------------------------------

    def _on_message(self, vc: VoiceCaller, state: _VoiceState, message: dict[str, Any], idx: int, at: float) -> None:
        if message.get("role") != "assistant":
            return
        rec = state.rec
        if rec.first_message_ms is None and state.first_connect_at is not None:
            rec.first_message_ms = (at - state.first_connect_at) * 1000
        kind = message.get("kind")
        if kind in NOT_ANSWERABLE or (kind is not None and kind not in ANSWERABLE):
            return
        task = state.answer_task
        if task is not None and not task.done():
            if state.speaking is not None and state.speaking.started is not None:
                state.deferred = (idx, at)  # a reply to what is being said: answer it next
            return  # otherwise the answer about to be spoken answers this one too
        self._start_answer(vc, state, idx, at)

    def _start_answer(self, vc: VoiceCaller, state: _VoiceState, idx: int, at: float) -> None:
        state.deferred = None
        if len(state.rec.utterances) >= self.ctx.max_turns:
            state.fatal = f"the interview did not end after {self.ctx.max_turns} answers"
            return
        task = asyncio.create_task(self._answer(vc, state, idx, at))
        state.answer_task = task

        def next_one(_: asyncio.Task[None]) -> None:
            if state.vc is vc and state.answer_task is task and state.deferred is not None:
                self._start_answer(vc, state, *state.deferred)

        task.add_done_callback(next_one)

    async def _answer(self, vc: VoiceCaller, state: _VoiceState, msg_idx: int, msg_at: float) -> None:
        ctx, rec, persona = self.ctx, state.rec, self.ctx.persona
        gate = ctx.start_gate
        if gate is not None and not gate.is_set():
            await gate.wait()
        barge = persona.barge_in_probability > 0 and self.rng.random() < persona.barge_in_probability
        if barge:
            barge = await self._interviewer_heard(vc, msg_at)
            if barge:
                await asyncio.sleep(persona.barge_in_after_ms.sample(self.rng) / 1000)
                barge = self._interviewer_speaking(vc)
        if not barge:
            if not await self._interviewer_done(vc, msg_idx):
                rec.errors.append(f"the interviewer did not finish speaking within {ctx.read_timeout_s:g} s")
                return
            await asyncio.sleep(persona.think(self.rng) / 1000)
        answers: VoiceAnswers = ctx.voice
        answer = answers.by_id[persona.voice_answer(self.rng)]
        client_id = f"v{self.index}-{self.sessions}-{len(rec.utterances) + 1}"
        utterance = Utterance(client_id, answer.text, sends=1, answer_id=answer.id)
        turn = Turn(client_id, barge_in=barge)
        rec.utterances.append(utterance)
        rec.turns.append(turn)
        spoken = _Spoken(utterance, turn, answer, since=state.last_speech_end)
        state.spoken.append(spoken)
        state.speaking = spoken
        speech = vc.speak(answer.pcm)
        spoken.started = await speech.started
        spoken.onset = spoken.started + answer.speech_start_s
        spoken.done = await speech.done
        spoken.speech_end = spoken.done - answer.trailing_s
        utterance.sent_at = spoken.speech_end
        state.last_speech_end = spoken.speech_end
        rec.frames_out += 1
        # the reply's first audible frame, for the live figures (the final ones are settled at the end)
        give_up = spoken.speech_end + ctx.read_timeout_s
        while time.time() < give_up:
            heard_at, overlap = reply_audio(vc.heard, spoken.speech_end, None)
            if overlap:
                turn.overlap = True
                return
            if heard_at is not None:
                turn.latency_ms = (heard_at - spoken.speech_end) * 1000
                ctx.counters.turn(turn.latency_ms)
                return
            await asyncio.sleep(0.02)

    async def _interviewer_heard(self, vc: VoiceCaller, after: float) -> bool:
        """Wait (a little) for the interviewer's voice after ``after``."""
        give_up = time.time() + min(self.ctx.read_timeout_s, 10.0)
        while time.time() < give_up:
            if first_audible_between(vc.heard, after) is not None:
                return True
            await asyncio.sleep(0.02)
        return False

    @staticmethod
    def _interviewer_speaking(vc: VoiceCaller) -> bool:
        last_state = next((e.get("state") for e in reversed(vc.events) if e.get("type") == "state"), None)
        last = vc.heard.last_audible()
        return last_state == "speaking" and last is not None and last > time.time() - PLAYING_S

    async def _interviewer_done(self, vc: VoiceCaller, msg_idx: int) -> bool:
        """A ``listening`` state after the message, then no audible frame for ``QUIET_S``."""

        def listening() -> bool:
            return any(e.get("type") == "state" and e.get("state") == "listening" for e in vc.events[msg_idx + 1 :])

        try:
            await vc.wait_for(listening, self.ctx.read_timeout_s)
        except TimeoutError:
            return False
        give_up = time.time() + 5.0  # audio still in flight when ``listening`` was sent: ~0.1 s
        while (last := vc.heard.last_audible()) is not None and last > time.time() - QUIET_S:
            if time.time() > give_up:
                break
            await asyncio.sleep(0.05)
        return True

    # --- what the connection amounted to --------------------------------------------------------

    def _settle(self, vc: VoiceCaller, state: _VoiceState, t0: float, *, first: bool) -> None:
        """Per answer spoken on this connection: its acknowledgement, reply, latency and barge-in reaction."""
        rec = state.rec
        heard = vc.heard
        if first and rec.first_audio_ms is None:
            at = first_audible_between(heard, t0)
            if at is not None:
                rec.first_audio_ms = (at - t0) * 1000
        events = list(zip(vc.events, vc.event_times, strict=False))
        captions = [at for e, at in events if e.get("type") == "caption" and e.get("role") == "user" and e.get("final")]
        replies = [
            (at, m)
            for e, at in events
            if e.get("type") == "message" and isinstance(m := e.get("message"), dict) and m.get("role") == "assistant"
        ]
        spoken = state.spoken
        for i, s in enumerate(spoken):
            u, turn = s.utterance, s.turn
            nxt = spoken[i + 1].onset if i + 1 < len(spoken) else None
            if s.speech_end is None or s.onset is None:  # cut off while speaking
                u.optional, turn.interrupted = True, True
                continue
            ack = next((at for at in captions if at > s.onset and (nxt is None or at < nxt)), None)
            if ack is not None:
                u.acked = True
                turn.ack_ms = (ack - s.speech_end) * 1000
            elif not state.ended:
                u.optional = True  # the connection dropped before the server confirmed it
            reply = next(((at, m) for at, m in replies if at > s.speech_end and (nxt is None or at < nxt)), None)
            if reply is not None:
                turn.reply_id, turn.reply_kind = reply[1].get("id"), reply[1].get("kind")
            if turn.latency_ms is None and not turn.overlap:
                heard_at, overlap = reply_audio(heard, s.speech_end, nxt)
                turn.overlap = overlap
                if heard_at is not None and not overlap:
                    turn.latency_ms = (heard_at - s.speech_end) * 1000
                    self.ctx.counters.turn(turn.latency_ms)
                elif heard_at is None:
                    turn.interrupted = reply is None and not state.ended
            if turn.barge_in:
                outcome, reaction = barge_in_reaction(heard, s.onset, s.speech_end)
                playing = [str(m.get("id")) for at, m in replies if s.since < at <= s.onset]
                rec.barge_ins.append(
                    {
                        "client_id": u.client_id,
                        "outcome": outcome,
                        "reaction_ms": None if reaction is None else round(reaction, 3),
                        "message_ids": playing,
                    }
                )
        state.spoken = []
