"""The control plane over a real socket: health, metrics, plugin control, auth, errors.

Every test runs a whole daemon (real Redis, real PostgreSQL) in its nursery
and talks to it with httpx. Backends are broken without touching the shared
servers: a private redis-server on a free port, and a TCP proxy in front of
PostgreSQL that can be stopped, stalled and restarted.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import redis
import trio
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

import syncd
from syncd.control import PROBE_TIMEOUT
from syncd.testing import PG_URL, daemon_config, run_daemon, wait_for

ROOT = Path(__file__).parent.parent
TOKEN = "s3cret-token-for-tests"


# -- the test plugin ---------------------------------------------------------------------


@attrs.frozen
class TickerConfig:
    """Attributes:
    key: Redis key prefix of its counters.
    tick: Pause between batches.
    crash: Fail at start-up, every time (stays ``failed`` between restarts).
    crash_after: Crash after this many batches (0 = never), then restart.
    flush_error: ``transient`` or ``bug`` makes flush() raise.
    flush_delay: Seconds a flush takes.
    clash: Also ask for a route that collides with the core's ``/plugins``.
    """

    key: str = "ticker"
    tick: syncd.Duration = syncd.Duration(0.01)
    crash: bool = False
    crash_after: int = 0
    flush_error: str = ""
    flush_delay: syncd.Duration = syncd.Duration(0)
    clash: bool = False


#: Flushes of the ticker whose ``key`` is here wait for the event first: a
#: test holds a flush open for exactly as long as it needs.
FLUSH_HOLDS: dict[str, trio.Event] = {}


@attrs.define(eq=False)
class TickerWorker:
    """INCRs ``{key}:count`` once per batch, waiting on the gate in between."""

    ctx: syncd.PluginContext
    interval: float | None = None
    batches: int = 0
    #: True while it waits at a paused gate: no batch can start until resume.
    parked: bool = False
    #: What the optional readiness hook answers (None: ready).
    unready: str | None = None

    def not_ready(self) -> str | None:
        return self.unready

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.ctx.config
        if config.crash:
            raise RuntimeError("ticker cannot start")
        task_status.started()
        key = f"{config.key}:count"
        while True:
            # Read and acted on with no checkpoint between: True means it blocks.
            self.parked = self.ctx.gate.paused
            await self.ctx.gate.wait()
            self.parked = False
            await self.ctx.redis.run(lambda r: r.incr(key))
            self.batches += 1
            self.ctx.report(syncd.SyncResult(items=1, batches=1))
            if config.crash_after and self.batches >= config.crash_after:
                raise RuntimeError("ticker crashed on purpose")
            await trio.sleep(config.tick)

    async def flush(self) -> syncd.SyncResult:
        config = self.ctx.config
        if (hold := FLUSH_HOLDS.get(config.key)) is not None:
            await hold.wait()
        if config.flush_delay:
            await trio.sleep(config.flush_delay)
        if config.flush_error == "transient":
            raise syncd.RedisUnavailable("redis went away during the flush")
        if config.flush_error == "bug":
            raise ValueError("flush bug")
        key = f"{config.key}:flushes"
        flushes = await self.ctx.redis.run(lambda r: r.incr(key))
        return syncd.SyncResult(items=3, batches=1, detail={"flushes": flushes})


class Ticker:
    """The plugin: a spec and two HTTP routes bound to the running worker."""

    @syncd.hookimpl
    def syncd_plugin(self) -> syncd.PluginSpec:
        return syncd.PluginSpec(name="ticker", config=TickerConfig, create=TickerWorker,
                                uses_database=False)

    @syncd.hookimpl
    def syncd_http_routes(self, plugin: str, worker: Any) -> list[syncd.Route] | None:
        if plugin != "ticker":
            return None

        async def whoami() -> dict[str, Any]:
            return {"worker": id(worker), "batches": worker.batches}

        async def bump() -> tuple[dict[str, Any], int]:
            worker.batches += 1000
            return {"batches": worker.batches}, 201

        async def boom() -> None:
            raise ZeroDivisionError("a bug in a plugin route")

        routes = [
            syncd.Route("/ticker/whoami", whoami),
            syncd.Route("/ticker/bump", bump, methods=("POST",)),
            syncd.Route("/ticker/boom", boom),
        ]
        if worker.ctx.config.clash:
            routes.append(syncd.Route("/plugins", whoami))
        return routes


# -- helpers --------------------------------------------------------------------------------


@asynccontextmanager
async def control_plane(
    plugins: dict[str, Any], *, token: str | None = None, **overrides: Any
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """A daemon running the ticker with its control plane, and a client for it."""
    http = overrides.pop("http", {})
    config = daemon_config(plugins, http=True, token=token, **overrides)
    config["http"].update(http)
    async with run_daemon(config, [Ticker()]) as daemon:
        assert len(daemon.http_binds) == 1
        async with httpx.AsyncClient(base_url=daemon.http_binds[0], timeout=15) as client:
            yield daemon, client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def count(client: redis.Redis, key: str) -> int:
    return int(client.get(key) or 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert the answer is the control plane's JSON error with this status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == status
    assert isinstance(body["error"], str) and body["error"]
    return body


@attrs.define
class PrivateRedis:
    """A redis-server of our own, so the tests can kill it and bring it back."""

    port: int = attrs.Factory(free_port)
    proc: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = await trio.lowlevel.open_process(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            # Refused at once until the server listens.
            await wait_for(client.ping, interval=0.05, ignore=(redis.ConnectionError,))
        finally:
            client.close()

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            await self.proc.wait()
            self.proc = None


@pytest.fixture(name="private_redis")
async def _private_redis() -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis()
    await server.start()
    yield server
    await server.stop()


@attrs.define(eq=False)
class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target``; can be stopped, stalled and restarted.

    Stopped, connections are refused (the backend is away). Stalled, bytes stop
    flowing both ways while connections stay open (the backend hangs).
    """

    target: tuple[str, int]
    port: int = 0
    _flowing: trio.Event = attrs.Factory(trio.Event)
    _scope: trio.CancelScope | None = None
    _stopped: trio.Event = attrs.Factory(trio.Event)

    def __attrs_post_init__(self) -> None:
        self._flowing.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._stopped = trio.Event()
        try:
            with trio.CancelScope() as self._scope:
                listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
                self.port = listeners[0].socket.getsockname()[1]
                async with trio.open_nursery() as nursery:
                    await nursery.start(trio.serve_listeners, self._handle, listeners)
                    task_status.started()
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()
        await self._stopped.wait()

    def stall(self) -> None:
        self._flowing = trio.Event()

    def unstall(self) -> None:
        self._flowing.set()

    async def _handle(self, downstream: trio.SocketStream) -> None:
        async with downstream:
            try:
                upstream = await trio.open_tcp_stream(*self.target)
            except OSError:
                return
            async with upstream, trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, downstream, upstream, nursery.cancel_scope)
                nursery.start_soon(self._pump, upstream, downstream, nursery.cancel_scope)

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream,
                    done: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(65536):
                await self._flowing.wait()
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()


