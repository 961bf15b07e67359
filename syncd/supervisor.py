"""The supervisor: each plugin in its own cancel scope, restarted when it crashes.

A crash in one plugin is logged with its traceback, marks that plugin
``failed``, fires ``sync_error`` and is retried after a capped exponential
backoff; the other plugins never notice. Shutdown cancels every intake scope
first, then gives each plugin one final ``flush()`` in a shielded scope under
the shared grace deadline: whatever does not make it stays safely in Redis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import pluggy
import trio

from syncd.config import PluginSettings
from syncd.errors import DatabaseUnavailable, RedisUnavailable, TransientError
from syncd.gate import PauseGate
from syncd.logs import get_logger, plugin_logger
from syncd.metrics import Metrics
from syncd.plugin import PluginContext, PluginSpec, SyncResult, Worker
from syncd.quarantine import Stats
from syncd.throughput import SAMPLE_EVERY, Throughput

log = get_logger("supervisor")

BACKOFF_INITIAL = 0.5
BACKLOG_POLL = 5.0


class NotRunning(Exception):
    """The plugin has no live worker to flush (it is starting, failed or stopped)."""


def error_kind(exc: BaseException) -> str:
    """A short label for metrics: which backend failed, or the exception type."""
    if isinstance(exc, RedisUnavailable):
        return "redis"
    if isinstance(exc, DatabaseUnavailable):
        return "database"
    if isinstance(exc, TransientError):
        return "transient"
    return type(exc).__name__


def _crash_of(exc: BaseException) -> BaseException | None:
    """The error a worker crashed with, or None when ``exc`` is only cancellation.

    A worker cancelled while one of its tasks raises produces a group mixing
    ``Cancelled`` with the error; ``except Exception`` would let that escape
    the supervisor and take the daemon down during shutdown.
    """
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)
        return unwrap(rest) if rest is not None else None
    if isinstance(exc, Exception):
        return exc
    return None


def unwrap(exc: BaseException) -> BaseException:
    """The one interesting exception inside nested single-member groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@attrs.define(eq=False)
