"""Quarantined votes replayed once their cause is fixed: killed mid-requeue, each vote
is in exactly one place; finished, each vote is a row exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import syncd_votes
from votes_support import Votes, write_config

from syncd.testing import daemon_config, run_daemon, wait_for

pytestmark = pytest.mark.slow

GOOD, BAD = 20, 450


def dead_letters(config: Path, *args: str, crash_at: str | None = None,
                 ) -> subprocess.CompletedProcess[str]:
    """``syncd dead-letters ARGS -c CONFIG`` as its own process, as an operator runs it."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SYNCD_") or k.startswith("SYNCD_TEST_")}
    if crash_at:
        env["SYNCD_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "syncd", "dead-letters", *args, "-c", str(config)],
                          env=env, capture_output=True, text=True, timeout=60)


def voter_ids(raws: list[bytes]) -> list[str]:
    return [json.loads(raw)["voter_id"] for raw in raws]


async def test_requeue_killed_midway_then_finished_stores_each_vote_once(
    mysql_votes: Votes, tmp_path: Path,
) -> None:
    votes = mysql_votes
    rejected = [f"c{i}" for i in range(BAD)]
    votes.push(*({"vote": "a", "voter_id": f"g{i}"} for i in range(GOOD)),
               *({"vote": "c", "voter_id": v} for v in rejected))
    strict = daemon_config({"votes": votes.section(allowed_votes=["a", "b"])},
                           {"default": votes.url})
    async with run_daemon(strict, [syncd_votes]):
        await wait_for(lambda: len(votes.dead_letters()) == BAD and votes.pending() == 0,
                       timeout=60)
    assert all(letter.source == votes.queue for letter in votes.dead_letters())

    # The operator allows "c" and replays the quarantine; the first run dies
    # (SIGKILL) between two round trips of its requeue.
    fixed = write_config(tmp_path / "syncd.yaml", daemon_config(
        {"votes": votes.section(allowed_votes=["a", "b", "c"])}, {"default": votes.url}))
    killed = dead_letters(fixed, "requeue", "votes", "--all",
                          crash_at="votes:requeue_round_trip")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    queued = voter_ids(votes.env.redis.lrange(votes.queue, 0, -1))
    still_dead = voter_ids([letter.payload_bytes for letter in votes.dead_letters()])
    assert 0 < len(queued) < BAD, "the kill must fall in the middle of the requeue"
    assert not set(queued) & set(still_dead)
    assert sorted(queued + still_dead) == sorted(rejected)

    finished = dead_letters(fixed, "requeue", "votes", "--all")
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == f"requeued {len(still_dead)}"
    assert votes.dead_letters() == []

    async with run_daemon(daemon_config({"votes": votes.section(allowed_votes=["a", "b", "c"])},
                                        {"default": votes.url}), [syncd_votes]):
        await wait_for(lambda: votes.pending() == 0 and len(votes.rows()) == GOOD + BAD,
                       timeout=60)
    stored = [voter for _, voter, _ in votes.rows()]
    assert sorted(stored) == sorted([f"g{i}" for i in range(GOOD)] + rejected)
    assert votes.dead_letters() == []
