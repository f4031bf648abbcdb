"""The registry of live runs in this process, which of them it holds, and which interviewer each one gets.

A controller exists here only for a run this process holds the lease of
(runtime/storage/leases.py): a join takes the run over before its state is read,
so the state is the last holder's final word; runs whose holder died are claimed
by :meth:`LiveRuns.keep` on every heartbeat and resumed with their timers, which
then fire here at the times stored. Draining (:meth:`LiveRuns.hand_over`) lets
every run go and sends its participant to reconnect, to whichever process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from api.live.controller import Clock, LiveSettings, RunController
from api.live.links import ParticipantLink
from api.live.ownership import Ownership
from api.live.speculation import SpeculationStats
from runtime.conversation import Conversation, Input, Timing
from runtime.errors import Draining, LeaseLost
from runtime.interviewer import Interviewer, ScriptedInterviewer
from runtime.recovery import caught_up
from runtime.storage import Store
from runtime.storage.leases import HeartbeatLine, LeaseChange, parse_notice
from runtime.storage.messages import unanswered
from runtime.types import (
    BlueprintContent,
    ChannelSettings,
    ChannelType,
    EndReason,
    InterviewerType,
    Lease,
    MessageRole,
    Run,
    Session,
)

log = logging.getLogger("vivavoce.live")

CLAIM_BATCH = 50  # orphaned runs claimed per heartbeat (a dead process's runs are shared out among the living)


def timing_for(settings: ChannelSettings, time_scale: float, *, voice: bool) -> Timing:
    return Timing(
        idle_timeout=settings.idle_timeout_s * time_scale,
        max_duration=settings.max_duration_s * time_scale,
        closing_grace=30.0 * time_scale,
        filler_after=settings.filler_after_ms / 1000.0 if voice else None,
    )


class Interviewers:
    """Which interviewer moderates a run: the one its (frozen) blueprint version names.

    ``fixed`` serves every run (tests pass their own); otherwise ``scripted`` and, when
    the server has a model configured, ``llm``.
    """

    def __init__(
        self, *, llm: Interviewer | None = None, scripted: Interviewer | None = None, fixed: Interviewer | None = None
    ) -> None:
        self.llm = llm
        self.scripted = scripted or ScriptedInterviewer()
        self.fixed = fixed

    def for_content(self, content: BlueprintContent) -> Interviewer:
        if self.fixed is not None:
            return self.fixed
        if content.interviewer.type is InterviewerType.LLM and self.llm is not None:
            return self.llm
        return self.scripted

    async def aclose(self) -> None:
        for interviewer in {id(i): i for i in (self.llm, self.scripted, self.fixed) if i is not None}.values():
            await interviewer.aclose()


class LiveRuns:
    """The registry of controllers, one per run in progress in this process."""

    def __init__(
        self,
        store: Store,
        interviewers: Interviewers | Interviewer,
        *,
        settings: LiveSettings,
        ownership: Ownership | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.store = store
        self.ownership = ownership or Ownership(store.leases, shared=store.db.shared)
        self.draining = False  # handing runs over: no new ones here
        self.interviewers = interviewers if isinstance(interviewers, Interviewers) else Interviewers(fixed=interviewers)
        self.settings = settings
        self.clock = clock
        self.controllers: dict[str, RunController] = {}
        self.on_run_finished: list[Callable[[str], None]] = []  # e.g. close the run's recorder
        self.speculation = SpeculationStats()
        self._creating: dict[str, asyncio.Future[RunController | None]] = {}
        self._wake = asyncio.Event()  # claim orphans now (a run was released)
        self._keeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def controller(self, run: Run) -> RunController | None:
        """The controller for ``run``: this process's, or a new one that takes the run over (from whichever
        process held it) and restores it from storage. None if the run has ended.

        Two joins of the same run at once share one creation; joins of
        different runs do not wait for each other.
        """
        if self.draining:
            raise Draining("this server process is handing its interviews over; reconnect")
        existing = self.controllers.get(run.id)
        if existing is not None and not existing.closed:
            return existing
        return await self._created(run.id, None)

    async def attach(self, ctl: RunController, link: ParticipantLink) -> tuple[RunController, Session] | None:
        """Open ``link``'s session on the run of ``ctl``; None if the run has ended. If another process took
        the run over meanwhile, it is taken back for this connection (the participant is here now)."""
        for _ in range(3):
            try:
                session = await ctl.attach(link)
            except LeaseLost:
                fresh = await self.controller(await self.store.runs.get_run(ctl.run_id))
                if fresh is None:
                    return None
                ctl = fresh
                continue
            return None if session is None else (ctl, session)
        raise LeaseLost(f"run {ctl.run_id} keeps changing hands; try again")

    async def _created(self, run_id: str, lease: Lease | None) -> RunController | None:
        """Create the run's controller: with ``lease`` (a run claimed as an orphan), else taking it over."""
        creating = self._creating.get(run_id)
        if creating is not None:
            return await asyncio.shield(creating)
        creating = asyncio.get_running_loop().create_future()
        self._creating[run_id] = creating
        try:
            ctl = await self._create(run_id, lease)
        except BaseException as exc:
            creating.set_exception(exc)
            creating.exception()  # retrieved: a failed creation is reported to its first caller only
            raise
        finally:
            del self._creating[run_id]
        creating.set_result(ctl)
        if ctl is not None:
            stale = self.controllers.get(run_id)
            if stale is not None and stale is not ctl:
                self._spawn(stale.lost(LeaseChange.TAKEN))  # ours, superseded (its lease is older)
            self.controllers[run_id] = ctl
        return ctl

    async def _create(self, run_id: str, lease: Lease | None) -> RunController | None:
        if lease is None:  # before anything is read: what the last holder wrote is all there (and final)
            lease = await self.store.leases.take_over(run_id, self.ownership.id)
            if lease is None:
                return None
        run = await self.store.runs.get_run(run_id)
        if run.status.is_terminal:
            return None
        channel_settings, voice = ChannelSettings(), False
        content = await self.store.catalog.pinned_content(run.org_id, run.blueprint_id, run.blueprint_version)
        if run.channel_id is not None:
            channel = await self.store.catalog.get_channel(run.org_id, run.channel_id)
            channel_settings, voice = channel.settings, channel.type is ChannelType.WEBRTC_VOICE
        started = run.started_at is not None  # a run not yet joined has no messages or sessions to read
        transcript = await self.store.messages.list_messages(run.id) if started else []
        said = [(m.kind, m.question_id) for m in transcript if m.role is MessageRole.ASSISTANT]
        conv = Conversation.restore(
            content,
            timing_for(channel_settings, self.settings.time_scale, voice=voice),
            position=caught_up(content, run.position, said),  # a holder may have died between reply and position
            started_at=run.started_at,
            idle_since=run.idle_since,
            pending=[Input(m.content, m.ended_at, m.question_id, m.id) for m in unanswered(transcript)],
            last_seen=await self.store.runs.last_seen(run.id) if started else None,
        )
        return RunController(
            self.store,
            self.interviewers.for_content(content),
            run,
            content,
            conv,
            transcript,
            lease=lease,
            may_act=self.ownership.may_act,
            clock=self.clock,
            on_finished=self._finished,
            settings=self.settings,
            speculation_stats=self.speculation,
        )

    def _finished(self, ctl: RunController) -> None:
        if self.controllers.get(ctl.run_id) is ctl:
            del self.controllers[ctl.run_id]
        for hook in self.on_run_finished:
            hook(ctl.run_id)

    async def end(self, run: Run, reason: EndReason) -> Run | None:
        """End a run whether or not it is live here. None if it had already ended.

        A run another process acts for is ended without its lease: that fences the holder, which is told
        and sends its participant ``run.ended`` (runtime/storage/leases.py)."""
        ctl = self.controllers.get(run.id)
        if ctl is not None and not ctl.closed:
            with contextlib.suppress(LeaseLost):
                ended = await ctl.end(reason)
                if ended is not None:
                    return ended
        return await self.store.runs.end_run(run.id, reason, self.clock())

    async def recover(self) -> int:
        """On start: join the processes sharing the store, and resume the runs left without a holder (on
        SQLite: every run in progress; its sessions are closed as ``server_restart``, as after a crash)."""
        await self.ownership.register()
        return await self._claim_all()

    async def _claim_all(self) -> int:
        claimed = 0
        while not self.draining:
            leases = await self.store.leases.claim_orphans(self.ownership.id, limit=CLAIM_BATCH)
            for lease in leases:
                await self._adopt(lease)
            claimed += len(leases)
            if len(leases) < CLAIM_BATCH:
                break
        return claimed

    async def _adopt(self, lease: Lease) -> None:
        try:
            await self._created(lease.run_id, lease)
        except Exception:
            log.exception("could not resume run %s; it is left to its lease", lease.run_id)

    # --- the heartbeat, and what other processes say ----------------------------------------

    def start(self) -> None:
        """Keep the heartbeat and claim orphans (only where other processes share the store)."""
        if self.ownership.shared and self._keeper is None:
            timeout_s = self.ownership.renew_every  # a renewal slower than a beat is as good as lost
            self.ownership.beat_in_thread(HeartbeatLine(self.store.db.url, timeout_s=timeout_s))
            self._keeper = asyncio.create_task(self.keep(), name="lease-keeper")

    async def keep(self) -> None:
        """Every quarter lease: renew, then claim runs whose holder died (woken early when one is released).
        Renewals that keep failing (the database is out of reach) end this incarnation at the moment its
        lease lapses, a margin before any other process may take its runs."""
        while not self.draining:
            lapses_in = self.ownership.lapses_in()
            if lapses_in > 0:  # sleep until the next beat, or until the lease would lapse if renewals fail
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(self.ownership.renew_every, lapses_in))
            self._wake.clear()
            try:
                if self.ownership.beating:  # renewed by the heartbeat's thread, whatever this loop is busy with
                    renewed = self.ownership.may_act()
                else:
                    try:  # a renewal still unanswered when the lease lapses is too late, whatever becomes of it
                        wait = max(self.ownership.lapses_in(), 0.001)
                        renewed = await asyncio.wait_for(self.ownership.renew(), wait)
                    except TimeoutError:
                        renewed = False
                if not renewed:
                    await self._lapsed()
                claimed = await self._claim_all()
                if claimed:
                    log.info("claimed %d run(s) whose process had gone", claimed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is unreachable: the next beat tries again
                log.warning("lease heartbeat failed (%r)", exc)
                await asyncio.sleep(self.ownership.renew_every)  # (also after a lapse: no tight loop)

    async def _lapsed(self) -> None:
        """This incarnation's lease ran out (paused, or cut off): let every run go, start over under a new id."""
        log.warning(
            "this process's lease lapsed: letting its %d run(s) go and registering again", len(self.controllers)
        )
        await asyncio.gather(*(ctl.lost(LeaseChange.CLAIMED) for ctl in list(self.controllers.values())))
        await self.ownership.reincarnate()

    def on_notice(self, payload: str) -> None:
        """A lease notification (PostgreSQL): stop acting for a run another process took, claim a released one."""
        try:
            notice = parse_notice(payload)
        except ValueError:
            log.warning("unreadable lease notification %r", payload[:200])
            return
        if notice.change is LeaseChange.RELEASED:
            self._wake.set()
            return
        ctl = self.controllers.get(notice.run_id)
        if ctl is not None and ctl.lease is not None and ctl.lease.epoch < notice.epoch:
            self._spawn(ctl.lost(notice.change))

    def on_notice_gap(self) -> None:
        """Lease notifications may have been missed (the listener reconnected): check what is still held."""
        self._spawn(self._check_held())

    async def _check_held(self) -> None:
        held = await self.store.leases.held(self.ownership.id)
        for run_id, ctl in list(self.controllers.items()):
            if ctl.lease is not None and held.get(run_id) != ctl.lease.epoch:
                await ctl.lost(None)

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def expire_pending(self) -> int:
        expired = await self.store.runs.expired_pending_runs(self.clock())
        for run_id in expired:
            await self.store.runs.end_run(run_id, EndReason.JOIN_EXPIRED, self.clock())
        return len(expired)

    async def hand_over(self) -> None:
        """Drain: take no new runs, let every run go (released, its participant sent to reconnect), leave."""
        self.draining = True
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        while self._creating:  # joins under way finish first, then are handed over with the rest
            await asyncio.gather(*self._creating.values(), return_exceptions=True)
        await asyncio.gather(*(ctl.hand_over() for ctl in list(self.controllers.values())))
        self.controllers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self.ownership.stop_beating)  # it beat on while the runs were handed over
        try:
            await self.ownership.retire()
        except Exception as exc:
            log.warning("could not retire this process's heartbeat (%r); it will run out", exc)

    async def close(self) -> None:
        await self.hand_over()
