"""A batch replayed after a crash is judged as it was when it committed.

Its rows are in SQL already; the replay only acknowledges it. If the config
changed in between (``allowed_votes`` narrowed, ``max_item_bytes`` lowered),
re-validating the items with the new config would dead-letter votes that are
also stored as rows. What the replay dead-letters comes from the ledger.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from votes_support import Votes, start_serve, stop_serve, write_config

from syncd.testing import REDIS_URL, wait_for_sync


def config(votes: Votes, **options: Any) -> dict[str, Any]:
    return {
        "redis": {"url": REDIS_URL},
        "databases": {"default": votes.url},
        "http": {"enabled": False},
        "instance": "replayer",
        "shutdown_grace": "10s",
        "restart_backoff_max": "1s",
        "plugins": {"votes": votes.section(lanes=1, batch_size=100, **options)},
    }


@pytest.mark.slow
class TestReplayAfterConfigChange:
    """Committed under one config, replayed under another: stored once, dead-lettered never."""

    def test_narrowed_allowed_votes(self, mysql_votes: Votes, tmp_path: Path) -> None:
        votes = mysql_votes
        votes.push(*({"vote": "a", "voter_id": f"v{i}"} for i in range(10)))
        log = tmp_path / "serve.log"
        proc = start_serve(write_config(tmp_path / "a.yaml", config(votes)), log,
                           crash_at="votes:after_commit")
        wait_for_sync(lambda: proc.poll() is not None, 30)  # the crash after the commit
        assert proc.returncode == -signal.SIGKILL, log.read_text()
        assert len(votes.rows()) == 10  # committed, not acknowledged
        assert votes.pending() == 10
        # The operator narrows the allowed votes, then restarts.
        proc = start_serve(
            write_config(tmp_path / "b.yaml", config(votes, allowed_votes=["zz"])), log)
        try:
            wait_for_sync(lambda: votes.pending() == 0, 30)  # the replay
        finally:
            assert stop_serve(proc) == 0, log.read_text()
        assert len(votes.rows()) == 10
        assert votes.dead_letters() == []
