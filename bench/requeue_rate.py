"""How fast a quarantine is replayed: dead letters requeued per second.

Run: ``.venv/bin/python bench/requeue_rate.py [-n 20000] [--rounds 3]``

Pushes N vote-shaped dead letters into a dead-letter list, then requeues
them all through the votes plugin's own restore hook (installed entry
point) and `syncd.quarantine.Quarantine`, as ``syncd dead-letters requeue
votes --all`` does. Two key layouts: the defaults (``votes`` and
``votes:dead``, two Cluster slots, so one script per item) and hash-tagged
ones (``{votes}`` and ``{votes}:dead``, one slot, so up to 100 items per
script). Then purges N by id. Prints the median rate of each. Everything
it creates is deleted. A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import redis
import trio

from syncd.deadletter import DeadLetter
from syncd.manager import get_plugin_manager
from syncd.quarantine import Quarantine, Selection
from syncd.redis import RedisHandle
from syncd.testing import REDIS_URL, delete_keys, unique_prefix


def fill(client: redis.Redis, dead: str, queue: str, n: int) -> list[str]:
    letters = [DeadLetter(dead, json.dumps({"vote": "c", "voter_id": f"v{i}"}), "not allowed",
                          "votes", source=queue) for i in range(n)]
    for start in range(0, n, 1000):
        client.rpush(dead, *(letter.encode() for letter in letters[start:start + 1000]))
    return [letter.id for letter in letters]


async def one_round(n: int, tagged: bool) -> tuple[float, float]:
    prefix = unique_prefix("rq")
    queue = f"{{{prefix}:votes}}" if tagged else f"{prefix}:votes"
    dead = f"{queue}:dead"
    client = redis.Redis.from_url(REDIS_URL)
    handle = RedisHandle.from_url(REDIS_URL, pool_size=4)
    pm = get_plugin_manager()
    from syncd_votes.config import VotesConfig

    box = Quarantine.for_plugin(pm, "votes", VotesConfig(queue=queue, dead_letter=dead), handle)
    try:
        fill(client, dead, queue, n)
        started = time.perf_counter()
        outcome = await box.requeue(Selection(all=True))
        requeue = n / (time.perf_counter() - started)
        assert outcome.done == n and client.llen(queue) == n, outcome
        ids = fill(client, dead, queue, n)
        started = time.perf_counter()
        purged = await box.purge(Selection(ids=tuple(ids)))
        purge = n / (time.perf_counter() - started)
        assert purged.done == n, purged
        return requeue, purge
    finally:
        handle.close()
        client.close()
        delete_keys(prefix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for tagged in (False, True):
        rates = [trio.run(one_round, args.n, tagged) for _ in range(args.rounds)]
        layout = "{votes} + {votes}:dead (one slot)" if tagged else "votes + votes:dead"
        print(f"{layout}: requeue {statistics.median(r for r, _ in rates):,.0f}/s, "
              f"purge by id {statistics.median(p for _, p in rates):,.0f}/s "
              f"(n={args.n}, median of {args.rounds})")


if __name__ == "__main__":
    main()
