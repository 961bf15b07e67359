"""Leases and fencing tokens, store by store (issue 16).

The stores are exercised directly, on every real database and on Redis:
who gets the lease, that every acquisition bumps the token, and that a
transaction carrying a stale token can never commit, even one that was
already under way when the lease changed hands.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio
from sql_support import unique

from syncd.errors import Fenced
from syncd.lease import Fence, Lease, LeaseStore, RedisLeaseStore, SQLLeaseStore
from syncd.redis import RedisHandle
from syncd.sql import Database, open_database
from syncd.testing import MYSQL_URL, PG_URL, REDIS_URL, wait_for

#: The one-row table ``(id, n)`` each database test writes to.
DATA = unique("lease_data")


@pytest.fixture(name="db", params=["postgresql", "mysql", "sqlite"])
async def _db(request: pytest.FixtureRequest, sqlite_url: str) -> AsyncIterator[Database]:
    """A database whose ledger, lease table and data table (`DATA`) are the test's own."""
    url = {"postgresql": PG_URL, "mysql": MYSQL_URL, "sqlite": sqlite_url}[request.param]
    db = open_database("test", url, ledger_table=unique("ledger"), lease_table=unique("leases"))
    await db.connect()
    await db.execute(f"DROP TABLE IF EXISTS {DATA}")
    await db.execute(f"CREATE TABLE {DATA} (id INT PRIMARY KEY, n INT NOT NULL)")
    await db.execute(f"INSERT INTO {DATA} VALUES (1, 0)")
    try:
        yield db
    finally:
        for table in (db.ledger_table, db.lease_table, DATA):
            await db.execute(f"DROP TABLE IF EXISTS {table}")
        await db.aclose()


@pytest.fixture(name="redis_store")
def _redis_store(prefix: str) -> Iterator[RedisLeaseStore]:
    handle = RedisHandle.from_url(REDIS_URL, pool_size=4)
    yield RedisLeaseStore(handle)
    handle.close()


@pytest.fixture(name="store", params=["sql", "redis"])
def _store(request: pytest.FixtureRequest, prefix: str) -> LeaseStore:
    """A store of each kind; the SQL one on PostgreSQL (every dialect: `TestSQL`)."""
    return request.getfixturevalue("redis_store" if request.param == "redis" else "pg_store")


@pytest.fixture(name="pg_store")
async def _pg_store() -> AsyncIterator[SQLLeaseStore]:
    db = open_database("test", PG_URL, ledger_table=unique("ledger"),
                       lease_table=unique("leases"))
    await db.connect()
    try:
        yield SQLLeaseStore(db)
    finally:
        await db.execute(f"DROP TABLE IF EXISTS {db.lease_table}")
        await db.execute(f"DROP TABLE IF EXISTS {db.ledger_table}")
        await db.aclose()


def lease(store: LeaseStore, name: str, holder: str, ttl: float = 30.0) -> Lease:
    return Lease(store, name, "probe", holder, ttl)


async def value(db: Database) -> int:
    rows = await db.fetchall(f"SELECT n FROM {DATA} WHERE id = 1")
    return int(rows[0][0])


def add(db: Database, n: int) -> Any:
    return lambda tx: tx.execute(f"UPDATE {DATA} SET n = n + %s WHERE id = 1", (n,))


