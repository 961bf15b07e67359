"""The supervisor: crash isolation, restart with backoff, pause, flush, shutdown."""

from __future__ import annotations

import logging
from typing import Any

import attrs
import probe_plugin
import pytest
import redis
import trio

import syncd
from syncd.supervisor import NotRunning
from syncd.testing import daemon_config, run_daemon, wait_for


class Listener:
    """Records every lifecycle event, as a plugin observing them would."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []

    @syncd.hookimpl
    def syncd_worker_started(self, plugin: str, config: Any) -> None:
        self.events.append(("worker_started", plugin, config))

    @syncd.hookimpl
    def syncd_worker_stopped(self, plugin: str) -> None:
        self.events.append(("worker_stopped", plugin, None))

    @syncd.hookimpl
    def syncd_sync_success(self, plugin: str, result: syncd.SyncResult, duration: float) -> None:
        self.events.append(("sync_success", plugin, result))

    @syncd.hookimpl
    def syncd_sync_error(self, plugin: str, error: BaseException) -> None:
        self.events.append(("sync_error", plugin, error))

    def names(self, plugin: str | None = None) -> list[str]:
        return [e[0] for e in self.events if plugin is None or e[1] == plugin]


class Twin:
    """A second copy of the probe under another name, to check isolation."""

    @syncd.hookimpl
    def syncd_plugin(self) -> syncd.PluginSpec:
        return syncd.PluginSpec(name="twin", config=probe_plugin.ProbeConfig,
                                create=probe_plugin.ProbeWorker, uses_database=False)


def counter(client: redis.Redis, key: str) -> int:
    return int(client.get(key) or 0)


class TestCrashes:
    """One plugin's crash is its own business."""

    async def test_crash_restarts_and_others_never_notice(
        self, prefix: str, redis_client: redis.Redis
    ) -> None:
        listener = Listener()
        config = daemon_config({
            "probe": {"key": f"{prefix}:a", "crash_every": 3},
            "twin": {"key": f"{prefix}:b"},
        })
        async with run_daemon(config, [probe_plugin, Twin(), listener]) as daemon:
            probe, twin = daemon.runner("probe"), daemon.runner("twin")
            await wait_for(lambda: probe.restarts >= 2, describe=probe.status)
            assert counter(redis_client, f"{prefix}:a:starts") >= 2
            assert probe.last_error["type"] == "RuntimeError"
            assert "probe crashed after batch 3" in probe.last_error["message"]
            assert twin.restarts == 0
            assert twin.state == "running"
            errors = [e for e in listener.events if e[0] == "sync_error"]
            assert errors and all(e[1] == "probe" for e in errors)
            assert isinstance(errors[0][2], RuntimeError)
            assert "worker_stopped" in listener.names("probe")
            restarts = daemon.metrics.registry.get_sample_value(
                "syncd_plugin_restarts_total", {"plugin": "probe"})
            assert restarts == probe.restarts

    async def test_failing_start_does_not_block_the_daemon(
        self, prefix: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="syncd")

        def delays() -> list[float]:
            return [r.in_seconds for r in caplog.records  # type: ignore[attr-defined]
                    if r.getMessage() == "restarting worker" and r.plugin == "probe"]

        config = daemon_config({
            "probe": {"key": f"{prefix}:a", "fail_start": True},
            "twin": {"key": f"{prefix}:b"},
        })
        async with run_daemon(config, [probe_plugin, Twin()]) as daemon:
            probe = daemon.runner("probe")
            assert probe.state == "failed"
            assert daemon.supervisor.failed == ["probe"]
            await wait_for(lambda: len(delays()) >= 3, describe=delays)
            assert counter(redis_client, f"{prefix}:a:starts") >= 3
            # Backoff doubles from 0.5 s and is capped by restart_backoff_max (1 s here).
            assert delays()[:3] == [0.5, 1.0, 1.0]
            assert probe.restarts >= 3
            with pytest.raises(NotRunning):
                await probe.flush()
            assert daemon.runner("twin").state == "running"


class TestPause:
    """Pause stops intake at the next batch boundary, within a second."""

    async def test_pause_and_resume(self, prefix: str, redis_client: redis.Redis) -> None:
        config = daemon_config({"probe": {"key": f"{prefix}:a", "tick": "20ms"}})
        async with run_daemon(config, [probe_plugin]) as daemon:
            probe = daemon.runner("probe")
            await wait_for(lambda: counter(redis_client, f"{prefix}:a:batches") >= 3)
            probe.pause()
            assert probe.status()["paused"] is True
            assert probe.status()["state"] == "paused"
            # The batch in flight finishes; then the worker waits at the gate.
            await wait_for(lambda: probe.worker.parked)
            frozen = counter(redis_client, f"{prefix}:a:batches")
            await trio.sleep(0.3)  # nothing moves while parked (waiting only makes it stricter)
            assert counter(redis_client, f"{prefix}:a:batches") == frozen
            probe.resume()
            assert probe.status()["state"] == "running"
            await wait_for(lambda: counter(redis_client, f"{prefix}:a:batches") > frozen + 2)


