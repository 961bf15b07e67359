"""The plugin in a real daemon (in-process) against real Redis and databases."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import trio
import trio.testing
from syncd_traffic.workload import TrafficWorkload
from traffic_support import PLUGINS, config_for

import syncd
from syncd.testing import redis_client_for, run_daemon, wait_for

pytestmark = pytest.mark.usefixtures("redis_client")


async def drain(daemon: Any, workload: TrafficWorkload, env: syncd.WorkloadEnv) -> syncd.SyncResult:
    """Flush until nothing is pending; return what the flushes did."""
    runner = daemon.runner("traffic")
    total = syncd.SyncResult()
    for _ in range(100):
        total += await runner.flush()
        if await trio.to_thread.run_sync(workload.pending, env) == 0:
            return total
    raise AssertionError("still pending after 100 flushes")


async def produce(workload: TrafficWorkload, env: syncd.WorkloadEnv, start: int, n: int) -> None:
    await trio.to_thread.run_sync(workload.produce, env, start, n)


class FlushWatch:
    """A ``syncd_sync_success`` listener: ``committed`` is set once a flush moved counters."""

    def __init__(self) -> None:
        self.committed = threading.Event()

    @syncd.hookimpl
    def syncd_sync_success(self, plugin: str, result: syncd.SyncResult, duration: float) -> None:
        if plugin == "traffic" and result.items:
            self.committed.set()


class TestExactlyOnce:
    """Every byte produced ends up in SQL once, even while producers keep writing."""

    async def test_basic_flush(self, env: syncd.WorkloadEnv, workload: TrafficWorkload,
                               db_url: str, redis_url: str) -> None:
        await produce(workload, env, 0, 5_000)
        config = config_for(workload, db_url, batch_size=700)
        config["redis"] = {"url": redis_url}
        async with run_daemon(config, PLUGINS) as daemon:
            result = await drain(daemon, workload, env)
        tally = workload.tally(env, 5_000)
        assert tally.ok, tally
        assert result.dead_lettered == tally.expected_dead
        assert result.items == 2_000  # every node once: 5,000 items fold into 2,000 keys

    @pytest.mark.parametrize("db_url", ["pg"], indirect=True)
    @pytest.mark.parametrize("redis_url", ["cluster"], indirect=True)
    async def test_basic_flush_on_a_cluster(
            self, env: syncd.WorkloadEnv, workload: TrafficWorkload, db_url: str,
            redis_url: str) -> None:
        """The same on Redis Cluster: snapshots per slot, each applied once."""
        await self.test_basic_flush(env, workload, db_url, redis_url)

    @pytest.mark.parametrize("db_url", ["mysql", "pg"], indirect=True)
    async def test_concurrent_producers(self, env: syncd.WorkloadEnv,
                                        workload: TrafficWorkload, db_url: str,
                                        redis_url: str) -> None:
        producers, per_producer, chunk = 4, 6_000, 200
        watch = FlushWatch()

        def producer(index: int) -> None:
            # Its own client, as a separate application process would have.
            client = redis_client_for(redis_url)
            own = syncd.WorkloadEnv(client, env.database_url, env.dialect, env.connect,
                                    env.prefix)
            try:
                start = index * per_producer
                for offset in range(0, per_producer, chunk):
                    # No producer writes its last chunk before a flush has
                    # committed counters: the interleaving is made, not hoped for.
                    last = offset + chunk >= per_producer
                    if last and not watch.committed.wait(60):
                        raise AssertionError("no flush committed while producers wrote")
                    workload.produce(own, start + offset, chunk)
                    # An application paces its writes; a thread that never
                    # sleeps would also hold the GIL against the daemon.
                    time.sleep(0.005)
            finally:
                client.close()

        config = config_for(workload, db_url, interval="20ms", batch_size=300)
        config["redis"] = {"url": redis_url}
        async with run_daemon(config, [*PLUGINS, watch]) as daemon:
            async with trio.open_nursery() as nursery:
                for index in range(producers):
                    nursery.start_soon(trio.to_thread.run_sync, producer, index)
            await drain(daemon, workload, env)
        tally = workload.tally(env, producers * per_producer)
        assert tally.ok, tally


class TestBadData:
    """Malformed counters are quarantined with a reason; the rest goes through."""

    @pytest.mark.parametrize("db_url", ["mysql", "pg", "sqlite"], indirect=True)
    async def test_quarantine(self, env: syncd.WorkloadEnv, workload: TrafficWorkload,
                              db_url: str) -> None:
        r = env.redis
        r.hset(workload.key(1), mapping={"upload": 10, "download": 5})
        r.hset(workload.key("abc"), mapping={"upload": 1})
        r.hset(workload.key(2), mapping={"upload": "12kb", "download": 3})
        r.hset(workload.key(3), mapping={"upload": 7, "last_seen": "yesterday"})
        r.hset(workload.key(999_999), mapping={"download": 4})
        async with run_daemon(config_for(workload, db_url), PLUGINS) as daemon:
            result = await drain(daemon, workload, env)
            metrics = daemon.metrics.exposition().decode()
        assert (result.items, result.dead_lettered) == (2, 4)
        assert _sql(env, workload) == {1: 15, 3: 7}
        letters = {
            json.loads(entry.payload)["key"]: entry
            for entry in (syncd.DeadLetter.decode(workload.dead_letter, raw)
                          for raw in r.lrange(workload.dead_letter, 0, -1))
        }
        assert set(letters) == {workload.key(k) for k in ("abc", 2, 3, 999_999)}
        assert "node id" in letters[workload.key("abc")].reason
        assert "upload not a 64-bit integer" in letters[workload.key(2)].reason
        assert json.loads(letters[workload.key(2)].payload)["values"] == {
            "upload": "12kb", "download": "3"}
        assert "unknown field" in letters[workload.key(3)].reason
        assert json.loads(letters[workload.key(3)].payload)["values"] == {
            "last_seen": "yesterday"}
        assert "no row" in letters[workload.key(999_999)].reason
        assert all(entry.plugin == "traffic" and entry.at > 0 for entry in letters.values())
        for reason in ("bad_id", "bad_value", "unknown_field", "missing_row"):
            assert f'traffic_dead_lettered_total{{reason="{reason}"}} 1.0' in metrics
        assert "traffic_nodes_flushed_total 2.0" in metrics
        assert 'syncd_dead_lettered_total{plugin="traffic"} 4.0' in metrics

    @pytest.mark.parametrize("db_url", ["mysql", "pg", "sqlite"], indirect=True)
    async def test_insert_missing(self, env: syncd.WorkloadEnv, workload: TrafficWorkload,
                                  db_url: str) -> None:
        env.redis.hset(workload.key(999_999), mapping={"upload": 4, "download": 1})
        env.redis.hset(workload.key(5), mapping={"upload": 1})
        async with run_daemon(config_for(workload, db_url, insert_missing=True),
                              PLUGINS) as daemon:
            result = await drain(daemon, workload, env)
        assert (result.items, result.dead_lettered) == (2, 0)
        assert _sql(env, workload) == {5: 1, 999_999: 5}


class TestTable:
    """The SQL side: created when missing, per-direction columns when configured."""

    @pytest.mark.parametrize("db_url", ["mysql", "pg", "sqlite"], indirect=True)
    async def test_created_with_direction_columns(
        self, env: syncd.WorkloadEnv, db_url: str, caplog: pytest.LogCaptureFixture,
    ) -> None:
        workload = TrafficWorkload(env.prefix, 10)  # no setup: the plugin makes the table
        env.redis.hset(workload.key(1), mapping={"upload": 10, "download": 5})
        env.redis.hset(workload.key(2), mapping={"download": 3})
        config = config_for(workload, db_url, upload_column="up", download_column="down",
                            insert_missing=True)
        async with run_daemon(config, PLUGINS) as daemon:
            await drain(daemon, workload, env)
        conn = env.connect()
        try:
            cur = conn.cursor()
            cur.execute(f"SELECT id, traffic_used, up, down FROM {workload.table} ORDER BY id")
            assert [tuple(row) for row in cur.fetchall()] == [(1, 15, 10, 5), (2, 3, 0, 3)]
        finally:
            conn.close()
        assert any("created the missing table" in r.getMessage() for r in caplog.records)

    async def test_no_table_no_create_fails_and_keeps_data(
        self, env: syncd.WorkloadEnv, db_url: str,
    ) -> None:
        workload = TrafficWorkload(env.prefix, 10)
        env.redis.hset(workload.key(1), mapping={"upload": 10})
        config = config_for(workload, db_url, create_table=False, interval="20ms")
        async with run_daemon(config, PLUGINS) as daemon:
            runner = daemon.runner("traffic")
            await wait_for(lambda: runner.state == "failed")
            assert runner.last_error is not None
        assert workload.pending(env) == 1  # in flight, waiting for the table


class TestOutage:
    """A database that is away fails the plugin; the data waits in Redis and catches up."""

    @pytest.mark.parametrize("db_url", ["mysql", "pg"], indirect=True)
    async def test_database_down_then_back(self, env: syncd.WorkloadEnv,
                                           workload: TrafficWorkload, db_url: str) -> None:
        await produce(workload, env, 0, 3_000)
        down = db_url.replace(":3306/", ":1/").replace(":5432/", ":1/")
        async with run_daemon(config_for(workload, down, batch_size=500), PLUGINS) as daemon:
            runner = daemon.runner("traffic")
            await wait_for(lambda: runner.state == "failed", describe=runner.status)
            assert runner.last_error["kind"] == "database"
        assert workload.pending(env) > 0
        async with run_daemon(config_for(workload, db_url, batch_size=500),
                              PLUGINS) as daemon:
            await drain(daemon, workload, env)
        tally = workload.tally(env, 3_000)
        assert tally.ok, tally


class TestMetrics:
    """The seed's metrics, under their own names, plus the core's per-plugin series."""

    @pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
    async def test_series(self, env: syncd.WorkloadEnv, workload: TrafficWorkload,
                          db_url: str) -> None:
        await produce(workload, env, 1, 50)
        async with run_daemon(config_for(workload, db_url), PLUGINS) as daemon:
            worker = daemon.runner("traffic").worker
            assert await worker.backlog() == 50
            await drain(daemon, workload, env)
            assert await worker.backlog() == 0
            text = daemon.metrics.exposition().decode()
        assert "traffic_nodes_flushed_total 50.0" in text
        assert "traffic_flush_duration_seconds_count" in text
        assert "traffic_pending_keys 0.0" in text
        assert "traffic_bytes_flushed_total" in text
        assert 'syncd_items_synced_total{plugin="traffic"} 50.0' in text

    @pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
    async def test_backlog_waits_for_a_running_flush(
        self, env: syncd.WorkloadEnv, workload: TrafficWorkload, db_url: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """No second walk of the keyspace beside a flush: the count is the flush's."""
        release = trio.Event()
        pipeline = syncd.CounterFlusher._pipeline

        async def held(self: syncd.CounterFlusher) -> Any:
            await release.wait()
            return await pipeline(self)

        await produce(workload, env, 1, 50)
        async with run_daemon(config_for(workload, db_url), PLUGINS) as daemon:
            runner = daemon.runner("traffic")
            monkeypatch.setattr(syncd.CounterFlusher, "_pipeline", held)
            answers: list[int] = []

            async def backlog() -> None:
                answers.append(await runner.worker.backlog())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(runner.flush)
                await wait_for(lambda: runner.worker.flusher.flushing)
                nursery.start_soon(backlog)
                with trio.fail_after(30):
                    await trio.testing.wait_all_tasks_blocked()
                assert answers == []  # parked, not counting beside the flush
                release.set()
            assert answers == [0]  # the flush took all 50 and said so
            assert await trio.to_thread.run_sync(workload.pending, env) == 0


