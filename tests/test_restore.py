"""Requeue's building block: each item back at its source or still a dead letter, never both."""

from __future__ import annotations

import pytest
import redis

from syncd.deadletter import DeadLetter
from syncd.redis import RedisHandle
from syncd.restore import (
    GONE,
    REQUEUED,
    NotRequeueable,
    Restore,
    normalize,
    plan,
    remove_all,
    remove_entries,
    requeue_entries,
)


def _push(client: redis.Redis, key: str, *letters: DeadLetter) -> list[bytes]:
    raws = [letter.encode() for letter in letters]
    client.rpush(key, *raws)
    return raws


class TestVocabulary:
    """Operations are checked when built, so the script never sees a bad one."""

    def test_constructors_build_what_redis_takes(self) -> None:
        assert Restore.rpush("q", b"x") == Restore("rpush", "q", (b"x",))
        assert Restore.hincrby("h", "upload", 5).args == ("upload", 5)
        assert Restore.zadd("z", 1.5, "m").describe() == "ZADD z 1.5 m"
        assert Restore.hincrby(b"node:\xff", "up", 1).describe() == "HINCRBY node:\\xff up 1"

    @pytest.mark.parametrize("build", [
        lambda: Restore("del", "k", ()),
        lambda: Restore("rpush", "k", ()),
        lambda: Restore.rpush("", "x"),
        lambda: Restore.incrby("k", 2**63),
        lambda: Restore.incrby("k", 1.5),  # type: ignore[arg-type]
        lambda: Restore.hincrby("k", "f", True),  # type: ignore[arg-type]
        lambda: Restore.zadd("k", float("nan"), "m"),
    ], ids=["unknown-op", "arity", "empty-key", "overflow", "float-incr", "bool-incr", "nan"])
    def test_bad_operations_are_refused_at_once(self, build: object) -> None:
        with pytest.raises(ValueError):
            build()  # type: ignore[operator]

    def test_normalize_sums_increments_of_one_counter(self) -> None:
        ops = normalize([Restore.hincrby("h", "up", 2), Restore.hincrby("h", "down", 1),
                         Restore.hincrby("h", "up", 3)], "dead")
        assert ops == [Restore.hincrby("h", "up", 5), Restore.hincrby("h", "down", 1)]

    @pytest.mark.parametrize(("ops", "why"), [
        ([], "no operation"),
        ([Restore.rpush("dead", "x")], "own dead-letter list"),
        ([Restore.rpush("k", "x"), Restore.incrby("k", 1)], "two types"),
        ([Restore.incrby("k", 2**62), Restore.incrby("k", 2**62)], "overflow"),
    ], ids=["empty", "into-dead-list", "two-types", "sum-overflows"])
    def test_normalize_refuses_what_cannot_be_done_safely(self, ops: list[Restore],
                                                          why: str) -> None:
        with pytest.raises(NotRequeueable, match=why):
            normalize(ops, "dead")

    def test_plan_packs_items_only_while_they_share_the_lists_slot(self) -> None:
        same = [(b"a", [Restore.rpush("{q}", "a")]), (b"b", [Restore.rpush("{q}:x", "b")])]
        other = [(b"c", [Restore.rpush("elsewhere", "c")])]
        scripts = plan("{q}:dead", same + other + same)
        assert [s.items for s in scripts] == [2, 1, 2]
        # Keys are passed once each, the dead-letter list first.
        assert scripts[0].keys == [b"{q}:dead", b"{q}", b"{q}:x"]


