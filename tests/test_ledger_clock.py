"""The ledger keeps time by the database's clock, never a replica's.

A replica whose clock runs days ahead must not prune ledger rows that other
replicas may still need to recognise a replay, and one whose clock runs
behind must not write rows that look old enough to prune at once: either way
a batch replayed later would be applied twice.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sql_support import own_database

from syncd.sql import base
from syncd.testing import MYSQL_URL, PG_URL

RETENTION = 30 * 86400


def skewed(days: float) -> type[datetime]:
    """A `datetime` whose ``now()`` runs ``days`` ahead (negative: behind)."""

    class Skewed(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def,override]
            return datetime.now(tz) + timedelta(days=days)

    return Skewed


@pytest.fixture(name="url", params=["pg", "mysql", "sqlite"])
def _url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return {"pg": PG_URL, "mysql": MYSQL_URL,
            "sqlite": f"sqlite:///{tmp_path / 'ledger.db'}"}[request.param]


class TestLedgerClock:
    """Pruning and ``applied_at`` follow the database's clock."""

    async def test_a_replica_days_ahead_prunes_nothing_recent(
        self, url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async with own_database(url) as db:
            assert (await db.apply_batch("clock", "b1", lambda tx: None))[0]
            monkeypatch.setattr(base, "datetime", skewed(40))
            assert await db.prune_ledger(RETENTION) == 0
            # Still recognised: a replay is acknowledged, not applied again.
            assert (await db.apply_batch("clock", "b1", lambda tx: None)) == (False, None)

    async def test_a_replica_days_behind_writes_the_database_time(
        self, url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async with own_database(url) as db:
            monkeypatch.setattr(base, "datetime", skewed(-40))
            assert (await db.apply_batch("clock", "b2", lambda tx: None))[0]
            monkeypatch.undo()
            entry = await db.ledger_entry("clock", "b2")
            assert entry is not None
            assert abs(entry.applied_at - datetime.now(UTC)) < timedelta(hours=1)
            assert await db.prune_ledger(RETENTION) == 0
            assert (await db.apply_batch("clock", "b2", lambda tx: None)) == (False, None)

    async def test_old_rows_still_go(self, url: str) -> None:
        async with own_database(url) as db:
            assert (await db.apply_batch("clock", "b3", lambda tx: None))[0]
            # Retention is checked against the database's now(): a row older
            # than it goes (a zero retention makes every row old enough).
            assert await db.prune_ledger(0) == 1
            assert await db.ledger_entry("clock", "b3") is None
