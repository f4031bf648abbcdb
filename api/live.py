"""Drivers for live runs: one :class:`RunController` per run in progress.

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
  ignored if the turn went stale meanwhile.
* The run ends while a connection is still attached: the participant gets
  ``run.ended`` after the terminal event has been committed, then the socket is
  closed.
* A controller is asked for twice concurrently for the same run (two joins at
  once): the registry creates it under its own lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from runtime.conversation import Action, Compose, Conversation, Deliver, EndRun, Input, Persist, StopPlayback, Timing
from runtime.interviewer import Delta, Interviewer, TurnEnd, Utterance
from runtime.serialize import message_json
from runtime.storage import NewMessage, Store
from runtime.storage.runs import unanswered
from runtime.types import (
    BlueprintContent,
    ChannelSettings,
    ChannelType,
    EndReason,
    LatencyBreakdown,
    Message,
    MessageRole,
    Run,
    RunStatus,
    Session,
    SessionEndReason,
    SessionType,
    UtteranceKind,
)

log = logging.getLogger("vivavoce.live")

Clock = Callable[[], float]

CLOSE_REPLACED = 4001
CLOSE_GOING_AWAY = 1001


@dataclass(frozen=True)
class PlaybackReport:
    """How an assistant message was actually played (voice): what the recording and transcript must say."""

    message_id: str
    started_at: float | None  # first frame handed to the transport; None if it never started
    ended_at: float
    content: str  # the words actually played (cut short on barge-in)
    interrupted: bool
    latency: LatencyBreakdown | None


class ParticipantLink(Protocol):
    """A live connection to the participant: a chat websocket or a WebRTC peer."""

    session_type: SessionType
    plays_audio: bool  # False: a message counts as played as soon as it is delivered

    @property
    def rtt(self) -> float | None:
        """Latest measured round-trip time in seconds, if any."""

    async def send(self, frame: dict[str, Any]) -> None:
        """A protocol frame (session.ready, message.ack, typing, run.ended, error)."""

    async def deliver(self, message: Message, run_started_at: float | None) -> None:
        """Present an assistant message that has been stored: send it (chat) or start speaking it (voice)."""

    async def stop_playback(self) -> list[PlaybackReport]:
        """Barge-in: stop speaking at once; reports for what was cut (chat: nothing)."""

    async def close(self, code: int, reason: str) -> None: ...


@dataclass(frozen=True)
class LiveSettings:
    time_scale: float = 1.0
    typing_after_s: float = 0.05  # show "typing" only if a reply takes longer than this


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
        clock: Clock = time.time,
        on_finished: Callable[[RunController], None] = lambda c: None,
        settings: LiveSettings = LiveSettings(),
    ) -> None:
        self.store = store
        self.interviewer = interviewer
        self.run_id = run.id
        self.run_started_at = run.started_at
        self.blueprint = blueprint
        self.conv = conversation
        self.transcript = [(m.role.value, m.content) for m in transcript]
        self.clock = clock
        self.settings = settings
        self.link: ParticipantLink | None = None
        self.session: Session | None = None
        self.finished = False
        self._closed = False  # server shutdown: ignore inputs, leave the database alone
        self._on_finished = on_finished
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        # The machine's next deadline, as one loop timer: rescheduled only when the deadline moves
        # (a task and a timer per input for a sleeping loop task cost more than the rest of a turn).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_for: float | None = None  # the deadline self._timer is set for
        self._ticking = False  # a tick is queued or running; it reschedules when done
        self._reschedule()

    # --- inputs from the connection --------------------------------------------------

    async def attach(self, link: ParticipantLink) -> Session | None:
        """Open a session for ``link``; None if the run has ended."""
        async with self._lock:
            if self.finished or self._closed:
                return None
            now = self.clock()
            started = await self.store.runs.start_session(self.run_id, link.session_type, now)
            if started is None:
                return None
            run, session = started
            previous, self.link, self.session = self.link, link, session
            self.run_started_at = run.started_at
            if previous is not None:
                await _quietly(previous.send({"type": "error", "code": "replaced", "message": _REPLACED}))
                await _quietly(previous.close(CLOSE_REPLACED, "replaced"))
                await self._apply(self.conv.disconnect(now))
            messages = await self.store.runs.list_messages(self.run_id) if self.transcript else []
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
        async with self._lock:
            if link is not self.link or self._closed:
                return
            now = self.clock()
            for report in await link.stop_playback():  # cut short by the hang-up: keep what was heard
                await self._record_playback(report)
            self.link = None
            if self.session is not None:
                await self.store.runs.end_session(self.session.id, SessionEndReason.PARTICIPANT_LEFT, now)
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

        ``spoken`` is (onset, end) of a voice answer; a chat message starts and ends when received.
        """
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
                client_id=client_id,
            )
            message, created = await self.store.runs.add_message(self.run_id, new)
            if created:
                self.transcript.append((MessageRole.USER.value, content))
                await self._apply(self.conv.participant_text(content, self.clock(), received_at=received_at))
            return message

    async def speech(self, link: ParticipantLink, change: str) -> None:
        """Voice activity: ``started`` / ``ended`` (idle clock) or ``interrupting`` (barge-in)."""
        async with self._lock:
            if link is not self.link or self.finished or self._closed:
                return
            now = self.clock()
            if change == "started":
                self.conv.speech_started(now)
            elif change == "ended":
                self.conv.speech_ended(now)
            elif change == "interrupting":
                await self._apply(self.conv.speech_interrupting(now))
            self._reschedule()

    async def playback_done(self, link: ParticipantLink, report: PlaybackReport) -> None:
        """Voice: a message has been played to the end."""
        async with self._lock:
            if link is not self.link or self.finished or self._closed:
                return
            await self._record_playback(report)
            await self._apply(self.conv.playback_finished(self.clock()))

    async def _record_playback(self, report: PlaybackReport) -> None:
        await self.store.runs.update_message(
            report.message_id,
            content=report.content,
            started_at=report.started_at,
            ended_at=report.ended_at,
            is_interrupted=report.interrupted,
            latency=report.latency,
        )

    async def participant_activity(self, link: ParticipantLink) -> None:
        async with self._lock:
            if link is self.link:
                self.conv.participant_activity(self.clock())
                self._reschedule()

    async def end(self, reason: EndReason) -> Run | None:
        """End from outside (cancel). Returns the ended run, or None if it had already ended."""
        async with self._lock:
            if self.finished:
                return None
            return await self._apply(self.conv.end(reason))

    async def close(self) -> None:
        """Server shutdown: stop timers and tasks and let the participant go, without ending the run.

        The session is left open in the database on purpose: the next start
        closes it as ``server_restart`` at the last moment it was seen, exactly
        as after a crash, and the run's deadlines go on from stored timestamps.
        """
        self._closed = True
        self._reschedule()  # cancels the timer
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        link, self.link = self.link, None
        if link is not None:
            await _quietly(link.send({"type": "error", "code": "server_restart", "message": _RESTARTING}))
            await _quietly(link.close(CLOSE_GOING_AWAY, "server restarting"))

    # --- executing actions --------------------------------------------------------------

    async def _apply(self, actions: list[Action]) -> Run | None:
        """Execute actions in order (they may produce more); returns the run if it ended."""
        queue = deque(actions)
        ended: Run | None = None
        while queue:
            action = queue.popleft()
            if isinstance(action, Compose):
                self._spawn(self._compose(action))
            elif isinstance(action, Deliver):
                queue.extend(await self._deliver(action))
            elif isinstance(action, Persist):
                if not any(isinstance(later, Persist) for later in queue):  # only the latest state matters
                    await self.store.runs.save_state(self.run_id, action.position, action.idle_since)
            elif isinstance(action, EndRun):
                ended = await self._end_run(action.reason)
            elif isinstance(action, StopPlayback):
                reports = await self.link.stop_playback() if self.link is not None else []
                for report in reports:
                    await self._record_playback(report)
                queue.extend(self.conv.playback_stopped(self.clock()))
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
        )
        message, _ = await self.store.runs.add_message(self.run_id, new)
        self.transcript.append((MessageRole.ASSISTANT.value, utt.text))
        if link is None:
            return []
        await _quietly(link.deliver(message, self.run_started_at))
        return [] if link.plays_audio else self.conv.playback_finished(self.clock())

    async def _end_run(self, reason: EndReason) -> Run | None:
        run = await self.store.runs.end_run(self.run_id, reason, self.clock())
        self.finished = True
        self._on_finished(self)  # before anything below can be cancelled along with the link's tasks
        link, self.link, self.session = self.link, None, None
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if link is not None and run is not None:
            frame = {"type": "run.ended", "status": run.status.value, "reason": reason.value}
            await _quietly(link.send(frame))
            await _quietly(link.close(1000, "run ended"))
        return run

    # --- the interviewer -------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _compose(self, action: Compose) -> None:
        request = replace(action.request, transcript=tuple(self.transcript))
        shown = False

        def show_typing() -> None:
            nonlocal shown
            shown = True
            self._typing(True)

        timer = asyncio.get_running_loop().call_later(self.settings.typing_after_s, show_typing)
        try:
            async for part in self.interviewer.reply(request):
                if isinstance(part, Delta):
                    if self.link is not None:
                        await _quietly(self.link.send({"type": "message.delta", "delta": part.text}))
                    continue
                async with self._lock:
                    if self.finished:
                        return
                    if isinstance(part, Utterance):
                        await self._apply(self.conv.utterance_ready(action.turn_id, part, self.clock()))
                    elif isinstance(part, TurnEnd):
                        await self._apply(self.conv.turn_ended(action.turn_id, part, self.clock()))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("interviewer failed in run %s", self.run_id)
            async with self._lock:
                if not self.finished:
                    await self._apply(self.conv.end(EndReason.ERROR))
        finally:
            timer.cancel()
            if shown:
                self._typing(False)

    def _typing(self, active: bool) -> None:
        if self.link is not None:
            self._spawn(_send_quietly(self.link, {"type": "typing", "active": active}))

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
        except Exception:
            log.exception("timer failed in run %s", self.run_id)
            await asyncio.sleep(1.0)
        self._ticking = False
        self._reschedule()