def _sql(env: syncd.WorkloadEnv, workload: TrafficWorkload) -> dict[int, int]:
    conn = env.connect()
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT id, traffic_used FROM {workload.table} WHERE traffic_used <> 0")
        return {int(a): int(b) for a, b in cur.fetchall()}
    finally:
        conn.close()


class TestRefused:
    """A node the database refuses (issue 11): quarantined with the database's
    reason, every other node credited, and no crash loop."""

    BIG = 2**63 - 10

    def _produce(self, env: syncd.WorkloadEnv, workload: TrafficWorkload) -> None:
        conn = env.connect()
        try:
            conn.cursor().execute(
                f"UPDATE {workload.table} SET traffic_used = {self.BIG} WHERE id = 7")
            conn.commit()
        finally:
            conn.close()
        for node in range(1, 41):
            env.redis.hset(workload.key(node), mapping={"upload": node, "download": 100})

    def _check(self, env: syncd.WorkloadEnv, workload: TrafficWorkload) -> syncd.DeadLetter:
        in_sql = _sql(env, workload)
        assert in_sql.pop(7) == self.BIG  # untouched
        assert in_sql == {node: node + 100 for node in range(1, 41) if node != 7}
        raw = env.redis.lrange(workload.dead_letter, 0, -1)
        (letter,) = [syncd.DeadLetter.decode(workload.dead_letter, entry) for entry in raw]
        assert json.loads(letter.payload) == {
            "key": workload.key(7), "values": {"upload": "7", "download": "100"}}
        assert letter.source == workload.key(7)
        assert "refused" in letter.reason
        assert "range" in letter.reason.lower() or "overflow" in letter.reason.lower()
        return letter

    @pytest.mark.parametrize("db_url", ["mysql", "pg", "sqlite"], indirect=True)
    async def test_one_refused_node(self, env: syncd.WorkloadEnv, workload: TrafficWorkload,
                                    db_url: str) -> None:
        self._produce(env, workload)
        async with run_daemon(config_for(workload, db_url), PLUGINS) as daemon:
            result = await drain(daemon, workload, env)
            metrics = daemon.metrics.exposition().decode()
            assert daemon.runner("traffic").state == "running"
        assert (result.items, result.dead_lettered) == (39, 1)
        self._check(env, workload)
        assert 'traffic_dead_lettered_total{reason="refused"} 1.0' in metrics
        assert "traffic_nodes_flushed_total 39.0" in metrics

    @pytest.mark.parametrize("db_url", ["mysql", "pg", "sqlite"], indirect=True)
    async def test_replay_rebuilds_the_refusal_once(
        self, env: syncd.WorkloadEnv, workload: TrafficWorkload, db_url: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Lost between the SQL commit and the Redis release: the replay finds
        the batch in the ledger and rebuilds the dead letter from its detail."""
        self._produce(env, workload)
        commit = syncd.CounterSnapshots.commit
        failures = [syncd.RedisUnavailable("lost before the release")]

        async def fail_once(self: syncd.CounterSnapshots, *args: Any, **kwargs: Any) -> bool:
            if failures:
                raise failures.pop()
            return await commit(self, *args, **kwargs)

        monkeypatch.setattr(syncd.CounterSnapshots, "commit", fail_once)
        async with run_daemon(config_for(workload, db_url), PLUGINS) as daemon:
            runner = daemon.runner("traffic")
            with pytest.raises(syncd.RedisUnavailable):
                await runner.flush()
            assert env.redis.llen(workload.dead_letter) == 0
            result = await drain(daemon, workload, env)
        assert (result.items, result.skipped, result.dead_lettered) == (0, 39, 1)
        self._check(env, workload)


class TestLag:
    """lag(): an upper bound on the age of the oldest byte waiting, once known."""

    @pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
    async def test_known_after_a_flush_that_took_everything(
        self, env: syncd.WorkloadEnv, workload: TrafficWorkload, db_url: str,
    ) -> None:
        await produce(workload, env, 1, 50)
        async with run_daemon(config_for(workload, db_url), PLUGINS) as daemon:
            worker = daemon.runner("traffic").worker
            await drain(daemon, workload, env)
            lag = await worker.lag()
            assert lag is not None and 0 <= lag < 60
