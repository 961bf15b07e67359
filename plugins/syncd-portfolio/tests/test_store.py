"""The PostgreSQL side: DDL only for what is missing, and no balance regresses."""

from __future__ import annotations

from syncd_portfolio import store

from syncd.sql import open_database


class TestStore:
    """An attempt that read an older block (a zombie, a replay) never overwrites a newer one."""

    async def test_older_block_never_overwrites(self, tables: str, pg_url: str) -> None:
        db = open_database("t", pg_url)
        await db.connect()
        names = store.Tables(f"{tables}_jobs", f"{tables}_balances", f"{tables}_tokens")
        try:
            made = await db.transaction(lambda tx: store.ensure_schema(tx, names))
            assert names.balances in made
            # A second start finds everything in the catalog and runs no DDL.
            assert await db.transaction(lambda tx: store.ensure_schema(tx, names)) == []

            async def upsert(block: int, balance: int) -> int:
                row = store.BalanceRow("u", 1, "0xw", "native", balance, 18, block)
                return await db.transaction(
                    lambda tx: store.upsert_balances(tx, names.balances, [row]))

            big = 2**255 + 7  # uint256 values are kept exactly
            assert await upsert(10, big) == 1
            assert await upsert(9, 1) == 0  # older: skipped
            assert await upsert(11, 5) == 1
            rows = await db.fetchall(
                f'SELECT balance, block_number FROM "{names.balances}"')
            assert [(int(b), n) for b, n in rows] == [(5, 11)]
            assert await upsert(10, big) == 0
        finally:
            await db.aclose()