class TestRequeue:
    """Against real Redis: the entry leaves the list in the same script that writes."""

    async def test_every_operation_puts_its_item_back(
        self, redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str,
    ) -> None:
        dead, q, h, c, z = (f"{prefix}:{n}" for n in ("dead", "q", "h", "c", "z"))
        redis_client.rpush(q, b"waiting")
        redis_client.hset(h, "up", 10)
        letters = [DeadLetter(dead, f"item{i}", "r", "p") for i in range(6)]
        raws = _push(redis_client, dead, *letters)
        items = [
            (raws[0], [Restore.rpush(q, b"r0")]),
            (raws[1], [Restore.lpush(q, b"l1")]),
            (raws[2], [Restore.hincrby(h, "up", 5), Restore.hincrby(h, "down", 7)]),
            (raws[3], [Restore.incrby(c, 3)]),
            (raws[4], [Restore.hset(h, "note", "x")]),
            (raws[5], [Restore.zadd(z, 2.5, "job")]),
        ]
        outcomes = await requeue_entries(redis_handle, "p", dead, items)
        assert outcomes == [REQUEUED] * 6
        assert redis_client.llen(dead) == 0
        # rpush lands at the right, where syncd's consumers take next.
        assert redis_client.lrange(q, 0, -1) == [b"l1", b"waiting", b"r0"]
        assert redis_client.hgetall(h) == {b"up": b"15", b"down": b"7", b"note": b"x"}
        assert redis_client.get(c) == b"3"
        assert redis_client.zrange(z, 0, -1, withscores=True) == [(b"job", 2.5)]

    async def test_a_replayed_requeue_finds_its_items_gone(
        self, redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str,
    ) -> None:
        dead, q = f"{prefix}:dead", f"{prefix}:q"
        raws = _push(redis_client, dead, DeadLetter(dead, "a", "r", "p"),
                     DeadLetter(dead, "b", "r", "p"))
        items = [(raw, [Restore.rpush(q, raw)]) for raw in raws]
        assert await requeue_entries(redis_handle, "p", dead, items) == [REQUEUED, REQUEUED]
        assert await requeue_entries(redis_handle, "p", dead, items) == [GONE, GONE]
        assert redis_client.lrange(q, 0, -1) == raws

    async def test_a_refused_item_writes_nothing_and_stays(
        self, redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str,
    ) -> None:
        dead, h, s, n = f"{prefix}:dead", f"{prefix}:h", f"{prefix}:s", f"{prefix}:n"
        redis_client.set(s, "a string")
        redis_client.set(n, "12abc")
        redis_client.hset(h, "big", 2**62 + 2**61)
        letters = [DeadLetter(dead, f"x{i}", "r", "p") for i in range(4)]
        raws = _push(redis_client, dead, *letters)
        items = [
            # The first operation would succeed; the second cannot: neither runs.
            (raws[0], [Restore.hincrby(h, "ok", 1), Restore.rpush(s, b"x")]),
            (raws[1], [Restore.incrby(n, 1)]),
            (raws[2], [Restore.hincrby(h, "big", 2**62)]),
            (raws[3], [Restore.hincrby(h, "ok", 2)]),
        ]
        outcomes = await requeue_entries(redis_handle, "p", dead, items)
        assert outcomes[0] == f"{s} is a string, not a list"
        assert outcomes[1] == f"{n} does not hold an integer"
        assert "overflow" in outcomes[2]
        assert outcomes[3] == REQUEUED
        assert redis_client.lrange(dead, 0, -1) == raws[:3]
        assert redis_client.hget(h, "ok") == b"2"
        assert redis_client.get(s) == b"a string"

    async def test_entries_in_the_middle_leave_one_occurrence_at_a_time(
        self, redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str,
    ) -> None:
        dead, q = f"{prefix}:dead", f"{prefix}:q"
        redis_client.rpush(dead, b"head", b"twin", b"mid", b"twin", b"tail")
        items = [(b"mid", [Restore.rpush(q, b"mid")]), (b"twin", [Restore.rpush(q, b"twin")])]
        assert await requeue_entries(redis_handle, "p", dead, items) == [REQUEUED, REQUEUED]
        assert redis_client.lrange(dead, 0, -1) == [b"head", b"twin", b"tail"]

    async def test_round_trips_report_progress(
        self, redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str,
    ) -> None:
        dead = f"{prefix}:dead"
        raws = [f"e{i}".encode() for i in range(25)]
        redis_client.rpush(dead, *raws)
        # Each item in its own slot: one script each, ten per round trip.
        items = [(raw, [Restore.incrby(f"{prefix}:c{i}", 1)]) for i, raw in enumerate(raws)]
        seen: list[int] = []
        outcomes = await requeue_entries(redis_handle, "p", dead, items, round_trip_items=10,
                                         progress=seen.append)
        assert outcomes == [REQUEUED] * 25
        assert seen == [10, 20, 25]


class TestRemove:
    """Purging removes exactly what was asked, once."""

    async def test_remove_given_entries_and_all(
        self, redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str,
    ) -> None:
        dead = f"{prefix}:dead"
        redis_client.rpush(dead, b"a", b"b", b"c", b"b")
        assert await remove_entries(redis_handle, dead, [b"b", b"zz", b"a"]) == 2
        assert redis_client.lrange(dead, 0, -1) == [b"c", b"b"]
        assert await remove_entries(redis_handle, dead, []) == 0
        assert await remove_all(redis_handle, dead) == 2
        assert redis_client.exists(dead) == 0
