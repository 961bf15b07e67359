"""Quarantined counters replayed once their rows exist: killed mid-requeue, each node's
bytes are in exactly one place; finished and flushed, they are in SQL exactly once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from syncd_traffic.judge import restore
from syncd_traffic.workload import TrafficWorkload
from traffic_support import PLUGINS, config_for

import syncd
from syncd.testing import run_daemon

#: Nodes whose counters arrive before their rows exist.
LATE = 450


def dead_letters(config: Path, *args: str, crash_at: str | None = None,
                 ) -> subprocess.CompletedProcess[str]:
    """``syncd dead-letters ARGS -c CONFIG`` as its own process, as an operator runs it."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SYNCD_") or k.startswith("SYNCD_TEST_")}
    if crash_at:
        env["SYNCD_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "syncd", "dead-letters", *args, "-c", str(config)],
                          env=env, capture_output=True, text=True, timeout=60)


class TestRestore:
    """A counter's entry maps back to HINCRBYs of its own key; junk values refuse."""

    def test_values_go_back_onto_their_fields(self) -> None:
        payload = json.dumps({"key": "node:\udcff7:traffic", "values": {"upload": "5",
                                                                       "download": "-2"}})
        ops = restore(syncd.DeadLetter("dead", payload, "r", "traffic"))
        assert ops == [syncd.Restore.hincrby(b"node:\xff7:traffic", b"upload", 5),
                       syncd.Restore.hincrby(b"node:\xff7:traffic", b"download", -2)]

    @pytest.mark.parametrize("payload", [
        '{"key": "k", "values": {"upload": "12abc"}}', '{"key": "k", "values": {}}',
        '{"values": {"upload": "1"}}', "not json",
    ])
    def test_what_cannot_be_added_back_is_refused(self, payload: str) -> None:
        with pytest.raises(syncd.NotRequeueable):
            restore(syncd.DeadLetter("dead", payload, "r", "traffic"))


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["pg"], indirect=True)
async def test_requeue_killed_midway_then_flushed_counts_every_byte_once(
    env: syncd.WorkloadEnv, workload: TrafficWorkload, tmp_path: Path,
) -> None:
    first = workload.nodes + 1
    late = {first + i: (i + 1, 2 * i) for i in range(LATE)}
    with env.redis.pipeline() as pipe:
        for node, (up, down) in late.items():
            pipe.hincrby(workload.key(node), "upload", up)
            pipe.hincrby(workload.key(node), "download", down)
        pipe.execute()
    config = config_for(workload, env.database_url)
    async with run_daemon(config, PLUGINS) as daemon:
        result = await daemon.runner("traffic").flush()
    assert result.dead_lettered == LATE
    assert env.redis.llen(workload.dead_letter) == LATE

    # The operator adds the missing rows and replays the quarantine; the first
    # run dies (SIGKILL) between two round trips of its requeue.
    with contextlib.closing(env.connect()) as conn:
        conn.cursor().executemany(f"INSERT INTO {workload.table} (id) VALUES (%s)",
                                  [(node,) for node in late])
        conn.commit()
    path = tmp_path / "syncd.yaml"
    path.write_text(yaml.safe_dump(config))
    killed = dead_letters(path, "requeue", "traffic", "--all",
                          crash_at="traffic:requeue_round_trip")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    dead = {int(json.loads(json.loads(raw)["payload"])["key"].split(":")[-2])
            for raw in env.redis.lrange(workload.dead_letter, 0, -1)}
    back = {node for node in late if env.redis.exists(workload.key(node))}
    assert 0 < len(back) < LATE, "the kill must fall in the middle of the requeue"
    assert not dead & back
    assert dead | back == set(late)

    finished = dead_letters(path, "requeue", "traffic", "--all")
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == f"requeued {len(dead)}"

    async with run_daemon(config, PLUGINS) as daemon:
        result = await daemon.runner("traffic").flush()
    assert (result.items, result.dead_lettered) == (LATE, 0)
    with contextlib.closing(env.connect()) as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT id, traffic_used FROM {workload.table} WHERE id >= %s", (first,))
        stored = dict(cur.fetchall())
    assert stored == {node: up + down for node, (up, down) in late.items()}
    assert env.redis.llen(workload.dead_letter) == 0