class TestTurns:
    """One holder at a time; every acquisition a greater token; the clock of the store decides."""

    async def test_first_comer_holds_it(self, store: LeaseStore, prefix: str) -> None:
        a, b = lease(store, prefix, "a"), lease(store, prefix, "b")
        assert await a.acquire()
        assert a.token == 1
        assert not await b.acquire()
        assert b.seen is not None
        assert (b.seen.holder, b.seen.token) == ("a", 1)
        assert b.seen.expires_in is not None and 25 < b.seen.expires_in <= 30
        assert await a.renew()
        assert a.status()["holder"] == "a"

    async def test_release_hands_it_over_with_a_new_token(
        self, store: LeaseStore, prefix: str,
    ) -> None:
        a, b = lease(store, prefix, "a"), lease(store, prefix, "b")
        assert await a.acquire()
        await a.release()
        assert not a.held
        assert await b.acquire()
        assert b.token == 2
        assert b.seen is not None and b.seen.previous == "a"
        # "a" has no token any more; its old one is refused.
        assert await store.renew(prefix, 1, 30.0) == (False, False)

    async def test_expiry_lets_another_take_over(self, store: LeaseStore, prefix: str) -> None:
        a, b = lease(store, prefix, "a", ttl=0.2), lease(store, prefix, "b", ttl=0.2)
        assert await a.acquire()
        await wait_for(b.acquire, timeout=10)
        assert b.token == 2
        # The old holder finds out at its next renewal, and holds nothing;
        # nor does its status claim it does before it has asked again.
        assert not await a.renew()
        assert not a.held
        assert a.status()["holder"] is None
        assert not await a.acquire()
        assert a.status()["holder"] == "b"

    async def test_expired_but_not_taken_is_still_renewable(
        self, store: LeaseStore, prefix: str,
    ) -> None:
        a = lease(store, prefix, "a", ttl=0.05)
        assert await a.acquire()
        await trio.sleep(0.2)
        # The token says who may commit, not the clock: nobody took it.
        assert await a.renew()
        assert a.token == 1

    async def test_same_holder_again_gets_a_new_token(
        self, store: LeaseStore, prefix: str,
    ) -> None:
        """A replica restarted under the same instance fences its earlier life."""
        first, again = lease(store, prefix, "a"), lease(store, prefix, "a")
        assert await first.acquire()
        assert await again.acquire()
        assert (first.token, again.token) == (1, 2)
        assert not await first.renew()

    async def test_the_holder_learns_that_a_replica_waits(
        self, store: LeaseStore, prefix: str,
    ) -> None:
        a, b = lease(store, prefix, "a", ttl=1.0), lease(store, prefix, "b", ttl=1.0)
        assert await a.acquire()
        assert await a.renew()
        assert not a.contested
        assert not await b.acquire()  # asks in vain
        assert await a.renew()
        assert a.contested
        # Nobody asked for a whole ttl: nobody waits any more.
        await wait_for(lambda: _renewed_uncontested(a), timeout=10)

    async def test_racing_replicas_one_wins(self, store: LeaseStore, prefix: str) -> None:
        leases = [lease(store, prefix, f"r{i}") for i in range(6)]
        won: list[Lease] = []

        async def race(one: Lease) -> None:
            if await one.acquire():
                won.append(one)

        async with trio.open_nursery() as nursery:
            for one in leases:
                nursery.start_soon(race, one)
        assert len(won) == 1
        assert won[0].token == 1

    async def test_standby_asks_again_just_after_expiry(
        self, store: LeaseStore, prefix: str,
    ) -> None:
        a, b = lease(store, prefix, "a", ttl=30.0), lease(store, prefix, "b", ttl=30.0)
        assert await a.acquire()
        assert not await b.acquire()
        # Never later than a third of the ttl (a release may come early).
        assert b.standby_delay() == pytest.approx(10.0)
        short = lease(store, prefix, "c", ttl=300.0)
        assert not await short.acquire()
        assert short.standby_delay() == pytest.approx(30.0, abs=1.0)  # a's lease ends first


