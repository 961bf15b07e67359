"""The views plugin in a real daemon (in-process) against real Redis, pub/sub and databases."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis
import trio
from syncd_views.workload import ViewsWorkload, expected_views
from views_support import PLUGINS, config_for

import syncd
from syncd.testing import REDIS_URL, run_daemon, wait_for

pytestmark = pytest.mark.usefixtures("redis_client")


async def drain(daemon: Any, workload: ViewsWorkload, env: syncd.WorkloadEnv) -> syncd.SyncResult:
    """Flush until nothing is pending; return what the flushes did."""
    runner = daemon.runner("views")
    total = syncd.SyncResult()
    for _ in range(100):
        total += await runner.flush()
        if await trio.to_thread.run_sync(workload.pending, env) == 0:
            return total
    raise AssertionError("still pending after 100 flushes")


def subscribers(channel: str) -> int:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return dict(client.pubsub_numsub(channel)).get(channel.encode(), 0)
    finally:
        client.close()


def sample(daemon: Any, name: str, labels: dict[str, str] | None = None) -> float:
    return daemon.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def letters(env: syncd.WorkloadEnv, workload: ViewsWorkload) -> list[syncd.DeadLetter]:
    return [syncd.DeadLetter.decode(workload.dead_letter, raw)
            for raw in env.redis.lrange(workload.dead_letter, 0, -1)]


class TestCounters:
    """Every view INCR'd ends up in SQL once, even while producers keep writing."""

    async def test_basic_flush(self, env: syncd.WorkloadEnv, workload: ViewsWorkload,
                               db_url: str) -> None:
        await trio.to_thread.run_sync(workload.produce, env, 0, 5_000)
        async with run_daemon(config_for(workload, db_url, batch_size=700),
                              PLUGINS) as daemon:
            result = await drain(daemon, workload, env)
            assert sample(daemon, "views_vods_flushed_total") == 2_000
        tally = workload.tally(env, 5_000)
        assert tally.ok, tally
        assert result.dead_lettered == tally.expected_dead
        reasons = {letter.reason.split(":")[0] for letter in letters(env, workload)}
        assert any("no row" in r for r in reasons) and any("64-bit" in r for r in reasons)

    @pytest.mark.parametrize("db_url", ["pg", "mysql"], indirect=True)
    async def test_concurrent_incr_producers(self, env: syncd.WorkloadEnv,
                                             workload: ViewsWorkload, db_url: str) -> None:
        """Producers INCR while flushes run: each producer waits for a flush to
        commit between its chunks, so flushes and INCRs interleave for sure."""
        producers, per_producer, chunk = 3, 3_000, 300
        config = config_for(workload, db_url, interval="20ms", batch_size=250)
        async with run_daemon(config, PLUGINS) as daemon:
            runner = daemon.runner("views")

            def producer(index: int) -> None:
                client = redis.Redis.from_url(REDIS_URL)  # as a separate app would
                own = syncd.WorkloadEnv(client, env.database_url, env.dialect, env.connect,
                                        env.prefix)
                try:
                    start = index * per_producer
                    for offset in range(0, per_producer, chunk):
                        before = runner.batches
                        workload.produce(own, start + offset, chunk)
                        seen = threading.Event()
                        for _ in range(1000):  # up to 20 s for the next commit
                            if runner.batches > before:
                                seen.set()
                                break
                            seen.wait(0.02)
                        assert seen.is_set(), "no flush committed while producing"
                finally:
                    client.close()

            async with trio.open_nursery() as nursery:
                for index in range(producers):
                    nursery.start_soon(trio.to_thread.run_sync, producer, index)
            assert runner.batches >= per_producer // chunk
            await drain(daemon, workload, env)
        tally = workload.tally(env, producers * per_producer)
        assert tally.ok, tally

    @pytest.mark.parametrize("db_url", ["pg"], indirect=True)
    async def test_refused_and_missing(self, env: syncd.WorkloadEnv, workload: ViewsWorkload,
                                       db_url: str) -> None:
        """A VOD whose total would overflow is refused by the database and
        quarantined with its reason; the others are credited."""
        conn = env.connect()
        try:
            conn.cursor().execute(
                f"UPDATE {workload.table} SET views = {2**63 - 2} WHERE id = 'vod_3'")
            conn.commit()
        finally:
            conn.close()
        for n in range(1, 6):
            env.redis.incrby(workload.key(f"vod_{n}"), 5)
        env.redis.incrby(workload.key("vod_none"), 2)
        async with run_daemon(config_for(workload, db_url), PLUGINS) as daemon:
            result = await drain(daemon, workload, env)
            refused = sample(daemon, "views_dead_lettered_total", {"reason": "refused"})
        assert (result.items, result.dead_lettered, refused) == (4, 2, 1)
        assert workload.in_sql(env) == {
            "vod_1": 5, "vod_2": 5, "vod_3": 2**63 - 2, "vod_4": 5, "vod_5": 5}
        by_key = {json.loads(x.payload)["key"]: x for x in letters(env, workload)}
        assert "out of range" in by_key[workload.key("vod_3")].reason
        assert json.loads(by_key[workload.key("vod_3")].payload)["value"] == "5"
        assert "no row" in by_key[workload.key("vod_none")].reason


