"""What the SQL test modules share: a database with a ledger of its own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from syncd.sql import Database, open_database


def unique(stem: str) -> str:
    return f"{stem}_{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def own_database(url: str) -> AsyncIterator[Database]:
    """A connected database with a uniquely named ledger, dropped afterwards,
    so tests can run in any order and side by side."""
    db = open_database("test", url, ledger_table=unique("ledger"))
    await db.connect()
    try:
        yield db
    finally:
        await db.execute(f"DROP TABLE IF EXISTS {db.ledger_table}")
        await db.aclose()
