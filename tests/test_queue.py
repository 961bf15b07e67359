"""ReliableQueue against a real Redis: order, batching, crashes, reclaim, outages.

"Applying" a batch is simulated by a `Ledger`: like the SQL ledger, it
records the batch id together with the items in one step, and skips a batch
whose id it has seen. Every test then counts: each item produced is applied
exactly once, and nothing is left in Redis.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from collections import Counter
from collections.abc import Iterator

import attrs
import pytest
import redis
import trio
import trio.lowlevel
from redis.backoff import NoBackoff
from redis.retry import Retry

from syncd.deadletter import DeadLetter
from syncd.errors import RedisUnavailable
from syncd.keys import derived_key
from syncd.queue import Batch, ReliableQueue
from syncd.redis import RedisHandle, is_cluster
from syncd.testing import REDIS_URL, unique_prefix, wait_for

# -- fixtures and helpers ------------------------------------------------------------


@attrs.define
class Ledger:
    """The SQL side, simulated: batch ids applied, and how often each item arrived."""

    ids: set[str] = attrs.Factory(set)
    items: Counter[bytes] = attrs.Factory(Counter)
    skipped: int = 0

    def apply(self, batch: Batch) -> bool:
        # No await in here: atomic in Trio, like one SQL transaction.
        if batch.id in self.ids:
            self.skipped += 1
            return False
        self.ids.add(batch.id)
        self.items.update(batch.items)
        return True

    def assert_exactly_once(self, produced: list[bytes]) -> None:
        doubled = {item: n for item, n in self.items.items() if n > 1}
        assert not doubled, f"{len(doubled)} items applied twice, e.g. {list(doubled)[:3]}"
        missing = set(produced) - set(self.items)
        assert not missing, f"{len(missing)} items lost, e.g. {sorted(missing)[:3]}"
        assert len(self.items) == len(produced)


def k(redis_client: redis.Redis, source: str, *parts: str) -> str:
    """A queue's derived key, as `ReliableQueue` names it on this Redis (tagged on a cluster)."""
    return derived_key(source, *parts, cluster=is_cluster(redis_client))


def items(n: int, tag: str = "i") -> list[bytes]:
    return [f"{tag}{k:06d}".encode() for k in range(n)]


def produce(redis_client: redis.Redis, key: str, values: list[bytes], chunk: int = 1000) -> None:
    """LPUSH one by one, as the application would (oldest ends up at the right)."""
    for start in range(0, len(values), chunk):
        redis_client.lpush(key, *values[start : start + chunk])


def assert_drained(redis_client: redis.Redis, source: str) -> None:
    leftovers = [
        k for k in redis_client.scan_iter(match=f"*{source}*") if not k.endswith(b":consumers")
    ]
    leftovers = [k for k in leftovers if b":consumer:" not in k]
    assert leftovers == [], leftovers


async def drain(q: ReliableQueue, ledger: Ledger, max_items: int = 100) -> int:
    """Take, apply and ack until the source stays empty; returns the batch count."""
    batches = 0
    while (batch := await q.take(max_items, 0.0, 0.05)) is not None:
        ledger.apply(batch)
        assert await q.ack(batch)
        batches += 1
    return batches


# -- order and batching --------------------------------------------------------------


