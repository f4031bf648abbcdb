"""Benchmark: the PostgreSQL drivers for vivavoce's two access paths, on the machine at hand.

    .venv/bin/python bench/pg_drivers.py [--server postgresql://postgres@127.0.0.1:5432] [--n 4000]

1. reads on the event loop (the run lookup of every join): a one-row SELECT by primary key, 50 at a time
   over 4 connections handed out from a queue, through asyncpg and through psycopg's async connection;
2. writes from a thread (the writer): ``UPDATE … RETURNING`` one row, committed every 10, through psycopg
   (blocking) and through asyncpg driven by a private event loop in that thread (it has no blocking API).

Printed per statement: wall time and this process's CPU time (what a server process would spend; the
database server's own work is not in it). A scratch table in the ``postgres`` database is made and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import psycopg

SELECT = "SELECT id, last_seq, position, participant FROM vv_bench_drivers WHERE id = "
UPDATE = "UPDATE vv_bench_drivers SET last_seq = last_seq + 1, position = {} WHERE id = {} RETURNING last_seq"


def setup(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS vv_bench_drivers")
        conn.execute(
            "CREATE TABLE vv_bench_drivers (id varchar PRIMARY KEY, last_seq int NOT NULL, position json NOT NULL,"
            " participant json NOT NULL)"
        )
        for i in range(100):
            conn.execute("INSERT INTO vv_bench_drivers VALUES (%s, 0, %s, %s)", (f"r{i}", '{"q": 1}', '{"name": "A"}'))


def teardown(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS vv_bench_drivers")


async def reads(dsn: str, driver: str, n: int) -> tuple[float, float]:
    if driver == "asyncpg":
        conns: list[Any] = [await asyncpg.connect(dsn) for _ in range(4)]

        async def query(conn: Any, i: int) -> Any:
            return await conn.fetch(SELECT + "$1", f"r{i % 100}")
    else:
        conns = [await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(4)]

        async def query(conn: Any, i: int) -> Any:
            cur = await conn.execute(SELECT + "%s", (f"r{i % 100}",))
            return await cur.fetchall()

    free: asyncio.Queue[Any] = asyncio.Queue()
    for conn in conns:
        free.put_nowait(conn)

    async def one(i: int) -> None:
        conn = await free.get()
        try:
            await query(conn, i)
        finally:
            free.put_nowait(conn)

    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, n, 50):
        await asyncio.gather(*(one(i) for i in range(start, start + 50)))
    result = ((time.perf_counter() - wall) / n * 1e6, (time.process_time() - cpu) / n * 1e6)
    for conn in conns:
        await conn.close()
    return result


def writes_psycopg(dsn: str, n: int) -> tuple[float, float]:
    with psycopg.connect(dsn) as conn:
        cur = conn.cursor()
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            cur.execute(UPDATE.format("%s", "%s"), ('{"q": 2}', f"r{i % 100}"))
            cur.fetchall()
            if i % 10 == 9:
                conn.commit()
        conn.commit()
        return (time.perf_counter() - wall) / n * 1e6, (time.process_time() - cpu) / n * 1e6


def writes_asyncpg(dsn: str, n: int) -> tuple[float, float]:
    loop = asyncio.new_event_loop()
    run: Callable[[Awaitable[Any]], Any] = loop.run_until_complete
    conn = run(asyncpg.connect(dsn))
    wall, cpu = time.perf_counter(), time.process_time()
    run(conn.execute("BEGIN"))
    for i in range(n):
        run(conn.fetch(UPDATE.format("$1", "$2"), '{"q": 2}', f"r{i % 100}"))
        if i % 10 == 9:
            run(conn.execute("COMMIT"))
            run(conn.execute("BEGIN"))
    run(conn.execute("COMMIT"))
    result = (time.perf_counter() - wall) / n * 1e6, (time.process_time() - cpu) / n * 1e6
    run(conn.close())
    loop.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--n", type=int, default=4000, help="statements per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    dsn = f"{args.server}/postgres"
    setup(dsn)
    try:
        for r in range(args.rounds):
            figures = {
                "read asyncpg": asyncio.run(reads(dsn, "asyncpg", args.n)),
                "read psycopg async": asyncio.run(reads(dsn, "psycopg", args.n)),
                "write psycopg (thread)": writes_psycopg(dsn, args.n),
                "write asyncpg (private loop)": writes_asyncpg(dsn, args.n),
            }
            shown = ", ".join(f"{k} {w:.0f}/{c:.0f}" for k, (w, c) in figures.items())
            print(f"round {r + 1}, µs per statement wall/CPU: {shown}", flush=True)
    finally:
        teardown(dsn)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