def proxied_pg_url(port: int) -> str:
    url = httpx.URL(PG_URL)
    return str(url.copy_with(host="127.0.0.1", port=port))


# -- health ----------------------------------------------------------------------------------


class TestHealth:
    """Liveness, the seed's /health, and readiness that follows the backends."""

    async def test_everything_fine(self, prefix: str) -> None:
        async with control_plane({"ticker": {"key": prefix}}) as (daemon, client):
            response = await client.get("/health")
            assert response.status_code == 200
            body = response.json()
            assert body["status"] == "healthy"
            assert body["service"] == "syncd"
            assert body["redis"] == "connected"
            assert body["database"] == "connected"
            assert body["databases"] == {"default": "connected"}
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["timestamp"])

            assert (await client.get("/ping")).json()["status"] == "ok"
            live = await client.get("/health/live")
            assert live.status_code == 200 and live.json()["status"] == "alive"

            ready = await client.get("/health/ready")
            assert ready.status_code == 200, ready.text
            body = ready.json()
            assert body["status"] == "ready" and body["reasons"] == []
            assert set(body["checks"]) == {"redis", "database:default"}
            for check in body["checks"].values():
                assert check["ok"] is True and check["latency_ms"] >= 0
                assert "error" not in check
            assert body["plugins"]["ticker"]["state"] == "running"
            assert body["shutting_down"] is False

            sample = daemon.metrics.registry.get_sample_value
            assert sample("health_checks_total", {"status": "healthy"}) == 2
            assert sample("health_checks_total", {"status": "unhealthy"}) == 0

    async def test_a_worker_may_say_it_is_not_ready(self, prefix: str) -> None:
        """The optional ``not_ready()`` hook: a running plugin that cannot do
        its job (views while unsubscribed) makes readiness 503, with its reason."""
        async with control_plane({"ticker": {"key": prefix}}) as (daemon, client):
            worker = daemon.runner("ticker").worker
            assert (await client.get("/health/ready")).status_code == 200
            worker.unready = "not subscribed to somewhere"
            ready = await client.get("/health/ready")
            assert ready.status_code == 503
            body = ready.json()
            assert body["reasons"] == ["plugin ticker: not subscribed to somewhere"]
            assert body["plugins"]["ticker"]["ok"] is False
            assert body["plugins"]["ticker"]["reason"] == "not subscribed to somewhere"
            worker.unready = None
            assert (await client.get("/health/ready")).status_code == 200

    async def test_readiness_follows_redis(self, prefix: str, private_redis: PrivateRedis) -> None:
        overrides = {"redis": {"url": private_redis.url}}
        async with control_plane({"ticker": {"key": prefix}}, **overrides) as (daemon, client):
            assert (await client.get("/health/ready")).status_code == 200

            await private_redis.stop()
            ready = await client.get("/health/ready")
            assert ready.status_code == 503
            body = ready.json()
            assert body["status"] == "not_ready"
            assert body["checks"]["redis"]["ok"] is False
            assert body["checks"]["redis"]["error"]
            assert body["checks"]["database:default"]["ok"] is True
            assert any(reason.startswith("redis:") for reason in body["reasons"])
            health = await client.get("/health")
            assert health.status_code == 503
            assert health.json()["redis"] == "disconnected"
            assert health.json()["database"] == "connected"
            # The ticker needs Redis too: it fails and waits to be restarted.
            await wait_for(lambda: daemon.runner("ticker").state == "failed")

            await private_redis.start()

            async def ready_again() -> bool:
                return (await client.get("/health/ready")).status_code == 200

            await wait_for(ready_again, timeout=15, interval=0.2)
            assert (await client.get("/health")).json()["status"] == "healthy"
            await wait_for(lambda: daemon.runner("ticker").state == "running")
            assert daemon.metrics.registry.get_sample_value("redis_errors_total") > 0

    async def test_readiness_follows_each_database(self, prefix: str) -> None:
        proxy = TcpProxy(("127.0.0.1", httpx.URL(PG_URL).port or 5432))
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)
            databases = {"default": PG_URL, "flaky": proxied_pg_url(proxy.port)}
            async with control_plane({"ticker": {"key": prefix}}, databases=databases) as (
                daemon, client
            ):
                ready = await client.get("/health/ready")
                assert ready.status_code == 200, ready.text
                assert ready.json()["checks"]["database:flaky"]["ok"] is True

                await proxy.stop()
                ready = await client.get("/health/ready")
                assert ready.status_code == 503
                checks = ready.json()["checks"]
                assert checks["database:flaky"]["ok"] is False
                assert checks["database:default"]["ok"] is True
                assert checks["redis"]["ok"] is True
                health = (await client.get("/health")).json()
                assert health["status"] == "unhealthy"
                assert health["database"] == "disconnected"
                assert health["databases"] == {"default": "connected", "flaky": "disconnected"}

                await nursery.start(proxy.serve)

                async def ready_again() -> bool:
                    return (await client.get("/health/ready")).status_code == 200

                await wait_for(ready_again, timeout=15, interval=0.2)
                errors = daemon.metrics.registry.get_sample_value(
                    "database_errors_total", {"database": "flaky"})
                assert errors > 0
            await proxy.stop()

    async def test_a_hung_backend_cannot_hang_the_endpoint(self, prefix: str) -> None:
        """A probe stuck in a driver thread is reported on time, and shared by callers."""
        proxy = TcpProxy(("127.0.0.1", httpx.URL(PG_URL).port or 5432))
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)
            databases = {"default": PG_URL, "flaky": proxied_pg_url(proxy.port)}
            async with control_plane({"ticker": {"key": prefix}}, databases=databases) as (
                _daemon, client
            ):
                assert (await client.get("/health/ready")).status_code == 200
                proxy.stall()
                answers: list[httpx.Response] = []

                async def ask() -> None:
                    # A hung endpoint would exceed the client's 15 s timeout.
                    answers.append(await client.get("/health/ready"))

                async with trio.open_nursery() as askers:
                    for _ in range(5):
                        askers.start_soon(ask)
                assert len(answers) == 5
                for response in answers:
                    assert response.status_code == 503
                    check = response.json()["checks"]["database:flaky"]
                    assert check["ok"] is False
                    assert check["error"] == f"no answer within {PROBE_TIMEOUT:g}s"
                    assert response.json()["checks"]["database:default"]["ok"] is True

                proxy.unstall()

                async def ready_again() -> bool:
                    return (await client.get("/health/ready")).status_code == 200

                await wait_for(ready_again, timeout=15, interval=0.2)
            await proxy.stop()

    async def test_failed_plugin_is_not_ready(self, prefix: str) -> None:
        async with control_plane({"ticker": {"key": prefix, "crash": True}}) as (daemon, client):
            await wait_for(lambda: daemon.runner("ticker").state == "failed")
            listed = (await client.get("/plugins")).json()
            assert listed[0]["state"] in ("failed", "starting")
            assert listed[0]["last_error"]["message"] == "ticker cannot start"

            async def failed_and_not_ready() -> dict[str, Any] | None:
                # Between two restarts it is "failed"; during one, briefly "starting".
                ready = await client.get("/health/ready")
                body = ready.json()
                return body if ready.status_code == 503 and body["plugins"]["ticker"][
                    "state"] == "failed" else None

            body = await wait_for(failed_and_not_ready)
            assert body["checks"]["redis"]["ok"] is True
            assert "plugin ticker is failed" in body["reasons"]
            assert body["plugins"]["ticker"] == {"state": "failed", "ok": False, "paused": False}
            # /health is the seed's: it speaks of the backends only.
            assert (await client.get("/health")).status_code == 200

    async def test_not_ready_while_shutting_down(self, prefix: str) -> None:
        # The final flush waits for the test: the control plane serves until it ends.
        FLUSH_HOLDS[prefix] = hold = trio.Event()
        try:
            async with control_plane({"ticker": {"key": prefix}}) as (daemon, client):
                daemon.request_shutdown()
                ready = await client.get("/health/ready")
                assert ready.status_code == 503
                assert ready.json()["shutting_down"] is True
                assert "shutting down" in ready.json()["reasons"]
                # Liveness is not readiness: the process still answers.
                assert (await client.get("/health/live")).status_code == 200
                hold.set()
        finally:
            hold.set()
            del FLUSH_HOLDS[prefix]