class TestPubSub:
    """Updates published while subscribed are all counted; a lost subscription comes back."""

    async def test_published_while_subscribed_all_counted_on_graceful_stop(
        self, env: syncd.WorkloadEnv, workload: ViewsWorkload, db_url: str,
    ) -> None:
        produced = 6_000
        async with run_daemon(config_for(workload, db_url), PLUGINS) as daemon:
            await wait_for(lambda: subscribers(workload.channel) == 1)
            assert daemon.runner("views").not_ready() is None
            heard = await trio.to_thread.run_sync(workload.publish, env, 0, produced)
            env.redis.publish(workload.channel, b"{not json")
            env.redis.publish(workload.channel, b'{"vodId": "vod_1", "count": 0}')
        # The context exit stopped the daemon: unsubscribe, store, final flush.
        assert subscribers(workload.channel) == 0
        expected = expected_views(produced, workload.vods)
        assert heard == sum(1 for i in range(produced) if i % 97)
        assert workload.in_sql(env) == expected
        reasons = sorted(letter.reason for letter in letters(env, workload))
        assert reasons == ["malformed update: count is not an integer between 1 and 1000000",
                           "malformed update: not JSON"]
        assert workload.pending(env) == 0

    @pytest.mark.parametrize("db_url", ["pg"], indirect=True)
    async def test_client_kill_resubscribes(
        self, env: syncd.WorkloadEnv, workload: ViewsWorkload, db_url: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """CLIENT KILL of our own daemon's subscription (found by its name):
        noticed, counted, not ready until it is back, then back."""
        from syncd_views.intake import Intake

        hold = threading.Event()
        hold.set()
        opened = Intake._open

        def open_when_allowed(self: Intake) -> None:
            if not hold.wait(20):
                raise redis.ConnectionError("held by the test")
            opened(self)

        monkeypatch.setattr(Intake, "_open", open_when_allowed)
        async with run_daemon(config_for(workload, db_url), PLUGINS) as daemon:
            runner = daemon.runner("views")
            intake = runner.worker.intake
            await wait_for(lambda: subscribers(workload.channel) == 1)
            name = intake.client_name
            mine = [c for c in env.redis.client_list() if c.get("name") == name]
            assert len(mine) == 1, mine
            hold.clear()  # the re-subscription waits until we have looked
            env.redis.client_kill_filter(_id=mine[0]["id"])
            await wait_for(lambda: runner.not_ready() is not None)
            assert runner.not_ready() == f"not subscribed to {workload.channel}"
            hold.set()
            await wait_for(lambda: runner.not_ready() is None)
            assert sample(daemon, "views_resubscribes_total") == 1
            assert sample(daemon, "syncd_errors_total", {"plugin": "views", "kind": "redis"}) >= 1
            again = [c for c in env.redis.client_list() if c.get("name") == name]
            assert len(again) == 1 and again[0]["id"] != mine[0]["id"]
            assert env.redis.publish(workload.channel, b'{"vodId": "vod_9", "count": 4}') == 1
        assert workload.in_sql(env) == {"vod_9": 4}

    @pytest.mark.parametrize("db_url", ["pg"], indirect=True)
    async def test_resubscribes_at_once_without_help(
        self, env: syncd.WorkloadEnv, workload: ViewsWorkload, db_url: str,
    ) -> None:
        async with run_daemon(config_for(workload, db_url), PLUGINS) as daemon:
            runner = daemon.runner("views")
            await wait_for(lambda: subscribers(workload.channel) == 1)
            name = runner.worker.intake.client_name
            (mine,) = [c for c in env.redis.client_list() if c.get("name") == name]
            env.redis.client_kill_filter(_id=mine["id"])
            await wait_for(lambda: sample(daemon, "views_resubscribes_total") == 1, timeout=10)
            await wait_for(lambda: subscribers(workload.channel) == 1)
            assert runner.state == "running" and runner.not_ready() is None


class TestTotals:
    """New totals are published after the commit that made them, and the last
    one per VOD is what SQL holds."""

    @pytest.mark.parametrize("db_url", ["pg", "mysql", "sqlite"], indirect=True)
    async def test_published_after_commit_and_last_equals_sql(
        self, env: syncd.WorkloadEnv, workload: ViewsWorkload, db_url: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        events: list[tuple[str, Any]] = []
        apply_batch = syncd.Database.apply_batch

        async def recorded(self: syncd.Database, plugin: str, batch_id: str, *args: Any,
                           **kwargs: Any) -> Any:
            result = await apply_batch(self, plugin, batch_id, *args, **kwargs)
            if plugin == "views":
                events.append(("commit", batch_id))
            return result

        monkeypatch.setattr(syncd.Database, "apply_batch", recorded)
        received: list[dict[str, Any]] = []
        listener = redis.Redis.from_url(REDIS_URL).pubsub()
        listener.subscribe(workload.totals_channel)
        stop = threading.Event()

        def listen() -> None:
            while not stop.is_set():
                message = listener.get_message(timeout=0.1)
                if message is not None and message["type"] == "message":
                    received.append(json.loads(message["data"]))

        from syncd_views.worker import ViewsWorker
        publish = ViewsWorker._publish

        async def recorded_publish(self: ViewsWorker, totals: Any) -> None:
            events.append(("publish", len(totals)))
            await publish(self, totals)

        monkeypatch.setattr(ViewsWorker, "_publish", recorded_publish)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, listen)
                async with run_daemon(config_for(workload, db_url, batch_size=300),
                                      PLUGINS) as daemon:
                    for start in (0, 1_500, 3_000):
                        await trio.to_thread.run_sync(workload.produce, env, start, 1_500)
                        await drain(daemon, workload, env)
                    expected_messages = int(sample(daemon, "views_totals_published_total"))
                await wait_for(lambda: len(received) == expected_messages)
                stop.set()
        finally:
            listener.close()
        # Every publish follows the commit of its batch, never precedes it.
        kinds = [kind for kind, _ in events]
        assert kinds.count("publish") >= 3
        for i, kind in enumerate(kinds):
            if kind == "publish":
                assert kinds[i - 1] == "commit", events
        last: dict[str, int] = {}
        for message in received:
            last[message["vodId"]] = max(last.get(message["vodId"], 0), message["views"])
        assert last == workload.in_sql(env)
        assert workload.tally(env, 4_500).ok


    @pytest.mark.parametrize("db_url", ["pg"], indirect=True)
    async def test_nobody_listening_reads_no_totals_back(
        self, env: syncd.WorkloadEnv, workload: ViewsWorkload, db_url: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """With no subscriber on the totals channel, a batch neither reads
        its totals back in SQL (a tenth of a flush) nor publishes any."""
        from syncd_views.worker import ViewsWorker

        handed: list[int] = []
        publish = ViewsWorker._publish

        async def recorded_publish(self: ViewsWorker, totals: Any) -> None:
            handed.append(len(totals))
            await publish(self, totals)

        monkeypatch.setattr(ViewsWorker, "_publish", recorded_publish)
        assert env.redis.pubsub_numsub(workload.totals_channel)[0][1] == 0
        async with run_daemon(config_for(workload, db_url, batch_size=300), PLUGINS) as daemon:
            await trio.to_thread.run_sync(workload.produce, env, 0, 1_500)
            await drain(daemon, workload, env)
            assert sample(daemon, "views_totals_published_total") == 0
        assert handed == []
        assert workload.tally(env, 1_500).ok


class TestRedisRestart:
    """A Redis of its own, stopped and started again on the same port: the
    subscription is lost, noticed, and comes back by itself."""

    @pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
    async def test_subscription_survives_a_restart(
        self, db_url: str, prefix: str, tmp_path: Any,
    ) -> None:
        import socket
        import subprocess

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                   "--appendonly", "no", "--dir", str(tmp_path)]
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        def subscribed() -> bool:
            try:
                return dict(client.pubsub_numsub(workload.channel)).get(
                    workload.channel.encode(), 0) == 1
            except redis.ConnectionError:
                return False

        server = await trio.lowlevel.open_process(command, stdout=subprocess.DEVNULL)
        workload = ViewsWorkload(prefix, 10)
        try:
            await wait_for(up)
            config = config_for(workload, db_url, insert_missing=True)
            config["redis"] = {"url": url}
            async with run_daemon(config, PLUGINS) as daemon:
                runner = daemon.runner("views")
                await wait_for(subscribed)
                server.terminate()
                await server.wait()
                await wait_for(lambda: runner.not_ready() is not None or runner.state != "running")
                server = await trio.lowlevel.open_process(command, stdout=subprocess.DEVNULL)
                await wait_for(subscribed, timeout=30)
                await wait_for(lambda: runner.state == "running" and runner.not_ready() is None,
                               timeout=30)
                assert client.publish(workload.channel, b'{"vodId": "vod_1", "count": 3}') == 1
                await wait_for(lambda: client.get(workload.key("vod_1")) == b"3")
                assert sample(daemon, "syncd_errors_total",
                              {"plugin": "views", "kind": "redis"}) >= 1
        finally:
            client.close()
            server.terminate()
            with trio.CancelScope(shield=True):
                await server.wait()
