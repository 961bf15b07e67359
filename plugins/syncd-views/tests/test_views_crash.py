"""``syncd serve`` as a subprocess, SIGKILLed at the crash points, then restarted:
every view is in SQL exactly once, every bad counter dead-lettered once.

The plugin is found through its entry point, as an installed package would be.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from syncd_views.workload import ViewsWorkload
from views_support import config_for

import syncd
from syncd.testing import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("redis_client")]

#: Counters of VODs with no row, on top of the workload: every batch carries
#: some, so a crash after the SQL commit must rebuild them from the ledger.
EXTRA_MISSING = 150


def serve(config: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("SYNCD_") or k.startswith("SYNCD_TEST_")}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "syncd", "serve", "--config", str(config)],
            env={**environ, **env}, stdout=out, stderr=subprocess.STDOUT,
        )


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    try:
        await wait_for(lambda: proc.poll() is not None, timeout=timeout, interval=0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.mark.parametrize(("db_url", "redis_url", "point"), [
    ("pg", "redis", "after_snapshot"), ("pg", "redis", "after_commit"),
    ("mysql", "redis", "after_snapshot"), ("mysql", "redis", "after_commit"),
    ("pg", "cluster", "after_commit"),
], indirect=["db_url", "redis_url"])
async def test_kill_and_restart(
    env: syncd.WorkloadEnv, workload: ViewsWorkload, db_url: str, point: str, tmp_path: Path,
    redis_url: str,
) -> None:
    produced = 4_000
    workload.produce(env, 0, produced)
    for i in range(EXTRA_MISSING):
        env.redis.incrby(workload.key(f"gone_{i}"), 1)
    config = tmp_path / "syncd.yaml"
    settings = config_for(workload, db_url, interval="200ms", batch_size=500)
    settings["redis"] = {"url": redis_url}
    config.write_text(yaml.safe_dump(settings))
    log = tmp_path / "syncd.log"
    # The second batch dies: the first is committed, the rest waits.
    crashed = serve(config, log, SYNCD_CRASH_AT=f"views:{point}", SYNCD_CRASH_AFTER="1")
    assert await wait_exit(crashed) == -signal.SIGKILL, log.read_text()
    assert workload.pending(env) > 0

    restarted = serve(config, log)
    try:
        await wait_for(lambda: workload.pending(env) == 0, timeout=30)
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert await wait_exit(restarted) == 0, log.read_text()
    tally = workload.tally(env, produced)
    assert (tally.duplicates, tally.lost, tally.in_sql) == (0, 0, tally.expected), tally
    assert tally.dead_lettered == tally.expected_dead + EXTRA_MISSING, tally
    recoveries = [line for line in log.read_text().splitlines()
                  if "finished the snapshot a previous run left in flight" in line]
    assert recoveries, log.read_text()[-3000:]
    if point == "after_commit":
        assert any("skipped=0" not in line for line in recoveries), recoveries
