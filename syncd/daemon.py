"""The root of everything: one nursery holding the supervisor and the control plane.

::

    Daemon.serve
    └── trio-asyncio loop (for plugins that need asyncio-only libraries)
        └── root nursery
            ├── supervisor → one runner per enabled plugin
            ├── control plane (hypercorn + quart-trio)
            └── signal watcher: SIGTERM/SIGINT → graceful shutdown; again → exit now

The control plane listens first, before any plugin recovers what a
previous run left in flight: ``/health/live`` answers at once and
``/health/ready`` names each plugin still starting, even when a recovery is
blocked (a database lock held elsewhere), and signals are heard from the
start.

Shutdown is a sequence of deadlines, as in hypercorn's ``worker_serve``:
intake stops, final flushes run shielded until ``shutdown_grace`` (a
database statement still blocked then is cancelled on the server), the
control plane lets in-flight requests finish, connections close.
"""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any, TypeVar, cast

import attrs
import pluggy
import trio
import trio_asyncio

from syncd.config import LEASE_NAME_MAX, Config, PluginSettings, resolve_plugins
from syncd.errors import ConfigError, TransientError
from syncd.lease import FencedDatabase, Lease, LeaseStore, RedisLeaseStore, SQLLeaseStore
from syncd.logs import get_logger, plugin_logger
from syncd.manager import Discovered, discover
from syncd.metrics import Metrics
from syncd.observer import Observer
from syncd.plugin import PluginContext, PluginSpec
from syncd.quarantine import Quarantine
from syncd.redact import mask_url
from syncd.redis import RedisHandle
from syncd.sql import Database, open_database
from syncd.supervisor import PluginRunner, Supervisor

log = get_logger("daemon")

E = TypeVar("E", bound=BaseException)

