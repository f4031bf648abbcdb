"""The durable job runner of one server: it claims due jobs (runtime/storage/jobs.py) and does them.

Started with the app; it wakes when a run ends (the job was written in that run's
final transaction) and when the next retry falls due, so on a store of its own it
never polls. Jobs claimed by a process that died are taken again once their lease
runs out; on start, everything pending is resumed. Where other processes share the
store (PostgreSQL) their runs' jobs are not announced here, so it also looks every
``SHARED_LOOK_S``: a job whose process died mid-way is still done, by one of the others.

Kinds: ``analysis`` (summary and structured result of a finished run, :mod:`runtime.results`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from runtime.analysis import collect_responses
from runtime.llm import Prices
from runtime.results import Analyst, extractive_summary
from runtime.storage import Store
from runtime.storage.jobs import ANALYSIS, Job, JobStore
from runtime.types import TERMINAL_EVENTS, Event

log = logging.getLogger("vivavoce.jobs")

LEASE_S = 300.0  # a job not finished by then is taken again (its worker is presumed dead)
MAX_ATTEMPTS = 6
RETRY_BASE_S = 10.0  # then 20, 40, ... (scaled by the server's time_scale)
SHARED_LOOK_S = 30.0  # with other processes on the store: look for due jobs at least this often (scaled)


class JobRunner:
    def __init__(
        self,
        store: Store,
        analyst: Analyst,
        prices: Prices,
        *,
        time_scale: float = 1.0,
        owner: Callable[[], str] | None = None,
    ) -> None:
        self.store = store
        self.jobs = JobStore(store.db, owner=owner)  # owner: this server process (its claims die with it)
        self.analyst = analyst
        self.prices = prices
        self.time_scale = time_scale
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.done = 0  # jobs finished by this process (for tests and /v1/debug/runtime)

    def start(self) -> None:
        self.store.db.add_listener(self._on_event)
        self._task = asyncio.create_task(self._loop(), name="job-runner")

    async def _resume(self) -> None:
        if self.store.db.single_process:
            released = await self.jobs.release_claims(time.time())
            if released:
                log.info("resumed %d job(s) a previous run of this server had claimed", released)

    async def stop(self) -> None:
        self.store.db.remove_listener(self._on_event)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _on_event(self, event: Event) -> None:
        if event.type in TERMINAL_EVENTS:
            self._wake.set()

    async def _loop(self) -> None:
        try:
            await self._resume()
        except Exception:
            log.exception("could not take back the jobs of a previous run; their leases will run out")
        while True:
            self._wake.clear()
            try:
                for job in await self.jobs.claim(time.time(), lease_s=LEASE_S * self.time_scale):
                    await self._do(job)
                due = await self.jobs.next_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job runner failed; trying again shortly")
                due = time.time() + RETRY_BASE_S * self.time_scale
            delay = None if due is None else max(0.0, due - time.time())
            if delay == 0.0:
                continue
            if self.store.db.shared:  # jobs other processes write, or leave behind, are not announced here
                delay = min(delay if delay is not None else float("inf"), SHARED_LOOK_S * self.time_scale)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _do(self, job: Job) -> None:
        try:
            if job.kind == ANALYSIS and job.run_id is not None:
                await self._analyse(job)
            else:
                raise ValueError(f"unknown job kind {job.kind!r}")
            self.done += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            again = await self.jobs.retry(
                job, repr(exc), now=time.time(), max_attempts=MAX_ATTEMPTS, base_delay_s=RETRY_BASE_S * self.time_scale
            )
            log.warning("job %s (%s) failed%s: %r", job.id, job.kind, ", will retry" if again else "; gave up", exc)
            if not again and job.kind == ANALYSIS and job.run_id is not None:
                await self._give_up(job, exc)

    async def _give_up(self, job: Job, exc: Exception) -> None:
        """An analysis that keeps failing still ends the run's story: the extractive summary, and why."""
        assert job.run_id is not None
        try:
            run = await self.store.runs.get_run(job.run_id)
            content = await self.store.catalog.pinned_content(run.org_id, run.blueprint_id, run.blueprint_version)
            responses = collect_responses(content, await self.store.review.messages(run.id))
            await self.store.runs.store_analysis(
                run.id,
                job_id=job.id,
                summary=extractive_summary(responses),
                result=None,
                result_error=f"the analysis failed {job.attempts} times; last: {exc!r}"[:2000],
                usage=None,
                now=time.time(),
            )
        except Exception:
            log.exception("could not record the failed analysis of run %s", job.run_id)

    async def _analyse(self, job: Job) -> None:
        assert job.run_id is not None
        run = await self.store.runs.get_run(job.run_id)
        content = await self.store.catalog.pinned_content(run.org_id, run.blueprint_id, run.blueprint_version)
        messages = await self.store.review.messages(run.id)  # a correction approved already is what was said
        outcome = await self.analyst.analyse(content, collect_responses(content, messages))
        await self.store.runs.store_analysis(
            run.id,
            job_id=job.id,
            summary=outcome.summary,
            result=outcome.result,
            result_error=outcome.result_error,
            usage=outcome.usage(self.prices),
            now=time.time(),
        )