async def test_fifo_order_across_batches(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    source = f"{prefix}:votes"
    produced = items(250)
    for item in produced:  # one LPUSH per item: the app's order is the push order
        redis_client.lpush(source, item)
    q = ReliableQueue(redis_handle, source, "c1")
    seen: list[bytes] = []
    sizes = []
    while (batch := await q.take(100, 0.0, 0.05)) is not None:
        assert not batch.recovered and batch.consumer == "c1"
        seen += batch.items
        sizes.append(len(batch))
        assert await q.ack(batch)
    assert seen == produced
    assert sizes == [100, 100, 50]
    assert await q.length() == 0 and await q.processing_length() == 0


async def test_batch_closes_at_max_items_without_waiting(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    source = f"{prefix}:q"
    produce(redis_client, source, items(50))
    q = ReliableQueue(redis_handle, source, "c1")
    with trio.fail_after(30):  # max_wait is an hour: returning at all is closing at max_items
        batch = await q.take(20, max_wait=3600.0, block=1.0)
    assert batch is not None and len(batch) == 20
    assert await q.processing_length() == 20
    assert await q.length() == 30
    batch_key = k(redis_client, source, "processing", "c1") + ":batch"
    assert redis_client.get(batch_key) == batch.id.encode()


async def test_batch_closes_at_max_wait_with_a_trickle(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    source = f"{prefix}:q"
    q = ReliableQueue(redis_handle, source, "c1")
    produced = items(200)

    async def trickle() -> None:
        for item in produced:
            await trio.to_thread.run_sync(redis_client.lpush, source, item)
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        await wait_for(lambda: redis_client.llen(source) > 0)
        start = trio.current_time()
        # 200 items in all cannot reach max_items: only max_wait can close it.
        with trio.fail_after(30):
            batch = await q.take(1000, max_wait=0.3, block=1.0)
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert batch is not None and len(batch) >= 1
    assert elapsed >= 0.3, elapsed  # held open for more, not closed at the first item
    assert batch.items == produced[: len(batch)]
    assert await q.processing_length() == len(batch)


async def test_take_returns_none_when_nothing_arrives(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    q = ReliableQueue(redis_handle, f"{prefix}:q", "c1", block_slice=0.1)
    start = trio.current_time()
    with trio.fail_after(30):
        assert await q.take(10, 0.1, block=0.35) is None  # several BLMOVE slices
    assert trio.current_time() - start >= 0.35
    # Non-blocking: not even one slice, with slices of 5 s.
    patient = ReliableQueue(redis_handle, f"{prefix}:q", "c1", block_slice=5.0)
    start = trio.current_time()
    assert await patient.take(10, 0.1, block=0) is None
    assert trio.current_time() - start < 5.0


async def test_item_arriving_during_block_is_taken_at_once(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    source = f"{prefix}:q"
    q = ReliableQueue(redis_handle, source, "c1", block_slice=5.0)
    async with trio.open_nursery() as nursery:

        async def later() -> None:
            await trio.sleep(0.2)
            await trio.to_thread.run_sync(redis_client.lpush, source, b"late")

        nursery.start_soon(later)
        start = trio.current_time()
        batch = await q.take(10, max_wait=0.0, block=30.0)
    assert batch is not None and batch.items == [b"late"]
    # Woken by the push, not by the end of its 5 s BLMOVE slice.
    assert trio.current_time() - start < 5.0


# -- crashes and acks ----------------------------------------------------------------


async def test_crash_leftover_with_id_is_recovered_as_is(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    source = f"{prefix}:q"
    produce(redis_client, source, items(30))
    first = await ReliableQueue(redis_handle, source, "c1").take(10, 0.0, 0.1)
    assert first is not None
    # "Crash": the object is gone; a restart with the same consumer id finds it.
    restarted = ReliableQueue(redis_handle, source, "c1")
    again = await restarted.take(5, 0.0, 0.1)  # smaller max_items: the batch stays whole
    assert again == Batch(first.id, first.items, "c1", recovered=True)
    assert await restarted.ack(again)
    nxt = await restarted.take(10, 0.0, 0.1)
    assert nxt is not None and not nxt.recovered and nxt.id != first.id
    assert nxt.items == items(30)[10:20]


async def test_crash_leftover_without_id_gets_a_stable_id(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    source = f"{prefix}:q"
    produce(redis_client, source, items(5))
    # A crash between BLMOVE and the fill script: items moved, no batch id yet.
    for _ in range(3):
        redis_client.lmove(source, k(redis_client, source, "processing", "c1"), "RIGHT", "LEFT")
    q = ReliableQueue(redis_handle, source, "c1")
    batch = await q.take(100, 0.5, 0.1)
    assert batch is not None and batch.recovered
    assert batch.items == items(5)[:3]
    again = await ReliableQueue(redis_handle, source, "c1").take(100, 0.5, 0.1)
    assert again is not None and again.id == batch.id and again.items == batch.items


async def test_cancelled_take_loses_nothing(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    source = f"{prefix}:q"
    q = ReliableQueue(redis_handle, source, "c1")
    redis_client.lpush(source, b"a")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(q.take, 100, 60.0, 1.0)
        await wait_for(lambda: redis_client.llen(q.processing_key) == 1)
        nursery.cancel_scope.cancel()  # while it tops up the batch
    redis_client.lpush(source, b"b")
    batch = await q.take(100, max_wait=0.0, block=0.1)
    assert batch is not None and batch.recovered and batch.items == [b"a"]
    assert await q.ack(batch)
    batch = await q.take(100, max_wait=0.0, block=0.1)
    assert batch is not None and batch.items == [b"b"]


async def test_stale_or_wrong_ack_does_nothing(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    source = f"{prefix}:q"
    produce(redis_client, source, items(10))
    q = ReliableQueue(redis_handle, source, "c1")
    batch = await q.take(4, 0.0, 0.1)
    assert batch is not None
    dead = [DeadLetter(f"{prefix}:dead", b"x", "nope", "test")]
    assert not await q.ack(attrs.evolve(batch, id="not-the-id"), dead)
    assert await q.processing_length() == 4 and redis_client.llen(f"{prefix}:dead") == 0
    assert await q.ack(batch)
    assert await q.processing_length() == 0
    assert not await q.ack(batch, dead)  # twice: already gone
    assert redis_client.llen(f"{prefix}:dead") == 0
    # A stale ack of an old batch cannot remove the next one.
    nxt = await q.take(4, 0.0, 0.1)
    assert nxt is not None
    assert not await q.ack(batch)
    assert await q.processing_length() == 4


async def test_dead_letters_are_pushed_with_the_ack(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    source = f"{prefix}:q"
    redis_client.lpush(source, b"good", b"\xffbad", b"worse")
    q = ReliableQueue(redis_handle, source, "c1")
    batch = await q.take(10, 0.0, 0.1)
    assert batch is not None and batch.items == [b"good", b"\xffbad", b"worse"]
    dead = [
        DeadLetter(f"{prefix}:dead", batch.items[1], "not utf-8", "votes"),
        DeadLetter(f"{prefix}:dead2", batch.items[2], "other list", "votes"),
    ]
    assert await q.ack(batch, dead)
    assert [
        DeadLetter.decode(f"{prefix}:dead", raw)
        for raw in redis_client.lrange(f"{prefix}:dead", 0, -1)
    ] == [dead[0]]
    assert redis_client.lrange(f"{prefix}:dead2", 0, -1) == [dead[1].encode()]
    assert await q.processing_length() == 0


# -- heartbeat, orphans and reclaim --------------------------------------------------


async def test_heartbeat_registry_and_clean_close(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    source = f"{prefix}:q"
    q = ReliableQueue(redis_handle, source, "c1", heartbeat_ttl=1.5)
    other = ReliableQueue(redis_handle, source, "c2", heartbeat_ttl=1.5)
    beat = k(redis_client, source, "consumer", "c1")
    async with trio.open_nursery() as nursery:
        await nursery.start(q.serve_heartbeat)
        assert redis_client.sismember(k(redis_client, source, "consumers"), "c1")
        lowest = [redis_client.pttl(beat)]
        assert 0 < lowest[0] <= 1500

        def renewed() -> bool:  # the TTL went down, then a beat set it back up
            ttl = redis_client.pttl(beat)
            lowest[0] = min(lowest[0], ttl)
            return ttl > lowest[0] + 100

        await wait_for(renewed)
        assert await other.orphans() == []  # just renewed: alive for another 1.5 s
        nursery.cancel_scope.cancel()
    # No more beats: it becomes an orphan once the TTL runs out.
    assert await wait_for(other.orphans) == ["c1"]
    assert await q.close()
    assert not redis_client.sismember(k(redis_client, source, "consumers"), "c1")
    # With a batch in flight, close keeps the consumer visible to reclaim.
    redis_client.lpush(source, b"x")
    assert await q.take(10, 0.0, 0.1) is not None
    assert not await q.close()
    assert redis_client.sismember(k(redis_client, source, "consumers"), "c1")


async def test_claim_empty_orphan_deregisters_it(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    source = f"{prefix}:q"
    redis_client.sadd(k(redis_client, source, "consumers"), "dead")
    q = ReliableQueue(redis_handle, source, "live")
    assert await q.orphans() == ["dead"]
    assert await q.claim_orphan("dead") is None
    assert await q.orphans() == []
    with pytest.raises(ValueError):
        await q.claim_orphan("live")


async def test_reclaim_while_the_dead_consumer_restarts(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    source = f"{prefix}:q"
    produced = items(40)
    produce(redis_client, source, produced)
    ledger = Ledger()

    dead = ReliableQueue(redis_handle, source, "a", heartbeat_ttl=0.2)
    await dead.heartbeat()
    lost = await dead.take(10, 0.0, 0.1)  # taken, then "kill -9"
    assert lost is not None
    await trio.sleep(0.25)

    # The claim lasts the claimer's TTL: long, so it cannot lapse mid-test.
    b = ReliableQueue(redis_handle, source, "b", heartbeat_ttl=30)
    c = ReliableQueue(redis_handle, source, "c", heartbeat_ttl=30)
    assert await b.orphans() == ["a"]
    claimed = await b.claim_orphan("a")
    assert claimed == Batch(lost.id, lost.items, "a", recovered=True)
    assert await c.claim_orphan("a") is None  # one claimer at a time
    assert await c.orphans() == []
    assert redis_client.get(k(redis_client, source, "consumer", "a")) == b"reclaimed-by:b"

    # "a" restarts under the same id and finds its own batch: both hold it.
    restarted = ReliableQueue(redis_handle, source, "a", heartbeat_ttl=0.2)
    await restarted.heartbeat()
    own = await restarted.take(10, 0.0, 0.1)
    assert own is not None and own.id == lost.id and own.recovered

    assert ledger.apply(own)
    assert await restarted.ack(own)
    assert not ledger.apply(claimed)  # the ledger says: done already
    assert not await b.ack(claimed)  # and its ack is a no-op
    # "a" is alive: stays registered
    assert redis_client.sismember(k(redis_client, source, "consumers"), "a")

    ledger.assert_exactly_once(produced[:10])
    await drain(restarted, ledger)
    ledger.assert_exactly_once(produced)


async def test_reclaimed_batch_acked_by_claimer_deregisters_orphan(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    source = f"{prefix}:q"
    produce(redis_client, source, items(10))
    dead = ReliableQueue(redis_handle, source, "a", heartbeat_ttl=0.1)
    await dead.heartbeat()
    assert await dead.take(10, 0.0, 0.1) is not None
    await trio.sleep(0.15)
    b = ReliableQueue(redis_handle, source, "b")
    claimed = await b.claim_orphan("a")
    assert claimed is not None
    dl = [DeadLetter(f"{prefix}:dead", claimed.items[0], "bad", "t")]
    assert await b.ack(claimed, dl)
    assert redis_client.llen(f"{prefix}:dead") == 1
    assert not redis_client.sismember(k(redis_client, source, "consumers"), "a")
    assert not redis_client.exists(k(redis_client, source, "consumer", "a"),
                                   k(redis_client, source, "processing", "a"))
    # The restarted "a" finds nothing of the old batch.
    back = await ReliableQueue(redis_handle, source, "a").take(10, 0.0, 0.05)
    assert back is None


async def test_claim_seals_a_stalled_consumers_batch(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    """A consumer whose heartbeat lapsed (stalled, not dead) is reclaimed mid-fill.

    The claim seals the batch: the stalled consumer adds nothing after it, so
    both hold the same items under the same id and the ledger lets one through.
    """
    source = f"{prefix}:q"
    redis_client.lpush(source, b"first")
    stalled = ReliableQueue(redis_handle, source, "a", heartbeat_ttl=0.2)  # never beats
    b = ReliableQueue(redis_handle, source, "b", heartbeat_ttl=0.2)
    ledger = Ledger()
    async with trio.open_nursery() as nursery:
        result: list[Batch | None] = []

        async def take() -> None:
            result.append(await stalled.take(100, max_wait=60.0, block=1.0))

        nursery.start_soon(take)
        # "a" holds [first] (registered with its batch) and polls for more.
        assert await wait_for(b.orphans) == ["a"]
        claimed = await b.claim_orphan("a")
        assert claimed is not None and claimed.items == [b"first"]
        redis_client.lpush(source, b"second", b"third")  # "a" must not add these now
    (mine,) = result
    assert mine == Batch(claimed.id, [b"first"], "a", recovered=True)
    assert ledger.apply(claimed) and not ledger.apply(mine)
    assert await b.ack(claimed) and not await stalled.ack(mine)
    await drain(stalled, ledger)
    ledger.assert_exactly_once([b"first", b"second", b"third"])


async def test_batch_finished_by_a_reclaimer_takes_no_new_items(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    """A stalled consumer whose batch was claimed *and acked* meanwhile (the
    seal is gone with the ack) must not top up under the finished id: the
    ledger would call the new items applied and the ack would drop them."""
    source = f"{prefix}:q"
    redis_client.lpush(source, b"first")
    stalled = ReliableQueue(redis_handle, source, "a", heartbeat_ttl=0.2)  # never beats
    b = ReliableQueue(redis_handle, source, "b", heartbeat_ttl=0.2)
    ledger = Ledger()
    async with trio.open_nursery() as nursery:
        result: list[Batch | None] = []

        async def take() -> None:
            result.append(await stalled.take(100, max_wait=60.0, block=1.0))

        nursery.start_soon(take)
        # "a" holds [first] (registered with its batch) and polls for more.
        assert await wait_for(b.orphans) == ["a"]
        claimed = await b.claim_orphan("a")
        assert claimed is not None
        assert ledger.apply(claimed) and await b.ack(claimed)
        redis_client.lpush(source, b"second", b"third")  # must stay for a fresh batch
    (mine,) = result
    assert mine is not None and mine.recovered and mine.id == claimed.id
    assert not ledger.apply(mine)
    assert not await stalled.ack(mine)
    await drain(stalled, ledger)
    ledger.assert_exactly_once([b"first", b"second", b"third"])


@pytest.mark.slow
async def test_chaos_crashes_restarts_and_reclaims(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    """Three consumers crash at random points, restart or not, and reclaim each other."""
    source = f"{prefix}:q"
    produced = items(6000)
    ledger = Ledger()
    rng = random.Random(7)
    ttl = 0.15
    crashes = Counter[str]()

    async def producer() -> None:
        for start in range(0, len(produced), 200):
            await trio.to_thread.run_sync(
                produce, redis_client, source, produced[start : start + 200]
            )
            await trio.sleep(0.01)

    def crash(point: str) -> bool:
        hit = rng.random() < 0.08
        if hit:
            crashes[point] += 1
        return hit

    async def process(q: ReliableQueue, batch: Batch) -> bool:
        """Apply and ack; False if the process "died" on the way."""
        if crash("before-apply"):
            return False
        ledger.apply(batch)
        await trio.lowlevel.checkpoint()
        if crash("before-ack"):
            return False
        await q.ack(batch)
        return True

    async def life(name: str) -> None:
        """One process: runs until it "crashes", then the next one starts."""
        q = ReliableQueue(redis_handle, source, name, heartbeat_ttl=ttl, block_slice=0.05)
        async with trio.open_nursery() as nursery:
            await nursery.start(q.serve_heartbeat)
            while len(ledger.items) < len(produced):
                batch = await q.take(rng.choice([1, 7, 50, 200]), 0.005, 0.05)
                if batch is None:
                    for orphan in await q.orphans():
                        claimed = await q.claim_orphan(orphan)
                        if claimed is not None and not await process(q, claimed):
                            nursery.cancel_scope.cancel()
                            return
                    continue
                if not await process(q, batch):
                    nursery.cancel_scope.cancel()  # kill -9: the heartbeat stops too
                    return
            nursery.cancel_scope.cancel()

    async def consumer(name: str) -> None:
        while len(ledger.items) < len(produced):
            await life(name)
            # Back at once (finds its own batch), or after others may have reclaimed it.
            await trio.sleep(rng.choice([0.0, 0.0, ttl * 2]))

    with trio.fail_after(120):  # a deadlock guard, not a speed test
        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            for name in ["a", "b", "c"]:
                nursery.start_soon(consumer, name)
    ledger.assert_exactly_once(produced)
    assert sum(crashes.values()) > 5, crashes
    assert ledger.skipped > 0  # some batches really were replayed
    assert redis_client.llen(source) == 0
    # Everything applied is also acked, or still in flight after a final crash:
    # a last drain by each consumer id finishes it.
    for name in ["a", "b", "c"]:
        await drain(ReliableQueue(redis_handle, source, name), ledger)
    ledger.assert_exactly_once(produced)
    assert_drained(redis_client, source)


async def test_concurrent_producers_and_two_consumers(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    source = f"{prefix}:q"
    per_thread, threads = 5000, 4
    produced_by = [items(per_thread, tag=f"p{t}-") for t in range(threads)]
    produced = [item for chunk in produced_by for item in chunk]
    ledger = Ledger()
    order_by_producer: dict[str, list[bytes]] = {}

    def producer(values: list[bytes]) -> None:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            for start in range(0, len(values), 25):
                with client.pipeline(transaction=False) as pipe:
                    for item in values[start : start + 25]:
                        pipe.lpush(source, item)
                    pipe.execute()
        finally:
            client.close()

    async def consume(name: str) -> None:
        q = ReliableQueue(redis_handle, source, name)
        while len(ledger.items) < len(produced):
            batch = await q.take(300, 0.01, 0.1)
            if batch is None:
                continue
            assert ledger.apply(batch)
            for item in batch.items:
                order_by_producer.setdefault(item.split(b"-")[0].decode(), []).append(item)
            assert await q.ack(batch)

    with trio.fail_after(120):  # a deadlock guard, not a speed test
        async with trio.open_nursery() as nursery:
            for values in produced_by:
                nursery.start_soon(trio.to_thread.run_sync, producer, values)
            nursery.start_soon(consume, "c1")
            nursery.start_soon(consume, "c2")
    ledger.assert_exactly_once(produced)
    assert_drained(redis_client, source)
    # Each producer's items were taken in its push order (batches interleave
    # between consumers, but each batch is a contiguous oldest-first slice).
    assert len(order_by_producer) == threads


# -- Redis going away ----------------------------------------------------------------


def _named_handle(name: str, retries: int) -> RedisHandle:
    client = redis.Redis.from_url(
        REDIS_URL,
        client_name=name,
        socket_timeout=5,
        retry=Retry(NoBackoff(), retries),
    )
    return RedisHandle(REDIS_URL, client, trio.CapacityLimiter(4))


def _blocked(redis_client: redis.Redis, name: str) -> bool:
    """One of our named connections waits in a blocking command (CLIENT LIST flag b)."""
    return any(info.get("name") == name and "b" in info.get("flags", "")
               for info in redis_client.client_list())


def _kill_clients(redis_client: redis.Redis, name: str) -> int:
    """CLIENT KILL our own connections only (other test suites share this Redis)."""
    killed = 0
    for info in redis_client.client_list():
        if info.get("name") == name:
            killed += redis_client.client_kill_filter(_id=info["id"])
    return killed


async def test_connection_killed_raises_then_recovers(
    redis_client: redis.Redis, prefix: str
) -> None:
    source = f"{prefix}:q"
    name = unique_prefix("syncd-test")
    handle = _named_handle(name, retries=0)
    try:
        q = ReliableQueue(handle, source, "c1")
        produce(redis_client, source, items(5))
        batch = await q.take(5, 0.0, 0.1)
        assert batch is not None
        assert await q.ack(batch)
        # Killed while blocked in BLMOVE (the source is empty): Redis is "away".
        # (An idle connection killed between two slices would only be
        # reconnected by the pool: wait until it is really blocked.)
        async with trio.open_nursery() as nursery:

            async def kill() -> None:
                await wait_for(lambda: _blocked(redis_client, name))
                assert await trio.to_thread.run_sync(_kill_clients, redis_client, name) >= 1

            nursery.start_soon(kill)
            with pytest.raises(RedisUnavailable):
                await q.take(5, 0.0, 60.0)
        # Back: nothing lost, the next take works on a fresh connection.
        produce(redis_client, source, items(10)[5:])
        ledger = Ledger()
        await drain(q, ledger)
        ledger.assert_exactly_once(items(10)[5:])
    finally:
        handle.close()


@attrs.define
class FaultyProxy:
    """A TCP proxy to Redis that can swallow replies or refuse connections.

    ``drop_replies(n)`` / ``drop_rate``: the next n server replies, or that
    fraction of them, are dropped and their connections cut, so the command
    ran but the client never hears it; the client retries, and the command
    runs again (the replay hazard). ``down``:
    cut every connection and refuse new ones (an outage).
    """

    target: tuple[str, int] = ("127.0.0.1", 6379)
    down: bool = False
    drop_rate: float = 0.0
    dropped: int = 0
    _rng: random.Random = attrs.Factory(lambda: random.Random(11))
    _to_drop: int = 0
    _lock: threading.Lock = attrs.Factory(threading.Lock)
    _listener: socket.socket = attrs.field(init=False)
    _socks: set[socket.socket] = attrs.Factory(set)
    _threads: list[threading.Thread] = attrs.Factory(list)

    def __attrs_post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._spawn(self._accept)

    @property
    def url(self) -> str:
        db = REDIS_URL.rsplit("/", 1)[-1] if REDIS_URL.count("/") > 2 else "0"
        return f"redis://127.0.0.1:{self._listener.getsockname()[1]}/{db}"

    def drop_replies(self, n: int = 1) -> None:
        """Drop the next ``n`` replies (not cumulative: re-arming does not pile up)."""
        with self._lock:
            self._to_drop = max(self._to_drop, n)

    def set_down(self, down: bool) -> None:
        self.down = down
        if down:
            self._close_all()

    def close(self) -> None:
        _shut(self._listener)  # shutdown() is what wakes a blocked accept()
        self._close_all()
        for thread in self._threads:
            thread.join(timeout=2)

    def _spawn(self, fn: object, *args: object) -> None:
        thread = threading.Thread(target=fn, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _close_all(self) -> None:
        with self._lock:
            socks, self._socks = list(self._socks), set()
        for sock in socks:
            _shut(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks |= {client, server}
            self._spawn(self._pump, client, server, False)
            self._spawn(self._pump, server, client, True)

    def _pump(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        try:
            while data := src.recv(65536):
                if replies and self._take_drop():
                    break
                dst.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._socks -= {src, dst}
        _shut(src)
        _shut(dst)

    def _take_drop(self) -> bool:
        with self._lock:
            if self._to_drop > 0 or self._rng.random() < self.drop_rate:
                self._to_drop = max(0, self._to_drop - 1)
                self.dropped += 1
                return True
        return False


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def proxy() -> Iterator[FaultyProxy]:
    p = FaultyProxy()
    yield p
    p.close()


@pytest.mark.slow
@pytest.mark.parametrize("retries", [0, 3], ids=["caller-retries", "redis-py-retries"])
async def test_lost_replies_are_replayed_safely(
    proxy: FaultyProxy, redis_client: redis.Redis, prefix: str, retries: int
) -> None:
    """Replies cut at random while producers and two consumers run: still exactly once.

    A command whose reply was lost may have run. With redis-py retries on, it
    runs again at once (every script may run twice); with them off the caller
    gets RedisUnavailable and retries the whole take/ack. The fill, recover
    and ack scripts must come out right either way.
    """
    source = f"{prefix}:q"
    client = redis.Redis.from_url(
        proxy.url, socket_timeout=5, max_connections=8, retry=Retry(NoBackoff(), retries)
    )
    handle = RedisHandle(proxy.url, client, trio.CapacityLimiter(8))
    produced = items(15000)
    ledger = Ledger()
    unavailable = 0

    async def consume(name: str) -> None:
        nonlocal unavailable
        q = ReliableQueue(handle, source, name, block_slice=0.05)
        while len(ledger.items) < len(produced):
            try:
                max_items = rng.choice([1, 10, 100])
                batch = await q.take(max_items, 0.005, 0.05)
                if batch is not None:
                    # A replayed BLMOVE may add an item beyond max_items; the
                    # fill script itself never overfills, even when replayed.
                    assert len(batch) <= max_items + 3 or batch.recovered
                    ledger.apply(batch)
                    await q.ack(batch)  # False after a replay: fine
            except RedisUnavailable:
                unavailable += 1
                await trio.sleep(0.01)

    rng = random.Random(3)
    proxy.drop_rate = 0.03
    try:
        with trio.fail_after(120):  # a deadlock guard, not a speed test
            async with trio.open_nursery() as nursery:
                for start in range(0, len(produced), 500):
                    nursery.start_soon(
                        trio.to_thread.run_sync,
                        produce,
                        redis_client,
                        source,
                        produced[start : start + 500],
                    )
                nursery.start_soon(consume, "c1")
                nursery.start_soon(consume, "c2")
    finally:
        proxy.drop_rate = 0.0
        handle.close()
    assert proxy.dropped >= 20
    if retries == 0:
        assert unavailable > 0
    ledger.assert_exactly_once(produced)
    assert redis_client.llen(source) == 0


async def test_outage_then_recovery_loses_nothing(
    proxy: FaultyProxy, redis_client: redis.Redis, prefix: str
) -> None:
    source = f"{prefix}:q"
    client = redis.Redis.from_url(proxy.url, socket_timeout=2, retry=Retry(NoBackoff(), 1))
    handle = RedisHandle(proxy.url, client, trio.CapacityLimiter(4))
    produced = items(300)
    produce(redis_client, source, produced)
    ledger = Ledger()
    try:
        q = ReliableQueue(handle, source, "c1")
        batch = await q.take(100, 0.0, 0.1)
        assert batch is not None
        ledger.apply(batch)
        proxy.set_down(True)
        with pytest.raises(RedisUnavailable):
            await q.ack(batch)
        with pytest.raises(RedisUnavailable):
            await q.take(100, 0.0, 0.1)
        proxy.set_down(False)
        # The un-acked batch comes back (applied already: the ledger skips it).
        again = await q.take(100, 0.0, 0.1)
        assert again is not None and again.id == batch.id and again.recovered
        assert not ledger.apply(again)
        assert await q.ack(again)
        await drain(q, ledger)
    finally:
        handle.close()
    ledger.assert_exactly_once(produced)
    assert_drained(redis_client, source)


# -- fan-out: ack that forwards ------------------------------------------------------


async def test_ack_forwards_to_every_list_once_and_in_order(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    """Forwarded items land in each list oldest-first, readable by a queue of its own;
    a replayed or stale ack forwards nothing again."""
    source = f"{prefix}:q"
    lanes = [f"{{{source}}}:writer:a", f"{{{source}}}:writer:b"]
    produce(redis_client, source, items(25))
    q = ReliableQueue(redis_handle, source, "c1")
    first = await q.take(10, 0.0, 0.1)
    assert first is not None
    assert await q.ack(first, forward_to=lanes)
    assert not await q.ack(first, forward_to=lanes)  # replayed: nothing twice
    second = await q.take(100, 0.0, 0.1)
    assert second is not None
    upper = [item.upper() for item in second.items]
    dead = [DeadLetter(f"{prefix}:dead", second.items[0], "first is bad", "test")]
    assert await q.ack(second, dead, forward_to=lanes, forward=upper[1:])
    assert [DeadLetter.decode(f"{prefix}:dead", raw).payload_bytes
            for raw in redis_client.lrange(f"{prefix}:dead", 0, -1)] == [second.items[0]]
    expected = first.items + upper[1:]
    for lane in lanes:
        consumer = ReliableQueue(redis_handle, lane, "w1")
        seen: list[bytes] = []
        while (batch := await consumer.take(7, 0.0, 0.05)) is not None:
            seen += batch.items
            assert await consumer.ack(batch)
        assert seen == expected
    assert await q.length() == 0 and await q.processing_length() == 0


async def test_ack_forwards_big_batches_and_nothing_on_a_wrong_id(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    """More items than one Lua unpack() takes; a stale id forwards nothing."""
    source = f"{prefix}:q"
    lane = f"{{{source}}}:writer:a"
    produce(redis_client, source, items(2500))
    q = ReliableQueue(redis_handle, source, "c1")
    batch = await q.take(2500, 0.0, 0.1)
    assert batch is not None and len(batch) == 2500
    assert not await q.ack(attrs.evolve(batch, id="stale"), forward_to=[lane])
    assert redis_client.llen(lane) == 0
    assert await q.ack(batch, forward_to=[lane, lane])  # named twice: forwarded once
    assert redis_client.lrange(lane, 0, -1)[::-1] == batch.items
    with pytest.raises(ValueError, match="forward_to"):
        await q.ack(batch, forward=[b"x"])
