"""Benchmark: what chat interviews cost a PostgreSQL store, per turn (statements, transactions, rows, bytes).

    .venv/bin/python bench/db_cost.py [--interviews 40] [--concurrency 1,40] [--server postgresql://postgres@127.0.0.1:5432]

For each concurrency level: a fresh database, a real ``vivavoce serve`` on it, ``--interviews`` runs
created through the API (set-up, not counted), then the interviews themselves, ``concurrency`` at a
time, by websocket participants answering at once (three long answers each: no probes). Counted
between a snapshot before the interviews and one after the server has stopped (its connections'
statistics are flushed when they close):

- statements, by kind, from PostgreSQL's own log: ``log_statement = 'all'`` is set on the bench
  database only (PostgreSQL's log must be readable here: ``--log``);
- transactions committed, and rows inserted/updated/deleted (``pg_stat_database``,
  ``pg_stat_user_tables``);
- bytes: growth of the tables with their indexes and TOAST (``pg_total_relation_size``), and WAL
  written (``pg_current_wal_lsn``: server-wide, so other databases' writes meanwhile are included).

A turn is one answer and everything it causes (ack, reply, their events, state); an interview is
the join, three turns and the end (greeting, closing, session and run events).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import psycopg  # noqa: E402
import websockets  # noqa: E402
from chat import LONG_ANSWERS, start_vivavoce  # noqa: E402  (bench/chat.py)

LOG = Path("/var/log/postgresql/postgresql-15-main.log")
STATEMENT = re.compile(r"@(?P<db>\S+) LOG:  (?:statement|execute [^:]*): (?P<sql>.*)")


def kind(sql: str) -> str:
    words = sql.strip().rstrip(";").split(None, 2)
    head = words[0].upper().rstrip(";") if words else "?"
    if head == "SELECT" and "pg_notify" in sql:
        return "NOTIFY (pg_notify)"
    if head in ("SAVEPOINT", "RELEASE", "ROLLBACK") and len(words) > 1 and words[1].upper() == "TO":
        return "ROLLBACK TO"
    return head


def snapshot(admin: str, db: str) -> dict[str, Any]:
    with psycopg.connect(f"{admin}/{db}", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del, pg_total_relation_size(relid) FROM pg_stat_user_tables"
        ).fetchall()
        (commits, rollbacks) = conn.execute(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone() or (0, 0)
        (wal,) = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone() or (0,)
    return {
        "tables": {r[0]: {"ins": r[1], "upd": r[2], "del": r[3], "bytes": r[4]} for r in rows},
        "commits": commits,
        "rollbacks": rollbacks,
        "wal": int(wal),
    }


async def interview(http: aiohttp.ClientSession, run: dict[str, Any]) -> int:
    """One participant: answer every question at once; returns how many answers it gave."""
    answers = 0
    async with websockets.connect(run["join_url"].replace("http://", "ws://") + "/ws") as ws:
        async for raw in ws:
            frame = json.loads(raw)
            if frame["type"] == "run.ended":
                return answers
            if frame["type"] == "message" and frame["message"]["kind"] in ("question", "probe", "resume"):
                text = LONG_ANSWERS[answers % len(LONG_ANSWERS)]
                await ws.send(json.dumps({"type": "message", "content": text, "client_id": f"a{answers}"}))
                answers += 1
    raise RuntimeError("the server closed the interview before it ended")


async def one_pass(args: argparse.Namespace, concurrency: int) -> dict[str, Any]:
    db = f"vv_bench_cost_{concurrency}"
    with psycopg.connect(f"{args.server}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {db}")
        conn.execute(f"ALTER DATABASE {db} SET log_statement = 'all'")
    work = Path(tempfile.mkdtemp(prefix="vivavoce-dbcost-"))
    server = start_vivavoce(work / "data", f"{args.server}/{db}")
    headers = {"Authorization": f"Bearer {server.api_key}"}
    body = {"blueprint_id": server.blueprint_id, "channel_id": server.channel_id}
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            runs = []
            for _ in range(args.interviews):
                async with http.post(f"{server.url}/v1/runs", json=body) as resp:
                    assert resp.status == 201, await resp.text()
                    runs.append(await resp.json())
            await asyncio.sleep(1.5)  # the set-up's statistics are flushed (backends report at most once a second)
            before, log_at = snapshot(args.server, db), args.log.stat().st_size
            t0 = time.perf_counter()
            gate = asyncio.Semaphore(concurrency)

            async def limited(run: dict[str, Any]) -> int:
                async with gate:
                    return await interview(http, run)

            turns = sum(await asyncio.gather(*(limited(r) for r in runs)))
            elapsed = time.perf_counter() - t0
            await asyncio.sleep(0.5)  # the last writes after run.ended (session end) are committed
    finally:
        server.stop()
    await asyncio.sleep(1.0)
    after = snapshot(args.server, db)
    with args.log.open("rb") as f:
        f.seek(log_at)
        logged = f.read().decode(errors="replace")
    kinds: Counter[str] = Counter()
    for line in logged.splitlines():
        m = STATEMENT.search(line)
        if m and m.group("db") == db:
            kinds[kind(m.group("sql"))] += 1
    rows: Counter[str] = Counter()
    table_bytes = 0
    for name, now in after["tables"].items():
        was = before["tables"].get(name, {"ins": 0, "upd": 0, "del": 0, "bytes": 0})
        for k in ("ins", "upd", "del"):
            rows[k] += now[k] - was[k]
        table_bytes += now["bytes"] - was["bytes"]
    with psycopg.connect(f"{args.server}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    statements = sum(kinds.values())
    return {
        "concurrency": concurrency,
        "interviews": args.interviews,
        "turns": turns,
        "elapsed_s": round(elapsed, 2),
        "statements": dict(kinds.most_common()),
        "statements_per_turn": round(statements / turns, 2),
        "write_transactions_per_turn": round(kinds["COMMIT"] / turns, 2),
        "transactions_per_turn": round((after["commits"] - before["commits"]) / turns, 2),  # with single reads
        "rows_per_turn": {k: round(v / turns, 2) for k, v in rows.items()},
        "table_bytes_per_turn": round(table_bytes / turns),
        "wal_bytes_per_turn": round((after["wal"] - before["wal"]) / turns),
        "per_interview": {
            "statements": round(statements / args.interviews, 1),
            "write_transactions": round(kinds["COMMIT"] / args.interviews, 1),
        },
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interviews", type=int, default=40)
    parser.add_argument("--concurrency", default="1,40", help="interviews at a time, one pass per value")
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432", help="PostgreSQL server (admin)")
    parser.add_argument("--log", type=Path, default=LOG, help="PostgreSQL's log file (statements are counted there)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    results = []
    for c in (int(x) for x in args.concurrency.split(",")):
        r = await one_pass(args, c)
        results.append(r)
        print(
            f"concurrency {c:3d}: {r['turns']} turns in {r['elapsed_s']} s; per turn {r['statements_per_turn']} "
            f"statements, {r['write_transactions_per_turn']} write transactions "
            f"({r['transactions_per_turn']} with single reads), rows {r['rows_per_turn']}, "
            f"{r['table_bytes_per_turn']} B tables+indexes, {r['wal_bytes_per_turn']} B WAL; "
            f"per interview {r['per_interview']}",
            flush=True,
        )
        print(f"  statements: {r['statements']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
