"""An item whose dead letter would pass Redis' limit on one value.

Redis refuses any value over ``proto-max-bulk-len`` (512 MB by default) and
drops the connection. JSON escapes a control character six-fold (``\\u0001``),
so a 100 MB item of them made a 600 MB dead letter: the ack that carries it
failed, the batch stayed in its processing list, and the lane retried it
for ever. Here the same happens at a scale a test can afford: a private
Redis whose limit is 1 MB, and an item of 300 kB.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest
import syncd_votes
from votes_support import open_votes

from syncd.testing import daemon_config, run_daemon, wait_for, wait_for_sync

ITEM = b"\x01" * 300_000


@pytest.fixture(name="small_redis")
def _small_redis() -> Iterator[str]:
    """A redis-server of our own that refuses values over 1 MB (its minimum)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--proto-max-bulk-len", "1mb"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Listening means started (a refused connection is an OSError: not yet).
        wait_for_sync(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.2),
                      30, ignore=(OSError,)).close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


class TestBigItem:
    """A huge item is quarantined whole, and the lane goes on."""

    async def test_dead_letter_stays_under_the_value_limit(
        self, prefix: str, small_redis: str, pg_url: str
    ) -> None:
        with open_votes(prefix, pg_url, small_redis) as votes:
            votes.push(ITEM, {"vote": "a", "voter_id": "after"})
            config = daemon_config({"votes": votes.section(lanes=1)}, {"default": votes.url})
            config["redis"] = {"url": small_redis}
            async with run_daemon(config, [syncd_votes]):
                await wait_for(lambda: votes.pending() == 0, timeout=30)
            assert [row[:2] for row in votes.rows()] == [("a", "after")]
            [letter] = votes.dead_letters()
            assert letter.payload_bytes == ITEM
            assert "more than max_item_bytes" in letter.reason
