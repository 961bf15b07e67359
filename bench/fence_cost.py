"""What the fencing check costs a batch: ``apply_batch`` with and without a fence.

Run: ``.venv/bin/python bench/fence_cost.py [--database pg|mysql] [--batches 500] [--rounds 3]``

Each batch is one ledgered transaction that updates one row (the smallest
batch there is, so the check's share is as large as it gets); with a fence,
the same transaction also updates the lease row where the token matches
(`Transaction.check_fence`). Rounds alternate with and without; prints the
median time per batch of each and the difference.

A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import trio

from syncd.harness.env import DATABASES
from syncd.lease import Fence, Lease, SQLLeaseStore
from syncd.sql import open_database


async def main(database: str, batches: int, rounds: int) -> None:
    suffix = uuid.uuid4().hex[:8]
    db = open_database("bench", DATABASES[database], ledger_table=f"fence_ledger_{suffix}",
                       lease_table=f"fence_leases_{suffix}")
    table = f"fence_data_{suffix}"
    await db.connect()
    try:
        await db.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, n INT NOT NULL)")
        await db.execute(f"INSERT INTO {table} VALUES (1, 0)")
        lease = Lease(SQLLeaseStore(db), "bench", "bench", "bench", 600.0)
        assert await lease.acquire()
        fence = Fence("bench", lease.token)

        def bump(tx) -> int:
            return tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")

        times: dict[str, list[float]] = {"plain": [], "fenced": []}
        for _ in range(rounds):
            for kind in ("plain", "fenced"):
                started = time.perf_counter()
                for _ in range(batches):
                    await db.apply_batch("bench", uuid.uuid4().hex, bump,
                                         fence=fence if kind == "fenced" else None)
                times[kind].append((time.perf_counter() - started) / batches * 1000)
        plain, fenced = (statistics.median(times[k]) for k in ("plain", "fenced"))
        print(f"{database}: {plain:.2f} ms per batch without a fence, {fenced:.2f} ms with "
              f"(+{fenced - plain:.2f} ms; {rounds} rounds of {batches} batches, medians)")
    finally:
        for name in (table, db.ledger_table, db.lease_table):
            await db.execute(f"DROP TABLE IF EXISTS {name}")
        await db.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="pg", choices=sorted(DATABASES))
    parser.add_argument("--batches", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trio.run(main, args.database, args.batches, args.rounds)
