"""``syncd serve`` as a subprocess: killed mid-flush, stopped with SIGTERM, misconfigured.

The plugin is found through its entry point, as an installed package would be.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from syncd_traffic.workload import TrafficWorkload
from traffic_support import config_for

import syncd
from syncd.testing import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("redis_client")]

#: Missing-row keys added on top of the workload, so that every batch carries
#: some and a crash after the SQL commit must rebuild them from the ledger.
EXTRA_MISSING = 200


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def serve(config: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("SYNCD_") or k.startswith("SYNCD_TEST_")}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "syncd", "serve", "--config", str(config)],
            env={**environ, **env}, stdout=out, stderr=subprocess.STDOUT,
        )


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    try:
        await wait_for(lambda: proc.poll() is not None, timeout=timeout, interval=0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode


async def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return await wait_exit(proc)


class TestCrash:
    """SIGKILL at each stage of a flush, then a restart: totals still exact."""

    @pytest.mark.parametrize("db_url", ["mysql", "pg"], indirect=True)
    @pytest.mark.parametrize("point", ["after_snapshot", "after_commit"])
    async def test_kill_and_restart(
        self, env: syncd.WorkloadEnv, workload: TrafficWorkload, db_url: str, point: str,
        tmp_path: Path,
    ) -> None:
        produced = 4_000
        workload.produce(env, 0, produced)
        for i in range(EXTRA_MISSING):
            env.redis.hincrby(workload.key(10_000_000 + i), "upload", 1)
        config = write_config(tmp_path / "syncd.yaml", config_for(
            workload, db_url, interval="200ms", batch_size=500))
        log = tmp_path / "syncd.log"
        # The second batch dies: the first is committed, the rest waits.
        crashed = serve(config, log, SYNCD_CRASH_AT=f"traffic:{point}", SYNCD_CRASH_AFTER="1")
        assert await wait_exit(crashed) == -signal.SIGKILL, log.read_text()
        assert workload.pending(env) > 0

        restarted = serve(config, log)
        try:
            await wait_for(lambda: workload.pending(env) == 0, timeout=60,
                           describe=lambda: workload.pending(env))
        finally:
            assert await stop(restarted) == 0, log.read_text()
        tally = workload.tally(env, produced)
        assert (tally.duplicates, tally.lost, tally.in_sql) == (0, 0, tally.expected), tally
        assert tally.dead_lettered == tally.expected_dead + EXTRA_MISSING, tally
        recoveries = [_fields(line) for line in log.read_text().splitlines()
                      if "finished the snapshot a previous run left in flight" in line]
        # Both lanes may hold a snapshot. Killed after the snapshot, one was
        # not applied yet and is applied now; killed after the SQL commit, the
        # ledger skips one, and its missing-row ids come from the ledger detail.
        if point == "after_snapshot":
            assert any(int(r["items"]) > 0 for r in recoveries), recoveries
        else:
            assert any(int(r["skipped"]) > 0 for r in recoveries), recoveries
        assert sum(int(r["dead_lettered"]) for r in recoveries) > 0, recoveries


def _fields(line: str) -> dict[str, str]:
    """The ``key=value`` fields of a logfmt line (values without spaces suffice here)."""
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


class TestShutdown:
    """SIGTERM under steady production: the final flush takes everything, exit 0."""

    @pytest.mark.parametrize("db_url", ["mysql"], indirect=True)
    async def test_sigterm_final_flush(
        self, env: syncd.WorkloadEnv, workload: TrafficWorkload, db_url: str, tmp_path: Path,
    ) -> None:
        config = write_config(tmp_path / "syncd.yaml", config_for(
            workload, db_url, interval="700ms", batch_size=500))
        log = tmp_path / "syncd.log"
        proc = serve(config, log)
        produced = 0
        stop_producing = threading.Event()

        def producer() -> None:
            nonlocal produced
            while not stop_producing.is_set():
                workload.produce(env, produced, 100)
                produced += 100
                time.sleep(0.01)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, producer)
            try:
                # Steady production until a timer flush has committed some of it.
                await wait_for(lambda: workload.tally(env, 0).in_sql > 0,
                               describe=log.read_text)
            finally:
                stop_producing.set()
        # Whatever the last tick left, plus all since, is for the final flush.
        # Frozen, the daemon cannot tick again before SIGTERM reaches it.
        proc.send_signal(signal.SIGSTOP)
        try:
            workload.produce(env, produced, 100)
            produced += 100
            assert workload.pending(env) > 0
            proc.send_signal(signal.SIGTERM)
        finally:
            proc.send_signal(signal.SIGCONT)
        assert await wait_exit(proc) == 0, log.read_text()
        assert workload.pending(env) == 0
        tally = workload.tally(env, produced)
        assert tally.ok, tally
        assert "final flush done" in log.read_text()


class TestConfigErrors:
    """A wrong value stops start-up with exit 2 and names the key."""

    @pytest.mark.parametrize(("option", "value", "message"), [
        ("interval", "soon", "plugins.traffic.interval: expected a duration"),
        ("key_pattern", "node:traffic", "plugins.traffic.key_pattern: must contain {node_id}"),
        ("batch_size", 0, "plugins.traffic.batch_size: must be between 1 and"),
        ("table", "nodes; DROP", "plugins.traffic.table: must be a SQL table name"),
        ("total_column", None, "plugins.traffic.total_column: set at least one"),
        ("insert_missing", "maybe", "plugins.traffic.insert_missing: expected true or false"),
        ("intervall", "5m", "plugins.traffic.intervall: unknown key (did you mean 'interval'?)"),
    ])
    def test_exit_2(self, tmp_path: Path, sqlite_url: str, option: str, value: Any,
                    message: str) -> None:
        workload = TrafficWorkload("cfg")
        config = config_for(workload, sqlite_url, **{option: value})
        path = write_config(tmp_path / "syncd.yaml", config)
        done = subprocess.run(
            [sys.executable, "-m", "syncd", "serve", "--config", str(path)],
            capture_output=True, text=True, timeout=30, check=False,
        )
        assert done.returncode == 2, done.stderr
        assert message in done.stderr + done.stdout
