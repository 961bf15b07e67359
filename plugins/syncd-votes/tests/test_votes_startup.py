"""Starting (or restarting) the votes worker never queues the fleet's writers.

On PostgreSQL, ``CREATE INDEX IF NOT EXISTS`` takes a ShareLock on the table
before it looks whether the index exists: with any write transaction open
on ``votes`` it waits, and every later INSERT queues behind it. The worker
looks in the catalog first and runs no DDL for a table that is in place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import syncd_votes
import trio
from votes_support import Votes, open_votes

from syncd.testing import REDIS_URL, daemon_config, run_daemon, wait_for


@pytest.fixture(name="pg_votes")
def _pg_votes(prefix: str, pg_url: str) -> Iterator[Votes]:
    with open_votes(prefix, pg_url, REDIS_URL) as votes:
        yield votes


@contextlib.contextmanager
def open_write(votes: Votes) -> Iterator[psycopg.Connection[Any]]:
    """A write transaction on the votes table left open, like a replica frozen mid-batch."""
    with psycopg.connect(votes.url) as conn:
        conn.execute(f"INSERT INTO {votes.table} (vote, voter_id, timestamp) "
                     "VALUES ('z', 'frozen', now())")
        try:
            yield conn
        finally:
            conn.rollback()


def other_writer(votes: Votes, voter: str) -> None:
    """Another replica's INSERT, which must not wait behind our start-up."""
    with psycopg.connect(votes.url) as conn:
        conn.execute("SET statement_timeout = '3s'")
        conn.execute(f"INSERT INTO {votes.table} (vote, voter_id, timestamp) "
                     "VALUES ('a', %s, now())", (voter,))


class TestStartUpDDL:
    """With an open write transaction on the table, start-up runs no DDL."""

    async def test_start_does_not_wait_nor_queue_writers(self, pg_votes: Votes) -> None:
        votes = pg_votes
        config = daemon_config({"votes": votes.section()}, {"default": votes.url})
        with open_write(votes):
            with trio.fail_after(30):
                async with run_daemon(config, [syncd_votes]) as daemon:
                    runner = daemon.runner("votes")
                    assert (runner.state, runner.restarts) == ("running", 0), runner.status()
                    await trio.to_thread.run_sync(other_writer, votes, "elsewhere")
                    votes.push({"vote": "b", "voter_id": "v1"})
                    await wait_for(lambda: votes.pending() == 0, timeout=15)
                    assert (runner.state, runner.restarts) == ("running", 0), runner.status()
        assert sorted(row[1] for row in votes.rows()) == ["elsewhere", "v1"]

    async def test_a_restart_runs_nothing(self, pg_votes: Votes) -> None:
        votes = pg_votes
        config = daemon_config({"votes": votes.section()}, {"default": votes.url})
        async with run_daemon(config, [syncd_votes]) as daemon:
            database = daemon.runner("votes").worker.database
            # The set-up is done for this process: asked again (a restarted
            # worker asks), it answers without a round trip.
            assert await database.setup_once(f"votes:{votes.table}", _fail) is None


def _fail(tx: Any) -> None:
    raise AssertionError("the set-up ran again")
