"""Soak: many short interviews, one after another, against one server process; does anything leak?

    .venv/bin/python bench/soak.py [--runs 1000] [--voice-every 20] [--warmup 50] [--json out.json]

One ``vivavoce serve`` subprocess (temporary data dir, loopback ICE), and in this process one simulated
participant at a time (the load test's callers: :class:`api.loadtest.callers.ChatCaller`, and a real
WebRTC peer, :class:`api.loadtest.voice.VoiceSimCaller`, for every ``--voice-every``-th run) doing a short
interview: greeting, one question, closing. Measured on the server process, always when it is idle (no live
run, task count settled) and just after a full garbage collection (``GET /v1/debug/runtime?collect=true``:
aiortc leaves reference cycles that wait for the collector, which is not a leak):

* RSS (``/proc/PID/status`` VmRSS) after the warm-up runs and at the end: growth should stay under 5 %;
  the speech worker processes (children) are reported beside it;
* open file descriptors (``/proc/PID/fd``) and OS threads (``/proc/PID/status`` Threads): back to the
  warm-up baseline at the end;
* asyncio tasks alive on the server's loop (``GET /v1/debug/runtime``): back to the baseline.

A snapshot every ``--sample-every`` runs shows the trend. Bounded: ``--deadline-s`` stops starting runs
(default 1800 s), each run has the load test's own limits, and the server is killed on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from served import free_port, start_server  # noqa: E402  (bench/served.py)

from api.loadtest.callers import Caller, CallerContext, ChatCaller, Counters, JoinTarget  # noqa: E402
from api.loadtest.config import Delay, Persona, check_target, join_ws_url  # noqa: E402
from api.loadtest.server_api import ServerApi, describe  # noqa: E402

BLUEPRINT = {
    "name": "Soak",
    "greeting": "Hello.",
    "questions": [
        {"id": "work", "text": "Could you tell me what you do for a living, and what a normal day is like?",
         "max_probes": 0},
    ],
    "closing": "Thank you, goodbye.",
}  # fmt: skip
PERSONA = Persona(
    typing_delay_ms=Delay(distribution="fixed", value=0),
    answers=("I work as a nurse at the city hospital and most days are busy.",),
    short_answer_ratio=0.0,
    typing_indicator=False,
    voice_answers=("job", "home", "breakfast", "commute"),
    think_ms=Delay(distribution="uniform", low=100, high=300, min=100, max=300),
    pause_probability=0.0,
    barge_in_probability=0.2,  # exercise the interruption path too
)
TARGETS = {"rss_growth_pct": 5.0}


def proc_status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            out[key] = int(value.split()[0])
    return out


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def snapshot(pid: int, runtime: dict[str, Any], runs_done: int, started: float) -> dict[str, Any]:
    status = proc_status(pid)
    kids = children(pid)
    kid_rss = 0
    for kid in kids:
        with contextlib.suppress(OSError):
            kid_rss += proc_status(kid).get("VmRSS", 0)
    return {
        "runs": runs_done,
        "t_s": round(time.monotonic() - started, 1),
        "rss_mb": round(status["VmRSS"] / 1024, 2),
        "threads": status["Threads"],
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "children": len(kids),
        "children_rss_mb": round(kid_rss / 1024, 2),
        "asyncio_tasks": runtime.get("asyncio_tasks"),
        "python_threads": runtime.get("threads"),
        "threads_by_name": runtime.get("threads_by_name"),
        "tasks_by_name": runtime.get("tasks_by_name"),
        "live_runs": runtime.get("live_runs"),
        "python_objects": runtime.get("python_objects"),
        "python_heap_mb": None
        if runtime.get("python_heap_bytes") is None
        else round(runtime["python_heap_bytes"] / 2**20, 2),
        "python_heap_top": runtime.get("python_heap_top") or None,
        "objects_by_type": runtime.get("objects_by_type"),
    }


async def idle(api: ServerApi, *, limit_s: float = 15.0, objects: bool = False) -> dict[str, Any]:
    """Wait until no run is live and the task count holds still for 0.5 s; the last /v1/debug/runtime
    (with the objects counted by type if ``objects``)."""
    give_up = time.monotonic() + limit_s
    previous: int | None = None
    while True:
        runtime = dict(await api.request("GET", "/v1/debug/runtime"))
        settled = runtime["live_runs"] == 0 and runtime["asyncio_tasks"] == previous
        if settled or time.monotonic() > give_up:
            # the snapshot itself after a full collection: cyclic garbage awaiting the collector is not a leak
            query = "collect=true&objects=true" if objects else "collect=true"
            return dict(await api.request("GET", f"/v1/debug/runtime?{query}"))
        previous = runtime["asyncio_tasks"] if runtime["live_runs"] == 0 else None
        await asyncio.sleep(0.5)


async def soak(args: argparse.Namespace, url: str, key: str, chat_channel: str, pid: int) -> dict[str, Any]:
    from api.loadtest.voice import VoiceAnswers, VoiceSimCaller
    from media.webrtc import configure_host_addresses

    configure_host_addresses(["127.0.0.1"])
    origin = check_target(url, allow_remote=False)
    started = time.monotonic()
    stop_at = started + args.deadline_s
    counters = Counters()
    rng = random.Random(args.seed)
    outcomes: dict[str, int] = {}
    series: list[dict[str, Any]] = []
    baseline: dict[str, Any] | None = None
    kinds = {"chat": 0, "voice": 0}
    completed = 0
    stopped_early = None
    async with ServerApi(origin, key, connect_timeout_s=10, request_timeout_s=30) as api:
        bp = await api.request("POST", "/v1/blueprints", json=BLUEPRINT)
        await api.request("POST", f"/v1/blueprints/{bp['id']}/publish")
        voice = await api.request("POST", "/v1/channels", json={"type": "webrtc_voice", "name": "soak"})
        channels = {"chat": chat_channel, "voice": str(voice["id"])}
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
        ctx = CallerContext(
            http=http, persona=PERSONA, counters=counters, connect_timeout_s=10, read_timeout_s=30,
            reconnect_window_s=5, max_turns=10, deadline=asyncio.get_running_loop().time() + args.deadline_s + 120,
            media_timeout_s=5, voice=VoiceAnswers.load(PERSONA),
        )  # fmt: skip
        callers: dict[str, Caller[Any]] = {
            "chat": ChatCaller(0, ctx, random.Random(rng.random())),
            "voice": VoiceSimCaller(1, ctx, random.Random(rng.random())),
        }
        series.append(snapshot(pid, await idle(api, objects=args.objects), 0, started))
        print(f"start: {series[-1]}", flush=True)
        try:
            for n in range(1, args.runs + 1):
                if time.monotonic() > stop_at:
                    stopped_early = f"--deadline-s {args.deadline_s:g} reached after {n - 1} runs"
                    break
                kind = "voice" if args.voice_every and n % args.voice_every == 0 else "chat"
                kinds[kind] += 1
                try:
                    run = await api.create_run(bp["id"], channels[kind], metadata={"soak": str(n)})
                    target = JoinTarget(str(run["join_url"]), join_ws_url(str(run["join_url"]), origin),
                                        run_id=str(run["id"]))  # fmt: skip
                    rec = await callers[kind].session(target)
                    outcome = "completed" if rec.ok else f"{kind}: {rec.failure}"
                except Exception as exc:
                    outcome = f"{kind}: create run: {describe(exc)}"
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                completed += outcome == "completed"
                if n == args.warmup or n % args.sample_every == 0 or n == args.runs:
                    series.append(snapshot(pid, await idle(api, objects=args.objects), n, started))
                    if n == args.warmup:
                        baseline = series[-1]
                    print(f"{n:5d} runs ({completed} completed): {series[-1]}", flush=True)
        finally:
            await http.close()
        end = snapshot(pid, await idle(api, limit_s=30, objects=args.objects), n if args.runs else 0, started)
    runs_done = kinds["chat"] + kinds["voice"]
    if baseline is None:  # fewer runs than the warm-up: compare with the start
        baseline = series[0]
    growth = (end["rss_mb"] - baseline["rss_mb"]) / baseline["rss_mb"] * 100 if baseline["rss_mb"] else None
    return {
        "runs": runs_done,
        "kinds": kinds,
        "completed": completed,
        "outcomes": outcomes,
        "stopped_early": stopped_early,
        "elapsed_s": round(time.monotonic() - started, 1),
        "warmup_runs": args.warmup if runs_done >= args.warmup else 0,
        "baseline": baseline,
        "end": end,
        "rss_growth_pct": None if growth is None else round(growth, 2),
        "fds_delta": end["fds"] - baseline["fds"],
        "threads_delta": end["threads"] - baseline["threads"],
        "threads_grown": {  # which Python thread groups grew (e.g. asyncio_N: the loop's executor pool, bounded)
            name: count - (baseline["threads_by_name"] or {}).get(name, 0)
            for name, count in (end["threads_by_name"] or {}).items()
            if count > (baseline["threads_by_name"] or {}).get(name, 0)
        },
        "asyncio_tasks_delta": (end["asyncio_tasks"] or 0) - (baseline["asyncio_tasks"] or 0),
        "series": series,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000, help="interviews, one after another (default 1000)")
    parser.add_argument("--voice-every", type=int, default=20, help="every n-th run is by voice (0: none; 20)")
    parser.add_argument("--warmup", type=int, default=50, help="runs before the baseline snapshot (default 50)")
    parser.add_argument("--sample-every", type=int, default=100, help="a snapshot every n runs (default 100)")
    parser.add_argument("--deadline-s", type=float, default=1800.0, help="start no run after this (default 1800)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--objects", action="store_true", help="count the server's objects by type at each snapshot")
    parser.add_argument(
        "--tracemalloc", action="store_true", help="trace the server's Python heap (slower; for leak hunts)"
    )
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    if args.runs < 1 or args.warmup < 0 or args.sample_every < 1:
        parser.error("--runs and --sample-every must be positive, --warmup not negative")

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {"PYTHONTRACEMALLOC": "1"} if args.tracemalloc else None
        proc, info = start_server(Path(tmp), port, env=env)
        try:
            result = asyncio.run(soak(args, f"http://127.0.0.1:{port}", info["key"], info["chat_channel"], proc.pid))
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    result["machine"] = f"{os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}"
    summary = {k: v for k, v in result.items() if k != "series"}
    print(json.dumps(summary, indent=2))
    checks = [
        (f"RSS growth after warm-up < {TARGETS['rss_growth_pct']:g} %",
         result["rss_growth_pct"] is not None and result["rss_growth_pct"] < TARGETS["rss_growth_pct"]),
        ("open fds back to baseline", result["fds_delta"] <= 0),
        ("threads back to baseline" + (f" (grew: {result['threads_grown']})" if result["threads_grown"] else ""),
         result["threads_delta"] <= 0),
        ("asyncio tasks back to baseline", result["asyncio_tasks_delta"] <= 0),
        ("every run completed", result["completed"] == result["runs"]),
    ]  # fmt: skip
    for name, ok in checks:
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    result["checks"] = {name: ok for name, ok in checks}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
        print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