class TestFlush:
    """Flush on demand, on a timer, and one last time at shutdown."""

    async def test_manual_flush_reports(self, prefix: str, redis_client: redis.Redis) -> None:
        listener = Listener()
        config = daemon_config({"probe": {"key": f"{prefix}:a", "tick": "1s"}})
        async with run_daemon(config, [probe_plugin, listener]) as daemon:
            probe = daemon.runner("probe")
            result = await probe.flush()
            assert result.detail == {"flushes": 1}
            status = probe.status()
            assert status["last_success"] is not None
            assert status["items_synced"] >= 1
            assert any(e[0] == "sync_success" and e[2] is result for e in listener.events)
        # The final flush at shutdown is the second one.
        assert counter(redis_client, f"{prefix}:a:flushes") == 2
        assert probe.state == "stopped"

    async def test_interval_timer(self, prefix: str, redis_client: redis.Redis) -> None:
        config = daemon_config({"probe": {"key": f"{prefix}:a", "interval": "50ms"}})
        async with run_daemon(config, [probe_plugin]):
            await wait_for(lambda: counter(redis_client, f"{prefix}:a:flushes") >= 3)

    async def test_backlog_is_polled(self, prefix: str) -> None:
        config = daemon_config({"probe": {"key": f"{prefix}:a"}})
        async with run_daemon(config, [probe_plugin]) as daemon:
            await wait_for(lambda: daemon.runner("probe").backlog == 7)
            assert daemon.metrics.registry.get_sample_value(
                "syncd_backlog", {"plugin": "probe"}) == 7


class TestShutdown:
    """The final flush is shielded but bounded by shutdown_grace."""

    async def test_slow_final_flush_is_cut_at_the_deadline(
        self, prefix: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="syncd")
        config = daemon_config(
            {"probe": {"key": f"{prefix}:a", "flush_delay": "30s"}}, shutdown_grace="300ms")
        async with run_daemon(config, [probe_plugin]) as daemon:
            pass
        assert daemon.runner("probe").state == "stopped"
        # Cut before its 30 s were up (it counts only once done), and said so.
        assert redis_client.get(f"{prefix}:a:flushes") is None
        assert any("did not finish before the shutdown deadline" in r.getMessage()
                   for r in caplog.records)

    async def test_paused_plugin_is_not_flushed_at_shutdown(
        self, prefix: str, redis_client: redis.Redis
    ) -> None:
        config = daemon_config({"probe": {"key": f"{prefix}:a"}})
        async with run_daemon(config, [probe_plugin]) as daemon:
            daemon.runner("probe").pause()
        assert daemon.runner("probe").state == "stopped"
        assert redis_client.get(f"{prefix}:a:flushes") is None

    async def test_cancelled_daemon_still_flushes(
        self, prefix: str, redis_client: redis.Redis
    ) -> None:
        from syncd.config import parse_config
        from syncd.daemon import Daemon
        from syncd.manager import get_plugin_manager

        config = parse_config(daemon_config({"probe": {"key": f"{prefix}:a"}}))
        daemon = Daemon.build(config, get_plugin_manager([probe_plugin], autoload=False))
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.serve)
            nursery.cancel_scope.cancel()
        assert counter(redis_client, f"{prefix}:a:flushes") == 1


class TestEvents:
    """Lifecycle events reach listeners in order; a broken listener is harmless."""

    async def test_started_then_stopped(self, prefix: str) -> None:
        listener = Listener()

        class Broken:
            @syncd.hookimpl
            def syncd_sync_success(self, plugin: str, result: object, duration: float) -> None:
                raise ValueError("listener bug")

        config = daemon_config({"probe": {"key": f"{prefix}:a"}})
        async with run_daemon(config, [probe_plugin, listener, Broken()]) as daemon:
            await wait_for(lambda: daemon.runner("probe").batches >= 3)
            assert daemon.runner("probe").restarts == 0
        names = listener.names("probe")
        assert names[0] == "worker_started"
        assert names[-1] == "worker_stopped"
        assert "sync_success" in names
        started = listener.events[0][2]
        assert isinstance(started, probe_plugin.ProbeConfig)