class TestSQL:
    """On every dialect: the lease table, and the fence checked in the batch's transaction."""

    async def test_table_created_catalog_first(self, db: Database) -> None:
        store = SQLLeaseStore(db)
        one, two = lease(store, "n", "a"), lease(store, "n", "b")
        assert await one.acquire()
        assert not await two.acquire()
        rows = await db.fetchall(
            f"SELECT name, plugin, holder, token, commits FROM {db.lease_table}")
        assert rows == [("n", "probe", "a", 1, 0)]

    async def test_current_token_commits(self, db: Database) -> None:
        holder = lease(SQLLeaseStore(db), "n", "a")
        assert await holder.acquire()
        fence = Fence("n", holder.token)
        assert await db.apply_batch("p", "b1", add(db, 5), fence=fence) == (True, 1)
        await db.transaction(add(db, 1), fence=fence)
        assert await value(db) == 6
        rows = await db.fetchall(f"SELECT commits FROM {db.lease_table} WHERE name = 'n'")
        assert rows == [(2,)]

    async def test_stale_token_never_commits(self, db: Database) -> None:
        store = SQLLeaseStore(db)
        a, b = lease(store, "n", "a"), lease(store, "n", "b")
        assert await a.acquire()
        stale = Fence("n", a.token)
        assert await db.apply_batch("p", "done", add(db, 1), fence=stale) == (True, 1)
        await a.release()
        assert await b.acquire()
        refused: list[Fenced] = []
        stale.on_refused = refused.append
        with pytest.raises(Fenced, match="b holds it with token 2"):
            await db.apply_batch("p", "late", add(db, 100), fence=stale)
        # A batch the new holder already applied is not "already applied" to
        # the stale replica either: it learns of its loss at once.
        with pytest.raises(Fenced):
            await db.apply_batch("p", "done", add(db, 100), fence=stale)
        with pytest.raises(Fenced):
            await db.transaction(add(db, 100), fence=stale)
        assert len(refused) == 3
        assert await value(db) == 1
        assert await db.ledger_entry("p", "late") is None
        assert await db.apply_batch("p", "late", add(db, 2), fence=Fence("n", b.token)) == (
            True, 1)
        assert await value(db) == 3

    async def test_no_token_no_commit(self, db: Database) -> None:
        with pytest.raises(Fenced, match="not held"):
            await db.apply_batch("p", "b", add(db, 1), fence=Fence("n"))
        assert await value(db) == 0

    async def test_takeover_while_a_batch_is_under_way(self, db: Database) -> None:
        """The holder's batch runs while another replica takes the lease over: it rolls back."""
        if db.dialect == "sqlite":
            pytest.skip("one connection, one writer: nothing can interleave with a batch")
        store = SQLLeaseStore(db)
        a, b = lease(store, "n", "a", ttl=0.2), lease(store, "n", "b", ttl=0.2)
        assert await a.acquire()
        inside, go_on = threading.Event(), threading.Event()

        def slow(tx: Any) -> int:
            n = tx.execute(f"UPDATE {DATA} SET n = n + 100 WHERE id = 1")
            inside.set()
            assert go_on.wait(30)
            return n

        outcome: list[BaseException | tuple[bool, Any]] = []

        async def holder() -> None:
            try:
                outcome.append(await db.apply_batch("p", "slow", slow, fence=Fence("n", a.token)))
            except Fenced as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder)
            await trio.to_thread.run_sync(inside.wait)
            # Frozen mid-batch past its lease: another replica takes over.
            await wait_for(b.acquire, timeout=10)
            go_on.set()
        assert isinstance(outcome[0], Fenced), outcome
        assert await value(db) == 0
        assert await db.ledger_entry("p", "slow") is None


class TestRedisKeys:
    """The Redis lease is one hash in one Cluster slot; its token survives any holder."""

    async def test_key(self, redis_store: RedisLeaseStore, prefix: str, redis_client: Any) -> None:
        assert RedisLeaseStore.key(prefix) == "{syncd:lease}:" + prefix
        one = lease(redis_store, prefix, "a", ttl=0.05)
        assert await one.acquire()
        fields = redis_client.hgetall(RedisLeaseStore.key(prefix))
        assert fields[b"holder"] == b"a" and fields[b"token"] == b"1"
        assert redis_client.ttl(RedisLeaseStore.key(prefix)) == -1
        redis_client.delete(RedisLeaseStore.key(prefix))


async def _renewed_uncontested(one: Lease) -> bool:
    assert await one.renew()
    return not one.contested
