"""``syncd serve`` with a plugin blocked on a database lock held elsewhere.

A replica froze in the middle of applying a batch (SIGSTOP, a GC pause): its
transaction holds the batch's ledger row. This daemon, recovering the same
batch, waits on that row. Meanwhile it must stay observable (the control
plane answers at once: live, and not ready naming the plugin) and stoppable
(SIGTERM ends it within ``shutdown_grace`` plus a few seconds, exit 0, the
blocked statement cancelled on the server), with the batch still in Redis.

The lock is real (the test's own open transaction), the daemon a real
subprocess; the lock timeout is set far away, so only the cancellation can
end the wait.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import syncd_votes
import trio
import yaml
from votes_support import Votes, open_votes

import syncd
from syncd.sql import open_database
from syncd.testing import REDIS_URL, daemon_config, run_daemon, wait_for, wait_for_sync

GRACE = 2.0
#: How far past the grace period the exit may come (generous: a loaded machine).
EXIT_BOUND = 10.0


@pytest.fixture(name="pg_votes")
def _pg_votes(prefix: str, pg_url: str) -> Iterator[Votes]:
    with open_votes(prefix, pg_url, REDIS_URL) as votes:
        yield votes


async def leave_in_flight(votes: Votes, consumer: str, count: int) -> syncd.Batch:
    """What a crashed consumer leaves: a batch in its processing list."""
    redis = syncd.RedisHandle.from_url(REDIS_URL, pool_size=2)
    try:
        queue = syncd.ReliableQueue(redis, votes.queue, consumer)
        batch = await queue.take(count, 0.0, 1.0)
    finally:
        redis.close()
    assert batch is not None and len(batch) == count
    return batch


@contextlib.contextmanager
def frozen_replica(url: str, batch_id: str) -> Iterator[None]:
    """An open transaction holding the batch's ledger row, as a replica frozen
    mid-apply would."""
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO syncd_ledger (plugin, batch_id, applied_at) "
                     "VALUES ('votes', %s, now())", (batch_id,))
        try:
            yield
        finally:
            conn.rollback()


def lock_waiters(url: str) -> int:
    """syncd sessions waiting for a lock on the ledger."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'syncd' "
            "AND wait_event_type = 'Lock' AND query LIKE '%%syncd_ledger%%'").fetchone()[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def live(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/live", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.slow
class TestBlockedRecovery:
    """Blocked in recovery: observable at once, stoppable in time, nothing lost."""

    async def test_health_and_sigterm(self, pg_votes: Votes, tmp_path: Path) -> None:
        votes = pg_votes
        db = open_database("ledger", votes.url)
        await db.connect()  # the ledger table exists
        await db.aclose()
        instance = f"frozen-{uuid.uuid4().hex[:8]}"
        votes.push(*({"vote": "a", "voter_id": f"v{i}"} for i in range(5)))
        batch = await leave_in_flight(votes, instance, 5)
        port = free_port()
        config = tmp_path / "syncd.yaml"
        config.write_text(yaml.safe_dump({
            "redis": {"url": REDIS_URL},
            "databases": {"default": votes.url},
            "http": {"listen": f"127.0.0.1:{port}"},
            "instance": instance,
            "shutdown_grace": f"{GRACE}s",
            "lock_timeout": "10m",
            "plugins": {"votes": votes.section(lanes=1)},
        }))
        log = tmp_path / "serve.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
        with frozen_replica(votes.url, batch.id), log.open("wb") as out:
            proc = await trio.to_thread.run_sync(functools.partial(
                subprocess.Popen, [sys.executable, "-m", "syncd", "serve", "--config", str(config)],
                env=env, stdout=out, stderr=subprocess.STDOUT))
            try:
                await trio.to_thread.run_sync(
                    self._observe_then_stop, proc, votes, log, f"http://127.0.0.1:{port}")
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        # The batch is still in Redis, whole, and nothing of it is in SQL.
        assert votes.pending() == 5
        assert votes.rows() == []

    def _observe_then_stop(
        self, proc: subprocess.Popen[bytes], votes: Votes, log: Path, url: str
    ) -> None:
        wait_for_sync(lambda: live(url), 30)
        wait_for_sync(lambda: lock_waiters(votes.url), 30)  # recovery blocked on the lock
        assert live(url)
        ready = httpx.get(f"{url}/health/ready", timeout=5)
        assert ready.status_code == 503
        body = ready.json()
        assert "plugin votes is starting" in body["reasons"], body
        assert body["plugins"]["votes"]["state"] == "starting"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(GRACE + EXIT_BOUND + 20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit on SIGTERM:\n{log.read_text()}") from None
        took = time.monotonic() - started
        assert code == 0, log.read_text()
        assert took < GRACE + EXIT_BOUND, (took, log.read_text())
        assert lock_waiters(votes.url) == 0
        assert "cancelling a statement whose caller was cancelled" in log.read_text()
        print(json.dumps({"sigterm_to_exit_seconds": round(took, 2)}))


class TestLockTimeoutIsTransient:
    """A lock wait that times out is retried with the batch in Redis, never
    dead-lettered; once the lock is gone the batch goes through, once."""

    async def test_retried_not_dead_lettered(self, pg_votes: Votes) -> None:
        votes = pg_votes
        db = open_database("ledger", votes.url)
        await db.connect()  # the ledger table exists
        await db.aclose()
        instance = f"waiting-{uuid.uuid4().hex[:8]}"
        votes.push(*({"vote": "a", "voter_id": f"v{i}"} for i in range(5)))
        batch = await leave_in_flight(votes, instance, 5)
        config = daemon_config({"votes": votes.section(lanes=1)}, {"default": votes.url},
                               instance=instance, lock_timeout="500ms")
        with contextlib.ExitStack() as frozen:
            frozen.enter_context(frozen_replica(votes.url, batch.id))
            async with run_daemon(config, [syncd_votes]) as daemon:
                runner = daemon.runner("votes")
                await wait_for(lambda: runner.restarts >= 2, timeout=30)
                assert runner.last_error is not None
                assert runner.last_error["kind"] == "database"
                assert "lock timeout" in runner.last_error["message"]
                assert votes.dead_letters() == []
                assert votes.pending() == 5
                frozen.close()  # the frozen replica's transaction rolls back
                await wait_for(lambda: votes.pending() == 0, timeout=30)
        assert len(votes.rows()) == 5
        assert votes.dead_letters() == []