class PluginRunner:
    """Runs one plugin: builds its worker, restarts it, times its flushes.

    Attributes:
        spec: What the plugin declared.
        settings: Its validated config section.
        make_context: Builds the `PluginContext` for a fresh worker.
        hook: The plugin manager's hook relay, for lifecycle events.
        metrics: The daemon's metrics.
        backoff_max: Upper bound of the restart delay, in seconds.
    """

    spec: PluginSpec
    settings: PluginSettings
    make_context: Callable[[PluginRunner], PluginContext]
    hook: pluggy.HookRelay
    metrics: Metrics
    backoff_max: float = 30.0
    shutdown_grace: float = 30.0
    package: str = "-"
    version: str = "-"

    gate: PauseGate = attrs.Factory(PauseGate)
    state: str = "starting"
    worker: Worker | None = None
    last_success: float | None = None
    last_error: dict[str, Any] | None = None
    last_result: SyncResult | None = None
    items_synced: int = 0
    batches: int = 0
    dead_lettered: int = 0
    restarts: int = 0
    backlog: int | None = None
    #: Age in seconds of the oldest item waiting, from the worker's optional ``lag()``.
    lag: float | None = None
    #: Dead letters waiting, refreshed by the daemon's observer.
    dead_letters: Stats | None = None
    throughput: Throughput = attrs.Factory(Throughput)
    _flush_lock: trio.Lock = attrs.Factory(trio.Lock)
    _intake: trio.CancelScope = attrs.Factory(trio.CancelScope)
    #: A worker built by `prepare` that has not run yet.
    _prepared: Worker | None = None
    _started: bool = False
    _flush_deadline: float = math.inf
    _backoff: float = BACKOFF_INITIAL
    log: Any = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.log = plugin_logger(self.name)
        self.metrics.set_state(self.name, self.state)
        self.metrics.paused.labels(self.name).set(0)

    @property
    def name(self) -> str:
        return self.spec.name

    # -- lifecycle ---------------------------------------------------------------

    def prepare(self) -> None:
        """Build the first worker now, without running it.

        The control plane mounts a plugin's routes from its worker, and it
        starts before any plugin recovers (so health answers at once): the
        worker must exist by then. A factory that fails here is left for
        `run`, which reports and retries it like any crash.
        """
        if self.worker is not None:
            return
        try:
            self.worker = self._prepared = self.spec.create(self.make_context(self))
        except Exception:
            self.worker = self._prepared = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise the plugin until cancelled, then flush it one last time.

        ``started()`` is called once the first worker has recovered what a
        previous process left in flight, or has failed doing so: a broken
        plugin must not hold the daemon's start-up hostage. Stopped before
        that (a recovery blocked on a database lock, then SIGTERM), it is
        called on the way out.
        """
        try:
            with self._intake:
                await self._supervise(task_status)
        finally:
            if not self._started:
                self._started = True
                task_status.started()
            self._set_state("stopping")
            # Cancelled from outside rather than stopped: same grace.
            deadline = self.stop_deadline()
            with trio.CancelScope(deadline=deadline, shield=True) as scope:
                await self._final_flush()
            if scope.cancelled_caught:
                self.log.warning("final flush did not finish before the shutdown deadline; "
                                 "what remains is still in Redis")
            self._set_state("stopped")

    def stop(self, deadline: float) -> None:
        """Stop intake now; the final flush must end by ``deadline`` (trio time)."""
        self._flush_deadline = deadline
        self._intake.cancel()

    def stop_deadline(self) -> float:
        """When this plugin must have stopped (trio time), once it is being stopped.

        Set by `stop`; when the runner is cancelled from outside instead (or
        asked while not stopping), the grace period starts now.
        """
        if self._flush_deadline == math.inf:
            return trio.current_time() + self.shutdown_grace
        return self._flush_deadline

    async def _supervise(self, task_status: trio.TaskStatus[None]) -> None:
        while True:
            try:
                async with trio.open_nursery() as nursery:
                    self._set_state("starting")
                    prepared, self._prepared = self._prepared, None
                    self.worker = prepared or self.spec.create(self.make_context(self))
                    await nursery.start(self.worker.run)
                    self._set_state("paused" if self.gate.paused else "running")
                    self.log.info("worker started", extra={"restarts": self.restarts})
                    self._emit("syncd_worker_started", plugin=self.name,
                               config=self.settings.options)
                    if not self._started:
                        self._started = True
                        task_status.started()
                    if self.worker.interval:
                        nursery.start_soon(self._timer, self.worker.interval)
                    if callable(getattr(self.worker, "backlog", None)):
                        nursery.start_soon(self._poll_backlog)
                    if callable(getattr(self.worker, "lag", None)):
                        nursery.start_soon(self._poll_lag)
            except BaseException as exc:
                error = _crash_of(exc)
                if error is None:
                    raise  # only cancellation: we are being stopped
                self._record_error(error, crashed=True)
                if self._intake.cancel_called:
                    # Crashed while being stopped (a backend error racing the
                    # cancel): no restart, go on to the final flush.
                    return
                self._emit("syncd_worker_stopped", plugin=self.name)
                if not self._started:
                    self._started = True
                    task_status.started()
                delay, self._backoff = self._backoff, min(self._backoff * 2, self.backoff_max)
                self.restarts += 1
                self.metrics.restarts.labels(self.name).inc()
                self.log.info("restarting worker", extra={"in_seconds": round(delay, 3)})
                await trio.sleep(delay)
            else:
                # A worker whose run() returned and has no timer is done; park
                # until shutdown so the status stays truthful.
                self._emit("syncd_worker_stopped", plugin=self.name)
                await trio.sleep_forever()

    async def _timer(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            await self.gate.wait()
            await self.flush(raise_errors=True)

    async def _poll_backlog(self) -> None:
        while True:
            try:
                self.backlog = await self.worker.backlog()  # type: ignore[union-attr]
            except TransientError as exc:
                self.log.debug("backlog unknown", extra={"error": str(exc)})
            else:
                if self.backlog is not None:
                    self.metrics.backlog.labels(self.name).set(self.backlog)
            await trio.sleep(BACKLOG_POLL)

    async def _poll_lag(self) -> None:
        """The age of the oldest waiting item, for status and the age gauge."""
        while True:
            try:
                self.lag = await self.worker.lag()  # type: ignore[union-attr]
            except TransientError as exc:
                self.log.debug("lag unknown", extra={"error": str(exc)})
            else:
                if self.lag is not None:
                    self.metrics.oldest_pending_age.labels(self.name).set(self.lag)
            await trio.sleep(BACKLOG_POLL)

    async def _final_flush(self) -> None:
        if self.worker is None:
            return
        if self.gate.paused:
            # The operator paused this plugin (often: its database is under
            # maintenance); draining into it now would undo that. Nothing is
            # lost: what is pending or in flight waits in Redis for the next start.
            self.log.info("paused: no final flush; pending data stays in Redis")
            self._emit("syncd_worker_stopped", plugin=self.name)
            return
        try:
            result = await self.flush(raise_errors=True, final=True)
        except trio.Cancelled:
            raise
        except Exception as exc:
            self.log.error("final flush failed; pending data stays in Redis",
                           extra={"error": str(unwrap(exc))})
        else:
            self.log.info("final flush done", extra=result.as_dict())
        self._emit("syncd_worker_stopped", plugin=self.name)

    # -- control -------------------------------------------------------------------

    async def flush(self, *, raise_errors: bool = True, final: bool = False) -> SyncResult:
        """Run the worker's flush (never two at once) and report the result."""
        worker = self.worker
        if worker is None or (self.state in ("starting", "failed", "stopped") and not final):
            raise NotRunning(f"plugin {self.name} is {self.state}")
        async with self._flush_lock:
            started = time.perf_counter()
            try:
                result = await worker.flush()
            except Exception as exc:
                self._record_error(unwrap(exc), crashed=False)
                if raise_errors:
                    raise
                return SyncResult()
            self.report(result, time.perf_counter() - started)
            return result

    def not_ready(self) -> str | None:
        """The running worker's own reason for not being ready (its optional
        ``not_ready()``), or None. A plugin that is starting, failed or stopped
        is judged by its state instead."""
        worker = self.worker
        check = getattr(worker, "not_ready", None)
        if not callable(check) or self.state in ("starting", "failed", "stopped"):
            return None
        try:
            return check()
        except Exception as exc:  # a broken check must not break the probe
            return f"readiness check failed: {exc}"

    def pause(self) -> None:
        self.gate.pause()
        self.metrics.paused.labels(self.name).set(1)
        if self.state == "running":
            self._set_state("paused")
        self.log.info("paused")

    def resume(self) -> None:
        self.gate.resume()
        self.metrics.paused.labels(self.name).set(0)
        if self.state == "paused":
            self._set_state("running")
        self.log.info("resumed")

    # -- reporting -------------------------------------------------------------------

    def report(self, result: SyncResult, duration: float | None = None) -> None:
        """Account for a committed batch (called by the worker via ctx.report)."""
        name = self.name
        if result.items:
            self.metrics.items_synced.labels(name).inc(result.items)
        if result.batches:
            self.metrics.batches.labels(name).inc(result.batches)
        if result.dead_lettered:
            self.metrics.dead_lettered.labels(name).inc(result.dead_lettered)
        if result.skipped:
            self.metrics.skipped.labels(name).inc(result.skipped)
        if duration is not None:
            self.metrics.batch_duration.labels(name).observe(duration)
        self.items_synced += result.items
        self.batches += result.batches
        self.dead_lettered += result.dead_lettered
        self.last_result = result
        if result.batches or result.items or result.dead_lettered:
            self.last_success = time.time()
            self.metrics.last_success.labels(name).set(self.last_success)
        self._backoff = BACKOFF_INITIAL
        if self.state == "failed":
            self._set_state("paused" if self.gate.paused else "running")
        self._emit("syncd_sync_success", plugin=name, result=result, duration=duration or 0.0)

    def report_error(self, error: BaseException) -> None:
        """Account for a failure the worker handles itself (called by the worker
        via ``ctx.report_error``): counted by kind, shown as ``last_error``,
        ``sync_error`` emitted. The state does not change: a worker that
        retries one of its sinks while the others go on is still running."""
        self._record_error(error, crashed=False, what="batch failed")

    def _record_error(
        self, error: BaseException, *, crashed: bool, what: str = "flush failed"
    ) -> None:
        kind = error_kind(error)
        self.metrics.errors.labels(self.name, kind).inc()
        self.last_error = {
            "type": type(error).__name__,
            "message": str(error),
            "kind": kind,
            "at": time.time(),
        }
        if crashed:
            self._set_state("failed")
            if isinstance(error, TransientError):
                # Expected while a backend is away: one line, no traceback.
                self.log.warning("worker failed", extra={"error": str(error), "kind": kind})
            else:
                self.log.error("worker crashed", exc_info=error, extra={"kind": kind})
        else:
            self.log.warning(what, extra={"error": str(error), "kind": kind})
        self._emit("syncd_sync_error", plugin=self.name, error=error)

    def _set_state(self, state: str) -> None:
        self.state = state
        self.metrics.set_state(self.name, state)

    def _emit(self, hook: str, **kwargs: Any) -> None:
        """Call each event listener on its own: a broken one is logged and
        neither stops the plugin nor keeps the event from the others (a plain
        pluggy call would stop at the first exception)."""
        for impl in reversed(getattr(self.hook, hook).get_hookimpls()):
            try:
                impl.function(*(kwargs[name] for name in impl.argnames))
            except Exception:
                self.log.exception("event listener failed",
                                   extra={"event": hook, "listener": impl.plugin_name})

    def status(self) -> dict[str, Any]:
        """What /plugins and `syncd` status commands show.

        A worker with a ``status()`` method (sync, cheap: no I/O) adds its own
        facts under ``detail``, e.g. the messages plugin's backlog per writer.
        """
        last_error = None
        if self.last_error is not None:
            last_error = {**self.last_error, "at": _iso(self.last_error["at"])}
        detail = None
        worker_status = getattr(self.worker, "status", None)
        if callable(worker_status):
            try:
                detail = worker_status()
            except Exception:
                self.log.exception("worker status failed")
        return {
            "name": self.name,
            "state": self.state,
            "paused": self.gate.paused,
            "database": self.settings.database if self.spec.uses_database else None,
            "interval": getattr(self.worker, "interval", None),
            "last_success": _iso(self.last_success),
            "last_error": last_error,
            "items_synced": self.items_synced,
            "batches": self.batches,
            "dead_lettered": self.dead_lettered,
            "backlog": self.backlog,
            "lag_seconds": None if self.lag is None else round(self.lag, 3),
            "dead_letters": self.dead_letters.as_dict() if self.dead_letters else None,
            "throughput": {
                "now": self.throughput.now(trio.current_time(), self.items_synced)
                if _in_trio() else None,
                "every_seconds": SAMPLE_EVERY,
                "history": self.throughput.rates(),
            },
            "restarts": self.restarts,
            "package": self.package,
            "version": self.version,
            "detail": detail,
        }


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


@attrs.define
class Supervisor:
    """Starts every enabled plugin's runner and stops them together."""

    runners: Mapping[str, PluginRunner]

    def prepare(self) -> None:
        """Build every plugin's first worker (see `PluginRunner.prepare`)."""
        for runner in self.runners.values():
            runner.prepare()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            # Started side by side: one plugin's slow recovery (a database
            # that hangs) must not hold the others, nor the daemon's start.
            async with trio.open_nursery() as starting:
                for runner in self.runners.values():
                    starting.start_soon(nursery.start, runner.run)
            task_status.started()

    def stop(self, grace: float) -> None:
        """Stop intake everywhere; final flushes share one deadline."""
        deadline = trio.current_time() + grace
        for runner in self.runners.values():
            runner.stop(deadline)

    @property
    def failed(self) -> list[str]:
        return [name for name, runner in self.runners.items() if runner.state == "failed"]

