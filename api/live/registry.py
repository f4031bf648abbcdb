"""The registry of live runs in this process, and which interviewer each one gets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from api.live.controller import Clock, LiveSettings, RunController
from api.live.speculation import SpeculationStats
from runtime.conversation import Conversation, Input, Timing
from runtime.interviewer import Interviewer, ScriptedInterviewer
from runtime.storage import Store
from runtime.storage.runs import unanswered
from runtime.types import BlueprintContent, ChannelSettings, ChannelType, EndReason, InterviewerType, Run, RunStatus


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
        clock: Clock = time.time,
    ) -> None:
        self.store = store
        self.interviewers = interviewers if isinstance(interviewers, Interviewers) else Interviewers(fixed=interviewers)
        self.settings = settings
        self.clock = clock
        self.controllers: dict[str, RunController] = {}
        self.on_run_finished: list[Callable[[str], None]] = []  # e.g. close the run's recorder
        self.speculation = SpeculationStats()
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
