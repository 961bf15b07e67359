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

from syncd.deadletter import DeadLetter
from syncd.queue import ReliableQueue
from syncd.redis import RedisHandle, scan_masters
from syncd.testing import redis_client_for

from . import test_queue

REUSED = [
    "test_fifo_order_across_batches",
    "test_cancelled_take_loses_nothing",
    "test_stale_or_wrong_ack_does_nothing",
    "test_heartbeat_registry_and_clean_close",
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
