"""``syncd serve`` SIGKILLed while jobs run: they come back, and the balances are right.

The real command runs as a subprocess with the plugin found through its
entry point. Jobs active at the kill come back through BullMQ's stalled
check (short locks here), are retried with their backoff, and finish.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
import trio
import yaml
from portfolio_support import (
    FlakyRPC,
    Ganache,
    Producer,
    fund,
    new_wallet,
    pg_rows,
    section,
    user_job,
)

import syncd
from syncd.keys import key_slot
from syncd.redis import is_cluster_url
from syncd.testing import LocalCluster, redis_client_for, wait_for


def serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "syncd", "serve", "--config", str(config)],
                                env=env, stdout=out, stderr=subprocess.STDOUT)


async def stop_cleanly(proc: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM: a graceful stop, exit 0 within 30 s."""
    proc.send_signal(signal.SIGTERM)
    code = await trio.to_thread.run_sync(proc.wait, 30)
    if code != 0:
        raise AssertionError(f"exit {code}: {(await trio.Path(log).read_text())[-3000:]}")


def funded_users(ganache: Ganache, tokens: list[str]) -> dict[str, list[str]]:
    """Eight users of two wallets each, every wallet holding something."""
    users = {f"user{i}": [new_wallet(), new_wallet()] for i in range(8)}
    for i, wallets in enumerate(users.values()):
        for j, wallet in enumerate(wallets):
            fund(ganache, tokens, wallet, 2 * i + j)
    return users


def write_config(path: Path, *, redis_url: str, pg_url: str, prefix: str, rpc_url: str,
                 bull: str, instance: str) -> Path:
    path.write_text(yaml.safe_dump({
        "redis": {"url": redis_url},
        "databases": {"default": pg_url},
        "http": {"enabled": False},
        "instance": instance,
        "shutdown_grace": "10s",
        "plugins": {"portfolio": {**section(prefix, rpc_url, concurrency=4), "prefix": bull}},
    }))
    return path


@pytest.mark.slow
class TestSigkill:
    """Killed mid-jobs, restarted: every job completes once more, balances match the chain."""

    @pytest.mark.parametrize("redis_url", ["redis", "cluster"], indirect=True)
    async def test_jobs_come_back(self, prefix: str, tables: str, pg_url: str, ganache: Ganache,
                                  tokens: list[str], redis_url: str, tmp_path: Path) -> None:
        queue = f"{prefix}_q"
        # On a cluster BullMQ's keys share a slot through the prefix's hash tag.
        bull = "{bull}" if is_cluster_url(redis_url) else "bull"
        producer = Producer(redis_url, bull)
        users = funded_users(ganache, tokens)
        flaky = FlakyRPC(ganache.url)
        flaky.delay = 0.3  # each job takes a few tenths of a second: some are in flight
        client = redis_client_for(redis_url)
        active = lambda: client.llen(f"{bull}:{queue}:active")  # noqa: E731
        completed = lambda: client.zcard(f"{bull}:{queue}:completed")  # noqa: E731
        async with trio.open_nursery() as nursery:
            url = await nursery.start(flaky.serve)
            config = write_config(tmp_path / "syncd.yaml", redis_url=redis_url, pg_url=pg_url,
                                  prefix=prefix, rpc_url=url, bull=bull,
                                  instance=f"{prefix}-crashy")
            log = tmp_path / "serve.log"
            proc = serve(config, log)
            try:
                await trio.to_thread.run_sync(producer.add, queue, [
                    {"name": "portfolio-sync", "data": user_job(u, w, tokens)}
                    for u, w in users.items()])
                await wait_for(lambda: completed() >= 2 and active() >= 1, timeout=60)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                assert active() >= 1, log.read_text()[-3000:]
                assert completed() < len(users)

                proc = serve(config, log)
                await wait_for(lambda: completed() == len(users), timeout=90)
                await stop_cleanly(proc, log)
            finally:
                syncd.stop_process(proc)
                client.close()
            nursery.cancel_scope.cancel()
        await assert_synced(producer, queue, users, ganache, tokens, pg_url, prefix)
        assert "stalled job retried with backoff" in log.read_text()

    async def test_failover_of_the_jobs_master_mid_run(
            self, prefix: str, tables: str, pg_url: str, ganache: Ganache, tokens: list[str],
            redis_cluster: LocalCluster, tmp_path: Path) -> None:
        """CLUSTER FAILOVER of the master holding BullMQ's keys while jobs run:
        the plugin's connections to it fail (the slot moved), it restarts on
        the promoted replica, and every job completes, once, with the right balances."""
        if not redis_cluster.running:
            pytest.skip("needs the cluster this session started")
        queue, bull = f"{prefix}_q", "{bull}"
        producer = Producer(redis_cluster.url, bull)
        users = funded_users(ganache, tokens)
        flaky = FlakyRPC(ganache.url)
        flaky.delay = 0.3
        client = redis_client_for(redis_cluster.url)
        completed = lambda: client.zcard(f"{bull}:{queue}:completed")  # noqa: E731
        async with trio.open_nursery() as nursery:
            url = await nursery.start(flaky.serve)
            config = write_config(tmp_path / "syncd.yaml", redis_url=redis_cluster.url,
                                  pg_url=pg_url, prefix=prefix, rpc_url=url, bull=bull,
                                  instance=f"{prefix}-failover")
            log = tmp_path / "serve.log"
            proc = serve(config, log)
            try:
                await trio.to_thread.run_sync(producer.add, queue, [
                    {"name": "portfolio-sync", "data": user_job(u, w, tokens)}
                    for u, w in users.items()])
                await wait_for(lambda: completed() >= 2, timeout=60)
                old = redis_cluster.owner(key_slot(bull))
                await trio.to_thread.run_sync(redis_cluster.fail_over, old)
                assert redis_cluster.owner(key_slot(bull)) != old
                await wait_for(lambda: completed() == len(users), timeout=90,
                               ignore=(redis.RedisError,),
                               describe=lambda: log.read_text()[-3000:])
                await stop_cleanly(proc, log)
            finally:
                syncd.stop_process(proc)
                client.close()
            nursery.cancel_scope.cancel()
        await assert_synced(producer, queue, users, ganache, tokens, pg_url, prefix)
        assert 'msg="worker failed"' in log.read_text()  # it did lose its node mid-run


async def assert_synced(producer: Producer, queue: str, users: dict[str, list[str]],
                        ganache: Ganache, tokens: list[str], pg_url: str, prefix: str) -> None:
    """Every job completed once; the balances in SQL are the chain's."""
    counts = await trio.to_thread.run_sync(producer.counts, queue)
    assert counts["completed"] == len(users)
    assert counts["active"] == counts["failed"] == 0
    rows = pg_rows(pg_url, f'SELECT user_id, wallet, token, balance FROM "{prefix}_balances"')
    found = {(u, w, t): int(b) for u, w, t, b in rows}
    expected: dict[tuple[str, str, str], Any] = {}
    for user, wallets in users.items():
        for wallet in wallets:
            expected[(user, wallet, "native")] = ganache.native_balance(wallet)
            for token in tokens:
                expected[(user, wallet, token)] = ganache.token_balance(token, wallet)
    assert found == expected
    states = pg_rows(pg_url, f'SELECT state, count(*) FROM "{prefix}_jobs" GROUP BY state')
    assert states == [("completed", len(users))]
