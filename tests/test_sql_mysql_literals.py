"""MySQL rows rendered by syncd itself must be what the driver's mogrify makes.

`MySQLTransaction._literals` renders insert rows without a mogrify call per
row (a batch of strings is escaped in one pass). These tests hold it to the
driver's own rendering, value by value, in both escaping modes of the
server, and check that the stored values come back as they went in.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from sql_support import own_database

from syncd.sql import Database, Transaction
from syncd.sql.mysql import _SEPARATOR, MySQLTransaction, _double_quotes

TRICKY = [
    "plain", "", "it's", 'say "hi"', "back\\slash", "new\nline", "cr\rlf", "nul\x00byte",
    "ctrl\x1aZ", "sep" + _SEPARATOR + "arator", "%s %% %(x)s", "🗳️ نعم", "'; DROP TABLE t; --",
    "\\'", "''",
]
MIXED = [0, -7, 2**63 - 1, True, False, None, 1.5, b"\x00\xffbin", Decimal("1.10"),
         datetime(2024, 3, 1, 10, 0, 0), "text"]


@pytest.fixture(name="db")
async def _db(mysql_url: str) -> Any:
    async with own_database(mysql_url) as db:
        yield db


def _both(tx: Transaction, rows: list[tuple[Any, ...]]) -> tuple[list[str], list[str]]:
    assert isinstance(tx, MySQLTransaction)
    width = len(rows[0])
    pattern = ", ".join(["%s"] * width)
    mogrify = tx._cursor().mogrify
    return tx._literals(rows, width), [mogrify(pattern, row) for row in rows]


@pytest.mark.parametrize("no_backslash", [False, True])
async def test_same_as_mogrify(db: Database, no_backslash: bool) -> None:
    def check(tx: Transaction) -> None:
        if no_backslash:
            tx.execute("SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',NO_BACKSLASH_ESCAPES')")
        assert isinstance(tx, MySQLTransaction)
        assert (tx._escape_text() is _double_quotes) == no_backslash
        strings = [(a, b, c) for a, b, c in zip(TRICKY, TRICKY[1:], TRICKY[2:], strict=False)]
        mine, driver = _both(tx, strings)
        assert mine == driver
        mine, driver = _both(tx, [(v, "x") for v in MIXED])
        assert mine == driver
        # One string holding the separator sends the batch down the general path.
        mine, driver = _both(tx, [("a", "b"), ("c" + _SEPARATOR, "d")])
        assert mine == driver
        tx.execute("SET SESSION sql_mode = REPLACE(@@SESSION.sql_mode, 'NO_BACKSLASH_ESCAPES', '')")

    await db.transaction(check)


async def test_strings_round_trip(db: Database) -> None:
    table = f"lit_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, a VARCHAR(50), b VARCHAR(50)) "
                     "CHARSET=utf8mb4")
    try:
        rows = [(i, text, text[::-1]) for i, text in enumerate(TRICKY)]
        result = await db.insert_ignore(table, ["id", "a", "b"], rows)
        assert result.inserted == len(rows)
        stored = await db.fetchall(f"SELECT id, a, b FROM {table} ORDER BY id")
        assert stored == rows
        strings = [(str(i), text) for i, text in enumerate(TRICKY, start=100)]
        await db.insert_ignore(table, ["id", "a"], strings)
        stored = await db.fetchall(f"SELECT a FROM {table} WHERE id >= 100 ORDER BY id")
        assert [a for (a,) in stored] == TRICKY
    finally:
        await db.execute(f"DROP TABLE IF EXISTS {table}")


async def test_statements_split_by_size(db: Database) -> None:
    def split(tx: Transaction) -> list[str]:
        assert isinstance(tx, MySQLTransaction)
        budget = tx._db._server.max_statement_chars  # type: ignore[attr-defined]
        row = "'" + "x" * (budget // 3) + "'"
        return list(tx._statements([row] * 7))

    statements = await db.transaction(split)
    assert len(statements) == 4
    assert sum(s.count("'x") for s in statements) == 7
