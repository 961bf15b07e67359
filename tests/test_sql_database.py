"""syncd.sql against the real PostgreSQL, MariaDB and SQLite, one behaviour at a time.

Every test runs on all three dialects (unless the behaviour only exists on
one), with its own uniquely named tables and ledger, dropped afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from sql_support import own_database, unique

from syncd.errors import DatabaseUnavailable
from syncd.sql import Database, Dialect, InsertResult, Transaction, open_database
from syncd.testing import wait_for

DIALECTS = ["postgresql", "mysql", "sqlite"]

#: Portable DDL: VARCHAR limits are enforced by PostgreSQL and MariaDB, the
#: CHECK by SQLite (which ignores VARCHAR lengths).
NAMES = "id BIGINT PRIMARY KEY, name VARCHAR(10) NOT NULL CHECK (length(name) <= 10)"
COUNTERS = "id BIGINT PRIMARY KEY, label VARCHAR(20) NOT NULL DEFAULT 'x', n BIGINT, m BIGINT"

MakeTable = Callable[[str], Awaitable[str]]


@pytest.fixture(name="url", params=DIALECTS)
def _url(request: pytest.FixtureRequest, pg_url: str, mysql_url: str, sqlite_url: str) -> str:
    return {"postgresql": pg_url, "mysql": mysql_url, "sqlite": sqlite_url}[request.param]


@pytest.fixture(name="db")
async def _db(url: str) -> AsyncIterator[Database]:
    """A connected database with a ledger of its own, dropped afterwards."""
    async with own_database(url) as db:
        yield db


@pytest.fixture(name="make_table")
async def _make_table(db: Database) -> AsyncIterator[MakeTable]:
    """``await make_table("id BIGINT PRIMARY KEY, …")`` creates a fresh table."""
    created: list[str] = []

    async def make(columns: str) -> str:
        name = unique("t")
        await db.execute(f"CREATE TABLE {name} ({columns})")
        created.append(name)
        return name

    yield make
    for name in created:
        await db.execute(f"DROP TABLE IF EXISTS {name}")


async def rows_of(db: Database, table: str, columns: str = "id, name") -> list[tuple]:
    return await db.fetchall(f"SELECT {columns} FROM {table} ORDER BY id")


class TestInsertIgnore:
    """Batched inserts that skip existing keys and never swallow data errors."""

    async def test_skips_existing_keys_and_counts_new_rows(
        self, db: Database, make_table: MakeTable
    ) -> None:
        table = await make_table(NAMES)
        first = await db.insert_ignore(table, ["id", "name"], [(1, "a"), (2, "b"), (3, "c")])
        again = await db.insert_ignore(
            table, ["id", "name"], [(2, "B"), (3, "C"), (4, "d"), (4, "dup"), (5, "e")]
        )
        assert first == InsertResult(3, [])
        assert again == InsertResult(2, [])
        assert await rows_of(db, table) == [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")]

    async def test_large_batch_takes_the_fast_path_and_counts(
        self, db: Database, make_table: MakeTable
    ) -> None:
        table = await make_table(NAMES)
        await db.insert_ignore(table, ["id", "name"], [(i, f"old{i}") for i in range(0, 1200, 2)])
        result = await db.insert_ignore(table, ["id", "name"], [(i, f"n{i}") for i in range(1200)])
        assert result == InsertResult(600, [])
        (count,) = (await db.fetchall(f"SELECT count(*) FROM {table}"))[0]
        assert count == 1200

    async def test_isolate_rejects_bad_rows_and_inserts_the_rest(
        self, db: Database, make_table: MakeTable
    ) -> None:
        table = await make_table(NAMES)
        rows = [(1, "ok"), (2, "far too long a value"), (3, None), (4, "fine"), (5, "x" * 11)]
        result = await db.insert_ignore(table, ["id", "name"], rows, isolate=True)
        assert result.inserted == 2
        assert [index for index, _ in result.rejected] == [1, 2, 4]
        assert all(message for _, message in result.rejected)
        assert await rows_of(db, table) == [(1, "ok"), (4, "fine")]

    async def test_isolate_in_a_large_batch(self, db: Database, make_table: MakeTable) -> None:
        table = await make_table(NAMES)
        bad = {7, 500, 501, 998}
        rows = [(i, "y" * 20 if i in bad else f"r{i}") for i in range(1000)]
        result = await db.insert_ignore(table, ["id", "name"], rows, isolate=True)
        assert result.inserted == 1000 - len(bad)
        assert {index for index, _ in result.rejected} == bad

    async def test_without_isolate_a_data_error_propagates(
        self, db: Database, make_table: MakeTable
    ) -> None:
        table = await make_table(NAMES)
        with pytest.raises(db.driver_error) as caught:
            await db.insert_ignore(table, ["id", "name"], [(1, "ok"), (2, None)])
        assert not isinstance(caught.value, DatabaseUnavailable)
        assert await rows_of(db, table) == []  # rolled back as a whole

    @pytest.mark.parametrize("size", [3, 600])
    async def test_nul_byte_is_rejected_only_where_the_database_refuses_it(
        self, db: Database, make_table: MakeTable, size: int
    ) -> None:
        table = await make_table("id BIGINT PRIMARY KEY, body TEXT")
        rows = [(i, "nul\x00inside" if i == 1 else f"row {i}") for i in range(size)]
        result = await db.insert_ignore(table, ["id", "body"], rows, isolate=True)
        stored = await rows_of(db, table, "id, body")
        if db.dialect == Dialect.POSTGRESQL:
            assert [index for index, _ in result.rejected] == [1]
            assert "NUL" in result.rejected[0][1]
            assert stored == [row for row in rows if row[0] != 1]
        else:
            assert result == InsertResult(size, [])
            assert stored == rows

    @pytest.mark.parametrize("size", [3, 600])
    async def test_unencodable_text_is_isolated(
        self, db: Database, make_table: MakeTable, size: int
    ) -> None:
        table = await make_table("id BIGINT PRIMARY KEY, body TEXT")
        rows = [(i, "lone \ud800 surrogate" if i == 2 else f"row {i}") for i in range(size)]
        result = await db.insert_ignore(table, ["id", "body"], rows, isolate=True)
        assert [index for index, _ in result.rejected] == [2]
        assert result.inserted == size - 1

    async def test_injection_looking_values_are_stored_verbatim(
        self, db: Database, make_table: MakeTable
    ) -> None:
        table = await make_table("id BIGINT PRIMARY KEY, body TEXT")
        nasty = [
            "'); DROP TABLE users; --",
            "\\'; DELETE FROM x; -- ",
            '" OR 1=1 --',
            "%s %% %(x)s ?",
            "`backtick` $1 ${x}",
            "emoji 🎉 and ümlaut",
        ]
        await db.insert_ignore(table, ["id", "body"], list(enumerate(nasty)))
        assert await rows_of(db, table, "id, body") == list(enumerate(nasty))

    async def test_identifiers_are_validated(self, db: Database, make_table: MakeTable) -> None:
        table = await make_table(NAMES)
        for bad in ["users; DROP TABLE x", 'a"b', "a`b", "", "1abc", "a.b.c", "t--", "x" * 64]:
            with pytest.raises(ValueError, match="invalid SQL"):
                await db.insert_ignore(bad, ["id"], [(1,)])
            with pytest.raises(ValueError, match="invalid SQL"):
                await db.insert_ignore(table, ["id", bad], [(1, "a")])
            with pytest.raises(ValueError, match="invalid SQL"):
                await db.increment(table, bad, ["n"], [(1, 1)])
        assert await rows_of(db, table) == []


class TestInsert:
    """Plain batched inserts (no conflict clause), for tables kept exact by the ledger."""

    @pytest.mark.parametrize("size", [3, 600])  # below and above COPY_MIN_ROWS
    async def test_inserts_every_row_in_order(
        self, db: Database, make_table: MakeTable, size: int
    ) -> None:
        table = await make_table(NAMES)
        rows = [(i, f"r{i}") for i in range(size)]

        def write(tx: Transaction) -> InsertResult:
            return tx.insert(table, ["id", "name"], rows)

        assert await db.transaction(write) == InsertResult(size, [])
        assert await rows_of(db, table) == rows

    @pytest.mark.parametrize("size", [5, 600])
    async def test_isolate_rejects_bad_rows_and_duplicates(
        self, db: Database, make_table: MakeTable, size: int
    ) -> None:
        """A duplicate key is refused like bad data (never skipped silently)."""
        table = await make_table(NAMES)
        rows = [(i, f"r{i}") for i in range(size)]
        rows[1] = (1, "far too long a value")
        rows[3] = (2, "dup of 2")  # id 2 is row 2
        result = await db.transaction(
            lambda tx: tx.insert(table, ["id", "name"], rows, isolate=True))
        assert result.inserted == size - 2
        assert [index for index, _ in result.rejected] == [1, 3]
        assert all(message for _, message in result.rejected)
        assert await rows_of(db, table) == [r for i, r in enumerate(rows) if i not in (1, 3)]

    async def test_without_isolate_an_error_rolls_back_the_batch(
        self, db: Database, make_table: MakeTable
    ) -> None:
        table = await make_table(NAMES)
        rows = [(i, "y" * 20 if i == 300 else f"r{i}") for i in range(600)]
        with pytest.raises(db.driver_error):
            await db.transaction(lambda tx: tx.insert(table, ["id", "name"], rows))
        assert await rows_of(db, table) == []

    async def test_nul_in_json_is_refused_by_postgresql_only(
        self, db: Database, make_table: MakeTable
    ) -> None:
        """JSONB cannot hold \\u0000 (nor a lone surrogate escape); JSON text elsewhere can."""
        kind = "JSONB" if db.dialect == Dialect.POSTGRESQL else "TEXT"
        table = await make_table(f"id BIGINT PRIMARY KEY, doc {kind}")
        docs = ['{"a": 1}', '{"a": "nul \\u0000"}', '{"a": "\\ud800"}', '{"a": "\\u00e9"}']
        rows = [(i, doc) for i, doc in enumerate(docs * 150)]
        result = await db.transaction(lambda tx: tx.insert(table, ["id", "doc"], rows,
                                                           isolate=True))
        refused = {index % 4 for index, _ in result.rejected}
        if db.dialect == Dialect.POSTGRESQL:
            assert refused == {1, 2} and result.inserted == 300
        else:
            assert result == InsertResult(600, [])


class TestIncrement:
    """Counter deltas: summed per key, applied in one statement, missing keys reported."""

    async def test_existing_only_reports_missing_keys(
        self, db: Database, make_table: MakeTable
    ) -> None:
        table = await make_table(COUNTERS)
        await db.execute(f"INSERT INTO {table} (id, n, m) VALUES (1, 10, 0), (2, NULL, 5)")
        result = await db.increment(
            table, "id", ["n", "m"], [(1, 5, 1), (2, 3, 0), (1, 2, 2), (99, 7, 7), ("2", 1, 1)]
        )
        assert (result.updated, result.inserted, result.missing) == (2, 0, [99])
        assert await rows_of(db, table, "id, n, m") == [(1, 17, 3), (2, 4, 6)]

    async def test_insert_missing_inserts_and_counts(
        self, db: Database, make_table: MakeTable
    ) -> None:
        table = await make_table(COUNTERS)
        await db.execute(f"INSERT INTO {table} (id, n, m) VALUES (1, 10, 10)")
        result = await db.increment(
            table, "id", ["n", "m"],
            [(1, 1, 1), (2, 5, 0), (3, 0, 0), (2, 5, 1), (1, 0, 0), ("zz", 1, 1)],
            insert_missing=True,
        )
        assert (result.updated, result.inserted, result.missing) == (1, 2, ["zz"])
        again = await db.increment(
            table, "id", ["n", "m"], [(3, 0, 0), (4, 0, 0), (2, 1, 1)], insert_missing=True
        )
        assert (again.updated, again.inserted, again.missing) == (2, 1, [])
        assert await rows_of(db, table, "id, n, m") == [
            (1, 11, 11), (2, 11, 2), (3, 0, 0), (4, 0, 0)
        ]

    async def test_string_keys(self, db: Database, make_table: MakeTable) -> None:
        table = await make_table("k VARCHAR(40) PRIMARY KEY, n BIGINT NOT NULL DEFAULT 0")
        await db.increment(table, "k", ["n"], [("a", 1), (7, 2), ("a", 3)], insert_missing=True)
        result = await db.increment(table, "k", ["n"], [("a", 1), ("b", 1), ("7", 1)])
        assert (result.updated, result.missing) == (2, ["b"])
        assert await db.fetchall(f"SELECT k, n FROM {table} ORDER BY k") == [("7", 3), ("a", 5)]

    async def test_text_keys_with_array_syntax_in_them(
        self, db: Database, make_table: MakeTable
    ) -> None:
        """Text keys travel as one array literal on PostgreSQL: quotes,
        backslashes, commas, braces, spaces and NULL-looking text must arrive
        as they are."""
        table = await make_table("k VARCHAR(40) PRIMARY KEY, n BIGINT NOT NULL DEFAULT 0")
        keys = ['a"b', "c\\d", "e,f", "{g}", " h ", "NULL", "", "ü🎉", "\\"]
        await db.increment(table, "k", ["n"], [(k, 1) for k in keys], insert_missing=True)
        result = await db.increment(table, "k", ["n"], [(k, 2) for k in keys], totals=True)
        assert (result.updated, result.missing) == (len(keys), [])
        assert result.totals == {k: (3,) for k in keys}
        assert sorted(await db.fetchall(f"SELECT k, n FROM {table}")) == sorted(
            (k, 3) for k in keys)

    async def test_zero_deltas_count_as_found(self, db: Database, make_table: MakeTable) -> None:
        table = await make_table(COUNTERS)
        await db.execute(f"INSERT INTO {table} (id, n, m) VALUES (1, 1, 1), (2, 2, 2)")
        result = await db.increment(table, "id", ["n", "m"], [(1, 0, 0), (2, 3, 0), (3, 0, 0)])
        assert (result.updated, result.missing) == (2, [3])
        assert await rows_of(db, table, "id, n, m") == [(1, 1, 1), (2, 5, 2)]

    async def test_mysql_row_inserted_during_increment(
        self, db: Database, make_table: MakeTable, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """MySQL UPDATEs first and reads which keys have no row only when the
        count is short: a row created in between makes the two disagree, and
        the chunk is redone under lock rather than report a key as missing
        that was not updated, or updated one that was reported missing."""
        if db.dialect is not Dialect.MYSQL:
            pytest.skip("MySQL's update-then-read increment")
        from syncd.sql.mysql import MySQLTransaction

        table = await make_table(COUNTERS)
        await db.execute(f"INSERT INTO {table} (id, n, m) VALUES (1, 1, 1)")
        other = db._open()  # type: ignore[attr-defined]
        read = MySQLTransaction.fetchall
        reads: list[str] = []

        def insert_then_read(tx: Transaction, sql: str, params: object = None) -> list[tuple]:
            if "LEFT JOIN" in sql and "FOR UPDATE" not in sql:  # the plain read
                with other.cursor() as cur:
                    cur.execute(f"INSERT INTO {table} (id, n, m) VALUES (2, 7, 7)")
                other.commit()
            reads.append(sql)
            return read(tx, sql, params)  # type: ignore[arg-type]

        monkeypatch.setattr(MySQLTransaction, "fetchall", insert_then_read)
        try:
            result = await db.increment(table, "id", ["n", "m"], [(1, 5, 0), (2, 5, 0)])
        finally:
            other.close()
        assert any("FOR UPDATE" in sql for sql in reads)  # it took the locked path
        assert (result.updated, result.missing) == (2, [])
        assert await rows_of(db, table, "id, n, m") == [(1, 6, 1), (2, 12, 7)]

    async def test_mysql_one_statement_when_every_key_has_a_row(
        self, db: Database, make_table: MakeTable, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The usual case costs one UPDATE per chunk: no read of absent keys."""
        if db.dialect is not Dialect.MYSQL:
            pytest.skip("MySQL's update-then-read increment")
        from syncd.sql.mysql import MySQLTransaction

        table = await make_table(COUNTERS)
        await db.execute(f"INSERT INTO {table} (id, n, m) VALUES (1, 1, 1), (2, 2, 2)")
        reads: list[str] = []
        read = MySQLTransaction.fetchall

        def spy(tx: Transaction, sql: str, params: object = None) -> list[tuple]:
            reads.append(sql)
            return read(tx, sql, params)  # type: ignore[arg-type]

        monkeypatch.setattr(MySQLTransaction, "fetchall", spy)
        result = await db.increment(table, "id", ["n", "m"], [(2, 1, 1), (1, 3, 0)])
        assert (result.updated, result.missing) == (2, [])
        assert not [sql for sql in reads if "syncd_v" in sql]
        assert await rows_of(db, table, "id, n, m") == [(1, 4, 1), (2, 3, 3)]

    async def test_a_failed_increment_reports_its_own_error(
        self, db: Database, make_table: MakeTable
    ) -> None:
        """An overflowing delta surfaces as the database's out-of-range error,
        not as whatever a clean-up statement after it would have raised."""
        table = await make_table(COUNTERS)
        await db.execute(f"INSERT INTO {table} (id, n, m) VALUES (1, {2**63 - 1}, 0)")
        with pytest.raises(Exception) as caught:
            await db.increment(table, "id", ["n"], [(1, 1)])
        assert "aborted" not in str(caught.value)
        assert "range" in str(caught.value).lower() or "overflow" in str(caught.value).lower()

    async def test_chunks_keep_each_key_in_its_place(
        self, db: Database, make_table: MakeTable, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Present, missing and zero-delta keys mixed over many small chunks:
        every present key gets its own delta, every absent one is reported."""
        import syncd.sql.mysql

        monkeypatch.setattr(syncd.sql.mysql, "MAX_ROWS_PER_STATEMENT", 7)
        table = await make_table(COUNTERS)
        await db.execute(f"INSERT INTO {table} (id, n, m) VALUES "
                         + ", ".join(f"({i}, 0, 0)" for i in range(0, 60, 2)))
        rows = [(i, i % 5, 1) if i % 3 else (i, 0, 0) for i in range(60)]
        result = await db.increment(table, "id", ["n", "m"], rows)
        assert sorted(result.missing) == list(range(1, 60, 2))
        assert result.updated == 30
        assert await rows_of(db, table, "id, n, m") == [
            (i, i % 5 if i % 3 else 0, 1 if i % 3 else 0) for i in range(0, 60, 2)]

    async def test_ten_thousand_rows(self, db: Database, make_table: MakeTable) -> None:
        """A throughput smoke test: both paths, 10k keys each, complete and count right."""
        table = await make_table(COUNTERS)
        rows = [(i, 1, 2) for i in range(10_000)]
        inserted = await db.increment(table, "id", ["n", "m"], rows, insert_missing=True)
        updated = await db.increment(table, "id", ["n", "m"], [*rows, (10_000, 1, 1)])
        assert (inserted.inserted, inserted.updated) == (10_000, 0)
        assert (updated.updated, updated.missing) == (10_000, [10_000])
        assert await db.fetchall(f"SELECT sum(n), sum(m) FROM {table}") == [(20_000, 40_000)]


class TestIncrementRefused:
    """isolate=True: a key the database refuses is reported with its reason; the rest commits."""

    async def test_bigint_overflow(self, db: Database, make_table: MakeTable) -> None:
        table = await make_table(COUNTERS)
        await db.execute(f"INSERT INTO {table} (id, n, m) VALUES (1, 1, 1), "
                         f"(2, {2**63 - 10}, 0), (3, 3, 3)")
        result = await db.increment(
            table, "id", ["n", "m"], [(1, 5, 5), (2, 100, 1), (3, 1, 1), (4, 1, 1)],
            isolate=True)
        assert (result.updated, result.missing) == (2, [4])
        ((key, reason),) = result.rejected
        assert key == 2
        assert "range" in reason.lower() or "overflow" in reason.lower(), reason
        # Refused means untouched: not even the key's other column moved.
        assert await rows_of(db, table, "id, n, m") == [(1, 6, 6), (2, 2**63 - 10, 0), (3, 4, 4)]

    async def test_without_isolate_the_refusal_propagates(
        self, db: Database, make_table: MakeTable
    ) -> None:
        """SQLite too: it would store the overflowing sum as a REAL."""
        table = await make_table(COUNTERS)
        await db.execute(f"INSERT INTO {table} (id, n, m) VALUES (1, {2**63 - 1}, 0), (2, 0, 0)")
        with pytest.raises(db.driver_error):
            await db.increment(table, "id", ["n"], [(1, 1), (2, 1)])
        assert await rows_of(db, table, "id, n") == [(1, 2**63 - 1), (2, 0)]

    async def test_check_constraint(self, db: Database, make_table: MakeTable) -> None:
        table = await make_table("id BIGINT PRIMARY KEY, n BIGINT NOT NULL CHECK (n >= 0)")
        await db.execute(f"INSERT INTO {table} (id, n) VALUES (1, 5), (2, 5)")
        result = await db.increment(table, "id", ["n"], [(1, -10), (2, -1)], isolate=True)
        assert result.updated == 1
        assert [key for key, _ in result.rejected] == [1]
        assert await rows_of(db, table, "id, n") == [(1, 5), (2, 4)]

    async def test_key_out_of_range_for_an_integer_column(
        self, db: Database, make_table: MakeTable
    ) -> None:
        if db.dialect is Dialect.SQLITE:
            pytest.skip("SQLite's INTEGER holds 64 bits whatever the declared size")
        table = await make_table("id INTEGER PRIMARY KEY, n BIGINT NOT NULL DEFAULT 0")
        await db.execute(f"INSERT INTO {table} (id, n) VALUES (1, 0)")
        # PostgreSQL refuses the key array itself; MariaDB the row it would insert.
        result = await db.increment(table, "id", ["n"], [(1, 1), (2**40, 1), (2, 1)],
                                    insert_missing=db.dialect is Dialect.MYSQL, isolate=True)
        assert [key for key, _ in result.rejected] == [2**40]
        assert (1, 1) in await rows_of(db, table, "id, n")

    async def test_negative_delta_into_unsigned(self, db: Database, make_table: MakeTable) -> None:
        if db.dialect is not Dialect.MYSQL:
            pytest.skip("BIGINT UNSIGNED is MySQL's")
        table = await make_table("id BIGINT PRIMARY KEY, n BIGINT UNSIGNED NOT NULL DEFAULT 0")
        await db.execute(f"INSERT INTO {table} (id, n) VALUES (1, 5), (2, 5)")
        result = await db.increment(table, "id", ["n"], [(1, -6), (2, -5)], isolate=True)
        ((key, reason),) = result.rejected
        assert (key, result.updated) == (1, 1)
        # 1690 "BIGINT UNSIGNED value is out of range" or 1264 "Out of
        # range value", depending on where the server evaluates the sum.
        assert "1690" in reason or "1264" in reason, reason
        assert await rows_of(db, table, "id, n") == [(1, 5), (2, 0)]

    async def test_a_few_refused_among_many(self, db: Database, make_table: MakeTable) -> None:
        table = await make_table(COUNTERS)
        bad = {3, 500, 501, 998}
        await db.execute(f"INSERT INTO {table} (id, n, m) VALUES "
                         + ", ".join(f"({i}, {2**63 - 1 if i in bad else 0}, 0)"
                                     for i in range(1000)))
        result = await db.increment(table, "id", ["n", "m"], [(i, 1, 1) for i in range(1001)],
                                    isolate=True)
        assert {key for key, _ in result.rejected} == bad
        assert (result.updated, result.missing) == (1000 - len(bad), [1000])
        assert await db.fetchall(f"SELECT sum(m) FROM {table}") == [(1000 - len(bad),)]

    async def test_insert_missing_isolates_too(self, db: Database, make_table: MakeTable) -> None:
        table = await make_table(COUNTERS)
        await db.execute(f"INSERT INTO {table} (id, n, m) VALUES (1, {2**63 - 1}, 0)")
        result = await db.increment(table, "id", ["n", "m"], [(1, 1, 1), (2, 1, 1), (3, 2, 2)],
                                    insert_missing=True, isolate=True)
        assert (result.updated, result.inserted) == (0, 2)
        assert [key for key, _ in result.rejected] == [1]
        assert await rows_of(db, table, "id, n, m") == [(1, 2**63 - 1, 0), (2, 1, 1), (3, 2, 2)]

    async def test_a_lock_timeout_is_a_retry_not_a_refusal(
        self, db: Database, make_table: MakeTable
    ) -> None:
        """Only the data's fault is isolated: a key whose row another
        transaction holds fails the whole call, to be retried later."""
        if db.dialect is Dialect.SQLITE:
            pytest.skip("SQLite locks the whole file: BEGIN IMMEDIATE waits instead")
        table = await make_table(COUNTERS)
        await db.execute(f"INSERT INTO {table} (id, n, m) VALUES (1, 0, 0), (2, 0, 0)")
        holder = db._open()  # type: ignore[attr-defined]
        try:
            with holder.cursor() as cur:
                cur.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 2")

            def increment(tx: Transaction) -> object:
                if tx.dialect is Dialect.POSTGRESQL:
                    tx.execute("SET LOCAL lock_timeout = '300ms'")
                else:
                    tx.execute("SET SESSION innodb_lock_wait_timeout = 1")
                return tx.increment(table, "id", ["n"], [(1, 1), (2, 1)], isolate=True)

            with pytest.raises(DatabaseUnavailable):
                await db.transaction(increment)
        finally:
            holder.rollback()
            holder.close()
        assert await rows_of(db, table, "id, n") == [(1, 0), (2, 0)]


    async def test_a_deadlock_is_a_retry_not_a_refusal(
        self, db: Database, make_table: MakeTable
    ) -> None:
        """MySQL ends the whole transaction on a deadlock, savepoint and all:
        the isolating increment must still report the deadlock (transient,
        to be retried), not the failed ROLLBACK TO SAVEPOINT after it."""
        if db.dialect is not Dialect.MYSQL:
            pytest.skip("MySQL's deadlock rolls back the whole transaction")
        table = await make_table(COUNTERS)
        await db.execute(f"INSERT INTO {table} (id, n, m) VALUES "
                         + ", ".join(f"({i}, 0, 0)" for i in range(1, 101)))
        holder = db._open()  # type: ignore[attr-defined]
        watcher = db._open()  # type: ignore[attr-defined]

        def waiting() -> bool:
            with watcher.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM information_schema.INNODB_TRX "
                            "WHERE trx_state = 'LOCK WAIT'")
                (count,) = cur.fetchone()
            watcher.commit()
            return count > 0

        try:
            # The heavier transaction: InnoDB makes the lighter one, ours, the victim.
            with holder.cursor() as cur:
                cur.execute(f"UPDATE {table} SET m = m + 1 WHERE id >= 2")

            def increment(tx: Transaction) -> object:
                # Longer than the wait below: the deadlock, not a timeout, must end it.
                tx.execute("SET SESSION innodb_lock_wait_timeout = 120")
                tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1")
                return tx.increment(table, "id", ["n"], [(2, 1)], isolate=True)

            outcome: list[BaseException | object] = []

            async def ours() -> None:
                try:
                    outcome.append(await db.transaction(increment))
                except BaseException as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ours)
                await wait_for(lambda: trio.to_thread.run_sync(waiting), timeout=90, interval=0.1)

                def close_the_cycle() -> None:
                    with holder.cursor() as cur:
                        cur.execute(f"UPDATE {table} SET m = m + 1 WHERE id = 1")

                await trio.to_thread.run_sync(close_the_cycle)
        finally:
            holder.rollback()
            holder.close()
            watcher.close()
        (result,) = outcome
        assert isinstance(result, DatabaseUnavailable), repr(result)
        assert "1213" in str(result) or "eadlock" in str(result)
        assert await rows_of(db, table, "id, n") == [(i, 0) for i in range(1, 101)]


class TestIncrementTotals:
    """totals=True: the new values of every key applied, read in the same transaction."""

    @pytest.mark.parametrize("isolate", [False, True])
    async def test_update_existing(
        self, db: Database, make_table: MakeTable, isolate: bool
    ) -> None:
        table = await make_table(COUNTERS)
        await db.execute(f"INSERT INTO {table} (id, n, m) VALUES (1, 10, 0), (2, NULL, 5)")
        result = await db.increment(table, "id", ["n", "m"], [(1, 5, 1), (2, 3, 0), (9, 1, 1)],
                                    isolate=isolate, totals=True)
        assert result.totals == {1: (15, 1), 2: (3, 5)}
        assert result.missing == [9]

    async def test_insert_missing_and_refused(self, db: Database, make_table: MakeTable) -> None:
        table = await make_table("k VARCHAR(20) PRIMARY KEY, n BIGINT NOT NULL DEFAULT 0")
        await db.execute(f"INSERT INTO {table} (k, n) VALUES ('a', {2**63 - 1}), ('b', 1)")
        result = await db.increment(table, "k", ["n"], [("a", 1), ("b", 2), ("c", 3)],
                                    insert_missing=True, isolate=True, totals=True)
        assert result.totals == {"b": (3,), "c": (3,)}
        assert [key for key, _ in result.rejected] == ["a"]

    async def test_without_totals_none_are_read(self, db: Database, make_table: MakeTable) -> None:
        table = await make_table(COUNTERS)
        await db.execute(f"INSERT INTO {table} (id, n, m) VALUES (1, 1, 1)")
        result = await db.increment(table, "id", ["n"], [(1, 1)])
        assert result.totals == {}


class TestLedger:
    """apply_batch applies each batch id once, even when replayed or raced."""

    async def test_applies_once_and_a_replay_is_a_no_op(
        self, db: Database, make_table: MakeTable
    ) -> None:
        table = await make_table(NAMES)
        calls = []

        def write(tx: Transaction) -> InsertResult:
            calls.append(1)
            return tx.insert_ignore(table, ["id", "name"], [(1, "a")])

        first = await db.apply_batch("votes", "batch-1", write, detail='{"rejected": []}')
        replay = await db.apply_batch("votes", "batch-1", write)
        assert first == (True, InsertResult(1, []))
        assert replay == (False, None)
        assert len(calls) == 1
        entry = await db.ledger_entry("votes", "batch-1")
        assert entry is not None
        assert entry.detail == '{"rejected": []}'
        assert abs(time.time() - entry.applied_at.timestamp()) < 60
        assert await db.ledger_entry("votes", "batch-2") is None
        assert await db.ledger_entry("other", "batch-1") is None

    async def test_detail_can_be_set_late(self, db: Database) -> None:
        def write(tx: Transaction) -> None:
            tx.ledger_detail = "rows 3 and 5 rejected"

        await db.apply_batch("p", "late", write)
        entry = await db.ledger_entry("p", "late")
        assert entry is not None and entry.detail == "rows 3 and 5 rejected"

    async def test_batch_ids_are_case_sensitive(self, db: Database) -> None:
        assert (await db.apply_batch("p", "abc", lambda tx: 1)) == (True, 1)
        assert (await db.apply_batch("p", "ABC", lambda tx: 2)) == (True, 2)

    async def test_a_failed_batch_is_not_recorded(
        self, db: Database, make_table: MakeTable
    ) -> None:
        table = await make_table(NAMES)

        def fail(tx: Transaction) -> None:
            tx.insert_ignore(table, ["id", "name"], [(1, "a")])
            raise RuntimeError("plugin bug")

        with pytest.raises(RuntimeError, match="plugin bug"):
            await db.apply_batch("p", "b", fail)
        assert await db.ledger_entry("p", "b") is None
        assert await rows_of(db, table) == []
        assert await db.apply_batch("p", "b", lambda tx: "ok") == (True, "ok")

    async def test_racing_replicas_apply_once(
        self, db: Database, make_table: MakeTable, url: str
    ) -> None:
        table = await make_table(COUNTERS)
        await db.execute(f"INSERT INTO {table} (id, n) VALUES (1, 0)")
        replica = open_database("replica", url, ledger_table=db.ledger_table)
        results = []

        def apply(tx: Transaction) -> str:
            time.sleep(0.3)  # hold the ledger row so that the other one must wait
            tx.increment(table, "id", ["n"], [(1, 1)])
            return "applied"

        async def run(database: Database) -> None:
            results.append(await database.apply_batch("counter", "lease-7", apply))

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, db)
                nursery.start_soon(run, replica)
        finally:
            await replica.aclose()
        assert sorted(results, key=str) == [(False, None), (True, "applied")]
        assert await db.fetchall(f"SELECT n FROM {table}") == [(1,)]

    async def test_prune(self, db: Database) -> None:
        for batch in ("a", "b"):
            await db.apply_batch("p", batch, lambda tx: None)
        assert await db.prune_ledger(3600) == 0
        await trio.sleep(0.01)
        assert await db.prune_ledger(0) == 2
        assert await db.ledger_entry("p", "a") is None

    async def test_ledger_keys_are_checked(self, db: Database) -> None:
        with pytest.raises(ValueError, match="batch_id"):
            await db.apply_batch("p", "x" * 101, lambda tx: None)
        with pytest.raises(ValueError, match="plugin"):
            await db.apply_batch("", "b", lambda tx: None)


class TestTransactions:
    """One hop, one transaction: commit on return, rollback on exception."""

    async def test_commit_and_rollback(self, db: Database, make_table: MakeTable) -> None:
        table = await make_table(NAMES)

        def ok(tx: Transaction) -> int:
            return tx.executemany(f"INSERT INTO {table} (id, name) VALUES (%s, %s)", [(1, "a")])

        def boom(tx: Transaction) -> None:
            tx.execute(f"INSERT INTO {table} (id, name) VALUES (%s, %s)", (2, "b"))
            raise KeyError("boom")

        assert await db.transaction(ok) == 1
        with pytest.raises(KeyError):
            await db.transaction(boom)
        assert await rows_of(db, table) == [(1, "a")]

    async def test_placeholders_and_literal_percent(self, db: Database) -> None:
        rows = await db.fetchall("SELECT %s, 'a%%b'", ("x",))
        assert rows == [("x", "a%b")]

    async def test_transaction_is_only_valid_inside_its_function(self, db: Database) -> None:
        kept = await db.transaction(lambda tx: tx)
        with pytest.raises(RuntimeError, match="over"):
            kept.execute("SELECT 1")

    async def test_quote(self, db: Database) -> None:
        quoted = await db.transaction(lambda tx: tx.quote("public.users"))
        q = "`" if db.dialect == Dialect.MYSQL else '"'
        assert quoted == f"{q}public{q}.{q}users{q}"

    async def test_cancelled_caller_waits_for_its_thread(
        self, db: Database, make_table: MakeTable
    ) -> None:
        """No thread is abandoned holding a connection: the work finishes (and commits)."""
        table = await make_table(NAMES)
        entered, release = threading.Event(), threading.Event()

        def slow(tx: Transaction) -> None:
            entered.set()
            assert release.wait(60)
            tx.execute(f"INSERT INTO {table} (id, name) VALUES (%s, %s)", (1, "a"))

        returned = trio.Event()

        async def caller(*, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
            with trio.CancelScope() as scope:
                task_status.started(scope)
                await db.transaction(slow)
            returned.set()

        try:
            async with trio.open_nursery() as nursery:
                scope = await nursery.start(caller)
                await wait_for(entered.is_set)
                scope.cancel()  # while its thread is in the middle of the work
                await trio.testing.wait_all_tasks_blocked()
                assert not returned.is_set()  # still waiting for the thread
                release.set()
        finally:
            release.set()
        assert returned.is_set()
        assert db.limiter.borrowed_tokens == 0
        assert await rows_of(db, table) == [(1, "a")]

    async def test_an_async_function_is_refused(self, db: Database) -> None:
        async def not_allowed(tx: Transaction) -> None:
            tx.execute("SELECT 1")

        with pytest.raises(TypeError, match="must not be async"):
            await db.transaction(not_allowed)  # type: ignore[arg-type]

    async def test_ping(self, db: Database) -> None:
        latency = await db.ping()
        assert 0 < latency < 5


class TestUnavailable:
    """Connection-level failures become DatabaseUnavailable; the next call reconnects."""

    async def test_killed_connection_then_reconnect(self, db: Database, url: str) -> None:
        if db.dialect == Dialect.SQLITE:
            pytest.skip("SQLite has no server to kill connections")
        errors: list[BaseException] = []
        db.on_error = errors.append
        if db.dialect == Dialect.POSTGRESQL:
            ((connection_id,),) = await db.fetchall("SELECT pg_backend_pid()")
            kill = "SELECT pg_terminate_backend(%s)"
        else:
            ((connection_id,),) = await db.fetchall("SELECT CONNECTION_ID()")
            kill = "KILL %s"
        killer = open_database("killer", url, ledger_table=db.ledger_table)
        try:
            await killer.execute(kill, (connection_id,))
        finally:
            await killer.aclose()
        with pytest.raises(DatabaseUnavailable) as caught:
            await db.fetchall("SELECT 1")
        assert caught.value.__cause__ is not None
        assert errors == [caught.value]
        assert await db.fetchall("SELECT 1") == [(1,)]

    @pytest.mark.parametrize(
        "bad_url",
        [
            "postgresql://postgres:secret@127.0.0.1:1/test",
            "mysql://root:secret@127.0.0.1:1/test",
            "sqlite:////nonexistent-dir-for-syncd/sub/x.db",
        ],
    )
    async def test_unreachable_server_fails_fast(self, bad_url: str) -> None:
        errors: list[BaseException] = []
        db = open_database("gone", bad_url, on_error=errors.append, connect_timeout=30)
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable) as caught:
            await db.connect()
        assert time.monotonic() - started < 15  # refused at once, not the 30 s timeout
        assert "secret" not in str(caught.value)
        assert "gone" in str(caught.value)
        with pytest.raises(DatabaseUnavailable):
            await db.ping()
        assert len(errors) == 2
        await db.aclose()

    async def test_sqlite_locked_by_another_writer(self, sqlite_url: str) -> None:
        """A lock held longer than the busy timeout is transient; the connection is kept."""
        holder = open_database("holder", sqlite_url)
        waiter = open_database("waiter", sqlite_url, lock_timeout=0.1)
        await holder.connect()
        await waiter.connect()
        entered, release = threading.Event(), threading.Event()

        def hold(tx: Transaction) -> None:
            entered.set()
            assert release.wait(60)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(holder.transaction, hold)
                await wait_for(entered.is_set)  # the holder's transaction has the lock
                try:
                    with pytest.raises(DatabaseUnavailable, match="locked"):
                        await waiter.execute("CREATE TABLE t (id INTEGER)")
                finally:
                    release.set()
            await waiter.execute("CREATE TABLE t (id INTEGER)")
            assert len(waiter._idle) == 1
        finally:
            await holder.aclose()
            await waiter.aclose()

    async def test_sqlite_in_memory(self) -> None:
        db = open_database("mem", "sqlite:///:memory:")
        await db.connect()
        await db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER)")
        result = await db.increment("t", "id", ["n"], [(1, 2), (1, 3)], insert_missing=True)
        assert (result.inserted, await db.fetchall("SELECT n FROM t")) == (1, [(5,)])
        await db.aclose()

    async def test_sqlite_relative_path(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        db = open_database("rel", "sqlite:///data.sqlite3")
        await db.connect()
        await db.aclose()
        assert (tmp_path / "data.sqlite3").exists()


class TestCatalog:
    """What exists is read from the catalog, so start-up DDL can be skipped."""

    async def test_table_and_index_exist_only_once_created(
        self, db: Database, make_table: MakeTable
    ) -> None:
        absent = unique("t")
        table = await make_table(NAMES)
        index = f"{table}_idx_name"
        assert await db.transaction(lambda tx: tx.table_exists(table))
        assert not await db.transaction(lambda tx: tx.table_exists(absent))
        assert not await db.transaction(lambda tx: tx.index_exists(table, index))
        await db.execute(f"CREATE INDEX {index} ON {table} (name)")
        assert await db.transaction(lambda tx: tx.index_exists(table, index))
        assert not await db.transaction(lambda tx: tx.index_exists(absent, index))
