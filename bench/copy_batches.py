"""What exactly-once per batch costs PostgreSQL alone: one COPY against COPYs in batches.

Run: ``.venv/bin/python bench/copy_batches.py [-n 200000] [--batch-size 1000]
[--rounds 3] [--database URL]``

The messages plugin commits every batch with its ledger row before Redis
is told, so it can never be one COPY of everything, which is what its
ceiling is. This separates that cost from syncd's own: the same rows as
the messages workload's ceiling (its items, as the table stores them), into
a scratch table of the same shape,

- ``one COPY``: all rows, one transaction (the ceiling);
- ``batches``: ``--batch-size`` rows a transaction, each with a ledger row
  inserted first, one connection;
- ``batches x2``: the same on two connections side by side (syncd's two
  queues, ``in`` and ``out``, are written side by side).

Nothing of syncd runs: no Redis, no normalizing. Each line prints the
seconds of every round and the rate of the median against ``one COPY``.
A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime

import psycopg
from syncd_messages.schema import COLUMNS
from syncd_messages.workload import (
    expected_tokens,
    item,
    queue_type,
    refused_by_postgres,
    stored_text,
)

from syncd.testing import PG_URL


def main(n: int, batch_size: int, rounds: int, url: str) -> None:
    table, ledger = f"copyb_{uuid.uuid4().hex[:8]}", f"copyb_ledger_{uuid.uuid4().hex[:8]}"
    stamp = datetime.now(UTC)
    rows = [(queue_type(i), stored_text(i, item(i)), "b", i, stamp)
            for i in expected_tokens(n) if not refused_by_postgres(i)]
    cols = ", ".join(COLUMNS)
    with psycopg.connect(url) as admin:
        admin.execute(f"CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, queue_type TEXT, "
                      "message JSONB, batch_id TEXT, position INT, synced_at TIMESTAMPTZ)")
        admin.execute(f"CREATE TABLE {ledger} (plugin TEXT, batch_id TEXT, "
                      "PRIMARY KEY (plugin, batch_id))")
        admin.commit()

        def write(part: list[tuple[object, ...]], size: int, tag: str) -> None:
            with psycopg.connect(url) as conn, conn.cursor() as cur:
                for start in range(0, len(part), size):
                    if size < len(part):
                        cur.execute(f"INSERT INTO {ledger} VALUES ('bench', %s)",
                                    (f"{tag}{start}",))
                    with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                        for row in part[start:start + size]:
                            copy.write_row(row)
                    conn.commit()

        sides = {"one COPY": (len(rows), 1), "batches": (batch_size, 1),
                 "batches x2": (batch_size, 2)}
        seconds: dict[str, list[float]] = {side: [] for side in sides}
        try:
            for _ in range(rounds):
                for side, (size, connections) in sides.items():
                    admin.execute(f"TRUNCATE {table}, {ledger}")
                    admin.commit()
                    threads = [threading.Thread(target=write, args=(
                        rows[k::connections], size, f"{k}-")) for k in range(connections)]
                    started = time.perf_counter()
                    for thread in threads:
                        thread.start()
                    for thread in threads:
                        thread.join()
                    seconds[side].append(time.perf_counter() - started)
        finally:
            admin.execute(f"DROP TABLE {table}, {ledger}")
            admin.commit()
    base = statistics.median(seconds["one COPY"])
    for side, taken in seconds.items():
        median = statistics.median(taken)
        print(f"{side:>11}: {len(rows) / median:,.0f} rows/s, {base / median:.2f}x one COPY "
              f"(rounds {', '.join(f'{s:.3f}' for s in taken)} s)", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database", default=PG_URL)
    args = parser.parse_args()
    main(args.n, args.batch_size, args.rounds, args.database)
