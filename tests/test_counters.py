"""CounterSnapshots against a real Redis: no increment lost or counted twice.

"Applying" a snapshot is simulated like the SQL side does it: the snapshot
id goes into a ledger set in the same step as the sums (no await between),
and a snapshot whose id is in the ledger is skipped.
"""

from __future__ import annotations

import random
import threading
from collections import Counter

import attrs
import pytest
import redis
import trio
import trio.lowlevel

from syncd.counters import CounterSnapshots, Snapshot
from syncd.deadletter import DeadLetter
from syncd.redis import RedisHandle
from syncd.testing import REDIS_URL, wait_for_sync


@attrs.define
class Sums:
    """The SQL side, simulated: totals per (key, field) plus the applied-ids ledger."""

    ledger: set[str] = attrs.Factory(set)
    totals: Counter[tuple[str, str]] = attrs.Factory(Counter)
    skipped: int = 0

    def apply(self, snap: Snapshot) -> bool:
        if snap.id in self.ledger:
            self.skipped += 1
            return False
        self.ledger.add(snap.id)
        for key, values in snap.entries:
            if isinstance(values, dict):
                for field, raw in values.items():
                    self.totals[key, field] += int(raw)
            else:
                self.totals[key, ""] += int(values)
        return True


def snaps(handle: RedisHandle, prefix: str, kind: str = "hash") -> CounterSnapshots:
    if kind == "hash":
        return CounterSnapshots(handle, f"{prefix}:node:*:traffic", f"{prefix}:inflight:traffic")
    return CounterSnapshots(
        handle, f"{prefix}:vod:views:*", f"{prefix}:inflight:views", kind="string"
    )


def inflight_keys(redis_client: redis.Redis, prefix: str) -> list[bytes]:
    return list(redis_client.scan_iter(match=f"{prefix}:inflight:*"))


