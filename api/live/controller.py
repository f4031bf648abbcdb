"""The driver of one run in progress: :class:`RunController`.

A controller owns what the sans-I/O :class:`~runtime.conversation.Conversation`
must not: the participant's connection, the interviewer task, the timer, and
the database writes. Every input (connection, frame, timer, interviewer part,
cancel) is fed to the machine under the controller's lock, and the resulting
actions are executed in order before the next input is taken, so the machine
never sees two inputs at once.

Races it guards against:

* A second connection to the same run while one is live: the new one takes
  over; the old one is told why and closed, and its later close does not end
  the new session.
* The interviewer is slow: it runs as a task outside the lock, so frames and
  timers are still handled; its parts come back through the lock and are
  ignored if the turn went stale meanwhile (and a stale turn's task is cancelled,
  so a model stops writing a reply nobody will read).
* Streamed previews (``message.delta``) go only to the connection that was live
  when the reply started: a participant who reconnects gets the stored messages
  in ``session.ready``, never the second half of a delta stream.
* The run ends while a connection is still attached: the participant gets
  ``run.ended`` after the terminal event has been committed, then the socket is
  closed.
* Another process takes the run over (the participant joined there, or this
  process was paused past its lease: runtime/storage/leases.py): every write
  names the controller's lease, so the first one after the takeover is refused
  (:class:`LeaseLost`) with nothing stored, and the controller stops acting: it
  tells its participant why (``replaced``, ``run.ended`` or reconnect) and goes,
  leaving the database to the new holder. The same happens at once when the
  takeover is announced (:meth:`RunController.lost`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

from api.live.links import (
    CLOSE_GOING_AWAY,
    CLOSE_REPLACED,
    REPLACED,
    RESTARTING,
    ParticipantLink,
    PlaybackReport,
    quietly,
    send_quietly,
)
from api.live.speculation import Speculation, SpeculationStats
from runtime.conversation import (
    Action,
    Cancel,
    Compose,
    Conversation,
    Deliver,
    EndRun,
    Persist,
    StopPlayback,
)
from runtime.errors import LeaseLost
from runtime.interviewer import Delta, Exchange, Interviewer, Purpose, ReplyPart, TurnEnd, Utterance
from runtime.serialize import message_json
from runtime.storage import NewMessage, Store
from runtime.storage.leases import LeaseChange
from runtime.types import (
    BlueprintContent,
    EndReason,
    Lease,
    Message,
    MessageRole,
    Run,
    Session,
    SessionEndReason,
    UtteranceKind,
)

log = logging.getLogger("vivavoce.live")

Clock = Callable[[], float]


@dataclass(frozen=True)
class LiveSettings:
    time_scale: float = 1.0
    typing_after_s: float = 0.05  # show "typing" only if a reply takes longer than this
    speculate: bool = True  # voice: compose the reply during the pause (api/live/speculation.py)


def exchange_of(message: Message) -> Exchange:
    return Exchange(message.role.value, message.content, message.question_id, message.kind, message.started_at)


class RunController:
    def __init__(
        self,
        store: Store,
        interviewer: Interviewer,
        run: Run,
        blueprint: BlueprintContent,
        conversation: Conversation,
        transcript: list[Message],
        *,
        lease: Lease | None = None,
        may_act: Callable[[], bool] = lambda: True,
        clock: Clock = time.time,
        on_finished: Callable[[RunController], None] = lambda c: None,
        settings: LiveSettings = LiveSettings(),
        speculation_stats: SpeculationStats | None = None,
    ) -> None:
        self.store = store
        self.interviewer = interviewer
        self.run_id = run.id
        self.lease = lease  # every write for the run names it (fencing); None: unfenced (unit tests)
        self._may_act = may_act  # False once this process's heartbeat is too old: act no more
        self.run_started_at = run.started_at
        self.blueprint = blueprint
        self.conv = conversation
        # What the participant heard and said, oldest first (what the interviewer is given).
        self.transcript: list[Exchange] = [exchange_of(m) for m in transcript if m.role is not MessageRole.EVENT]
        self._line_of: dict[str, int] = {m.id: i for i, m in enumerate(transcript)}  # message id -> transcript index
        self.clock = clock
        self.settings = settings
        self.link: ParticipantLink | None = None
        self.session: Session | None = None
        self.finished = False
        self._closed = False  # handed over or lost: ignore inputs, leave the run to its next holder
        self._on_finished = on_finished
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._composing: dict[int, asyncio.Task[None]] = {}  # turn id -> its interviewer task
        self._answered: dict[int, tuple[str, ...]] = {}  # turn id -> the participant messages it answers
        self._reply_ids: dict[int, str] = {}  # turn id -> its reply's id, unique across restarts (meta "turn")
        self._last_message: dict[int, str] = {}  # turn id -> the last message it delivered
        self._speculation: Speculation | None = None
        self.speculation_stats = speculation_stats or SpeculationStats()
        # The machine's next deadline, as one loop timer: rescheduled only when the deadline moves
        # (a task and a timer per input for a sleeping loop task cost more than the rest of a turn).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_for: float | None = None  # the deadline self._timer is set for
        self._ticking = False  # a tick is queued or running; it reschedules when done
        self._reschedule()

    # --- inputs from the connection --------------------------------------------------

    @property
    def closed(self) -> bool:
        """Handed over, lost to another process, or the run ended: a join needs a new controller."""
        return self._closed or self.finished

    async def attach(self, link: ParticipantLink) -> Session | None:
        """Open a session for ``link``; None if the run has ended.

        :class:`LeaseLost` if another process holds the run now (this controller has stopped; ``link`` was
        not touched: the caller takes the run over with a new controller)."""
        try:
            return await self._attach(link)
        except LeaseLost:
            await self.lost(None)
            raise

    async def _attach(self, link: ParticipantLink) -> Session | None:
        async with self._lock:
            if self.finished:
                return None
            if self._closed:
                raise LeaseLost(f"run {self.run_id} is no longer acted for here")
            now = self.clock()
            self._check_may_act()
            started = await self.store.runs.start_session(
                self.run_id, link.session_type, now, user_number=link.user_number, lease=self.lease
            )
            if started is None:
                return None
            run, session = started
            previous, self.link, self.session = self.link, link, session
            self.run_started_at = run.started_at
            if previous is not None:
                await quietly(previous.send({"type": "error", "code": "replaced", "message": REPLACED}))
                await quietly(previous.close(CLOSE_REPLACED, "replaced"))
                await self._apply(self.conv.disconnect(now))
            messages = await self.store.messages.list_messages(self.run_id) if self.transcript else []
            await link.send(
                {
                    "type": "session.ready",
                    "run_id": self.run_id,
                    "session_id": session.id,
                    "resumed": bool(messages),
                    "messages": [message_json(m, self.run_started_at) for m in messages],
                }
            )
            await self._apply(self.conv.connect(now))
            return session

    async def detach(self, link: ParticipantLink) -> None:
        """The connection closed or dropped (a replaced link is ignored)."""
        try:
            await self._detach(link)
        except LeaseLost:
            await self.lost(None)

    async def _detach(self, link: ParticipantLink) -> None:
        async with self._lock:
            if link is not self.link or self._closed:
                return
            now = self.clock()
            for report in await link.stop_playback():  # cut short by the hang-up: keep what was heard
                await self._record_playback(report)
            self.link = None
            await self._drop_speculation()
            if self.session is not None:
                await self.store.runs.end_session(
                    self.session.id, SessionEndReason.PARTICIPANT_LEFT, now, lease=self.lease
                )
                self.session = None
            await self._apply(self.conv.disconnect(now))

    async def participant_message(
        self,
        link: ParticipantLink,
        content: str,
        *,
        client_id: str | None,
        received_at: float,
        spoken: tuple[float, float] | None = None,
    ) -> Message | None:
        """Store a participant answer, then let the conversation react. None if the link is stale.

        The message is stored with the question the participant had heard (what it answers).
        ``spoken`` is (onset, end) of a voice answer; a chat message starts and ends when received.
        """
        try:
            return await self._participant_message(link, content, client_id, received_at, spoken)
        except LeaseLost:  # nothing was stored; the participant is told to go where the run is now
            await self.lost(None)
            return None

    async def _participant_message(
        self,
        link: ParticipantLink,
        content: str,
        client_id: str | None,
        received_at: float,
        spoken: tuple[float, float] | None,
    ) -> Message | None:
        async with self._lock:
            if link is not self.link or self.finished or self._closed:
                return None
            started_at, ended_at = spoken or (received_at, received_at)
            new = NewMessage(
                MessageRole.USER,
                content,
                started_at=started_at,
                ended_at=ended_at,
                session_id=self.session.id if self.session else None,
                question_id=self.conv.heard_question,
                client_id=client_id,
            )
            self._check_may_act()
            message, created = await self.store.messages.add_message(self.run_id, new, lease=self.lease)
            if created:
                self._remember(message)
                actions = self.conv.participant_text(
                    content, self.clock(), received_at=received_at, message_id=message.id
                )
                await self._apply(actions)
            return message

    async def speech(self, link: ParticipantLink, change: str) -> None:
        """Voice activity: ``started`` / ``ended`` (idle clock), ``interrupting`` (barge-in), ``resumed``
        (the participant went on after a pause: a speculative reply is obsolete)."""
        async with self._lock:
            if link is not self.link or self.finished or self._closed:
                return
            now = self.clock()
            if change == "started":
                self.conv.speech_started(now)
            elif change == "ended":
                self.conv.speech_ended(now)
            elif change == "interrupting":
                try:
                    await self._apply(self.conv.speech_interrupting(now))
                except LeaseLost:
                    self._spawn(self.lost(None))  # outside the lock: it waits for this section's tasks
                    return
            elif change == "resumed":
                await self._drop_speculation()
            self._reschedule()

    async def speculate(self, link: ParticipantLink, text: str) -> None:
        """Voice: the early transcript of a pause; compose its reply now in case the turn ends on it."""
        async with self._lock:
            if not self.settings.speculate or link is not self.link or self.finished or self._closed:
                return
            await self._drop_speculation()
            request = self.conv.speculative_request(text, self.clock())
            if request is None:
                return
            heard = Exchange(MessageRole.USER.value, text, self.conv.heard_question, None, self.clock())
            request = replace(request, transcript=(*self.transcript, heard), speech=link.plays_audio)
            self._speculation = Speculation(self.interviewer, request, time.monotonic())
            self.speculation_stats.started += 1

    async def _drop_speculation(self) -> None:
        speculation, self._speculation = self._speculation, None
        if speculation is not None:
            self.speculation_stats.wasted += 1
            await speculation.cancel()

    async def playback_done(self, link: ParticipantLink, report: PlaybackReport) -> None:
        """Voice: a message has been played to the end."""
        try:
            async with self._lock:
                if link is not self.link or self.finished or self._closed:
                    return
                await self._record_playback(report)
                await self._apply(self.conv.playback_finished(self.clock()))
        except LeaseLost:
            await self.lost(None)

    async def _record_playback(self, report: PlaybackReport) -> None:
        await self.store.messages.update_message(
            report.message_id,
            content=report.content,
            started_at=report.started_at,
            ended_at=report.ended_at,
            is_interrupted=report.interrupted,
            latency=report.latency,
            lease=self.lease,
        )
        line = self._line_of.get(report.message_id)
        if line is not None:  # the interviewer is given what the participant heard, cut where they cut it
            self.transcript[line] = replace(self.transcript[line], content=report.content)

    def _remember(self, message: Message) -> None:
        self._line_of[message.id] = len(self.transcript)
        self.transcript.append(exchange_of(message))

    async def participant_activity(self, link: ParticipantLink) -> None:
        async with self._lock:
            if link is self.link:
                self.conv.participant_activity(self.clock())
                self._reschedule()

    async def end(self, reason: EndReason) -> Run | None:
        """End from outside (cancel). Returns the ended run, or None if it had already ended.

        :class:`LeaseLost` if another process holds the run now (the caller ends it without a lease)."""
        try:
            async with self._lock:
                if self.finished:
                    return None
                if self._closed:
                    raise LeaseLost(f"run {self.run_id} is no longer acted for here")
                return await self._apply(self.conv.end(reason))
        except LeaseLost:
            await self.lost(None)
            raise

    async def hand_over(self) -> None:
        """This process is draining (or stopping): stop acting, let the run go, and send the participant to
        reconnect, without ending the run.

        The lease is released (the live session ends as ``server_restart``), so the next process to see
        the run (the participant's new connection, or any process's claim) takes it on at once, and its
        deadlines go on from stored timestamps. If the release cannot be written, the lease simply runs out.
        """
        if self.closed:
            return
        link = await self._stop()
        if self.lease is not None:
            try:
                await self.store.leases.release(self.lease)
            except Exception as exc:  # the database is gone too: the lease runs out instead
                log.warning("run %s not released (%r); its lease will run out", self.run_id, exc)
        if link is not None:
            await quietly(link.send({"type": "error", "code": "server_restart", "message": RESTARTING}))
            await quietly(link.close(CLOSE_GOING_AWAY, "server restarting"))
        self._on_finished(self)

    async def lost(self, change: LeaseChange | None) -> None:
        """Another process holds the run now (``change`` says how, None: a write was refused), or this
        process may no longer act for anything: stop at once, write nothing, tell the participant."""
        if self.closed:
            return
        link = await self._stop()
        if link is not None:
            frame, code, reason = await self._farewell(change)
            await quietly(link.send(frame))
            await quietly(link.close(code, reason))
        log.info("run %s: stopped acting for it (%s)", self.run_id, change or "a write was refused")
        self._on_finished(self)

    async def _stop(self) -> ParticipantLink | None:
        """Stop timers, tasks and speculation; returns the link that was live."""
        self._closed = True
        self._reschedule()  # cancels the timer
        await self._drop_speculation()
        current = asyncio.current_task()
        others = [task for task in self._tasks if task is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        link, self.link, self.session = self.link, None, None
        return link

    async def _farewell(self, change: LeaseChange | None) -> tuple[dict[str, Any], int, str]:
        """What the participant is told when the run has gone elsewhere: it ended (``run.ended``), another
        connection took it (``replaced``), or it is to reconnect (its process was presumed dead)."""
        reconnect = ({"type": "error", "code": "server_restart", "message": RESTARTING}, CLOSE_GOING_AWAY, "moved")
        replaced = ({"type": "error", "code": "replaced", "message": REPLACED}, CLOSE_REPLACED, "replaced")
        if change is LeaseChange.TAKEN:
            return replaced
        if change is LeaseChange.CLAIMED:  # presumed dead (or it lapsed itself): the database may be out of reach
            return reconnect
        try:
            run = await self.store.runs.get_run(self.run_id)
            if run.status.is_terminal:
                reason = (run.end_reason or EndReason.ERROR).value
                return {"type": "run.ended", "status": run.status.value, "reason": reason}, 1000, "run ended"
            if change is None and any(s.ended_at is None for s in await self.store.runs.list_sessions(self.run_id)):
                return replaced  # a write was refused because a connection elsewhere took the run
        except Exception as exc:  # the database cannot say: reconnecting finds out
            log.debug("run %s: farewell without the database (%r)", self.run_id, exc)
        return reconnect

    def _check_may_act(self) -> None:
        """Before storing anything (and so before sending it): is this process's heartbeat still fresh?"""
        if not self._may_act():
            raise LeaseLost(f"this process's lease is too old to act for run {self.run_id}")

    # --- executing actions --------------------------------------------------------------

    async def _apply(self, actions: list[Action]) -> Run | None:
        """Execute actions in order (they may produce more); returns the run if it ended."""
        queue = deque(actions)
        ended: Run | None = None
        while queue:
            action = queue.popleft()
            if isinstance(action, Compose):
                if action.request.purpose is Purpose.START:  # the interviewer may get ready for the first answer
                    self._spawn(self.interviewer.prepare(action.request))
                self._answered[action.turn_id] = action.answers
                self._reply_ids[action.turn_id] = uuid.uuid4().hex[:16]
                self._composing[action.turn_id] = self._spawn(self._compose(action))
            elif isinstance(action, Deliver):
                queue.extend(await self._deliver(action))
            elif isinstance(action, Persist):
                if not any(isinstance(later, Persist) for later in queue):  # only the latest state matters
                    await self.store.runs.save_state(self.run_id, action.position, action.idle_since, lease=self.lease)
            elif isinstance(action, EndRun):
                ended = await self._end_run(action.reason)
            elif isinstance(action, StopPlayback):
                reports = await self.link.stop_playback() if self.link is not None else []
                for report in reports:
                    await self._record_playback(report)
                queue.extend(self.conv.playback_stopped(self.clock()))
            elif isinstance(action, Cancel):
                task = self._composing.pop(action.turn_id, None)
                self._answered.pop(action.turn_id, None)
                self._reply_ids.pop(action.turn_id, None)
                self._last_message.pop(action.turn_id, None)
                if task is not None and task is not asyncio.current_task():
                    task.cancel()
        self._reschedule()
        return ended

    async def _deliver(self, action: Deliver) -> list[Action]:
        now = self.clock()
        link = self.link
        latency = action.latency
        if link is not None and link.rtt is not None:
            latency = replace(latency, network=round(link.rtt * 500.0, 3))
        utt = action.utterance
        new = NewMessage(
            MessageRole.ASSISTANT,
            utt.text,
            started_at=now,
            ended_at=now,
            session_id=self.session.id if self.session else None,
            question_id=utt.question_id,
            kind=utt.kind,
            is_filler=utt.kind is UtteranceKind.FILLER,
            latency=latency,
            meta=self._stamp(action),
        )
        self._check_may_act()
        message, _ = await self.store.messages.add_message(self.run_id, new, lease=self.lease)
        self._remember(message)
        if utt.kind is not UtteranceKind.FILLER:
            self._last_message[action.turn_id] = message.id
        if link is None:
            return []
        await quietly(link.deliver(message, self.run_started_at))
        return [] if link.plays_audio else self.conv.playback_finished(self.clock())

    def _stamp(self, action: Deliver) -> dict[str, Any]:
        """An assistant message's record: how it was made, and which reply (turn) it is part of."""
        meta = dict(action.utterance.meta)
        reply_id = self._reply_ids.get(action.turn_id)
        if reply_id is not None and action.utterance.kind is not UtteranceKind.FILLER:
            meta["turn"] = reply_id
        return meta

    async def _end_run(self, reason: EndReason) -> Run | None:
        run = await self.store.runs.end_run(self.run_id, reason, self.clock(), lease=self.lease)
        self.finished = True
        self._on_finished(self)  # before anything below can be cancelled along with the link's tasks
        link, self.link, self.session = self.link, None, None
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        speculation, self._speculation = self._speculation, None
        if speculation is not None:
            self._spawn(speculation.cancel())
        if link is not None and run is not None:
            frame = {"type": "run.ended", "status": run.status.value, "reason": reason.value}
            await quietly(link.send(frame))
            await quietly(link.close(1000, "run ended"))
        return run

    # --- the interviewer -------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _parts(self, action: Compose) -> AsyncIterator[ReplyPart]:
        """The reply's parts: from the speculation made for exactly this request, or from the interviewer."""
        request = replace(
            action.request,
            transcript=tuple(self.transcript),
            speech=self.link.plays_audio if self.link is not None else False,
        )
        speculation, self._speculation = self._speculation, None
        if speculation is not None and speculation.matches(request):
            self.speculation_stats.used += 1
            self.speculation_stats.lead_ms.append(round((time.monotonic() - speculation.started_at) * 1000.0, 3))
            return speculation.replay()
        if speculation is not None:
            self.speculation_stats.wasted += 1
            self._spawn(speculation.cancel())
        return self.interviewer.reply(request)

    async def _compose(self, action: Compose) -> None:
        link = self.link  # previews go only to the connection live now
        shown = False

        def show_typing() -> None:
            nonlocal shown
            shown = True
            self._typing(True)

        timer = asyncio.get_running_loop().call_later(self.settings.typing_after_s, show_typing)
        try:
            parts = self._parts(action)
            async for part in parts:
                if isinstance(part, Delta):
                    if link is not None and link is self.link and action.turn_id in self._composing:
                        turn = self._reply_ids.get(action.turn_id)
                        frame: dict[str, Any] = {"type": "message.delta", "turn": turn, "delta": part.text}
                        if part.restart:
                            frame["restart"] = True
                        await quietly(link.send(frame))
                    continue
                async with self._lock:
                    if self.finished or action.turn_id not in self._composing:
                        return
                    if isinstance(part, Utterance):
                        await self._apply(self.conv.utterance_ready(action.turn_id, part, self.clock()))
                    elif isinstance(part, TurnEnd):
                        await self._turn_ended(action, part)
        except asyncio.CancelledError:
            raise
        except LeaseLost:
            await self.lost(None)
        except Exception:
            log.exception("interviewer failed in run %s", self.run_id)
            async with self._lock:
                if not self.finished:
                    await self._apply(self.conv.end(EndReason.ERROR))
        finally:
            timer.cancel()
            if shown:
                self._typing(False)
            if self._composing.get(action.turn_id) is asyncio.current_task():
                del self._composing[action.turn_id]

    async def _turn_ended(self, action: Compose, end: TurnEnd) -> None:
        answered = self._answered.pop(action.turn_id, ())
        self._reply_ids.pop(action.turn_id, None)
        last = self._last_message.pop(action.turn_id, None)
        if end.record and last is not None:  # the turn's record came after its last message was out
            await self.store.messages.update_message(last, meta=dict(end.record), lease=self.lease)
        if end.flags:  # the researcher sees which answers were flagged, on the answers themselves
            for message_id in answered:
                await self.store.messages.update_message(message_id, meta={"flags": list(end.flags)}, lease=self.lease)
        await self._apply(self.conv.turn_ended(action.turn_id, end, self.clock()))

    def _typing(self, active: bool) -> None:
        if self.link is not None:
            self._spawn(send_quietly(self.link, {"type": "typing", "active": active}))

    # --- time -----------------------------------------------------------------------------

    def _reschedule(self) -> None:
        """Set the timer for the machine's deadline (after every input): tick no later than it."""
        deadline = None if self.finished or self._closed else self.conv.deadline()
        if deadline == self._timer_for and (self._timer is not None or deadline is None):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_for = deadline
        if deadline is not None and not self._ticking:
            delay = max(deadline - self.clock(), 0.0)
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_for, self._ticking = None, None, True
        self._spawn(self._tick())

    async def _tick(self) -> None:
        try:
            async with self._lock:
                if not self.finished and not self._closed:
                    await self._apply(self.conv.tick(self.clock()))
        except LeaseLost:
            await self.lost(None)
        except Exception:
            log.exception("timer failed in run %s", self.run_id)
            await asyncio.sleep(1.0)
        self._ticking = False
        self._reschedule()
