"""Lock waits are bounded, and a statement blocked on a lock yields to cancellation.

A replica frozen inside a transaction (SIGSTOP, a GC pause, an admin's open
``psql``) holds its locks. Every session syncd opens waits for a lock at
most ``lock_timeout`` and then fails with a transient error (retried, never
a dead letter); and a caller whose trio scope is cancelled (the shutdown
deadline) gets its statement cancelled on the server, then its thread back.

The lock is always a real one, held by the test's own connection.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio
from sql_support import unique

from syncd.errors import TransientError
from syncd.sql import Database, open_database
from syncd.testing import MYSQL_URL, PG_URL, connector, wait_for

#: The longest a test lets a blocked statement wait before the watchdog
#: releases the lock, so that code without the fix fails instead of hanging.
WATCHDOG = 20.0


@pytest.fixture(name="url", params=["postgresql", "mysql"])
def _url(request: pytest.FixtureRequest) -> str:
    return {"postgresql": PG_URL, "mysql": MYSQL_URL}[request.param]


@pytest.fixture(name="table")
def _table(url: str) -> Iterator[str]:
    """A one-row table ``(id, n)``, dropped afterwards."""
    name = unique("locks")
    with contextlib.closing(connector(url)()) as conn:
        cur = conn.cursor()
        cur.execute(f"CREATE TABLE {name} (id INT PRIMARY KEY, n INT NOT NULL)")
        cur.execute(f"INSERT INTO {name} VALUES (1, 0)")
        conn.commit()
    yield name
    with contextlib.closing(connector(url)()) as conn:
        conn.cursor().execute(f"DROP TABLE IF EXISTS {name}")
        conn.commit()


@contextlib.asynccontextmanager
async def row_locked(url: str, table: str) -> AsyncIterator[Any]:
    """Hold the row's lock in an open transaction, like a frozen replica; a
    watchdog rolls it back after `WATCHDOG` seconds whatever happens."""
    conn = await trio.to_thread.run_sync(connector(url))
    try:
        await trio.to_thread.run_sync(
            lambda: conn.cursor().execute(f"UPDATE {table} SET n = n + 100 WHERE id = 1"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_release_after, conn, WATCHDOG)
            yield conn
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(conn.rollback)
        await trio.to_thread.run_sync(conn.close)


async def _release_after(conn: Any, seconds: float) -> None:
    await trio.sleep(seconds)
    await trio.to_thread.run_sync(conn.rollback)


async def lock_waiters(url: str, table: str) -> int:
    """Sessions waiting for a lock in a statement on ``table``."""
    if url.startswith("postgresql"):
        sql = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
               f"AND query LIKE '%%{table}%%' AND pid <> pg_backend_pid()")
    else:
        sql = ("SELECT COUNT(*) FROM information_schema.INNODB_TRX "
               f"WHERE trx_state = 'LOCK WAIT' AND trx_query LIKE '%%{table}%%'")

    def count() -> int:
        with contextlib.closing(connector(url)()) as conn:
            cur = conn.cursor()
            cur.execute(sql)
            return int(cur.fetchone()[0])

    return await trio.to_thread.run_sync(count)


@contextlib.asynccontextmanager
async def opened(url: str, **options: Any) -> AsyncIterator[Database]:
    db = open_database("locks", url, ledger_table=unique("ledger"), **options)
    await db.connect()
    try:
        yield db
    finally:
        await db.execute(f"DROP TABLE IF EXISTS {db.ledger_table}")
        await db.aclose()


class TestBoundedLockWaits:
    """Every session waits for a lock at most ``lock_timeout``; then retry, not wedge."""

    async def test_sessions_carry_the_timeouts(self, url: str) -> None:
        async with opened(url, lock_timeout=1.5) as db:
            if url.startswith("postgresql"):
                rows = await db.fetchall(
                    "SELECT current_setting('lock_timeout'), "
                    "current_setting('idle_in_transaction_session_timeout')")
                assert rows == [("1500ms", "1min")]
            else:
                rows = await db.fetchall(
                    "SELECT @@SESSION.innodb_lock_wait_timeout, @@SESSION.lock_wait_timeout")
                assert rows == [(2, 2)]  # whole seconds, rounded up
                [(version,)] = await db.fetchall("SELECT VERSION()")
                if "mariadb" in version.lower():
                    idle = await db.fetchall("SELECT @@SESSION.idle_transaction_timeout")
                    assert idle == [(60,)]

    async def test_a_held_row_lock_is_a_transient_error(self, url: str, table: str) -> None:
        async with opened(url, lock_timeout=1.0) as db, row_locked(url, table):
            started = time.monotonic()
            with pytest.raises(TransientError, match="lock"):
                await db.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")
            assert time.monotonic() - started < WATCHDOG / 2
            # The pool is fine: the next statement on another row goes through.
            assert await db.fetchall(f"SELECT n FROM {table}") == [(0,)]


class TestCancellation:
    """A cancelled caller's statement is cancelled on the server, and the
    caller returns once its thread has."""

    async def test_blocked_statement_yields_to_a_deadline(self, url: str, table: str) -> None:
        # A lock timeout far away: only the server-side cancel can end the wait.
        async with opened(url, lock_timeout=600) as db, row_locked(url, table):
            started = time.monotonic()
            async with trio.open_nursery() as nursery:
                scope = trio.CancelScope()

                async def update() -> None:
                    with scope:
                        await db.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")

                nursery.start_soon(update)
                await wait_for(lambda: lock_waiters(url, table), timeout=10, interval=0.1)
                scope.cancel()
            assert scope.cancelled_caught
            assert time.monotonic() - started < WATCHDOG / 2
            assert await lock_waiters(url, table) == 0
        # Nothing of the cancelled statement was applied.
        assert await _values(url, table) == [(0,)]

    async def test_the_database_is_usable_afterwards(self, url: str, table: str) -> None:
        async with opened(url, lock_timeout=600, pool_size=1) as db:
            async with row_locked(url, table):
                with trio.move_on_after(0.5) as scope:
                    await db.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")
                assert scope.cancelled_caught
            # The lock is gone; the one pooled slot serves the next call.
            assert await db.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1") == 1
            assert await db.fetchall(f"SELECT n FROM {table}") == [(1,)]


async def _values(url: str, table: str) -> list[tuple[int]]:
    def read() -> list[tuple[int]]:
        with contextlib.closing(connector(url)()) as conn:
            cur = conn.cursor()
            cur.execute(f"SELECT n FROM {table}")
            return [tuple(r) for r in cur.fetchall()]

    return await trio.to_thread.run_sync(read)


class TestSetupOnce:
    """Start-up DDL: briefly waited for, tried again after a failure, then never again."""

    async def test_ddl_under_a_short_lock_timeout(self, url: str, table: str) -> None:
        index = f"{table}_n"
        calls: list[bool] = []

        def ddl(tx: Any) -> bool:
            calls.append(True)
            if tx.index_exists(table, index):
                return False
            tx.execute(f"CREATE INDEX {index} ON {table} (n)")
            return True

        # The session's own lock timeout is long: DDL still waits at most ~1 s.
        async with opened(url, lock_timeout=600) as db:
            async with row_locked(url, table):
                started = time.monotonic()
                with pytest.raises(TransientError):
                    await db.setup_once("index", ddl)
                assert time.monotonic() - started < WATCHDOG / 2
            assert await db.setup_once("index", ddl) is True  # tried again, done
            assert await db.setup_once("index", ddl) is None  # and never again
            assert len(calls) == 2


class TestFrozenReplica:
    """A syncd session idle inside a transaction is ended by the server, which
    frees its locks for the other replicas; the frozen one gets a transient error."""

    async def test_idle_transaction_is_ended(self, url: str, table: str) -> None:
        locked, woke = threading.Event(), threading.Event()

        def frozen(tx: Any) -> None:
            tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")
            locked.set()
            woke.wait(WATCHDOG)  # a SIGSTOP, a long pause: no statement meanwhile
            tx.execute("SELECT 1")

        async with opened(url, lock_timeout=600, idle_transaction_timeout=1) as db:
            failed: list[BaseException] = []

            async def run_frozen() -> None:
                try:
                    await db.transaction(frozen)
                except TransientError as exc:
                    failed.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_frozen)
                assert await trio.to_thread.run_sync(locked.wait, WATCHDOG)
                # Another replica gets the row, while the frozen one still sleeps:
                # only the server ending its session can have freed the lock.
                await trio.to_thread.run_sync(_update, url, table)
                assert not woke.is_set()
                woke.set()
            assert failed, "the frozen transaction should have failed"
        assert await _values(url, table) == [(1000,)]


def _update(url: str, table: str) -> None:
    """Set the row, waiting for its lock at most WATCHDOG / 2 seconds."""
    wait = int(WATCHDOG / 2)
    with contextlib.closing(connector(url)()) as conn:
        cur = conn.cursor()
        if url.startswith("postgresql"):
            cur.execute(f"SET lock_timeout = '{wait}s'")
        else:
            cur.execute(f"SET SESSION innodb_lock_wait_timeout = {wait}")
        cur.execute(f"UPDATE {table} SET n = 1000 WHERE id = 1")
        conn.commit()