# -- metrics ----------------------------------------------------------------------------------


class TestMetrics:
    """Prometheus text from the daemon's own registry, parseable and complete."""

    async def test_exposition(self, prefix: str) -> None:
        async with control_plane({"ticker": {"key": prefix}}) as (daemon, client):
            await wait_for(lambda: daemon.runner("ticker").items_synced >= 3)
            await client.get("/health")
            response = await client.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"] == CONTENT_TYPE_LATEST
            families = {f.name: f for f in text_string_to_metric_families(response.text)}
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for f in families.values() for s in f.samples
            }
            assert samples[("syncd_items_synced_total", (("plugin", "ticker"),))] >= 3
            running = ("syncd_plugin_state", (("plugin", "ticker"), ("state", "running")))
            assert samples[running] == 1
            assert samples[("syncd_plugin_paused", (("plugin", "ticker"),))] == 0
            assert samples[("health_checks_total", (("status", "healthy"),))] == 1
            assert samples[("health_checks_total", (("status", "unhealthy"),))] == 0
            assert samples[("redis_errors_total", ())] == 0
            assert samples[("database_errors_total", (("database", "default"),))] == 0
            assert ("process_resident_memory_bytes", ()) in samples
            assert ("process_cpu_seconds_total", ()) in samples
            assert "python_info" in families

    async def test_pause_shows_in_metrics(self, prefix: str) -> None:
        async with control_plane({"ticker": {"key": prefix}}) as (_daemon, client):
            await client.post("/plugins/ticker/pause")
            text = (await client.get("/metrics")).text
            assert 'syncd_plugin_paused{plugin="ticker"} 1.0' in text
            assert 'syncd_plugin_state{plugin="ticker",state="paused"} 1.0' in text


