"""``syncd serve`` killed with SIGKILL between each writer's write and the record of it.

The real command runs as a subprocess, with the plugin found through its
entry point, every writer on (PostgreSQL, a real directory, the workload's
webhook receiver process), and ``SYNCD_CRASH_AT=messages:<point>`` (see
`syncd.crash_point`). After a restart, the workload's tally must be exact:
every message once in SQL and once in the files, at the webhook at least
once and repeated only under the same id, every bad item dead-lettered.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from messages_support import (
    Messages,
    open_messages,
    serve_config,
    start_serve,
    stop_serve,
    write_config,
)
from syncd_messages.keys import lane_key, marker_key

from syncd.testing import wait_for_sync

PRODUCED = 3000


@pytest.fixture(name="everything")
def _everything(prefix: str, pg_url: str, redis_url: str) -> Iterator[Messages]:
    """Every writer, with the workload's own webhook receiver process."""
    with open_messages(prefix, pg_url, receiver=True, redis_url=redis_url) as messages:
        yield messages


def file_numbers(messages: Messages) -> list[int]:
    """The ``n`` of every line in the ``in`` files, repeats included."""
    return [json.loads(line)["n"] for path in sorted(messages.files.glob("messages_in_*.jsonl"))
            for line in path.read_bytes().splitlines()]


def process_state(proc: Any) -> str:
    """The state letter in /proc (``T``: stopped by a signal)."""
    return Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def killed(proc: Any, log: Path) -> None:
    wait_for_sync(lambda: proc.poll() is not None, 60)  # the crash point
    assert proc.returncode == -signal.SIGKILL, log.read_text()


def restart_and_drain(messages: Messages, path: Path, log: Path) -> None:
    proc = start_serve(path, log)
    try:
        wait_for_sync(lambda: messages.pending() == 0, 60,  # the restart to drain
                      describe=lambda: f"log:\n{log.read_text()[-8000:]}")
    finally:
        assert stop_serve(proc) == 0, log.read_text()


def assert_exact(messages: Messages) -> None:
    tally = messages.tally(PRODUCED)
    assert tally.ok, tally
    for queue_type in messages.queues:
        for line in messages.lines(queue_type):
            json.loads(line)  # no torn line anywhere


@pytest.mark.slow
class TestCrash:
    """A SIGKILL at each writer's worst moment loses and doubles nothing."""

    @pytest.mark.parametrize(("point", "redis_url"), [
        ("intake:after_take", "redis"), ("database:after_write", "redis"),
        ("file:after_write", "redis"), ("webhook:after_write", "redis"),
        # On Redis Cluster, where the intake's fan-out is one script per slot.
        ("intake:after_take", "cluster"),
    ], indirect=["redis_url"])
    def test_sigkill_then_restart(self, everything: Messages, tmp_path: Path, point: str) -> None:
        messages = everything
        messages.workload.produce(messages.env, 0, PRODUCED)
        path = write_config(tmp_path / "syncd.yaml",
                            serve_config(messages, "crashy", batch_size=200))
        log = tmp_path / "serve.log"
        killed(start_serve(path, log, crash_at=f"messages:{point}", crash_after=3), log)
        assert messages.pending() > 0
        restart_and_drain(messages, path, log)
        assert_exact(messages)
        assert "finished a batch left in flight" in log.read_text()

    def test_torn_file_append_is_completed_not_repeated(
        self, everything: Messages, tmp_path: Path
    ) -> None:
        """Killed with half a batch in the file: the restart appends the other half."""
        messages = everything
        messages.workload.produce(messages.env, 0, PRODUCED)
        path = write_config(tmp_path / "syncd.yaml",
                            serve_config(messages, "torn", batch_size=200))
        log = tmp_path / "serve.log"
        killed(start_serve(path, log, crash_at="messages:file:after_write", crash_after=2), log)
        torn = 0
        for source in messages.queues.values():
            raw = messages.env.redis.hget(marker_key(source), "torn")
            held = messages.env.redis.get(f"{lane_key(source, 'file')}:processing:torn:batch")
            if raw is None or held is None or json.loads(raw)["batch"] != held.decode():
                continue  # that queue's last append was acked: not in flight
            marker = json.loads(raw)
            cut = marker["offset"] + marker["length"] // 2
            with open(marker["file"], "r+b") as f:  # the crash came mid-write
                if os.fstat(f.fileno()).st_size == marker["offset"] + marker["length"]:
                    f.truncate(cut)
                    torn += 1
        assert torn >= 1
        restart_and_drain(messages, path, log)
        assert_exact(messages)
        assert "file batch checked after a restart" in log.read_text()


