"""Two processes writing to one run on PostgreSQL: its event numbers stay gapless, unique and in commit order.

Each process has its own writer thread and connection (as two servers would); ``UPDATE runs SET last_seq =
last_seq + 1 … RETURNING`` takes the run's row lock until commit, so the other process's next number waits for it.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from asyncio.subprocess import PIPE
from pathlib import Path

from runtime.storage import NewMessage, Store
from runtime.types import BlueprintContent, EventType, MessageRole, Participant, Question
from tests.conftest import UNIT, postgres_only

pytestmark = postgres_only("SQLite is written by one process")
ROOT = Path(__file__).resolve().parents[2]
WAVES, PER_WAVE = 40, 5
WRITES = WAVES * PER_WAVE  # per process


async def write_answers(url: str, run_id: str, prefix: str) -> None:
    """One process's writes: ``WRITES`` answers to the run, once told to go (a line on stdin)."""
    store = Store(url)
    await store.open()
    try:
        await store.db.write(lambda tx: tx.sql("SELECT 1"), run_id=run_id)  # the run's writer has connected
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        for wave in range(WAVES):  # a few writes in flight at a time: they share commits, and commits alternate
            now = time.time()
            await asyncio.gather(
                *(
                    store.messages.add_message(run_id, NewMessage(MessageRole.USER, f"{prefix}{i}", now, now))
                    for i in range(wave * PER_WAVE, (wave + 1) * PER_WAVE)
                )
            )
        print(store.db.commits)  # how many group commits it took
    finally:
        await store.close()


async def test_two_processes_writing_to_one_run_never_skip_or_repeat_a_number(database_url: str) -> None:
    store = Store(database_url)
    await store.open()
    try:
        org = await store.catalog.create_organization("org")
        bp = await store.catalog.create_blueprint(
            org, BlueprintContent("g", "Hi.", (Question("q", "Why?", (), 0),), "Bye.")
        )
        run = await store.runs.create_run(
            org, blueprint_id=bp.id, blueprint_version=1, channel_id=None, connector_id=None,
            participant=Participant(None, None, None, {}), metadata={}, join_window_s=60.0,
        )  # fmt: skip
        code = "import asyncio, sys; from tests.runtime.test_storage_processes import write_answers as w; "
        code += "asyncio.run(w(sys.argv[1], sys.argv[2], sys.argv[3]))"
        pipes = {"stdin": PIPE, "stdout": PIPE, "stderr": PIPE}
        procs = [
            await asyncio.create_subprocess_exec(sys.executable, "-c", code, database_url, run.id, p, cwd=ROOT, **pipes)
            for p in ("a", "b")
        ]
        for proc in procs:  # both connected, then both go at once
            assert proc.stdout is not None
            assert await asyncio.wait_for(proc.stdout.readline(), 60 * UNIT) == b"ready\n"
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate(b"go\n") for p in procs)), 60 * UNIT)
        for proc, (_, err) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, err.decode()
        commits = [int(out) for out, _ in outputs]
        assert all(WAVES <= c < WRITES for c in commits), commits  # some commits held several writes

        events = await store.runs.list_events(run.id, limit=10_000)
        assert [e.seq for e in events] == list(range(1, 2 * WRITES + 2))  # run.created, then every answer once
        said = [e.data["message"]["content"] for e in events if e.type is EventType.MESSAGE_CREATED]
        assert sorted(said) == sorted(f"{p}{i}" for p in "ab" for i in range(WRITES))
        switches = sum(1 for x, y in itertools.pairwise(said) if x[0] != y[0])
        assert switches > 1, "the two processes' commits did not interleave: the test proved nothing"
        assert (await store.runs.get_run(run.id)).last_seq == 2 * WRITES + 1
        assert len(await store.messages.list_messages(run.id)) == 2 * WRITES
    finally:
        await store.close()