# -- plugins ----------------------------------------------------------------------------------


class TestPlugins:
    """Status, pause, resume and flush, per plugin."""

    async def test_list_and_get(self, prefix: str) -> None:
        async with control_plane({"ticker": {"key": prefix}}) as (_daemon, client):
            listed = (await client.get("/plugins")).json()
            assert [p["name"] for p in listed] == ["ticker"]
            one = (await client.get("/plugins/ticker")).json()
            assert one["name"] == "ticker" and one["state"] == "running"
            assert one["paused"] is False
            assert {"items_synced", "batches", "backlog", "last_error", "last_success",
                    "restarts"} <= set(one)

    async def test_unknown_plugin(self, prefix: str) -> None:
        async with control_plane({"ticker": {"key": prefix}}, token=TOKEN) as (_d, client):
            body = is_error(await client.get("/plugins/nope"), 404)
            assert "nope" in body["error"]
            for action in ("pause", "resume", "flush"):
                is_error(await client.post(f"/plugins/nope/{action}", headers=bearer(TOKEN)),
                         404)

    async def test_pause_stops_intake_within_a_second_and_resume_restarts_it(
        self, prefix: str, redis_client: redis.Redis
    ) -> None:
        key = f"{prefix}:count"
        async with control_plane({"ticker": {"key": prefix}}) as (daemon, client):
            await wait_for(lambda: count(redis_client, key) >= 3)
            response = await client.post("/plugins/ticker/pause")
            assert response.status_code == 200
            assert response.json()["paused"] is True
            assert response.json()["state"] == "paused"
            shown = (await client.get("/plugins/ticker")).json()
            assert shown["paused"] is True and shown["state"] == "paused"
            # A batch in flight may still land; then it waits at the gate.
            await wait_for(lambda: daemon.runner("ticker").worker.parked)
            stopped_at = count(redis_client, key)
            await trio.sleep(0.3)  # nothing moves while parked (waiting only makes it stricter)
            assert count(redis_client, key) == stopped_at
            assert daemon.runner("ticker").state == "paused"

            response = await client.post("/plugins/ticker/resume")
            assert response.status_code == 200
            assert response.json()["paused"] is False
            assert response.json()["state"] == "running"
            await wait_for(lambda: count(redis_client, key) >= stopped_at + 3)

    async def test_flush(self, prefix: str, redis_client: redis.Redis) -> None:
        async with control_plane({"ticker": {"key": prefix}}) as (_daemon, client):
            response = await client.post("/plugins/ticker/flush")
            assert response.status_code == 200, response.text
            assert response.json() == {"plugin": "ticker", "items": 3, "batches": 1,
                                       "dead_lettered": 0, "skipped": 0,
                                       "detail": {"flushes": 1}}
            assert count(redis_client, f"{prefix}:flushes") == 1

    async def test_flush_survives_the_client_hanging_up(
        self, prefix: str, redis_client: redis.Redis
    ) -> None:
        config = {"ticker": {"key": prefix, "flush_delay": "300ms"}}
        async with control_plane(config) as (_daemon, client):
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/plugins/ticker/flush", timeout=0.05)
            await wait_for(lambda: count(redis_client, f"{prefix}:flushes") == 1)

    async def test_flush_of_a_plugin_that_is_not_running(self, prefix: str) -> None:
        async with control_plane({"ticker": {"key": prefix, "crash": True}}) as (daemon, client):
            await wait_for(lambda: daemon.runner("ticker").state == "failed")
            body = is_error(await client.post("/plugins/ticker/flush"), 409)
            assert "ticker" in body["error"]

    @pytest.mark.parametrize(("mode", "status", "text"), [
        ("transient", 503, "RedisUnavailable: redis went away during the flush"),
        ("bug", 500, "ValueError: flush bug"),
    ])
    async def test_flush_errors(self, prefix: str, mode: str, status: int, text: str) -> None:
        async with control_plane({"ticker": {"key": prefix, "flush_error": mode}}) as (
            daemon, client
        ):
            body = is_error(await client.post("/plugins/ticker/flush"), status)
            assert body["error"] == text
            assert daemon.runner("ticker").last_error["message"] == text.split(": ", 1)[1]
            # A failed manual flush does not make the plugin failed.
            assert daemon.runner("ticker").state == "running"


