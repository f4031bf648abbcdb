"""Benchmark: N concurrent chat interviews against vivavoce, beside a bare websocket server.

    .venv/bin/python bench/chat.py [--levels 100,500,1000,2000] [--json out.json]
    .venv/bin/python bench/chat.py --server-processes 2 --database-url postgresql://... [...]

With ``--server-processes P`` the server is ``vivavoce serve --workers P`` (P processes on one port: it
needs PostgreSQL, ``--database-url`` of an empty database) and the echo server is P processes sharing
its port too; CPU and RSS are summed over the processes.

For each level N, against the real server and then against ``bench/echo_server.py``
(the same frames per turn and the same sizes, no storage: the stack's raw ceiling):

1. set-up, not timed: N runs are created through the API (the echo server needs none);
2. connect: N simulated participants (``api.loadtest.callers.ChatCaller``) join, in
   load-generator processes separate from the server; each waits at a barrier once its
   ``session.ready`` and first question have arrived, so all N sessions are open at once;
3. interview: the barrier opens and every participant answers each question after a
   uniform 1-2 s typing delay, until ``run.ended``.

Measured: caller-side response time (answer sent → first reply frame) and join time;
server-side turn time from the stored latency breakdowns (``initial_wait + llm`` of each
reply, fetched through the API afterwards); server RSS growth per open session (RSS with N
sessions open minus RSS before they connected, over N); the server's event-loop lag
measured from outside (round trips of ``GET /healthz`` every 100 ms during the interview
phase, against the same when idle); message throughput during the interview phase. With a typing delay
both servers are offered the same load, so that ratio says how much of it each served; with
``--typing-min-ms 0 --typing-max-ms 0`` every participant answers as soon as the reply arrives (closed
loop), and the ratio compares the two servers' ceilings.

The load generator must not be the bottleneck: it runs in its own process(es) with uvloop,
and each reports its CPU use and its own event-loop lag during the interview phase; the
echo server, driven by the same generator, shows what the generator can sustain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from served import free_port  # noqa: E402  (bench/served.py)

from api.loadtest.callers import CallerContext, ChatCaller, Counters, JoinTarget  # noqa: E402
from api.loadtest.config import Delay, Persona, check_target, join_ws_url, origin_of  # noqa: E402
from api.loadtest.server_api import ServerApi  # noqa: E402
from api.loadtest.stats import percentile, summarize  # noqa: E402

LONG_ANSWERS = (  # six words or more: no probes, so every interview is exactly three answers
    "I usually wake up around seven and make a cup of coffee first.",
    "On weekdays I have porridge with fruit and a glass of orange juice.",
    "I would like more time in the morning so that I could go for a run.",
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- small helpers ------------------------------------------------------------------------------


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, over all cores (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / CLK_TCK, sum(fields) / CLK_TCK


def database_cpu() -> dict[int, float]:
    """CPU seconds of each local PostgreSQL process (its backends serve the server's connections), by pid."""
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it ended meanwhile
        name, rest = stat.split("(", 1)[1].rsplit(")", 1)
        if name == "postgres":
            fields = rest.split()
            found[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return found


def raise_fd_limit() -> int:
    """Open files: as many as allowed (a session is a socket); returns the limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def p(values: list[float], q: float) -> float | None:
    return percentile(values, q)


# --- the load generator process -------------------------------------------------------------------


async def worker(args: argparse.Namespace) -> None:
    """One load-generator process: join every URL, report READY, wait for GO, interview, write results."""
    raise_fd_limit()
    urls = Path(args.urls).read_text().split()
    origin = check_target(str(origin_of(urls[0])), allow_remote=False)
    loop = asyncio.get_running_loop()
    gate = asyncio.Event()
    counters = Counters()
    persona = Persona(
        typing_delay_ms=Delay(distribution="uniform", low=args.typing_min_ms, high=args.typing_max_ms,
                              min=args.typing_min_ms, max=args.typing_max_ms),
        answers=LONG_ANSWERS,
        short_answer_ratio=0.0,
        typing_indicator=False,
    )  # fmt: skip
    ready: set[int] = set()
    settled = asyncio.Event()
    n = len(urls)

    def on_ready(index: int) -> None:
        ready.add(index)
        if len(ready) + finished_before_go[0] >= n:
            settled.set()

    finished_before_go = [0]
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
    ctx = CallerContext(
        http=http,
        persona=persona,
        counters=counters,
        connect_timeout_s=args.connect_timeout_s,
        read_timeout_s=60.0,
        reconnect_window_s=5.0,
        max_turns=10,
        deadline=loop.time() + args.connect_budget_s + args.deadline_s,
        start_gate=gate,
        on_ready=on_ready,
    )

    async def one(i: int, url: str) -> Any:
        await asyncio.sleep(i / args.connect_rate)  # spread the handshakes (listen backlog is 128)
        caller = ChatCaller(i, ctx, random.Random(args.seed * 7919 + i))
        rec = await caller.session(JoinTarget(url, join_ws_url(url, origin), source="file"))
        if not gate.is_set() and i not in ready:
            finished_before_go[0] += 1
            if len(ready) + finished_before_go[0] >= n:
                settled.set()
        return rec

    t_connect = time.time()
    tasks = [asyncio.create_task(one(i, url)) for i, url in enumerate(urls)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(settled.wait(), args.connect_budget_s)
    print(f"READY {len(ready)} {time.time() - t_connect:.3f}", flush=True)
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if line.strip() != "GO":
        for t in tasks:
            t.cancel()
        return
    lags: list[float] = []
    stop_ticker = asyncio.Event()

    async def ticker() -> None:  # our own event-loop lag: how late a 10 ms sleep wakes up
        while not stop_ticker.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append((time.perf_counter() - t0 - 0.01) * 1000)

    cpu0, t_go = os.times(), time.time()
    gate.set()
    tick = asyncio.create_task(ticker())
    records = await asyncio.gather(*tasks)
    t_end = time.time()
    cpu1 = os.times()
    stop_ticker.set()
    await tick
    await http.close()
    out = {
        "t_go": t_go,
        "t_end": t_end,
        "cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        "lag_ms": {"p50": p(lags, 50), "p99": p(lags, 99), "max": max(lags, default=None)},
        "sessions": [r.as_json() for r in records],
        "failures": [r.failure for r in records if r.failure],
    }
    Path(args.out).write_text(json.dumps(out))
    print("DONE", flush=True)


# --- the orchestrator -----------------------------------------------------------------------------


@dataclass
class ServerProc:
    procs: list[subprocess.Popen[str]]  # the first is the one to stop (a supervisor stops its workers)
    url: str
    api_key: str = ""
    channel_id: str = ""
    blueprint_id: str = ""
    pids: list[int] = field(default_factory=list)  # the processes that serve (CPU and RSS are theirs, summed)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_vivavoce(data_dir: Path, database_url: str | None = None, processes: int = 1) -> ServerProc:
    port = free_port()
    cmd = [sys.executable, "-m", "api.cli", "serve", "--data-dir", str(data_dir), "--port", str(port),
           "--log-level", "WARNING"]  # fmt: skip
    if database_url:
        cmd += ["--database-url", database_url]
    if processes > 1:
        cmd += ["--workers", str(processes)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = ServerProc([proc], f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    ready = "Demo interview" if processes == 1 else "vivavoce: "
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("vivavoce exited before it was ready")
        if m := re.search(r"API key \(shown once, store it now\): (\S+)", line):
            server.api_key = m.group(1)
        if m := re.search(r"Demo blueprint (\S+); chat channel (\S+);", line):
            server.blueprint_id, server.channel_id = m.group(1), m.group(2)
        if m := re.search(r"vivavoce worker ready: worker \d+, pid (\d+)", line):
            server.pids.append(int(m.group(1)))
        if line.startswith(ready):
            break
    server.pids = server.pids or [proc.pid]
    _drain(proc, data_dir.parent / "vivavoce.log")
    return server


def _drain(proc: subprocess.Popen[str], log: Path) -> None:
    """Copy the rest of a server's output to ``log`` (so a full pipe never blocks it)."""
    import threading

    def pump() -> None:
        assert proc.stdout is not None
        with log.open("a") as f:
            for line in proc.stdout:
                f.write(line)

    threading.Thread(target=pump, daemon=True).start()


def error_summary(log: Path) -> dict[str, int]:
    """Exception lines in a server log, counted: ``{"sqlalchemy.exc.TimeoutError: QueuePool limit…": 12}``."""
    counts: dict[str, int] = {}
    if not log.exists():
        return counts
    for line in log.read_text(errors="replace").splitlines():
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Timeout)\b.*:", line):
            key = line[:160]
            counts[key] = counts.get(key, 0) + 1
    return counts


def start_echo(work: Path, processes: int = 1) -> ServerProc:
    port = free_port()
    cmd = [sys.executable, str(ROOT / "bench" / "echo_server.py"), "--port", str(port)]
    if processes > 1:
        cmd.append("--reuse-port")
    procs = []
    for i in range(processes):
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening" not in line:
            raise RuntimeError(f"echo server did not start: {line!r}")
        _drain(proc, work / f"echo{i}.log")
        procs.append(proc)
    time.sleep(0.5)  # the line is printed just before the port is bound
    return ServerProc(procs, f"http://127.0.0.1:{port}", pids=[p.pid for p in procs])


async def create_runs(server: ServerProc, n: int) -> tuple[list[str], float]:
    t0 = time.perf_counter()
    origin = check_target(server.url, allow_remote=False)
    sem = asyncio.Semaphore(32)
    async with ServerApi(origin, server.api_key, connect_timeout_s=10, request_timeout_s=60, concurrency=32) as api:

        async def one(i: int) -> str:
            async with sem:
                run = await api.create_run(server.blueprint_id, server.channel_id, metadata={"bench": str(i)})
                return str(run["join_url"])

        urls = await asyncio.gather(*(one(i) for i in range(n)))
    return list(urls), time.perf_counter() - t0


async def server_turns(server: ServerProc, sessions: list[dict[str, Any]]) -> tuple[list[float], int, int, float]:
    """initial_wait+llm of every reply the callers measured, from the stored transcripts; missing utterances."""
    t0 = time.perf_counter()
    origin = check_target(server.url, allow_remote=False)
    out: list[float] = []
    missing = 0
    errors = 0
    sem = asyncio.Semaphore(8)
    async with ServerApi(origin, server.api_key, connect_timeout_s=10, request_timeout_s=60, concurrency=8) as api:

        async def one(s: dict[str, Any]) -> None:
            nonlocal missing, errors
            if not s["run_id"]:
                return
            async with sem:
                try:
                    run = await api.get_run(s["run_id"], "transcript")
                except Exception:
                    errors += 1
                    return
            by_id = {m["id"]: m for m in run["transcript"]}
            stored = {m["client_id"] for m in run["transcript"] if m["role"] == "user"}
            missing += sum(1 for u in s["utterances"] if u["sends"] and u["client_id"] not in stored)
            for t in s["turns"]:
                reply = by_id.get(t["reply_id"])
                if reply and reply["latency_breakdown"] and t["latency_ms"] is not None:
                    lat = reply["latency_breakdown"]
                    out.append((lat["initial_wait"] or 0) + (lat["llm"] or 0))

        await asyncio.gather(*(one(s) for s in sessions))
    return out, missing, errors, time.perf_counter() - t0


@dataclass
class LevelResult:
    target: str
    n: int
    ready: int = 0
    completed: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    connect_s: float = 0.0
    phase_s: float = 0.0
    setup_s: float = 0.0
    join_ms: dict[str, Any] = field(default_factory=dict)
    turn_ms: dict[str, Any] = field(default_factory=dict)
    server_turn_ms: dict[str, Any] = field(default_factory=dict)
    missing: int | None = None
    turns: int = 0
    frames: int = 0
    turns_per_s: float = 0.0
    frames_per_s: float = 0.0
    rss_before_mb: float = 0.0
    rss_open_mb: float = 0.0
    rss_per_session_kb: float = 0.0
    server_cpu_pct: float = 0.0
    machine_busy_pct: float | None = None  # every core of the machine, busy share during the interview phase
    database_cpu_pct: float | None = None  # local PostgreSQL processes during the interview phase (one core = 100)
    server_cpu_s: float = 0.0  # server process CPU (user+sys) during the interview phase
    cpu_ms_per_turn: float | None = None  # server_cpu_s per caller-measured turn
    healthz_idle_ms: dict[str, Any] = field(default_factory=dict)
    healthz_loaded_ms: dict[str, Any] = field(default_factory=dict)
    client_cpu_pct: list[float] = field(default_factory=list)
    client_lag_p99_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    quiesce_s: float = 0.0
    sampled_runs: int = 0
    note: str = ""


async def healthz_rtts(http: aiohttp.ClientSession, url: str, stop: asyncio.Event, every: float = 0.1) -> list[float]:
    out: list[float] = []
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            async with http.get(url + "/healthz", allow_redirects=False) as resp:
                await resp.read()
            out.append((time.perf_counter() - t0) * 1000)
        except Exception:
            out.append(float("nan"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
    return [x for x in out if x == x]


async def quiesce(pids: list[int], *, limit_s: float) -> float:
    """Wait (bounded) until the server is idle again, so a level does not pay for the last one's backlog."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        c0 = cpu_seconds(pids)
        await asyncio.sleep(0.5)
        if cpu_seconds(pids) - c0 < 0.05:
            break
    return round(time.perf_counter() - t0, 1)


async def run_level(server: ServerProc, target: str, n: int, args: argparse.Namespace, work: Path) -> LevelResult:
    res = LevelResult(target, n)
    t_level = time.perf_counter()
    pid = server.pids
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=1)) as http:
        idle_stop = asyncio.Event()
        idle_task = asyncio.create_task(healthz_rtts(http, server.url, idle_stop, every=0.02))
        await asyncio.sleep(0.5)
        idle_stop.set()
        res.healthz_idle_ms = summarize(await idle_task)

        if target == "vivavoce":
            urls, res.setup_s = await create_runs(server, n)
        else:
            urls = [f"{server.url}/join/echo{n}x{i:06d}" for i in range(n)]
        res.rss_before_mb = rss_bytes(pid) / 2**20

        shards = [urls[i :: args.workers] for i in range(args.workers)]
        procs: list[subprocess.Popen[str]] = []
        outs: list[Path] = []
        for w, shard in enumerate(shards):
            url_file = work / f"{target}-{n}-{w}.urls"
            url_file.write_text("\n".join(shard))
            out = work / f"{target}-{n}-{w}.json"
            outs.append(out)
            cmd = [
                sys.executable, __file__, "--worker", "--urls", str(url_file), "--out", str(out),
                "--typing-min-ms", str(args.typing_min_ms), "--typing-max-ms", str(args.typing_max_ms),
                "--deadline-s", str(args.level_timeout_s), "--connect-budget-s", str(args.connect_budget_s),
                "--connect-rate", str(args.connect_rate / args.workers), "--seed", str(w + 1),
            ]  # fmt: skip
            procs.append(
                subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
            )
        loop = asyncio.get_running_loop()
        t_connect = time.perf_counter()
        readies = await asyncio.gather(*(loop.run_in_executor(None, pr.stdout.readline) for pr in procs))  # type: ignore[union-attr]
        res.connect_s = time.perf_counter() - t_connect
        res.ready = sum(int(line.split()[1]) for line in readies if line.startswith("READY"))
        await asyncio.sleep(0.3)  # let the last first questions go out
        rss_open = rss_bytes(pid)
        res.rss_open_mb = rss_open / 2**20
        res.rss_per_session_kb = (rss_open - res.rss_before_mb * 2**20) / max(res.ready, 1) / 1024

        loaded_stop = asyncio.Event()
        loaded_task = asyncio.create_task(healthz_rtts(http, server.url, loaded_stop))
        cpu0, w0, machine0, db0 = cpu_seconds(pid), time.perf_counter(), machine_cpu(), database_cpu()
        for pr in procs:
            assert pr.stdin is not None
            pr.stdin.write("GO\n")
            pr.stdin.flush()

        def wait_all() -> None:
            for pr in procs:
                try:
                    pr.wait(args.level_timeout_s + 15)
                except subprocess.TimeoutExpired:
                    pr.kill()

        await loop.run_in_executor(None, wait_all)
        server_cpu = cpu_seconds(pid) - cpu0
        machine1, db1 = machine_cpu(), database_cpu()
        res.machine_busy_pct = round(100 * (machine1[0] - machine0[0]) / max(machine1[1] - machine0[1], 1e-9), 1)
        db_cpu = sum(s - db0.get(p, 0.0) for p, s in db1.items())  # a backend born in the phase counts whole
        wall = time.perf_counter() - w0
        res.database_cpu_pct = round(100 * db_cpu / max(wall, 1e-9), 1) if db1 else None
        loaded_stop.set()
        res.healthz_loaded_ms = summarize(await loaded_task)

    sessions: list[dict[str, Any]] = []
    t_go, t_end = [], []
    for out in outs:
        if not out.exists():
            res.note += "a load generator wrote no results; "
            continue
        data = json.loads(out.read_text())
        sessions += data["sessions"]
        t_go.append(data["t_go"])
        t_end.append(data["t_end"])
        wall = data["t_end"] - data["t_go"]
        res.client_cpu_pct.append(round(100 * data["cpu_s"] / max(wall, 1e-9), 1))
        res.client_lag_p99_ms.append(round(data["lag_ms"]["p99"] or 0.0, 1))
    res.phase_s = (max(t_end) - min(t_go)) if t_go else 0.0
    res.server_cpu_pct = round(100 * server_cpu / max(time.perf_counter() - w0, 1e-9), 1)
    res.completed = sum(1 for s in sessions if s["ok"])
    res.failed = len(sessions) - res.completed
    fails: dict[str, int] = {}
    for s in sessions:
        if s["failure"]:
            fails[s["failure"]] = fails.get(s["failure"], 0) + 1
    res.failures = fails
    res.join_ms = summarize([s["join_ms"] for s in sessions if s["join_ms"] is not None])
    turns = [t["latency_ms"] for s in sessions for t in s["turns"] if t["latency_ms"] is not None]
    res.turn_ms = summarize(turns)
    res.turns = len(turns)
    res.server_cpu_s = round(server_cpu, 3)
    res.cpu_ms_per_turn = round(1000 * server_cpu / res.turns, 3) if res.turns else None
    ready_sessions = sum(1 for s in sessions if s["join_ms"] is not None)
    res.frames = sum(s["frames_in"] + s["frames_out"] for s in sessions) - 3 * ready_sessions  # before GO
    if res.phase_s > 0:
        res.turns_per_s = round(res.turns / res.phase_s, 1)
        res.frames_per_s = round(res.frames / res.phase_s, 1)
    if target == "vivavoce":
        sample = [s for s in sessions if s["run_id"]]
        if len(sample) > args.server_sample:
            sample = random.Random(n).sample(sample, args.server_sample)
        res.sampled_runs = len(sample)
        served, res.missing, errors, fetch_s = await server_turns(server, sample)
        res.server_turn_ms = summarize(served)
        if errors:
            res.note += f"{errors} transcripts could not be fetched; "
        res.note += f"setup {res.setup_s:.1f} s, transcript check {fetch_s:.1f} s; "
    res.elapsed_s = round(time.perf_counter() - t_level, 1)
    return res


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def print_table(results: list[LevelResult]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="chat sessions: vivavoce vs bare aiohttp echo (same frames, same pacing)")
    cols = ["N", "target", "ready", "ok/fail", "join p50/p99", "turn p50/p99 (caller)", "server turn p50/p99",
            "turns/s", "frames/s", "healthz idle→loaded p99", "RSS/session", "srv CPU", "db CPU", "machine busy",
            "gen CPU", "gen lag p99", "phase s"]  # fmt: skip
    for c in cols:
        table.add_column(c, justify="right")
    for r in results:
        table.add_row(
            str(r.n),
            r.target,
            str(r.ready),
            f"{r.completed}/{r.failed}",
            f"{fmt(r.join_ms.get('p50'))}/{fmt(r.join_ms.get('p99'))}",
            f"{fmt(r.turn_ms.get('p50'))}/{fmt(r.turn_ms.get('p99'))}",
            f"{fmt(r.server_turn_ms.get('p50'))}/{fmt(r.server_turn_ms.get('p99'))}" if r.server_turn_ms else "-",
            fmt(r.turns_per_s),
            fmt(r.frames_per_s),
            f"{fmt(r.healthz_idle_ms.get('p99'))}→{fmt(r.healthz_loaded_ms.get('p99'))}",
            f"{fmt(r.rss_per_session_kb)} KiB",
            f"{fmt(r.server_cpu_pct, 0)}%",
            f"{fmt(r.database_cpu_pct, 0)}%" if r.database_cpu_pct is not None else "-",
            f"{fmt(r.machine_busy_pct, 0)}%",
            "/".join(f"{x:.0f}%" for x in r.client_cpu_pct),
            "/".join(f"{x:.1f}" for x in r.client_lag_p99_ms),
            fmt(r.phase_s),
        )
    Console(width=250).print(table)


def comparisons(results: list[LevelResult], top: int) -> list[dict[str, Any]]:
    rows = []
    by = {(r.target, r.n): r for r in results}
    for (target, n), r in sorted(by.items(), key=lambda kv: kv[0][1]):
        if target != "vivavoce" or ("echo", n) not in by:
            continue
        e = by[("echo", n)]
        tp = r.turns_per_s / e.turns_per_s if e.turns_per_s else None
        p99v, p99e = r.turn_ms.get("p99"), e.turn_ms.get("p99")
        rows.append(
            {
                "n": n,
                "throughput_ratio": None if tp is None else round(tp, 3),
                "p99_ratio": None if not p99v or not p99e else round(p99v / p99e, 1),
                "vivavoce_p99_ms": p99v,
                "echo_p99_ms": p99e,
                "target_p99_le_50ms": None if n != top else (p99v is not None and p99v <= 50 and r.failed == 0),
                "target_throughput_ge_0_6": None if tp is None else tp >= 0.6,
            }
        )
    return rows


async def orchestrate(args: argparse.Namespace) -> int:
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    work = Path(tempfile.mkdtemp(prefix="vivavoce-bench-"))
    raise_fd_limit()
    vivavoce = start_vivavoce(work / "data", args.database_url, args.server_processes)
    echo = start_echo(work, args.server_processes)
    results: list[LevelResult] = []
    t0 = time.perf_counter()
    try:
        print(f"vivavoce pid(s) {vivavoce.pids} at {vivavoce.url}; echo pid(s) {echo.pids} at {echo.url}; "
              f"{args.workers} load generator process(es) with uvloop; typing {args.typing_min_ms:g}-"
              f"{args.typing_max_ms:g} ms; work dir {work}; database {args.database_url or 'SQLite'}",
              flush=True)  # fmt: skip
        for n in levels:
            for target, server in (("echo", echo), ("vivavoce", vivavoce)):
                r = await run_level(server, target, n, args, work)
                results.append(r)
                if target == "vivavoce":
                    r.quiesce_s = await quiesce(server.pids, limit_s=args.quiesce_s)
                print(
                    f"  N={n:5d} {target:8s} ready {r.ready} ok {r.completed} failed {r.failed} "
                    f"turn p50/p99 {fmt(r.turn_ms.get('p50'))}/{fmt(r.turn_ms.get('p99'))} ms, "
                    f"{r.frames_per_s} frames/s, CPU {fmt(r.cpu_ms_per_turn, 2)} ms/turn, {r.elapsed_s} s {r.note}"
                    + (f" failures: {dict(list(r.failures.items())[:3])}" if r.failures else ""),
                    flush=True,
                )
    finally:
        vivavoce.stop()
        echo.stop()
    print_table(results)
    top = max(levels)
    comp = comparisons(results, top)
    closed = args.typing_max_ms == 0
    what = (
        "closed-loop throughput (answers/s, each server's ceiling)"
        if closed
        else "answers/s at the same offered load (not the echo's ceiling: see --typing-max-ms 0)"
    )
    for c in comp:
        line = (
            f"N={c['n']}: {what} vivavoce/echo {fmt(c['throughput_ratio'], 2)} "
            f"({'PASS' if c['target_throughput_ge_0_6'] else 'FAIL'} vs >= 0.6); p99 turn vivavoce/echo "
            f"{fmt(c['p99_ratio'])}x ({fmt(c['vivavoce_p99_ms'])} vs {fmt(c['echo_p99_ms'])} ms)"
        )
        if c["target_p99_le_50ms"] is not None:
            line += f"; all {top} sessions with p99 <= 50 ms: {'PASS' if c['target_p99_le_50ms'] else 'FAIL'}"
        print(line)
    errors = error_summary(work / "vivavoce.log")
    if errors:
        print(f"server errors logged ({work / 'vivavoce.log'}):")
        for line, count in sorted(errors.items(), key=lambda kv: -kv[1])[:8]:
            print(f"  {count:6d} x {line}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        doc = {
            "levels": levels,
            "workers": args.workers,
            "server_processes": args.server_processes,
            "database": "postgresql" if args.database_url else "sqlite",
            "typing_ms": [args.typing_min_ms, args.typing_max_ms],
            "results": [r.__dict__ for r in results],
            "comparisons": comp,
            "server_errors": errors,
            "cpus": os.cpu_count(),
        }
        Path(args.json).write_text(json.dumps(doc, indent=1))
        print(f"json: {args.json}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="100,500,1000,2000", help="concurrent sessions per level")
    parser.add_argument("--json", help="write all figures here")
    parser.add_argument("--workers", type=int, default=1, help="load-generator processes (default 1)")
    parser.add_argument(
        "--server-processes", type=int, default=1,
        help="server processes: vivavoce serve --workers P (needs --database-url) and P echo processes (default 1)",
    )  # fmt: skip
    parser.add_argument("--typing-min-ms", type=float, default=1000.0)
    parser.add_argument("--typing-max-ms", type=float, default=2000.0)
    parser.add_argument("--level-timeout-s", type=float, default=30.0, help="interview phase limit per level")
    parser.add_argument("--connect-budget-s", type=float, default=20.0, help="connect phase limit per level")
    parser.add_argument("--quiesce-s", type=float, default=20.0, help="max wait for the server to go idle")
    parser.add_argument(
        "--server-sample", type=int, default=300, help="runs whose stored transcripts are fetched per level"
    )
    parser.add_argument("--connect-rate", type=float, default=400.0, help="new connections per second (total)")
    parser.add_argument(
        "--database-url", help="the server's store (default: SQLite in the work dir); give an empty database"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--urls", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--deadline-s", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.add_argument("--connect-timeout-s", type=float, default=20.0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server_processes > 1 and not args.database_url and not args.worker:
        parser.error("--server-processes > 1 needs --database-url (several processes share PostgreSQL)")
    if args.worker:
        import uvloop

        uvloop.run(worker(args))
        return 0
    return asyncio.run(orchestrate(args))


if __name__ == "__main__":
    raise SystemExit(main())
