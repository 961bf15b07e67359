"""CounterSnapshots on a real Redis Cluster: one slot per snapshot, nothing lost or doubled.

The single-node tests (test_counters.py) hold the chain's logic; these check
what the cluster adds: snapshots per slot, in-flight keys in their slot,
recovery through the registry on every master, dead letters pushed once.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio

from syncd.counters import _PART, CounterSnapshots, slot_tag
from syncd.deadletter import DeadLetter
from syncd.errors import RedisUnavailable
from syncd.keys import key_slot
from syncd.redis import RedisHandle, scan_masters
from syncd.testing import LocalCluster, redis_client_for, wait_for, wait_for_sync

from .test_counters import Sums


@pytest.fixture(name="handle")
async def _handle(redis_cluster_url: str) -> AsyncIterator[RedisHandle]:
    handle = RedisHandle.from_url(redis_cluster_url, pool_size=4)
    yield handle
    handle.close()


@pytest.fixture(name="client")
def _client(redis_cluster_url: str, prefix: str) -> Iterator[Any]:
    client = redis_client_for(redis_cluster_url)
    yield client
    client.close()


def snaps(handle: RedisHandle, prefix: str) -> CounterSnapshots:
    return CounterSnapshots(handle, f"{prefix}:node:*:traffic", f"{prefix}:inflight:traffic")


def left(client: Any, prefix: str) -> list[bytes]:
    """Keys left under ``prefix``, but for the marks of closed snapshots: they
    stay for a day (a paused owner must still find its snapshot closed)."""
    keys = sorted(scan_masters(client, match=f"*{prefix}*"))
    closed = [key for key in keys if key.endswith(b":closed")]
    assert all(0 < client.ttl(key) <= 86_400 for key in closed)
    return [key for key in keys if key not in closed]


def part_key(prefix: str, lane: str, key: str, snapshot_id: str) -> str:
    return f"{{{slot_tag(key_slot(key))}}}:{prefix}:{lane}:{snapshot_id}"


async def test_a_snapshot_spans_slots_in_parts_that_live_there(
        handle: RedisHandle, client: Any, prefix: str) -> None:
    keys = [f"{prefix}:node:{n}:traffic" for n in range(40)]
    keys += [f"{{{prefix}:t}}:node:{n}:traffic" for n in range(5)]  # one tag: one slot
    for i, key in enumerate(keys):
        client.hincrby(key, "upload", i + 1)
    cs = snaps(handle, prefix)
    cs.pattern = f"*{prefix}*:node:*:traffic"
    snap = await cs.snapshot(1000)
    assert snap is not None and len(snap) == len(keys)
    for key in keys:  # each slot's part is in that slot, on whichever master holds it
        assert client.exists(part_key(prefix, "inflight:traffic", key, snap.id))
    sums = Sums()
    assert sums.apply(snap)
    assert await cs.commit(snap)
    assert not await cs.commit(snap)
    assert await cs.snapshot(1000) is None
    assert sums.totals == Counter({(key, "upload"): i + 1 for i, key in enumerate(keys)})
    assert left(client, prefix) == []  # no counter, no part, no manifest

    # Smaller snapshots take the rest in turn, none lost or taken twice.
    for i, key in enumerate(keys):
        client.hincrby(key, "upload", i + 1)
    sizes = []
    while (snap := await cs.snapshot(7)) is not None:
        sizes.append(len(snap))
        assert sums.apply(snap)
        assert await cs.commit(snap)
    assert max(sizes) == 7 and sum(sizes) == len(keys)
    assert sums.totals == Counter({(key, "upload"): 2 * (i + 1) for i, key in enumerate(keys)})


async def test_recovery_closes_a_snapshot_before_reading_it(
        handle: RedisHandle, client: Any, prefix: str) -> None:
    """Once a replica recovered a snapshot, its owner cannot add a part to it."""
    for n in range(10):
        client.hincrby(f"{prefix}:node:{n}:traffic", "upload", 1)
    owner = snaps(handle, prefix)
    snap = await owner.snapshot(100)
    assert snap is not None
    again = await snaps(handle, prefix).snapshot(100)
    assert again is not None and again.recovered and again.id == snap.id
    assert sorted(again.pairs()) == sorted(snap.pairs())
    late = f"{prefix}:node:0:traffic"
    client.hincrby(late, "upload", 5)
    part = part_key(prefix, "inflight:traffic", late, snap.id)
    reply = client.execute_command(
        "EVAL", _PART, 3, part + ":closed", part, late,
        snap.id, "hash", 1000)
    assert reply == [0]  # refused: the snapshot is closed
    assert client.hget(late, "upload") == b"5"


async def test_crash_recovery_finds_every_snapshot_on_every_master(
        handle: RedisHandle, client: Any, prefix: str) -> None:
    for n in range(30):
        client.hincrby(f"{prefix}:node:{n}:traffic", "upload", n + 1)
    sums = Sums()
    lanes = [CounterSnapshots(handle, f"{prefix}:node:*:traffic",
                              f"{prefix}:inflight:traffic:{lane}") for lane in range(2)]
    taken = [await lanes[0].snapshot(15), await lanes[1].snapshot(100)]
    assert all(t is not None for t in taken)
    masters = {handle.client.get_node_from_key(f"{prefix}:node:{n}:traffic").name
               for n in range(30)}
    assert len(masters) == 3
    assert [len(t) for t in taken if t is not None] == [15, 15]
    # "kill -9": a new process finds both snapshots in flight, by the registry.
    fresh = [CounterSnapshots(handle, f"{prefix}:node:*:traffic",
                              f"{prefix}:inflight:traffic:{lane}") for lane in range(2)]
    for lane, first in zip(fresh, taken, strict=True):
        assert first is not None
        assert await handle.run(lane.has_in_flight)
        again = await lane.snapshot(100)
        assert again is not None and again.recovered and again.id == first.id
        assert sums.apply(again)
        # Crash after the SQL commit: replayed, the ledger skips it.
        replay = await CounterSnapshots(handle, lane.pattern, lane.inflight_prefix).snapshot(100)
        assert replay is not None and replay.id == first.id and not sums.apply(replay)
        assert await lane.commit(replay)
        assert not await lane.commit(first)
    while True:
        snap = await fresh[0].snapshot(100)
        if snap is None:
            break
        assert sums.apply(snap)
        assert await fresh[0].commit(snap)
    assert sums.totals == Counter(
        {(f"{prefix}:node:{n}:traffic", "upload"): n + 1 for n in range(30)})
    assert left(client, prefix) == []


async def test_dead_letters_pushed_once_though_commit_is_replayed(
        handle: RedisHandle, client: Any, prefix: str) -> None:
    client.hset(f"{prefix}:node:x:traffic", mapping={"upload": "abc"})
    cs = snaps(handle, prefix)
    snap = await cs.snapshot(10)
    assert snap is not None
    dead = [DeadLetter(f"{prefix}:dead", "x", "not an integer", "traffic")]
    assert await cs.commit(snap, dead)
    assert not await cs.commit(snap, dead)  # a replay: nothing pushed twice
    assert client.lrange(f"{prefix}:dead", 0, -1) == [dead[0].encode()]
    assert [k for k in left(client, prefix) if b"inflight" in k] == []


async def test_increments_racing_flushes_with_crashes_sum_exactly(
        handle: RedisHandle, client: Any, prefix: str) -> None:
    """Producers HINCRBY across every slot while a flusher takes, "crashes"
    (drops its state) before applying or before committing, and commits."""
    rng = random.Random(7)
    produced: Counter[tuple[str, str]] = Counter()
    sums = Sums()
    done = trio.Event()

    def produce(round_: int) -> None:
        with client.pipeline(transaction=False) as pipe:
            for _ in range(100):
                key = f"{prefix}:node:{rng.randrange(60)}:traffic"
                amount = rng.randrange(1, 1000)
                pipe.hincrby(key, "upload", amount)
                produced[key, "upload"] += amount
            pipe.execute()

    async def producer() -> None:
        for round_ in range(30):
            await trio.to_thread.run_sync(produce, round_)
        done.set()

    async def flusher() -> None:
        cs = snaps(handle, prefix)
        crashes = 0
        while True:
            finished = done.is_set()
            snap = await cs.snapshot(rng.choice([5, 50]))
            if snap is None:
                if finished:
                    assert crashes > 0
                    return
                await trio.sleep(0.002)
                continue
            if rng.random() < 0.15:
                crashes += 1
                cs = snaps(handle, prefix)
                continue
            sums.apply(snap)
            if rng.random() < 0.15:
                crashes += 1
                cs = snaps(handle, prefix)
                continue
            await cs.commit(snap)

    with trio.fail_after(120):  # a deadlock guard, not a speed test
        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            nursery.start_soon(flusher)
    assert sums.totals == produced
    assert left(client, prefix) == []


async def test_resharding_the_slot_during_flushes_loses_and_doubles_nothing(
        redis_cluster: LocalCluster, handle: RedisHandle, client: Any, prefix: str) -> None:
    """The slot holding the data moves to another master, key batch by key
    batch, while counters are incremented and snapshots taken, applied and
    committed in between every step (ASK, TRYAGAIN, then MOVED on the way)."""
    tag = f"{{{prefix}:hot}}"
    hot = [f"{tag}:node:{n}:traffic" for n in range(40)]
    cold = [f"{prefix}:node:{n}:traffic" for n in range(20)]
    slot = key_slot(hot[0])
    produced: Counter[tuple[str, str]] = Counter()
    sums = Sums()
    rng = random.Random(3)
    attempts = {"n": 0, "errors": 0}
    moved = trio.Event()

    def produce() -> None:
        for _ in range(30):
            key = rng.choice(hot if rng.random() < 0.8 else cold)
            client.hincrby(key, "upload", 1)
            produced[key, "upload"] += 1

    def step() -> None:  # between two MIGRATE batches: produce, then let a flush try
        produce()
        seen = attempts["n"]
        wait_for_sync(lambda: attempts["n"] > seen + 1, 60)

    async def flusher() -> None:
        cs = CounterSnapshots(handle, f"*{prefix}*:node:*:traffic", f"{prefix}:inflight")
        while True:
            done = moved.is_set()
            try:
                snap = await cs.snapshot(10)
                if snap is not None:
                    sums.apply(snap)
                    await cs.commit(snap)
            except RedisUnavailable:  # TRYAGAIN mid-move: a restart's fresh state
                attempts["errors"] += 1
                cs = CounterSnapshots(handle, cs.pattern, cs.inflight_prefix)
                snap = None
            attempts["n"] += 1
            if snap is None:
                if done:
                    return
                await trio.sleep(0.005)

    produce()
    masters = redis_cluster.masters_by_port()
    target = next(port for port in masters if port != redis_cluster.owner(slot))

    async def reshard() -> None:
        await trio.to_thread.run_sync(
            lambda: redis_cluster.migrate_slot(slot, target, batch=5, between=step))
        moved.set()

    with trio.fail_after(120):  # a deadlock guard, not a speed test
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flusher)
            nursery.start_soon(reshard)
    assert redis_cluster.owner(slot) == target
    assert sums.totals == produced
    assert left(client, prefix) == []


async def test_failover_of_the_master_during_flushes_loses_and_doubles_nothing(
        redis_cluster: LocalCluster, handle: RedisHandle, client: Any, prefix: str) -> None:
    """CLUSTER FAILOVER on the replica of the master holding the data, with a
    snapshot in flight there: the promoted replica has it, and finishes it."""
    if not redis_cluster.running:
        pytest.skip("needs the cluster this session started")
    keys = [f"{{{prefix}:hot}}:node:{n}:traffic" for n in range(30)]
    for n, key in enumerate(keys):
        client.hincrby(key, "upload", n + 1)
    sums = Sums()
    cs = CounterSnapshots(handle, f"*{prefix}*:node:*:traffic", f"{prefix}:inflight")
    first = await cs.snapshot(10)
    assert first is not None
    old = redis_cluster.owner(key_slot(keys[0]))
    await trio.to_thread.run_sync(redis_cluster.fail_over, old)
    assert redis_cluster.owner(key_slot(keys[0])) != old
    for n, key in enumerate(keys):  # the application writes on, to the new master
        client.hincrby(key, "upload", n + 1)
    with trio.fail_after(60):  # a deadlock guard, not a speed test
        snap: Any = first
        while snap is not None:
            sums.apply(snap)
            try:
                await cs.commit(snap)
            except RedisUnavailable:
                cs = CounterSnapshots(handle, cs.pattern, cs.inflight_prefix)
            snap = await cs.snapshot(10)
    assert sums.totals == Counter({(key, "upload"): 2 * (n + 1) for n, key in enumerate(keys)})
    assert left(client, prefix) == []


async def test_a_snapshot_is_handed_out_only_once_a_replica_has_it(
        redis_cluster: LocalCluster, handle: RedisHandle, client: Any, prefix: str) -> None:
    """A snapshot part the replica never got would, after an unplanned
    failover, leave the counters in place once their sums were in SQL:
    counted twice by the next snapshot. With the replica of one part's
    master frozen, the snapshot is refused (Redis unavailable) and stays in
    flight; once the replica is back, the same snapshot is handed out whole."""
    if not redis_cluster.running:
        pytest.skip("needs the cluster this session started (to freeze a node)")
    keys = [f"{prefix}:node:{n}:traffic" for n in range(12)]
    for n, key in enumerate(keys):
        client.hincrby(key, "upload", n + 1)
    cs = snaps(handle, prefix)
    replica = redis_cluster.replica_of(redis_cluster.owner(key_slot(keys[0])))
    await handle.ping()  # a running daemon's client knows the slot map already
    try:
        with redis_cluster.frozen(replica), pytest.raises(RedisUnavailable, match="no replica"):
            await cs.snapshot(100)
        assert not any(client.exists(key) for key in keys)  # taken, not handed out
        snap = await wait_for(lambda: cs.snapshot(100), ignore=(RedisUnavailable,))
        assert snap.recovered
        sums = Sums()
        sums.apply(snap)
        assert sums.totals == Counter({(key, "upload"): n + 1 for n, key in enumerate(keys)})
        assert await cs.commit(snap)
        assert left(client, prefix) == []
    finally:
        await trio.to_thread.run_sync(lambda: wait_for_sync(redis_cluster.healthy))
