"""Exclusive plugins across replicas: one runs, the others stand by, a stale one is fenced.

Several daemons run in this process against the same Redis and database,
each with its own ``instance``, as replicas would on several hosts. The
probe (no database) takes turns under a Redis lease; a small ledgered plugin
below takes turns under a SQL lease and shows what fencing does to a replica
that wakes up after its lease has passed on. Every lease is named after the
test's prefix, so tests never share one.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import probe_plugin
import pytest
import redis
import trio

import syncd
from syncd.config import parse_config, resolve_plugins
from syncd.errors import ConfigError
from syncd.lease import Lease, SQLLeaseStore
from syncd.manager import discover, get_plugin_manager
from syncd.sql import open_database
from syncd.supervisor import NotRunning, PluginRunner
from syncd.testing import PG_URL, connector, daemon_config, run_daemon, wait_for

#: Short, so that takeovers in these tests take a fraction of a second.
TTL = "1s"


def probe_section(prefix: str, **options: Any) -> dict[str, Any]:
    return {"key": prefix, "exclusive": True, "lease_name": prefix, "lease_ttl": TTL,
            **options}


def sample(daemon: Any, name: str, **labels: str) -> float:
    return daemon.metrics.registry.get_sample_value(name, labels) or 0.0


def starts(client: redis.Redis, prefix: str) -> int:
    return int(client.get(f"{prefix}:starts") or 0)


@asynccontextmanager
async def replica(config: dict[str, Any], plugins: list[Any]) -> AsyncIterator[Any]:
    """A daemon with its own instance name, as on another host."""
    async with run_daemon({**config, "instance": f"replica-{uuid.uuid4().hex[:6]}"},
                          plugins) as daemon:
        yield daemon


class TestStandby:
    """The lease holder runs the plugin; the others stand by, ready, and take over."""

    async def test_one_runs_the_other_stands_by(
        self, prefix: str, redis_client: redis.Redis,
    ) -> None:
        config = daemon_config({"probe": probe_section(prefix)})
        async with replica(config, [probe_plugin]) as first:
            one = first.runner("probe")
            await wait_for(lambda: one.state == "running", describe=one.status)
            async with replica(config, [probe_plugin]) as second:
                two = second.runner("probe")
                await wait_for(lambda: two.state == "standby", describe=two.status)
                status = two.status()
                assert status["exclusive"] is True
                assert status["lease"]["held"] is False
                assert status["lease"]["holder"] == first.config.instance
                assert status["lease"]["token"] == one.lease.token
                assert status["lease"]["store"] == "redis"
                assert two.not_ready() is None  # standing by is ready
                assert one.status()["lease"]["held"] is True
                assert one.status()["lease"]["since"].endswith("Z")
                assert starts(redis_client, prefix) == 1  # only the holder's worker ever ran
                with pytest.raises(NotRunning, match=f"{first.config.instance} holds its lease"):
                    await two.flush()
                # The holder stops: it hands the lease back, the other takes over.
                first.request_shutdown()
                await wait_for(lambda: two.state == "running", describe=two.status)
                assert starts(redis_client, prefix) == 2
                assert two.lease.token == 2
                assert sample(first, "syncd_lease_changes_total", plugin="probe",
                              change="released") == 1
                assert sample(second, "syncd_lease_changes_total", plugin="probe",
                              change="acquired") == 1
                assert sample(second, "syncd_lease_held", plugin="probe") == 1

    async def test_a_dead_holder_is_taken_over_once_its_lease_expires(
        self, prefix: str, redis_client: redis.Redis,
    ) -> None:
        config = daemon_config({"probe": probe_section(prefix)})
        async with replica(config, [probe_plugin]) as daemon:
            runner = daemon.runner("probe")
            await wait_for(lambda: runner.state == "running", describe=runner.status)
        # A holder that dies renews nothing and hands nothing back: take it
        # again by hand, as a replica that will never renew.
        store = daemon.runner("probe").lease.store
        ghost = Lease(store, prefix, "probe", "ghost", 1.0)
        await wait_for(ghost.acquire)
        async with replica(config, [probe_plugin]) as daemon:
            runner = daemon.runner("probe")
            await wait_for(lambda: runner.state == "running", describe=runner.status)
            seen = runner.lease.seen
            assert seen is not None and seen.previous == "ghost"

    async def test_pause_hands_the_lease_to_a_replica_standing_by(
        self, prefix: str, redis_client: redis.Redis,
    ) -> None:
        config = daemon_config({"probe": probe_section(prefix)})
        async with replica(config, [probe_plugin]) as first, \
                replica(config, [probe_plugin]) as second:
            runners = [first.runner("probe"), second.runner("probe")]
            await wait_for(lambda: sorted(r.state for r in runners) == ["running", "standby"],
                           describe=lambda: [r.status() for r in runners])
            holder, other = runners if runners[0].state == "running" else runners[::-1]
            holder.pause()
            await wait_for(lambda: other.state == "running", describe=other.status)
            assert holder.state == "paused"
            assert not holder.lease.held
            holder.resume()
            await wait_for(lambda: holder.state == "standby", describe=holder.status)
            await wait_for(lambda: other.lease.contested, describe=other.status)
            # Paused, a replica standing by stops asking; once the holder has
            # seen nobody ask for a whole ttl, it keeps the lease when paused ...
            holder.pause()
            await wait_for(lambda: not other.lease.contested, describe=other.status)
            other.pause()
            renewed = other.lease._confirmed
            await wait_for(lambda: other.lease._confirmed > renewed, describe=other.status)
            assert other.lease.held and other.state == "paused"
            # ... until a replica stands by again: then it hands it over.
            holder.resume()
            await wait_for(lambda: holder.state == "running", describe=holder.status)
            assert not other.lease.held and other.state == "paused"

    async def test_a_lone_paused_holder_keeps_its_lease(
        self, prefix: str, redis_client: redis.Redis,
    ) -> None:
        """Nobody to hand it to: pausing changes nothing but the pause (views,
        for one, keeps its pub/sub subscription)."""
        config = daemon_config({"probe": probe_section(prefix)})
        async with replica(config, [probe_plugin]) as daemon:
            runner = daemon.runner("probe")
            await wait_for(lambda: runner.state == "running", describe=runner.status)
            token, worker = runner.lease.token, runner.worker
            runner.pause()
            await wait_for(lambda: worker.parked, describe=runner.status)
            renewals = runner.lease._confirmed
            await wait_for(lambda: runner.lease._confirmed > renewals, describe=runner.status)
            assert (runner.state, runner.lease.token, runner.worker) == ("paused", token, worker)
            runner.resume()
            await wait_for(lambda: not worker.parked, describe=runner.status)
            assert starts(redis_client, prefix) == 1


class TestControlPlane:
    """``/plugins/{name}`` says who holds the lease; a standby replica is ready."""

    async def test_status_and_readiness(self, prefix: str, redis_client: redis.Redis) -> None:
        config = daemon_config({"probe": probe_section(prefix)}, http=True)
        async with replica(config, [probe_plugin]) as first, \
                replica(config, [probe_plugin]) as second:
            runners = [first.runner("probe"), second.runner("probe")]
            await wait_for(lambda: sorted(r.state for r in runners) == ["running", "standby"],
                           describe=lambda: [r.status() for r in runners])
            standby = first if runners[0].state == "standby" else second
            holder = second if standby is first else first
            async with httpx.AsyncClient(base_url=standby.http_binds[0], timeout=15) as http:
                ready = await http.get("/health/ready")
                assert ready.status_code == 200, ready.text
                assert ready.json()["plugins"]["probe"] == {
                    "state": "standby", "ok": True, "paused": False}
                body = (await http.get("/plugins/probe")).json()
                assert body["lease"]["holder"] == holder.config.instance
                assert body["lease"]["ttl_seconds"] == 1.0
                flushed = await http.post("/plugins/probe/flush")
                assert flushed.status_code == 409
                assert "standby" in flushed.json()["error"]
                metrics = (await http.get("/metrics")).text
                assert 'syncd_plugin_state{plugin="probe",state="standby"} 1.0' in metrics
                assert 'syncd_lease_held{plugin="probe"} 0.0' in metrics


# -- a plugin with a ledger, under a SQL lease ------------------------------------------


@attrs.frozen
class LedgeredConfig:
    """Attributes:
    table: A one-row table ``(id, n)``; each flush adds 1 to ``n`` under a new batch id.
    """

    table: str = "ledgered"


@attrs.define
class LedgeredWorker:
    ctx: syncd.PluginContext
    interval: float | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def flush(self) -> syncd.SyncResult:
        assert self.ctx.database is not None
        table = self.ctx.config.table
        applied, _ = await self.ctx.database.apply_batch(
            self.ctx.name, uuid.uuid4().hex,
            lambda tx: tx.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1"))
        return syncd.SyncResult(items=int(applied), batches=1)


class Ledgered:
    @syncd.hookimpl
    def syncd_plugin(self) -> syncd.PluginSpec:
        return syncd.PluginSpec(
            name="ledgered", config=LedgeredConfig, create=LedgeredWorker,
            exclusive=True, lease_name=lambda config: config.table)


@pytest.fixture(name="table")
def _table(prefix: str) -> Iterator[str]:
    def run(*statements: str) -> None:
        conn = connector(PG_URL)()
        try:
            for statement in statements:
                conn.cursor().execute(statement)
            conn.commit()
        finally:
            conn.close()

    run(f"CREATE TABLE {prefix} (id INT PRIMARY KEY, n INT NOT NULL)",
        f"INSERT INTO {prefix} VALUES (1, 0)")
    yield prefix
    run(f"DROP TABLE {prefix}", f"DELETE FROM syncd_leases WHERE name = '{prefix}'")


def value(table: str) -> int:
    conn = connector(PG_URL)()
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT n FROM {table}")
        return int(cur.fetchone()[0])
    finally:
        conn.close()


class TestFenced:
    """A replica whose lease passed on while it was frozen commits nothing, says so once,
    and stands by."""

    async def test_stale_replica_stands_by(
        self, table: str, caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.INFO, logger="syncd")
        config = daemon_config({"ledgered": {"table": table, "lease_ttl": "1h"}},
                               {"default": PG_URL})
        async with replica(config, [Ledgered()]) as daemon:
            runner: PluginRunner = daemon.runner("ledgered")
            await wait_for(lambda: runner.state == "running", describe=runner.status)
            assert (await runner.flush()).items == 1
            assert value(table) == 1
            # Another replica took the lease over while this one was frozen
            # (its hour-long lease is not due for renewal yet, so only its
            # next commit can tell it).
            db = open_database("thief", PG_URL)
            try:
                await db.execute(
                    "UPDATE syncd_leases SET holder = 'thief', token = token + 1, "
                    "expires_at = (now() AT TIME ZONE 'UTC') + interval '1 hour' "
                    "WHERE name = %s", (table,))
                with pytest.raises(syncd.Fenced):
                    await runner.flush()
                await wait_for(lambda: runner.state == "standby", describe=runner.status)
                assert value(table) == 1
                assert runner.fenced_commits == 1
                assert runner.last_error is None  # not a failure of the plugin
                assert sample(daemon, "syncd_fenced_commits_total", plugin="ledgered") == 1
                assert sample(daemon, "syncd_lease_changes_total", plugin="ledgered",
                              change="lost") == 1
                lost = [r for r in caplog.records if "lease lost" in r.getMessage()]
                assert len(lost) == 1 and "commit fenced" in lost[0].reason  # type: ignore[attr-defined]
                assert runner.status()["lease"]["holder"] == "thief"
                with pytest.raises(NotRunning, match="thief holds its lease"):
                    await runner.flush()
            finally:
                await db.aclose()

    async def test_store_is_the_plugins_database(self, table: str) -> None:
        config = daemon_config({"ledgered": {"table": table}}, {"default": PG_URL})
        async with replica(config, [Ledgered()]) as daemon:
            runner = daemon.runner("ledgered")
            await wait_for(lambda: runner.state == "running", describe=runner.status)
            assert isinstance(runner.lease.store, SQLLeaseStore)
            assert runner.lease.ttl == 10.0  # the daemon's lease_ttl
            conn = connector(PG_URL)()
            try:
                cur = conn.cursor()
                cur.execute("SELECT plugin, holder, token FROM syncd_leases WHERE name = %s",
                            (table,))
                assert cur.fetchall() == [("ledgered", daemon.config.instance, 1)]
            finally:
                conn.close()


class TestConfig:
    """``exclusive``, ``lease_ttl`` and ``lease_name`` are core keys of a plugin section."""

    def specs(self) -> dict[str, syncd.PluginSpec]:
        pm = get_plugin_manager([probe_plugin, Ledgered()])
        return {name: found.spec for name, found in discover(pm).items()}

    def resolve(self, **sections: Any) -> dict[str, Any]:
        config = parse_config({"plugins": sections, "lease_ttl": "20s"})
        return resolve_plugins(config, self.specs())

    def test_the_plugin_declares_the_default(self) -> None:
        settings = self.resolve(probe={}, ledgered={})
        assert settings["probe"].exclusive is False
        assert settings["ledgered"].exclusive is True
        assert settings["ledgered"].lease_ttl is None

    def test_overrides(self) -> None:
        settings = self.resolve(probe={"exclusive": "yes", "lease_ttl": "3s"},
                                ledgered={"exclusive": False, "lease_name": "eu"})
        assert (settings["probe"].exclusive, settings["probe"].lease_ttl) == (True, 3.0)
        assert (settings["ledgered"].exclusive, settings["ledgered"].lease_name) == (
            False, "eu")

    @pytest.mark.parametrize(("section", "message"), [
        ({"exclusive": "maybe"}, "plugins.probe.exclusive: expected true or false"),
        ({"lease_ttl": "500ms"}, "plugins.probe.lease_ttl: must be at least 1s"),
        ({"lease_ttl": "2h"}, "plugins.probe.lease_ttl: must be at least 1s and at most 3600s"),
        ({"lease_name": ""}, "plugins.probe.lease_name: must be 1 to 191 characters"),
    ])
    def test_errors(self, section: dict[str, Any], message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            self.resolve(probe=section)

    def test_global_ttl(self) -> None:
        with pytest.raises(ConfigError, match="lease_ttl: must be at least 1s"):
            parse_config({"lease_ttl": "0s"})
        assert parse_config({}).lease_ttl == 10.0