#: Seconds in-flight control-plane requests get once the plugins have stopped.
HTTP_GRACE = 5.0
#: Seconds between two prunings of the batch ledgers.
LEDGER_PRUNE_EVERY = 3600.0
#: Container allocations between two young-generation collections (CPython's
#: default is 700); see `tune_gc`.
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Make CPython's cyclic collector fit a process that moves data in batches.

    A batch of 5,000 counters is some 25,000 short-lived lists, tuples and
    dicts, none of them in a cycle. With the default threshold of 700
    allocations they trigger dozens of collections per batch, and each
    older-generation pass walks every object still alive, the batch and the
    whole imported code base included. Measured on the traffic plugin:
    judging 100,000 counters took 0.21 s with the defaults and 0.11 s with a
    threshold of 10,000; a whole 100,000-node flush into PostgreSQL took
    0.86-0.91 s at 10,000 and 0.78-0.86 s at 50,000 (three interleaved
    pairs). Freezing what exists at start-up (modules, functions, config)
    takes it out of every later pass. Reference counting still frees
    everything at once; only cycles wait a little longer.
    """
    gen0, gen1, gen2 = gc.get_threshold()
    if gen0 < GC_GEN0_THRESHOLD:
        gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
    gc.freeze()


@attrs.define(eq=False)
class Daemon:
    """A configured daemon: backends, metrics and a runner per enabled plugin.

    Build it with `Daemon.build`, start it with ``await nursery.start(daemon.serve)``
    (it answers with itself once every plugin has recovered and the control
    plane listens, or once a shutdown was asked for before that), stop it
    with `request_shutdown` or by cancelling.
    """

    config: Config
    pm: pluggy.PluginManager
    discovered: Mapping[str, Discovered]
    settings: Mapping[str, PluginSettings]
    metrics: Metrics
    redis: RedisHandle
    databases: dict[str, Database]
    supervisor: Supervisor = attrs.field(init=False)
    #: Each enabled plugin's dead letters (browse, requeue, purge, count).
    quarantines: dict[str, Quarantine] = attrs.field(init=False)
    observer: Observer = attrs.field(init=False)
    http_binds: list[str] = attrs.Factory(list)
    shutting_down: bool = False
    _shutdown: trio.Event = attrs.Factory(trio.Event)
    _http_stop: trio.Event = attrs.Factory(trio.Event)
    _supervisor_done: trio.Event = attrs.Factory(trio.Event)
    _plugins_started: trio.Event = attrs.Factory(trio.Event)
    _connecting: trio.CancelScope = attrs.Factory(trio.CancelScope)
    _probes: dict[str, _Probe] = attrs.Factory(dict)

    @classmethod
    def build(cls, config: Config, pm: pluggy.PluginManager) -> Daemon:
        """Validate plugin sections and create (not yet connect) every backend."""
        discovered = discover(pm)
        settings = resolve_plugins(config, {name: d.spec for name, d in discovered.items()})
        metrics = Metrics()
        redis = RedisHandle.from_url(
            config.redis.url, pool_size=config.redis.pool_size,
            on_error=lambda exc: metrics.redis_errors.inc(),
            # Operators find syncd's connections in CLIENT LIST by this name.
            client_name=f"syncd:{config.instance}",
        )
        databases = {
            name: open_database(
                name, url,
                on_error=lambda exc, name=name: metrics.database_errors.labels(name).inc(),
                lock_timeout=float(config.lock_timeout),
                idle_transaction_timeout=float(config.idle_transaction_timeout),
            )
            for name, url in config.databases.items()
        }
        daemon = cls(config, pm, discovered, settings, metrics, redis, databases)
        pm.hook.syncd_metrics(metrics=metrics)
        return daemon

    def __attrs_post_init__(self) -> None:
        runners = {}
        for name, settings in self.settings.items():
            if settings.left_out:
                log.warning("plugin not started on the embedded default config",
                            extra={"plugin": name, "reason": settings.left_out})
            if not settings.enabled:
                continue
            found = self.discovered[name]
            runners[name] = PluginRunner(
                found.spec, settings, self._context, self.pm.hook, self.metrics,
                backoff_max=float(self.config.restart_backoff_max),
                shutdown_grace=float(self.config.shutdown_grace),
                package=found.package, version=found.version,
                lease=self._lease(found.spec, settings) if settings.exclusive else None,
            )
        self.supervisor = Supervisor(runners)
        self.quarantines = {
            name: Quarantine.for_plugin(self.pm, name, runner.settings.options, self.redis)
            for name, runner in runners.items()
        }
        self.observer = Observer(runners, self.quarantines, self.metrics)

    @property
    def runners(self) -> Mapping[str, PluginRunner]:
        return self.supervisor.runners

    def _lease(self, spec: PluginSpec, settings: PluginSettings) -> Lease:
        """The lease of an exclusive plugin: in its database, else in Redis.

        Named ``lease_name`` from the config, else as the plugin names it from
        its config (the data its replicas share), else after the plugin.
        """
        name = settings.lease_name
        if name is None and spec.lease_name is not None:
            name = spec.lease_name(settings.options)
        name = name or spec.name
        if len(name) > LEASE_NAME_MAX:
            raise ConfigError(f"plugins.{spec.name}.lease_name",
                              f"set one of at most {LEASE_NAME_MAX} characters (the plugin "
                              f"names its lease {name[:40]!r}..., which is longer)")
        store: LeaseStore
        if spec.uses_database:
            store = SQLLeaseStore(self.databases[settings.database])
        else:
            store = RedisLeaseStore(self.redis)
        ttl = settings.lease_ttl if settings.lease_ttl is not None else self.config.lease_ttl
        return Lease(store, name, spec.name, self.config.instance, float(ttl))

    def _context(self, runner: PluginRunner) -> PluginContext:
        settings = runner.settings
        database: Database | None = None
        if runner.spec.uses_database:
            database = self.databases[settings.database]
            if runner.fence is not None:
                # Every commit of an exclusive plugin checks its fencing token.
                database = cast(Database, FencedDatabase(database, runner.fence))
        return PluginContext(
            name=runner.name,
            config=settings.options,
            redis=self.redis,
            database=database,
            metrics=self.metrics.for_plugin(runner.name),
            log=plugin_logger(runner.name),
            gate=runner.gate,
            instance=self.config.instance,
            report=runner.report,
            hook=self.pm.hook,
            stop_deadline=runner.stop_deadline,
            report_error=runner.report_error,
            fence=runner.fence,
        )

    # -- running -------------------------------------------------------------------------

    async def serve(
        self, *, handle_signals: bool = False,
        task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until `request_shutdown` (or a signal), then stop gracefully.

        Raises:
            ConfigError: when the control plane cannot listen on ``http.listen``.
        """
        tune_gc()
        async with trio_asyncio.open_loop(), AsyncExitStack() as stack:
            stack.callback(self.redis.close)
            for db in self.databases.values():
                stack.push_async_callback(db.aclose)
            async with trio.open_nursery() as outer:
                if handle_signals:
                    # Outside the root nursery, so a second signal is still
                    # heard while the root is shutting down.
                    await outer.start(self._watch_signals)
                async with trio.open_nursery() as root:
                    # The first workers exist before the control plane is
                    # built (it mounts their routes), but recover nothing yet.
                    self.supervisor.prepare()
                    if self.config.http.enabled:
                        self.http_binds = await self._start_control_plane(root)
                    root.start_soon(self._run_plugins)
                    outer.start_soon(self._prune_ledgers)
                    outer.start_soon(self.observer.run)
                    await _first_of(self._plugins_started, self._shutdown)
                    if not self.shutting_down:
                        log.info("syncd ready", extra={
                            "plugins": ",".join(self.runners) or "-",
                            "http": ",".join(self.http_binds) or "-",
                            "redis": mask_url(self.config.redis.url),
                        })
                    task_status.started(self)
                    await self._shutdown.wait()
                    grace = float(self.config.shutdown_grace)
                    log.info("shutting down", extra={"grace_seconds": grace})
                    self._connecting.cancel()
                    self.supervisor.stop(grace)
                    await self._supervisor_done.wait()
                    # Let in-flight HTTP requests finish, but not forever.
                    self._http_stop.set()
                    root.cancel_scope.deadline = trio.current_time() + HTTP_GRACE
                outer.cancel_scope.cancel()
        log.info("syncd stopped")

    async def _start_control_plane(self, nursery: trio.Nursery) -> list[str]:
        """Listen on ``http.listen``; a bind that fails is a config error, one line."""
        from syncd.control import serve_control_plane

        try:
            return await nursery.start(serve_control_plane, self, self._http_stop)
        except (OSError, BaseExceptionGroup) as exc:
            error = _find(exc, OSError)
            if error is None:
                raise
            reason = error.strerror or str(error)
            raise ConfigError(
                "http.listen", f"cannot listen on {self.config.http.listen}: {reason}"
            ) from None

    async def _run_plugins(self) -> None:
        """Warm up the backends, then start every plugin (each recovers first).

        A shutdown asked for meanwhile cancels the warm-up (`_connecting`) and
        stops the plugins through the supervisor, whatever stage they are at.
        """
        try:
            with self._connecting:
                await self._connect_backends()
            if self.shutting_down:
                return
            async with trio.open_nursery() as nursery:
                await nursery.start(self.supervisor.run)
                self._plugins_started.set()
        finally:
            self._supervisor_done.set()

    async def _prune_ledgers(self) -> None:
        """Keep the ledger tables from growing forever.

        A ledger row must outlive any copy of its batch still in Redis, or a
        late replay would apply twice; ``ledger_retention`` (30 days by
        default) is far longer than a batch stays in flight.
        """
        while True:
            await self.prune_ledgers_once()
            await trio.sleep(LEDGER_PRUNE_EVERY)

    async def prune_ledgers_once(self, retention: float | None = None) -> int:
        """Delete ledger rows older than ``retention`` (default: the config's)."""
        if retention is None:
            retention = float(self.config.ledger_retention)
        pruned = 0
        for name, db in self.databases.items():
            try:
                pruned += await db.prune_ledger(retention)
            except Exception as exc:
                # Never fatal: a user without DELETE rights, a statement
                # timeout or a read-only replica only means a bigger ledger.
                log.warning("ledger not pruned", extra={"database": name, "error": str(exc)})
        return pruned

    async def _connect_backends(self) -> None:
        """Connect what answers; a backend that is down only makes us not ready.

        Plugins that need it fail and retry with backoff, so syncd started
        before its database catches up once the database arrives.
        """
        for name, db in self.databases.items():
            try:
                await db.connect()
            except TransientError as exc:
                log.warning("database unreachable at start", extra={
                    "database": name, "error": str(exc)})
        try:
            await self.redis.ping()
        except TransientError as exc:
            log.warning("redis unreachable at start", extra={"error": str(exc)})

    def request_shutdown(self) -> None:
        self.shutting_down = True
        self._shutdown.set()

    async def _watch_signals(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                if not self.shutting_down:
                    log.info("signal received, shutting down gracefully",
                             extra={"signal": signal.Signals(signum).name})
                    self.request_shutdown()
                else:
                    log.warning("second signal, exiting now",
                                extra={"signal": signal.Signals(signum).name})
                    os._exit(128 + signum)

    # -- what the control plane and the CLI ask --------------------------------------------

    def runner(self, name: str) -> PluginRunner | None:
        return self.runners.get(name)

    async def check_backends(
        self, timeout: float = 2.0, *, nursery: trio.Nursery | None = None
    ) -> dict[str, dict[str, Any]]:
        """Probe Redis and every database in parallel; answer within ``timeout``.

        A probe's driver call runs in a worker thread, which no cancel scope can
        interrupt (threads are never abandoned), so each probe is its own task in
        ``nursery``: when it does not answer in time it is reported as such while
        it finishes in the background, bounded by the driver's socket timeouts.
        Pass a nursery that outlives the call (the control plane does) to get the
        answer on time even then; without one, the call still reports the probe
        as timed out but returns only once it is done. At most one probe per
        backend is in flight: concurrent callers share it, so a hung backend
        cannot pile up threads.
        """
        if nursery is None:
            async with trio.open_nursery() as own:
                return await self.check_backends(timeout, nursery=own)
        pings: dict[str, Callable[[], Awaitable[None]]] = {"redis": self.redis.ping}
        pings.update({f"database:{name}": db.ping for name, db in self.databases.items()})
        probes = {key: self._probe(key, ping, nursery) for key, ping in pings.items()}
        with trio.move_on_after(timeout):
            for probe in probes.values():
                await probe.done.wait()
        return {key: probe.report(timeout) for key, probe in probes.items()}

    def _probe(
        self, key: str, ping: Callable[[], Awaitable[None]], nursery: trio.Nursery
    ) -> _Probe:
        probe = self._probes.get(key)
        if probe is None:
            probe = self._probes[key] = _Probe(trio.current_time())
            nursery.start_soon(probe.run, ping, lambda: self._probes.pop(key, None))
        return probe


async def _first_of(*events: trio.Event) -> None:
    """Return as soon as any of ``events`` is set."""
    async with trio.open_nursery() as nursery:
        for event in events:
            nursery.start_soon(_wait_then_cancel, event, nursery.cancel_scope)


async def _wait_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _find(exc: BaseException, kind: type[E]) -> E | None:
    """The first ``kind`` in ``exc`` or, depth first, in its groups."""
    if isinstance(exc, kind):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = _find(inner, kind)
        if found is not None:
            return found
    return None


@attrs.define(eq=False)
class _Probe:
    """One in-flight backend probe, shared by every caller that asks meanwhile."""

    started: float
    done: trio.Event = attrs.Factory(trio.Event)
    result: dict[str, Any] | None = None

    async def run(self, ping: Callable[[], Awaitable[None]], forget: Callable[[], None]) -> None:
        try:
            await ping()
        except Exception as exc:  # any failure at all means "not ready"
            self.result = self._answer(False, str(exc) or type(exc).__name__)
        else:
            self.result = self._answer(True)
        finally:
            forget()
            self.done.set()

    def report(self, timeout: float) -> dict[str, Any]:
        if self.result is not None:
            return self.result
        return self._answer(False, f"no answer within {timeout:g}s")

    def _answer(self, ok: bool, error: str | None = None) -> dict[str, Any]:
        latency = round((trio.current_time() - self.started) * 1000, 2)
        return {"ok": ok, "latency_ms": latency, **({"error": error} if error else {})}