# -- plugin routes ---------------------------------------------------------------------------


class TestPluginRoutes:
    """Routes a plugin adds through syncd_http_routes."""

    async def test_mounted_and_protected(self, prefix: str) -> None:
        async with control_plane({"ticker": {"key": prefix}}, token=TOKEN) as (daemon, client):
            response = await client.get("/ticker/whoami")
            assert response.status_code == 200
            assert response.json()["worker"] == id(daemon.runner("ticker").worker)
            is_error(await client.post("/ticker/bump"), 401)
            is_error(await client.post("/ticker/bump", headers=bearer("wrong")), 401)
            response = await client.post("/ticker/bump", headers=bearer(TOKEN))
            assert response.status_code == 201
            assert response.json()["batches"] >= 1000
            is_error(await client.get("/ticker/bump"), 405)

    async def test_reach_the_worker_that_runs_now(self, prefix: str) -> None:
        config = {"ticker": {"key": prefix, "crash_after": 3}}
        async with control_plane(config) as (daemon, client):
            runner = daemon.runner("ticker")
            first = runner.worker

            async def answered_by_the_current_worker() -> bool:
                # It crashes every 3 batches: ask again if it was replaced meanwhile.
                worker = runner.worker
                if worker is first or runner.state != "running":
                    return False
                answer = (await client.get("/ticker/whoami")).json()["worker"]
                return answer == id(worker) and worker is runner.worker

            await wait_for(answered_by_the_current_worker)

    async def test_a_bug_in_a_route_is_a_json_500(self, prefix: str) -> None:
        async with control_plane({"ticker": {"key": prefix}}) as (_daemon, client):
            body = is_error(await client.get("/ticker/boom"), 500)
            assert body["error"] == "internal server error"
            assert "ZeroDivisionError" not in (await client.get("/ticker/boom")).text

    async def test_a_clashing_route_is_not_mounted(self, prefix: str) -> None:
        async with control_plane({"ticker": {"key": prefix, "clash": True}}) as (_d, client):
            listed = (await client.get("/plugins")).json()
            assert isinstance(listed, list) and listed[0]["name"] == "ticker"