_RESTARTING = "The server is restarting; reconnect in a moment to continue."
_REPLACED = "This interview was opened in another window; this one has been disconnected."


async def _send_quietly(link: ParticipantLink, frame: dict[str, Any]) -> None:
    """:func:`_quietly` for a spawned send: the send starts only if the task does (a task cancelled
    before it ran, as the run ended, would otherwise leave a send coroutine never awaited)."""
    await _quietly(link.send(frame))


async def _quietly(awaitable: Any) -> None:
    """Send to a participant who may already be gone: a dead socket must not break the run."""
    try:
        await awaitable
    except Exception as exc:
        log.debug("send to participant failed: %r", exc)


def timing_for(settings: ChannelSettings, time_scale: float, *, voice: bool) -> Timing:
    return Timing(
        idle_timeout=settings.idle_timeout_s * time_scale,
        max_duration=settings.max_duration_s * time_scale,
        closing_grace=30.0 * time_scale,
        filler_after=settings.filler_after_ms / 1000.0 if voice else None,
    )


class LiveRuns:
    """The registry of controllers, one per run in progress in this process."""

    def __init__(
        self, store: Store, interviewer: Interviewer, *, settings: LiveSettings, clock: Clock = time.time
    ) -> None:
        self.store = store
        self.interviewer = interviewer
        self.settings = settings
        self.clock = clock
        self.controllers: dict[str, RunController] = {}
        self.on_run_finished: list[Callable[[str], None]] = []  # e.g. close the run's recorder
        self._creating: dict[str, asyncio.Future[RunController | None]] = {}

    async def controller(self, run: Run) -> RunController | None:
        """The controller for ``run``, created (and restored from storage) if needed.

        Two joins of the same run at once share one creation; joins of
        different runs do not wait for each other.
        """
        existing = self.controllers.get(run.id)
        if existing is not None:
            return existing
        creating = self._creating.get(run.id)
        if creating is not None:
            return await asyncio.shield(creating)
        creating = asyncio.get_running_loop().create_future()
        self._creating[run.id] = creating
        try:
            ctl = await self._create(run.id)
        except BaseException as exc:
            creating.set_exception(exc)
            creating.exception()  # retrieved: a failed creation is reported to its first caller only
            raise
        finally:
            del self._creating[run.id]
        creating.set_result(ctl)
        if ctl is not None:
            self.controllers[run.id] = ctl
        return ctl

    async def _create(self, run_id: str) -> RunController | None:
        run = await self.store.runs.get_run(run_id)
        if run.status.is_terminal:
            return None
        channel_settings, voice = ChannelSettings(), False
        content = await self.store.catalog.pinned_content(run.org_id, run.blueprint_id, run.blueprint_version)
        if run.channel_id is not None:
            channel = await self.store.catalog.get_channel(run.org_id, run.channel_id)
            channel_settings, voice = channel.settings, channel.type is ChannelType.WEBRTC_VOICE
        started = run.started_at is not None  # a run not yet joined has no messages or sessions to read
        transcript = await self.store.runs.list_messages(run.id) if started else []
        conv = Conversation.restore(
            content,
            timing_for(channel_settings, self.settings.time_scale, voice=voice),
            position=run.position,
            started_at=run.started_at,
            idle_since=run.idle_since,
            pending=[Input(m.content, m.ended_at) for m in unanswered(transcript)],
            last_seen=await self.store.runs.last_seen(run.id) if started else None,
        )
        return RunController(
            self.store,
            self.interviewer,
            run,
            content,
            conv,
            transcript,
            clock=self.clock,
            on_finished=self._finished,
            settings=self.settings,
        )

    def _finished(self, ctl: RunController) -> None:
        if self.controllers.get(ctl.run_id) is ctl:
            del self.controllers[ctl.run_id]
        for hook in self.on_run_finished:
            hook(ctl.run_id)

    async def end(self, run: Run, reason: EndReason) -> Run | None:
        """End a run whether or not it is live. None if it had already ended."""
        ctl = self.controllers.get(run.id)
        if ctl is None and run.status is RunStatus.IN_PROGRESS:
            ctl = await self.controller(run)
        if ctl is not None:
            ended = await ctl.end(reason)
            if ended is not None:
                return ended
        return await self.store.runs.end_run(run.id, reason, self.clock())

    async def recover(self) -> int:
        """After a (re)start: close sessions the dead process left open, restart timers of live runs."""
        await self.store.runs.close_orphaned_sessions()
        runs = await self.store.runs.runs_with_status(RunStatus.IN_PROGRESS)
        for run in runs:
            await self.controller(run)
        return len(runs)

    async def expire_pending(self) -> int:
        expired = await self.store.runs.expired_pending_runs(self.clock())
        for run_id in expired:
            await self.store.runs.end_run(run_id, EndReason.JOIN_EXPIRED, self.clock())
        return len(expired)

    async def close(self) -> None:
        await asyncio.gather(*(ctl.close() for ctl in list(self.controllers.values())))
        self.controllers.clear()
