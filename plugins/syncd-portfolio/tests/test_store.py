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
            # A jobs table from before outcomes were ordered by run gets the column.
            await db.transaction(lambda tx: tx.execute(
                f'ALTER TABLE "{names.jobs}" DROP COLUMN run'))
            assert await db.transaction(lambda tx: store.ensure_schema(tx, names)) == [
                f"{names.jobs}.run"]

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

    async def test_job_records_in_one_statement_or_row_by_row(self, tables: str,
                                                             pg_url: str) -> None:
        """A round's records go in as one ``unnest`` upsert; two of one job, row by row."""
        db = open_database("t", pg_url)
        await db.connect()
        names = store.Tables(f"{tables}_jobs", f"{tables}_balances", f"{tables}_tokens")

        def rec(job_id: str, state: str, attempts: int, *, reason: str | None = None,
                value: object = None, started: int | None = 2_000,
                finished: int | None = None, run: int = 0) -> store.JobRecord:
            return store.JobRecord("q", job_id, "token-metadata", {"chainId": 1}, state,
                                   attempts, reason, value, 1_000, started, finished, run)

        async def record(*records: store.JobRecord) -> None:
            await db.transaction(lambda tx: store.record_jobs(
                tx, names.jobs, records, synchronous_commit_off=True))

        try:
            await db.transaction(lambda tx: store.ensure_schema(tx, names))
            await record(rec("b", "delayed", 1, reason="HTTP 503"), rec("a", "completed", 1,
                                                                       value={"n": 1},
                                                                       finished=3_000))
            await record(rec("b", "completed", 2, started=None, finished=4_000),
                         rec("c", "delayed", 1, reason="x"), rec("c", "failed", 2, reason="y"))
            rows = await db.fetchall(
                f'SELECT id, state, attempts, failed_reason, returnvalue, data,'
                f' started_at IS NOT NULL, finished_at IS NOT NULL FROM "{names.jobs}"'
                ' ORDER BY id')
            assert [tuple(r) for r in rows] == [
                ("a", "completed", 1, None, {"n": 1}, {"chainId": 1}, True, True),
                ("b", "completed", 2, None, None, {"chainId": 1}, True, True),
                ("c", "failed", 2, "y", None, {"chainId": 1}, True, False),
            ]
            # A replica frozen before committing its run's outcome ("delayed",
            # run 1) writes it when it wakes, after the job ran again
            # elsewhere (run 2) and completed: kept out.
            await record(rec("d", "completed", 2, started=5_000, finished=6_000, run=2))
            await record(rec("d", "delayed", 1, reason="HTTP 503", started=2_000, run=1))
            state = await db.fetchall(f'SELECT state, attempts FROM "{names.jobs}" WHERE id = %s',
                                      ("d",))
            assert [tuple(r) for r in state] == [("completed", 2)]
            # Runs, not clocks: a replica frozen between reading its clock and
            # taking the job starts run 3 with a time older than run 2's.
            await record(rec("e", "delayed", 1, reason="stalled", started=5_000, run=2))
            await record(rec("e", "completed", 1, started=2_000, finished=6_000, run=3))
            state = await db.fetchall(f'SELECT state FROM "{names.jobs}" WHERE id = %s', ("e",))
            assert [tuple(r) for r in state] == [("completed",)]
            # Retried from its first attempt: waiting again, whatever ran before.
            await record(rec("e", "waiting", 0, run=0))
            state = await db.fetchall(f'SELECT state FROM "{names.jobs}" WHERE id = %s', ("e",))
            assert [tuple(r) for r in state] == [("waiting",)]
        finally:
            await db.aclose()