async def test_snapshot_moves_counters_and_commit_clears_them(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    for node in range(3):
        redis_client.hincrby(f"{prefix}:node:{node}:traffic", "upload", 10 + node)
        redis_client.hincrby(f"{prefix}:node:{node}:traffic", "download", 100 + node)
        redis_client.expire(f"{prefix}:node:{node}:traffic", 86400)
    cs = snaps(redis_handle, prefix)
    snap = await cs.snapshot(100)
    assert snap is not None and not snap.recovered and len(snap) == 3
    assert dict(snap.entries) == {
        f"{prefix}:node:{n}:traffic": {
            "upload": str(10 + n).encode(),
            "download": str(100 + n).encode(),
        }
        for n in range(3)
    }
    # The originals are gone; new increments start a fresh key (the next flush).
    assert not redis_client.exists(*(f"{prefix}:node:{n}:traffic" for n in range(3)))
    redis_client.hincrby(f"{prefix}:node:0:traffic", "upload", 5)
    assert redis_client.get(cs.current_key) == snap.id.encode()
    for key in inflight_keys(redis_client, prefix):
        assert redis_client.ttl(key) == -1  # in-flight data never expires
    assert await cs.commit(snap)
    assert inflight_keys(redis_client, prefix) == []
    nxt = await cs.snapshot(100)
    assert nxt is not None and nxt.id != snap.id
    assert nxt.entries == [(f"{prefix}:node:0:traffic", {"upload": b"5"})]
    assert await cs.commit(nxt)
    assert await cs.snapshot(100) is None


async def test_crash_between_snapshot_and_commit_recovers_same_snapshot(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    for node in range(5):
        redis_client.hincrby(f"{prefix}:node:{node}:traffic", "upload", node + 1)
        redis_client.expire(f"{prefix}:node:{node}:traffic", 86400)
    sums = Sums()
    first = await snaps(redis_handle, prefix).snapshot(100)
    assert first is not None
    redis_client.hincrby(f"{prefix}:node:1:traffic", "upload", 1000)  # after the snapshot
    # "kill -9": the Snapshot object is gone. A new process finds it in flight.
    cs = snaps(redis_handle, prefix)
    again = await cs.snapshot(100)
    assert again is not None and again.recovered and again.id == first.id
    assert sorted(again.entries) == sorted(first.entries)
    for key in inflight_keys(redis_client, prefix):
        assert redis_client.ttl(key) == -1
    assert sums.apply(again)
    # Crash after the SQL commit, before Redis commit: replayed, ledger skips it.
    replay = await snaps(redis_handle, prefix).snapshot(100)
    assert replay is not None and replay.id == first.id
    assert not sums.apply(replay)
    assert await cs.commit(replay)
    assert not await cs.commit(first)  # stale: already committed
    while (snap := await cs.snapshot(100)) is not None:
        sums.apply(snap)
        assert await cs.commit(snap)
    assert sums.totals == Counter(
        {
            (f"{prefix}:node:{n}:traffic", "upload"): n + 1 + (1000 if n == 1 else 0)
            for n in range(5)
        }
    )


async def test_commit_pushes_dead_letters_atomically(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    redis_client.hset(f"{prefix}:node:x:traffic", mapping={"upload": "abc", "weird": "1"})
    cs = snaps(redis_handle, prefix)
    snap = await cs.snapshot(10)
    assert snap is not None
    dead = [DeadLetter(f"{prefix}:dead", repr(snap.entries[0]), "not an integer", "traffic")]
    assert not await cs.commit(attrs.evolve(snap, id="stale"), dead)
    assert redis_client.llen(f"{prefix}:dead") == 0 and inflight_keys(redis_client, prefix)
    assert await cs.commit(snap, dead)
    assert redis_client.lrange(f"{prefix}:dead", 0, -1) == [dead[0].encode()]
    assert inflight_keys(redis_client, prefix) == []


async def test_string_counters_and_other_types_left_alone(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    for vod in range(10):
        redis_client.incrby(f"{prefix}:vod:views:{vod}", vod + 1)
    redis_client.hset(f"{prefix}:vod:views:not-a-counter", "a", "1")  # matches, wrong type
    cs = snaps(redis_handle, prefix, kind="string")
    snap = await cs.snapshot(100)
    assert snap is not None
    assert dict(snap.entries) == {f"{prefix}:vod:views:{v}": str(v + 1).encode() for v in range(10)}
    assert await cs.pending() == 10  # in flight, still counted as backlog
    assert await cs.commit(snap)
    assert await cs.snapshot(100) is None
    assert await cs.pending() == 0
    assert redis_client.hget(f"{prefix}:vod:views:not-a-counter", "a") == b"1"
    with pytest.raises(ValueError):
        CounterSnapshots(redis_handle, "x", "y", kind="set")  # type: ignore[arg-type]


async def test_in_flight_keys_are_not_taken_again(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    # A pattern broad enough to match the in-flight area too.
    cs = CounterSnapshots(redis_handle, f"{prefix}:*", f"{prefix}:inflight", kind="string")
    redis_client.incrby(f"{prefix}:a", 1)
    first = await cs.snapshot(10)
    assert first is not None
    other = CounterSnapshots(redis_handle, f"{prefix}:*", f"{prefix}:inflight", kind="string")
    again = await other.snapshot(10)
    assert again is not None and again.id == first.id and again.entries == first.entries
    assert await other.commit(again)
    assert await cs.snapshot(10) is None


@pytest.mark.slow
async def test_thousands_of_keys_in_several_batches(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    n = 5000
    with redis_client.pipeline(transaction=False) as pipe:
        for vod in range(n):
            pipe.incrby(f"{prefix}:vod:views:{vod}", vod)
        pipe.execute()
    cs = snaps(redis_handle, prefix, kind="string")
    cs.scan_count = 500
    assert await cs.pending() == n
    assert await cs.pending(cap=100) == 100
    sums = Sums()
    sizes = []
    while (snap := await cs.snapshot(1200)) is not None:
        sizes.append(len(snap))
        assert sums.apply(snap)
        assert await cs.commit(snap)
    assert sum(sizes) == n and max(sizes) <= 1200 and len(sizes) >= 5
    assert sums.totals == Counter({(f"{prefix}:vod:views:{v}", ""): v for v in range(n) if v})
    assert await cs.pending() == 0 and inflight_keys(redis_client, prefix) == []


@pytest.mark.slow
async def test_concurrent_increments_with_crashes_sum_exactly(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    """Producers HINCRBY (with the app's EXPIRE) while flushes run and "crash".

    A flush dies at random before applying (the snapshot is found again) or
    after applying but before commit (found again, the ledger skips it). In
    the end the sums equal what was produced, to the unit.
    """
    nodes, threads, per_thread = 200, 4, 6000
    raced = 11  # flushes applied while the producers write, at least
    produced: list[Counter[tuple[str, str]]] = [Counter() for _ in range(threads)]
    done = threading.Event()

    def producer(t: int) -> None:
        rng = random.Random(t)
        client = redis.Redis.from_url(REDIS_URL)
        try:
            for round_ in range(per_thread // 50):
                with client.pipeline(transaction=False) as pipe:
                    for _i in range(50):
                        key = f"{prefix}:node:{rng.randrange(nodes)}:traffic"
                        field = rng.choice(["upload", "download"])
                        amount = rng.randrange(1, 10_000)
                        pipe.hincrby(key, field, amount)
                        pipe.expire(key, 86400)
                        produced[t][key, field] += amount
                    pipe.execute()
                if t == 0 and round_ < raced:
                    # Lockstep for a while: this producer writes on only once
                    # a flush has been applied meanwhile, so flushes do race
                    # the producers however the machine schedules them.
                    wait_for_sync(lambda n=round_: crashes["applied-during-production"] > n, 60)
        finally:
            client.close()

    sums = Sums()
    rng = random.Random(42)
    crashes = Counter[str]()

    async def flusher() -> None:
        cs = snaps(redis_handle, prefix)
        while True:
            finished = done.is_set()
            snap = await cs.snapshot(rng.choice([7, 50, 300]))
            if snap is None:
                if finished:
                    return
                await trio.sleep(0.002)
                continue
            if rng.random() < 0.1:
                crashes["before-apply"] += 1
                cs = snaps(redis_handle, prefix)  # a new process, same in-flight data
                continue
            if sums.apply(snap) and not finished:
                crashes["applied-during-production"] += 1
            await trio.lowlevel.checkpoint()
            if rng.random() < 0.1:
                crashes["before-commit"] += 1
                cs = snaps(redis_handle, prefix)
                continue
            await cs.commit(snap)

    async def produce_all() -> None:
        async with trio.open_nursery() as nursery:
            for t in range(threads):
                nursery.start_soon(trio.to_thread.run_sync, producer, t)
        done.set()

    with trio.fail_after(120):  # a deadlock guard, not a speed test
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce_all)
            nursery.start_soon(flusher)
    expected = sum(produced, Counter())
    assert sums.totals == expected
    assert crashes["before-apply"] > 0 and crashes["before-commit"] > 0, crashes
    assert crashes["applied-during-production"] >= raced, crashes  # flushes raced the producers
    assert sums.skipped >= crashes["before-commit"]
    assert list(redis_client.scan_iter(match=f"{prefix}:*")) == []


async def test_a_snapshot_without_data_is_an_error_not_a_silent_stall(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    """``current`` naming a snapshot that holds nothing readable would make
    every later take be refused: the error names both keys instead."""
    cs = snaps(redis_handle, prefix)
    redis_client.set(cs.current_key, "abc")
    redis_client.hset(cs.snapshot_key("abc"), f"{prefix}:node:1:traffic", "old format")
    redis_client.hincrby(f"{prefix}:node:2:traffic", "upload", 1)
    with pytest.raises(RuntimeError, match="has no 'data' field"):
        await cs.snapshot(10)
    assert redis_client.hget(f"{prefix}:node:2:traffic", "upload") == b"1"  # untouched