@pytest.mark.slow
class TestReplicas:
    """A replica killed holding batches in every writer's list: another one finishes them."""

    def test_reclaim_from_a_killed_replica(self, everything: Messages, tmp_path: Path) -> None:
        messages = everything
        messages.workload.produce(messages.env, 0, PRODUCED)
        log = tmp_path / "serve.log"
        options = {"batch_size": 100, "heartbeat_ttl": "1s"}
        doomed = start_serve(write_config(
            tmp_path / "a.yaml", serve_config(messages, "replica-a", **options)),
            log, crash_at="messages:file:after_write", crash_after=4)
        killed(doomed, log)
        survivor = start_serve(write_config(
            tmp_path / "b.yaml", serve_config(messages, "replica-b", **options)), log)
        try:
            wait_for_sync(lambda: messages.pending() == 0, 60)  # the survivor to drain
        finally:
            assert stop_serve(survivor) == 0, log.read_text()
        assert_exact(messages)
        assert "finished the batch of a dead consumer" in log.read_text()

    def test_paused_replica_woken_after_its_batch_was_reclaimed(
        self, everything: Messages, tmp_path: Path
    ) -> None:
        """A replica frozen just before a file append (SIGSTOP at ``file:before_write``)
        is taken for dead; another reclaims that batch and writes it. Woken, the
        first goes on with the append it was about to make: the batch's marker
        tells it the lines are in the file already, so none is written twice.
        One queue, so that the frozen replica holds no other file's lock."""
        messages = everything
        count = 500
        messages.push("in", *({"n": n} for n in range(count)))
        log = tmp_path / "serve.log"
        options = {"batch_size": 100, "heartbeat_ttl": "1s",
                   "queues": {"in": messages.queues["in"]}}
        frozen = start_serve(write_config(
            tmp_path / "a.yaml", serve_config(messages, "replica-a", **options)),
            log, stop_at="messages:file:before_write")
        survivor = None
        held = f"{lane_key(messages.queues['in'], 'file')}:processing:replica-a:batch"
        try:
            wait_for_sync(lambda: process_state(frozen) == "T", 60)  # stopped itself
            assert messages.env.redis.exists(held)
            survivor = start_serve(write_config(
                tmp_path / "b.yaml", serve_config(messages, "replica-b", **options)), log)
            # The survivor finishes the frozen replica's file batch, then the rest.
            wait_for_sync(lambda: not messages.env.redis.exists(held), 60)
            wait_for_sync(lambda: len(file_numbers(messages)) >= count, 60)
            frozen.send_signal(signal.SIGCONT)
            wait_for_sync(lambda: "written by another replica while this one was paused"
                          in log.read_text() or len(file_numbers(messages)) > count, 60)
        finally:
            frozen.send_signal(signal.SIGCONT)
            assert stop_serve(frozen) == 0, log.read_text()[-5000:]
            if survivor is not None:
                assert stop_serve(survivor) == 0, log.read_text()[-5000:]
        assert sorted(file_numbers(messages)) == list(range(count))


@pytest.fixture(name="database_only")
def _database_only(prefix: str, pg_url: str) -> Iterator[Messages]:
    """The database writer alone: the intake writes its own batches (no writer list)."""
    with open_messages(prefix, pg_url, variant=0) as messages:
        yield messages


@pytest.mark.slow
class TestDatabaseAlone:
    """With the database writer alone, a SIGKILL before the ack is still exactly once."""

    @pytest.mark.parametrize("point", ["intake:after_take", "database:after_write"])
    def test_sigkill_then_restart(
        self, database_only: Messages, tmp_path: Path, point: str
    ) -> None:
        messages = database_only
        messages.workload.produce(messages.env, 0, PRODUCED)
        path = write_config(tmp_path / "syncd.yaml",
                            serve_config(messages, "alone", batch_size=200))
        log = tmp_path / "serve.log"
        killed(start_serve(path, log, crash_at=f"messages:{point}", crash_after=3), log)
        assert messages.pending() > 0
        restart_and_drain(messages, path, log)
        assert_exact(messages)
        assert "finished a batch left in flight" in log.read_text()
