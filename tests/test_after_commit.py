"""``Database.transaction(after_commit=...)``: the acknowledgement after the commit, same hop."""

from __future__ import annotations

import threading

import pytest

from syncd.sql import open_database


class TestAfterCommit:
    """It runs once the commit succeeded, in the same worker thread, and answers instead."""

    async def test_runs_after_the_commit_in_the_same_thread(self, sqlite_url: str) -> None:
        db = open_database("t", sqlite_url)
        await db.connect()
        try:
            await db.execute("CREATE TABLE items (n INTEGER)")
            seen: dict[str, object] = {}

            def write(tx: object) -> int:
                seen["write"] = threading.get_ident()
                return tx.execute("INSERT INTO items (n) VALUES (1)")  # type: ignore[attr-defined]

            def ack(result: int) -> str:
                seen["ack"] = threading.get_ident()
                return f"acked {result}"

            assert await db.transaction(write, after_commit=ack) == "acked 1"
            assert seen["write"] == seen["ack"] != threading.get_ident()
        finally:
            await db.aclose()

    async def test_not_run_when_the_transaction_fails(self, sqlite_url: str) -> None:
        db = open_database("t", sqlite_url)
        await db.connect()
        called = []
        try:
            with pytest.raises(ZeroDivisionError):
                await db.transaction(lambda tx: 1 / 0, after_commit=called.append)
            assert called == []
            with pytest.raises(KeyError):  # its own errors propagate; the commit stands
                await db.transaction(lambda tx: tx.execute("CREATE TABLE t2 (n INTEGER)"),
                                     after_commit=lambda _: {}["missing"])
            assert await db.fetchall("SELECT COUNT(*) FROM t2") == [(0,)]
        finally:
            await db.aclose()
