"""Votes end to end: how long from LPUSH until the vote's batch has committed.

Run: ``.venv/bin/python bench/votes_latency.py [--rate 5000] [--seconds 20]
[--database mysql|pg|URL] [--rounds 3]``

Starts the real daemon in this process with only the votes plugin (its
workload's queue and table, otherwise the defaults: ``batch_size`` 500,
``max_wait`` 100 ms), and a producer thread that LPUSHes ``--rate`` votes a
second in 10 ms ticks. Each vote's ``voter_id`` carries the monotonic time
of its push. The plugin's ``_apply`` (the SQL transaction with the batch's
ledger row) is wrapped, so that the moment it returns, every vote in the
batch gets its latency: now minus its push time. The first 10 % of each
round (start-up) is left out. Prints p50, p99 and max per round.

A benchmark, not a test: nothing is asserted. The issue's target is
p99 < 500 ms at 5,000 votes/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from typing import Any

import redis
import syncd_votes.worker as votes_worker
import trio

from syncd.config import parse_config
from syncd.daemon import Daemon
from syncd.harness.bench import daemon_config, reset_workload
from syncd.harness.env import REDIS_URL, open_env, runs
from syncd.manager import get_plugin_manager

#: Producer tick: this many seconds' worth of votes per pipeline.
TICK = 0.01


class Recorder:
    """Latencies (ms) of the votes whose batch committed while recording."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        apply = votes_worker.VotesWorker._apply

        async def timed_apply(worker: Any, batch: Any, parsed: Any) -> Any:
            result = await apply(worker, batch, parsed)
            now = time.monotonic_ns()
            for _, vote in parsed.votes:
                if vote.voter_id.startswith("L"):
                    self.latencies.append((now - int(vote.voter_id[1:])) / 1e6)
            return result

        votes_worker.VotesWorker._apply = timed_apply  # type: ignore[method-assign]


def produce(client: redis.Redis, queue: str, rate: int, stop: threading.Event) -> None:
    per_tick = max(1, round(rate * TICK))
    due = time.monotonic()
    i = 0
    while not stop.is_set():
        with client.pipeline(transaction=False) as pipe:
            for _ in range(per_tick):
                pipe.lpush(queue, json.dumps({
                    "vote": "abcde"[i % 5],
                    "voter_id": f"L{time.monotonic_ns()}",
                    "timestamp": int(time.time()),
                }))
                i += 1
            pipe.execute()
        due += TICK
        time.sleep(max(0.0, due - time.monotonic()))


async def one_round(recorder: Recorder, rate: int, seconds: float, database: str) -> str:
    pm = get_plugin_manager()
    for subject, target in runs(pm, ("votes",), (database,), stem="latency", progress=print):
        workload = subject.workload
        with open_env(target.url, subject.prefix, REDIS_URL) as env:
            await trio.to_thread.run_sync(reset_workload, workload, env, True)
            config = parse_config(daemon_config(workload, target, REDIS_URL))
            daemon = Daemon.build(config, pm)
            recorder.latencies.clear()
            async with trio.open_nursery() as nursery:
                await nursery.start(daemon.serve)
                stop = threading.Event()
                producer = threading.Thread(
                    target=produce, args=(env.redis, workload.options["queue"], rate, stop))
                producer.start()
                await trio.sleep(seconds)
                stop.set()
                await trio.to_thread.run_sync(producer.join)
                await trio.sleep(1.0)  # the last batches commit
                daemon.request_shutdown()
            await trio.to_thread.run_sync(reset_workload, workload, env, False)
        warm = recorder.latencies[len(recorder.latencies) // 10:]
        q = statistics.quantiles(warm, n=100)
        return (f"{target.name}: {rate:,} votes/s for {seconds:.0f} s, {len(warm):,} votes: "
                f"p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, max {max(warm):.1f} ms")
    raise SystemExit(f"no votes workload for {database}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--database", default="mysql")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    recorder = Recorder()
    for _ in range(args.rounds):
        print(trio.run(one_round, recorder, args.rate, args.seconds, args.database), flush=True)


if __name__ == "__main__":
    main()
