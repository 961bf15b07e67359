"""Real replicas: a holder frozen mid-batch can never commit; a queue's dead replicas are reclaimed.

Three ``syncd serve`` processes run an exclusive counter plugin (traffic,
views: each installed plugin found through its workload, as ``syncd chaos``
finds them) against one Redis and one database. The first takes the lease,
commits a batch, then freezes itself with SIGSTOP between its next snapshot
and that snapshot's commit (the ``after_snapshot`` stop point, so the moment
is exact and no transaction of its is open). Its lease runs out; another
replica takes it over, finishes the frozen snapshot from Redis and goes on.
Then the first is woken with SIGCONT: it carries on with the commit it was
about to make, the database refuses it (its fencing token is stale), it
says so once and stands by. Every unit produced is in SQL exactly once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from syncd.harness.chaos import SyncdProcess, free_port, http
from syncd.harness.env import (
    DATABASES,
    REDIS_URL,
    Subject,
    clear_keys,
    find_subjects,
    open_env,
)
from syncd.manager import get_plugin_manager
from syncd.testing import wait_for
from syncd.workload import WorkloadEnv

pytestmark = pytest.mark.slow

#: Short, so that the takeover comes soon after the freeze.
LEASE_TTL = "2s"
#: Items per chunk produced: few enough that each flush is one snapshot,
#: taken while no transaction of the holder's is open.
CHUNK = 400


def subject_for(plugin: str) -> Subject:
    try:
        return find_subjects(get_plugin_manager(), [plugin], stem="proof")[0]
    except LookupError as exc:
        pytest.skip(str(exc))


#: Plugin options for the counter plugins: small flushes, often.
COUNTERS = {"interval": "200ms", "batch_size": 5000}


def replica(subject: Subject, database: str, instance: str, tmp_path: Path,
            options: dict[str, Any], **env: str) -> SyncdProcess:
    port = free_port()
    config = {
        "redis": {"url": REDIS_URL},
        "databases": {database: DATABASES[database]},
        "http": {"enabled": True, "listen": f"127.0.0.1:{port}"},
        "shutdown_grace": "20s",
        "restart_backoff_max": "1s",
        "lease_ttl": LEASE_TTL,
        "instance": instance,
        "log_level": "info",
        "plugins": {subject.plugin: {**dict(subject.workload.options), "database": database,
                                     **options}},
    }
    path = tmp_path / f"{instance}.yaml"
    path.write_text(json.dumps(config))
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("SYNCD_") or k.startswith("SYNCD_TEST_")}
    return SyncdProcess(path, port, tmp_path / f"{instance}.log", {**base, **env})


@pytest.fixture(name="workload_env")
def _workload_env(request: pytest.FixtureRequest) -> Iterator[tuple[Subject, str, WorkloadEnv]]:
    plugin, database = request.param
    subject = subject_for(plugin)
    with open_env(DATABASES[database], subject.prefix) as env:
        workload = subject.workload
        if workload.teardown is not None:
            workload.teardown(env)
        workload.setup(env)
        try:
            yield subject, database, env
        finally:
            if workload.teardown is not None:
                workload.teardown(env)
            clear_keys(env.redis, subject.prefix)


async def status(proc: SyncdProcess, plugin: str) -> dict[str, Any]:
    return await http(proc.url, "GET", f"/plugins/{plugin}")


@pytest.mark.parametrize("workload_env", [("traffic", "mysql"), ("views", "pg")],
                         ids=["traffic-mysql", "views-pg"], indirect=True)
async def test_frozen_holder_is_fenced(
    workload_env: tuple[Subject, str, WorkloadEnv], tmp_path: Path,
) -> None:
    subject, database, env = workload_env
    plugin, workload = subject.plugin, subject.workload
    produced = 0

    def produce() -> None:
        nonlocal produced
        workload.produce(env, produced, CHUNK)
        produced += CHUNK

    def pending() -> int:
        return workload.pending(env)

    first = replica(subject, database, "first", tmp_path, COUNTERS,
                    SYNCD_STOP_AT=f"{plugin}:after_snapshot", SYNCD_STOP_AFTER="1")
    others = [replica(subject, database, name, tmp_path, COUNTERS)
              for name in ("second", "third")]
    everyone = [first, *others]
    try:
        await first.start()
        await wait_for(lambda: _held(first, plugin), ignore=(OSError, Exception))
        # Its first snapshot commits (the stop point lets one pass) ...
        produce()
        await wait_for(lambda: first.frozen or pending() == 0, describe=pending)
        if not first.frozen:
            # ... and the next one freezes it, between snapshot and commit.
            produce()
            await wait_for(lambda: first.frozen, describe=pending)
        assert workload.tally(env, produced).in_sql > 0
        assert pending() > 0  # the frozen snapshot is in flight in Redis

        for proc in others:
            await proc.start()
        # The lease runs out; one of the others takes it over and finishes
        # the frozen replica's snapshot from Redis; and goes on from there.
        await wait_for(lambda: pending() == 0, timeout=60, describe=pending)
        produce()
        await wait_for(lambda: pending() == 0, timeout=60, describe=pending)
        assert first.frozen
        holders = [await status(proc, plugin) for proc in others]
        taker = next(s for s in holders if s["lease"]["held"])
        assert taker["lease"]["token"] >= 2
        assert taker["state"] == "running"
        assert [s["state"] for s in holders].count("standby") == 1

        # Woken, the frozen replica makes the commit it was about to make:
        # the database refuses it, and it stands by.
        first.thaw()
        frozen_view = await wait_for(
            lambda: _fenced(first, plugin), timeout=60, ignore=(OSError, Exception))
        assert frozen_view["state"] == "standby"
        assert frozen_view["fenced_commits"] == 1
        assert frozen_view["lease"]["holder"] != "first"
        # Standing by, it asks for the lease again and learns who holds it.
        holder = await wait_for(lambda: _holder(first, plugin), timeout=60,
                                ignore=(OSError, Exception))
        assert holder in ("second", "third")
        log = first.log.read_text()
        lost = [line for line in log.splitlines() if "lease lost; standing by" in line]
        assert len(lost) == 1, lost
        assert "commit fenced" in lost[0]

        produce()
        await wait_for(lambda: pending() == 0, timeout=60, describe=pending)
        for proc in everyone:
            assert await proc.terminate(60) == 0, proc.log.read_text()[-3000:]
    finally:
        with trio.CancelScope(shield=True):
            for proc in everyone:
                await proc.kill()
                proc.close()
    tally = workload.tally(env, produced)
    assert (tally.duplicates, tally.lost, tally.in_sql) == (0, 0, tally.expected), tally
    assert tally.dead_lettered == tally.expected_dead, tally


async def _held(proc: SyncdProcess, plugin: str) -> bool:
    view = await status(proc, plugin)
    return bool(view["lease"]["held"]) and view["state"] == "running"


async def _holder(proc: SyncdProcess, plugin: str) -> str | None:
    return (await status(proc, plugin))["lease"]["holder"]


async def _fenced(proc: SyncdProcess, plugin: str) -> dict[str, Any] | None:
    view = await status(proc, plugin)
    return view if view["fenced_commits"] and view["state"] == "standby" else None


#: Queue plugins: small batches, and a replica silent for 2 s counts as dead.
QUEUES = {"batch_size": 50, "heartbeat_ttl": "2s", "block": "200ms"}


@pytest.mark.parametrize("workload_env", [("votes", "mysql")], ids=["votes-mysql"],
                         indirect=True)
async def test_queue_reclaims_killed_and_frozen_replicas(
    workload_env: tuple[Subject, str, WorkloadEnv], tmp_path: Path,
) -> None:
    """Queue plugins stay shared-nothing: each replica has its own processing
    lists. One replica is killed and one frozen, each holding a batch; the
    third reclaims both. The frozen one, woken, finds its batch finished:
    the ledger lets nothing through twice, its ack changes nothing."""
    subject, database, env = workload_env
    plugin, workload = subject.plugin, subject.workload
    produced = 0

    def produce(count: int) -> None:
        nonlocal produced
        workload.produce(env, produced, count)
        produced += count

    def pending() -> int:
        return workload.pending(env)

    killed = replica(subject, database, "killed", tmp_path, QUEUES,
                     SYNCD_CRASH_AT=f"{plugin}:after_take")
    frozen = replica(subject, database, "frozen", tmp_path, QUEUES,
                     SYNCD_STOP_AT=f"{plugin}:after_take")
    survivor = replica(subject, database, "survivor", tmp_path, QUEUES)
    everyone = [killed, frozen, survivor]
    try:
        produce(2000)
        # Each takes a batch into its processing list, then dies or freezes.
        await killed.start(wait=False)
        await wait_for(lambda: not killed.running, timeout=60)
        await frozen.start(wait=False)
        await wait_for(lambda: frozen.frozen, timeout=60)
        in_their_lists = pending()
        await survivor.start()
        produce(1000)
        # The survivor drains the queue, then reclaims both orphaned batches
        # once their heartbeats have run out.
        await wait_for(lambda: pending() == 0, timeout=90, describe=pending)
        assert in_their_lists > 0
        log = survivor.log.read_text()
        reclaimed = {line.split("consumer=")[1].split()[0] for line in log.splitlines()
                     if "finished the batch of a dead consumer" in line}
        assert {name.split("#")[0] for name in reclaimed} == {"killed", "frozen"}, reclaimed

        # Woken, the frozen replica applies its batch: the ledger says done.
        frozen.thaw()
        del killed.env["SYNCD_CRASH_AT"]  # back, as a replica restarted after a crash
        await killed.start()
        produce(1000)
        await wait_for(lambda: pending() == 0, timeout=90, describe=pending)
        for proc in everyone:
            assert await proc.terminate(60) == 0, proc.log.read_text()[-3000:]
    finally:
        with trio.CancelScope(shield=True):
            for proc in everyone:
                await proc.kill()
                proc.close()
    tally = workload.tally(env, produced)
    assert (tally.duplicates, tally.lost, tally.in_sql) == (0, 0, tally.expected), tally
    assert tally.dead_lettered == tally.expected_dead, tally
