"""ReliableQueue on a real Redis Cluster: the single-node tests, run there too.

Each test of test_queue.py listed here runs unchanged against the session's
cluster: its handle and its "application" client are cluster clients, so
every script must find its keys in one slot, and reclaim must find the
registry and the processing lists wherever their slot lives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import trio

from syncd.deadletter import DeadLetter
from syncd.errors import RedisUnavailable
from syncd.keys import key_slot
from syncd.queue import ReliableQueue
from syncd.redis import RedisHandle, scan_masters
from syncd.restore import GONE, REQUEUED, Restore, requeue_entries
from syncd.testing import LocalCluster, redis_client_for, wait_for, wait_for_sync

from . import test_deadletter, test_queue

REUSED = [
    "test_fifo_order_across_batches",
    "test_cancelled_take_loses_nothing",
    "test_stale_or_wrong_ack_does_nothing",
    "test_claim_empty_orphan_deregisters_it",
    "test_reclaim_while_the_dead_consumer_restarts",
    "test_reclaimed_batch_acked_by_claimer_deregisters_orphan",
    "test_claim_seals_a_stalled_consumers_batch",
    "test_batch_finished_by_a_reclaimer_takes_no_new_items",
    "test_chaos_crashes_restarts_and_reclaims",
]


@pytest.fixture(name="handle")
async def _handle(redis_cluster_url: str) -> AsyncIterator[RedisHandle]:
    handle = RedisHandle.from_url(redis_cluster_url, pool_size=8)
    yield handle
    handle.close()


@pytest.fixture(name="client")
def _client(redis_cluster_url: str, prefix: str) -> Iterator[Any]:
    client = redis_client_for(redis_cluster_url)
    yield client
    client.close()


@pytest.mark.parametrize("name", REUSED)
async def test_single_node_test_on_the_cluster(
        name: str, handle: RedisHandle, client: Any, prefix: str) -> None:
    test: Callable[..., Any] = getattr(test_queue, name)
    await test(handle, client, prefix)


async def test_dead_letters_in_and_outside_the_slot(
        handle: RedisHandle, client: Any, prefix: str) -> None:
    """A dead-letter list sharing the source's slot goes in the ack; one
    elsewhere is pushed before it, once, however often the ack is replayed."""
    source = f"{prefix}:votes"
    client.lpush(source, b"a", b"b")
    q = ReliableQueue(handle, source, "c1")
    batch = await q.take(10, 0.0, 0.05)
    assert batch is not None
    here, there = f"{{{source}}}:dead", f"{prefix}:dead"
    assert client.keyslot(here) == client.keyslot(source) != client.keyslot(there)
    letters = [DeadLetter(here, "a", "bad", "votes"), DeadLetter(there, "b", "bad", "votes")]
    assert await q.ack(batch, letters)
    assert not await q.ack(batch, letters)  # a replay: nothing pushed again
    assert client.lrange(here, 0, -1) == [letters[0].encode()]
    assert client.lrange(there, 0, -1) == [letters[1].encode()]
    names = {key.decode() for key in scan_masters(client, match=f"*{prefix}*")}
    assert f"{{{source}}}:consumers" in names  # the registry lives in the source's slot


async def test_requeue_on_the_cluster_within_the_slot_and_refused_across(
        handle: RedisHandle, client: Any, prefix: str) -> None:
    """Dead letters go back when their source shares the list's slot (many to
    a script, sent as EVAL in a cluster pipeline); an item whose source is in
    another slot is refused with the reason and stays."""
    dead, q, elsewhere = f"{{{prefix}}}:dead", f"{{{prefix}}}:q", f"{prefix}:q"
    raws = [f"e{i}".encode() for i in range(30)] + [b"far"]
    client.rpush(dead, *raws)
    items = [(raw, [Restore.rpush(q, raw)]) for raw in raws[:-1]]
    items.append((b"far", [Restore.rpush(elsewhere, b"far")]))
    outcomes = await requeue_entries(handle, "p", dead, items, round_trip_items=10)
    assert outcomes[:-1] == [REQUEUED] * 30
    assert outcomes[-1].startswith(f"on Redis Cluster, {dead} and {elsewhere} must share")
    assert client.lrange(q, 0, -1) == raws[:-1]
    assert client.lrange(dead, 0, -1) == [b"far"] and not client.exists(elsewhere)
    assert await requeue_entries(handle, "p", dead, items[:3]) == [GONE] * 3  # replayed


async def test_dead_letters_pushed_to_lists_in_several_slots(
        handle: RedisHandle, client: Any, prefix: str) -> None:
    await test_deadletter.test_push_count_read_round_trip_large_and_binary(handle, client, prefix)


async def test_a_take_is_handed_out_only_once_a_replica_has_it(
        redis_cluster: LocalCluster, handle: RedisHandle, client: Any, prefix: str) -> None:
    """An unplanned failover promotes a replica; a take it never got would
    put the items back in the source after syncd applied them, and they
    would be taken again under a new batch id: counted twice. With the
    source's replica frozen, the take is refused (Redis unavailable) and
    stays in the processing list; once the replica is back, the same batch
    is handed out, and the replica holds it."""
    if not redis_cluster.running:
        pytest.skip("needs the cluster this session started (to freeze a node)")
    source = f"{prefix}:votes"
    client.lpush(source, b"a", b"b", b"c")
    q = ReliableQueue(handle, source, "c1")
    replica = redis_cluster.replica_of(redis_cluster.owner(key_slot(source)))
    await handle.ping()  # a running daemon's client knows the slot map already
    try:
        with redis_cluster.frozen(replica), pytest.raises(RedisUnavailable, match="no replica"):
            await q.take(10, 0.0, 0.05)
        assert client.llen(source) == 0  # taken, not handed out
        batch = await wait_for(lambda: q.take(10, 0.0, 0.05), ignore=(RedisUnavailable,))
        assert batch.recovered and batch.items == [b"a", b"b", b"c"]  # oldest first
        with redis_cluster.node(replica) as node:
            node.execute_command("READONLY")
            assert node.lrange(q.processing_key, 0, -1)[::-1] == batch.items
    finally:
        await trio.to_thread.run_sync(lambda: wait_for_sync(redis_cluster.healthy))
