"""``syncd serve`` killed with SIGKILL at the worst moments: still exactly once.

These run the real command (``python -m syncd serve``) as a subprocess, with
the plugin found through its entry point, and crash it with
``SYNCD_CRASH_AT=votes:<point>`` (see `syncd.crash_point`).
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from votes_support import Votes, open_votes, start_serve, stop_serve, write_config

import syncd
from syncd.testing import REDIS_URL, wait_for_sync


@pytest.fixture(name="mysql_votes")
def _mysql_votes(prefix: str, mysql_url: str, redis_url: str) -> Iterator[Votes]:
    with open_votes(prefix, mysql_url, redis_url) as votes:
        yield votes


def config(votes: Votes, instance: str, **options: Any) -> dict[str, Any]:
    return {
        "redis": {"url": votes.redis_url or REDIS_URL},
        "databases": {"default": votes.url},
        "http": {"enabled": False},
        "instance": instance,
        "shutdown_grace": "10s",
        "restart_backoff_max": "1s",
        "log_level": "info",
        "plugins": {"votes": votes.section(**options)},
    }


def queue_key(votes: Votes, *parts: str) -> str:
    """A key `syncd.ReliableQueue` derives from the queue (tagged on a cluster)."""
    return syncd.derived_key(votes.queue, *parts, cluster=syncd.is_cluster(votes.env.redis))


def killed(proc: Any, timeout: float = 60) -> bool:
    """Whether ``syncd serve`` died of SIGKILL (its crash point) within ``timeout``."""
    wait_for_sync(lambda: proc.poll() is not None, timeout)
    return proc.returncode == -signal.SIGKILL


def replays(log: Path, message: str) -> list[int]:
    """``skipped=`` of each log line with ``message``: items already in SQL."""
    return [int(m) for m in re.findall(rf'msg="{message}".* skipped=(\d+)', log.read_text())]


def ledger_entries(votes: Votes) -> int:
    conn = votes.env.connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM syncd_ledger WHERE plugin = 'votes'")
        return int(cur.fetchone()[0])
    finally:
        conn.close()


class TestCrash:
    """A SIGKILL between take and commit, or between commit and ack, loses and
    doubles nothing: the restart finishes the batch, guided by the ledger."""

    @pytest.mark.parametrize(("point", "redis_url"), [
        ("after_take", "redis"), ("after_commit", "redis"), ("after_commit", "cluster"),
    ], indirect=["redis_url"])
    def test_sigkill_then_restart(self, mysql_votes: Votes, tmp_path: Path, point: str) -> None:
        votes = mysql_votes
        votes.workload.produce(votes.env, 0, 3000)
        path = write_config(tmp_path / "syncd.yaml", config(votes, "crashy", batch_size=200))
        log = tmp_path / "serve.log"
        proc = start_serve(path, log, crash_at=f"votes:{point}", crash_after=2)
        assert killed(proc), log.read_text()
        # Killed holding batches: they are still in the processing lists.
        assert votes.pending() > 0
        held = sum(int(votes.env.redis.llen(queue_key(votes, "processing", name)))
                   for name in ("crashy", "crashy#1"))
        assert held > 0
        proc = start_serve(path, log)
        try:
            wait_for_sync(lambda: votes.pending() == 0, 60, describe=votes.pending)
        finally:
            assert stop_serve(proc) == 0, log.read_text()
        tally = votes.workload.tally(votes.env, 3000)
        assert tally.ok, tally
        finished = replays(log, "finished a batch left in flight")
        assert finished, log.read_text()
        if point == "after_commit":
            assert any(finished)  # committed before the kill: replayed as an ack only


class TestReplicas:
    """Two daemons on one queue; one is killed holding batches, the other finishes them."""

    def test_reclaim_from_killed_replica(self, mysql_votes: Votes, tmp_path: Path) -> None:
        votes = mysql_votes
        votes.workload.produce(votes.env, 0, 2000)
        log = tmp_path / "serve.log"
        options = {"batch_size": 100, "heartbeat_ttl": "1s"}
        doomed = start_serve(
            write_config(tmp_path / "a.yaml", config(votes, "replica-a", **options)), log,
            crash_at="votes:after_commit", crash_after=3)
        assert killed(doomed), log.read_text()
        orphaned = sum(int(votes.env.redis.llen(queue_key(votes, "processing", name)))
                       for name in ("replica-a", "replica-a#1"))
        assert orphaned > 0
        survivor = start_serve(
            write_config(tmp_path / "b.yaml", config(votes, "replica-b", **options)), log)
        try:
            votes.workload.produce(votes.env, 2000, 1000)
            wait_for_sync(lambda: votes.pending() == 0, 60, describe=votes.pending)
        finally:
            assert stop_serve(survivor) == 0, log.read_text()
        tally = votes.workload.tally(votes.env, 3000)
        assert tally.ok, tally
        assert replays(log, "finished the batch of a dead consumer")
        consumers = {m.decode() for m in votes.env.redis.smembers(queue_key(votes, "consumers"))}
        assert not consumers & {"replica-a", "replica-a#1"}
        assert ledger_entries(votes) > 0