class TestDaemonServices:
    """What the root nursery offers besides the plugins."""

    async def test_asyncio_libraries_can_run(self) -> None:
        import asyncio

        import attrs
        import trio_asyncio

        seen: list[str] = []

        async def asyncio_only() -> str:
            await asyncio.sleep(0.01)
            return "from asyncio"

        @attrs.define
        class AsyncioWorker:
            ctx: syncd.PluginContext
            interval = None

            async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
                seen.append(await trio_asyncio.aio_as_trio(asyncio_only)())
                task_status.started()

            async def flush(self) -> syncd.SyncResult:
                return syncd.SyncResult()

        class AsyncioPlugin:
            @syncd.hookimpl
            def syncd_plugin(self) -> syncd.PluginSpec:
                return syncd.PluginSpec(name="aio", config=probe_plugin.ProbeConfig,
                                        create=AsyncioWorker, uses_database=False)

        async with run_daemon(daemon_config({"aio": {}}), [AsyncioPlugin()]) as daemon:
            assert seen == ["from asyncio"]
            assert daemon.runner("aio").restarts == 0

    async def test_ledger_is_pruned(self, prefix: str, sqlite_url: str) -> None:
        config = daemon_config({"probe": {"key": f"{prefix}:a"}}, {"default": sqlite_url})
        async with run_daemon(config, [probe_plugin]) as daemon:
            db = daemon.databases["default"]
            applied, _ = await db.apply_batch("probe", "b1", lambda tx: None)
            assert applied
            await trio.sleep(0.01)  # strictly older than "now" (microsecond timestamps)
            assert await daemon.prune_ledgers_once() == 0  # 30 days by default
            assert await daemon.prune_ledgers_once(retention=0) == 1
            assert await db.ledger_entry("probe", "b1") is None


class TestStopRace:
    """A worker erroring while it is being stopped is recorded, not fatal."""

    async def test_error_racing_the_stop_does_not_escape(self) -> None:
        import attrs

        @attrs.define
        class RacingWorker:
            ctx: syncd.PluginContext
            interval = None

            async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
                task_status.started()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._lane)
                    await trio.sleep_forever()

            async def _lane(self) -> None:
                try:
                    await trio.sleep_forever()
                finally:
                    # Like a thread hop that returns a database error just as
                    # the cancel lands: the group mixes Cancelled and this.
                    raise RuntimeError("backend error racing the stop")

            async def flush(self) -> syncd.SyncResult:
                return syncd.SyncResult()

        class Racing:
            @syncd.hookimpl
            def syncd_plugin(self) -> syncd.PluginSpec:
                return syncd.PluginSpec(name="racing", config=probe_plugin.ProbeConfig,
                                        create=RacingWorker, uses_database=False)

        async with run_daemon(daemon_config({"racing": {}}), [Racing()]) as daemon:
            pass
        runner = daemon.runner("racing")
        assert runner.state == "stopped"
        assert runner.last_error["message"] == "backend error racing the stop"


async def test_redis_connections_carry_the_instance_name(
    prefix: str, redis_client: redis.Redis
) -> None:
    config = daemon_config({"probe": {"key": f"{prefix}:a"}})
    async with run_daemon(config, [probe_plugin]) as daemon:
        await wait_for(lambda: counter(redis_client, f"{prefix}:a:batches") >= 1)
        names = {c["name"] for c in redis_client.client_list()}
        assert f"syncd:{daemon.config.instance}" in names


@attrs.frozen
class _SinkConfig:
    pass


@attrs.define
class _SinkWorker:
    """Retries a sink of its own while it keeps running, and says so in its status."""

    ctx: syncd.PluginContext
    interval: float | None = None
    attempts: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        self.attempts += 1
        self.ctx.report_error(syncd.TransientError("sink b is down"))
        await trio.sleep_forever()

    async def flush(self) -> syncd.SyncResult:
        return syncd.SyncResult()

    def status(self) -> dict[str, Any]:
        return {"sinks": {"a": "ok", "b": "retrying"}, "attempts": self.attempts}


class _Sink:
    @syncd.hookimpl
    def syncd_plugin(self) -> syncd.PluginSpec:
        return syncd.PluginSpec(name="sink", config=_SinkConfig, create=_SinkWorker,
                                uses_database=False)


class TestWorkerReports:
    """A worker that handles a failure itself reports it without being restarted,
    and adds its own facts to its status."""

    async def test_report_error_and_status_detail(self) -> None:
        listener = Listener()
        async with run_daemon(daemon_config({"sink": {}}), [_Sink(), listener]) as daemon:
            runner = daemon.runner("sink")
            await wait_for(lambda: runner.last_error is not None)
            status = runner.status()
            assert status["state"] == "running" and runner.restarts == 0
            assert status["last_error"]["message"] == "sink b is down"
            assert status["last_error"]["kind"] == "transient"
            assert status["detail"] == {"sinks": {"a": "ok", "b": "retrying"}, "attempts": 1}
            errors = [e for e in listener.events if e[0] == "sync_error"]
            assert [(e[1], str(e[2])) for e in errors] == [("sink", "sink b is down")]
            assert daemon.metrics.registry.get_sample_value(
                "syncd_errors_total", {"plugin": "sink", "kind": "transient"}) == 1