# -- security -------------------------------------------------------------------------------


class TestAuth:
    """A token guards every state change; reading stays open."""

    async def test_with_a_token(self, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG)
        async with control_plane({"ticker": {"key": prefix}}, token=TOKEN) as (_d, client):
            for path in ("/", "/health", "/ping", "/health/live", "/health/ready", "/metrics",
                         "/plugins", "/plugins/ticker"):
                assert (await client.get(path)).status_code == 200, path
            for headers in ({}, bearer("wrong"), bearer(TOKEN + "x"), {"Authorization": "Bearer"},
                            {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}):
                response = await client.post("/plugins/ticker/pause", headers=headers)
                is_error(response, 401)
                assert response.headers["www-authenticate"].startswith("Bearer")
            assert (await client.get("/plugins/ticker")).json()["paused"] is False
            for action in ("pause", "resume", "flush"):
                response = await client.post(f"/plugins/ticker/{action}", headers=bearer(TOKEN))
                assert response.status_code == 200, (action, response.text)
            # Other non-GET methods are state-changing too.
            is_error(await client.delete("/plugins/ticker"), 401)
            is_error(await client.put("/plugins/ticker/pause"), 401)
            response = await client.post("/plugins/ticker/pause",
                                         headers={"Authorization": f"bearer {TOKEN}"})
            assert response.status_code == 200
        assert TOKEN not in caplog.text

    async def test_without_a_token(self, prefix: str) -> None:
        async with control_plane({"ticker": {"key": prefix}}) as (_daemon, client):
            assert (await client.post("/plugins/ticker/pause")).status_code == 200
            assert (await client.post("/plugins/ticker/resume")).status_code == 200
            host = httpx.URL(str(client.base_url)).netloc.decode()
            same_origin = {"Origin": f"http://{host}"}
            assert (await client.post("/plugins/ticker/pause", headers=same_origin)
                    ).status_code == 200
            # A page elsewhere (or rebinding its DNS name to 127.0.0.1) cannot drive it.
            is_error(await client.post("/plugins/ticker/resume",
                                       headers={"Origin": "https://evil.example"}), 403)
            is_error(await client.post("/plugins/ticker/resume",
                                       headers={"Host": "evil.example"}), 403)
            is_error(await client.post("/plugins/ticker/resume", headers={"Origin": "null"}),
                     403)
            assert (await client.get("/plugins/ticker")).json()["paused"] is True

    def test_serve_refuses_a_public_listen_without_a_token(self, tmp_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
        env["SYNCD_HTTP__LISTEN"] = "0.0.0.0:0"
        env["SYNCD_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        proc = subprocess.run([sys.executable, "-m", "syncd", "serve"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert "http.token" in lines[0] and "0.0.0.0:0" in lines[0]


# -- errors ----------------------------------------------------------------------------------


class TestErrors:
    """Every error is JSON, never an HTML page or a traceback."""

    async def test_not_found_and_method_not_allowed(self, prefix: str) -> None:
        async with control_plane({"ticker": {"key": prefix}}) as (_daemon, client):
            assert is_error(await client.get("/nope"), 404)["error"] == "not found"
            response = await client.get("/plugins/ticker/pause")
            assert is_error(response, 405)["error"] == "method not allowed"
            assert "POST" in response.headers["allow"]
            is_error(await client.post("/health"), 405)

    async def test_body_too_large(self, prefix: str) -> None:
        async with control_plane({"ticker": {"key": prefix}}, token=TOKEN,
                                  http={"max_body": 1024}) as (_daemon, client):
            response = await client.post("/plugins/ticker/pause", headers=bearer(TOKEN),
                                         content=b"x" * 2048)
            assert is_error(response, 413)

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(4):
                    yield b"y" * 512

            # No Content-Length: the body is counted as it arrives.
            response = await client.post("/plugins/ticker/pause", headers=bearer(TOKEN),
                                         content=chunks())
            assert is_error(response, 413)
            assert (await client.get("/plugins/ticker")).json()["paused"] is False
            response = await client.post("/plugins/ticker/pause", headers=bearer(TOKEN),
                                         content=b"x" * 1000)
            assert response.status_code == 200


# -- the page for people ---------------------------------------------------------------------


class TestDashboard:
    """The status page is served with a policy that lets only its own script run."""

    async def test_page(self, prefix: str) -> None:
        async with control_plane({"ticker": {"key": prefix}}) as (_daemon, client):
            response = await client.get("/")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/html")
            page = response.text
            assert "<title>syncd</title>" in page
            assert "innerHTML" not in page
            script = page.split("<script>", 1)[1].split("</script>", 1)[0]
            digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
            policy = response.headers["content-security-policy"]
            assert f"script-src 'sha256-{digest}'" in policy
            assert "connect-src 'self'" in policy
            # The page polls these.
            assert "fetch(\"plugins\"" in page
            assert 'sessionStorage' in page
