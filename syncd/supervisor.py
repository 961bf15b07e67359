"""The supervisor: each plugin in its own cancel scope, restarted when it crashes.

A crash in one plugin is logged with its traceback, marks that plugin
``failed``, fires ``sync_error`` and is retried after a capped exponential
backoff; the other plugins never notice. Shutdown cancels every intake scope
first, then gives each plugin one final ``flush()`` in a shielded scope under
the shared grace deadline: whatever does not make it stays safely in Redis.

An exclusive plugin (`syncd.lease`) runs only while this replica holds its
lease; otherwise it is on ``standby`` (ready, not failed), asking again as
the lease is due to expire. Each time the lease is taken, the worker is
built afresh, under a `Fence` carrying the new token, and runs in a cancel
scope of its own (an *epoch*) beside a task that renews the lease. The
epoch ends, and the plugin goes back to standby, when a renewal finds the
lease gone, when the lease could not be renewed for a whole ttl, when a
commit is fenced, or when the plugin is paused while another replica waits
for the lease (it then hands the lease over). A flush in flight is let
finish first, so a replica stops between batches; one that commits under a
stale token is refused by the database.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import pluggy
import trio

from syncd.config import PluginSettings
from syncd.errors import DatabaseUnavailable, Fenced, RedisUnavailable, TransientError
from syncd.gate import PauseGate
from syncd.lease import Fence, Lease
from syncd.logs import get_logger, plugin_logger
from syncd.metrics import Metrics
from syncd.plugin import PluginContext, PluginSpec, SyncResult, Worker
from syncd.quarantine import Stats
from syncd.throughput import SAMPLE_EVERY, Throughput

log = get_logger("supervisor")

E = TypeVar("E", bound=BaseException)

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


def find_error(exc: BaseException, kind: type[E]) -> E | None:
    """The first ``kind`` in ``exc`` or, depth first, in its groups and causes."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        stack.extend(reversed(getattr(current, "exceptions", ())))
        if current.__cause__ is not None:
            stack.append(current.__cause__)
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
        lease: For an exclusive plugin, this replica's side of its lease.
        fence: The fence the next (or current) worker is built with, for
            `make_context` (exclusive plugins only).
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
    lease: Lease | None = None

    fence: Fence | None = None
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
    #: Commits the database refused under a stale fencing token.
    fenced_commits: int = 0
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
    #: The cancel scope of the worker running under the lease held now.
    _epoch: trio.CancelScope | None = None
    #: Why the epoch is ending (the lease lost, fenced, handed back), once it is.
    _leaving: str | None = None
    log: Any = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.log = plugin_logger(self.name)
        self.metrics.set_state(self.name, self.state)
        self.metrics.paused.labels(self.name).set(0)
        if self.lease is not None:
            self.metrics.lease_held.labels(self.name).set(0)
            self.metrics.fenced_commits.labels(self.name)
            for change in ("acquired", "lost", "released"):
                self.metrics.lease_changes.labels(self.name, change)

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
        if self.lease is not None:
            # Its token comes when the lease does (see `_lease_taken`).
            self.fence = self._new_fence(None)
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
            if self.lease is not None:
                await self._take_lease(task_status)
            try:
                async with trio.open_nursery() as nursery:
                    self._epoch = nursery.cancel_scope
                    self._set_state("starting")
                    if self.lease is not None:
                        nursery.start_soon(self._keep_lease)
                    prepared, self._prepared = self._prepared, None
                    self.worker = prepared or self.spec.create(self.make_context(self))
                    await nursery.start(self.worker.run)
                    self._set_state("paused" if self.gate.paused else "running")
                    self.log.info("worker started", extra={"restarts": self.restarts})
                    self._emit("syncd_worker_started", plugin=self.name,
                               config=self.settings.options)
                    self._mark_started(task_status)
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
                if self._leaving is not None or find_error(exc, Fenced) is not None:
                    # Not a crash: the lease is gone (a commit was fenced while
                    # it ended, or the worker failed on the way out).
                    self._stand_down(self._leaving or f"commit fenced: {find_error(exc, Fenced)}")
                    continue
                self._record_error(error, crashed=True)
                if self._intake.cancel_called:
                    # Crashed while being stopped (a backend error racing the
                    # cancel): no restart, go on to the final flush.
                    return
                self._emit("syncd_worker_stopped", plugin=self.name)
                self._mark_started(task_status)
                delay, self._backoff = self._backoff, min(self._backoff * 2, self.backoff_max)
                self.restarts += 1
                self.metrics.restarts.labels(self.name).inc()
                self.log.info("restarting worker", extra={"in_seconds": round(delay, 3)})
                # A holder does not renew its lease meanwhile: a replica that
                # keeps failing lets another take over once the lease expires.
                await trio.sleep(delay)
            else:
                if self._leaving is not None:
                    self._stand_down(self._leaving)
                    continue
                # A worker whose run() returned and has no timer is done; park
                # until shutdown so the status stays truthful.
                self._emit("syncd_worker_stopped", plugin=self.name)
                await trio.sleep_forever()

    def _mark_started(self, task_status: trio.TaskStatus[None]) -> None:
        if not self._started:
            self._started = True
            task_status.started()

    # -- the lease (exclusive plugins) -------------------------------------------------

    def _new_fence(self, token: int | None) -> Fence:
        assert self.lease is not None
        fence = Fence(self.lease.name, token)
        fence.on_refused = lambda exc: self._refused(fence, exc)
        return fence

    async def _take_lease(self, task_status: trio.TaskStatus[None]) -> None:
        """Stand by until this replica holds the lease; then fence the next worker.

        A replica that is paused does not ask. One that cannot ask (the
        database is away) is ``failed`` and asks again with the restart backoff.
        """
        lease = self.lease
        assert lease is not None
        while True:
            if self.gate.paused:
                self._set_state("paused")
                await self.gate.wait()
            try:
                held = await lease.acquire()
            except Exception as exc:
                self._record_error(unwrap(exc), crashed=True)
                self._mark_started(task_status)
                delay, self._backoff = self._backoff, min(self._backoff * 2, self.backoff_max)
                await trio.sleep(delay)
                continue
            if held:
                self._lease_taken()
                return
            if self.state != "standby" and not self.gate.paused:
                seen = lease.seen
                self._set_state("standby")
                self.log.info("standing by: another replica holds the lease", extra={
                    "lease": lease.name, "holder": seen.holder if seen else None,
                    "token": seen.token if seen else None})
            self._mark_started(task_status)
            await trio.sleep(lease.standby_delay())

    def _lease_taken(self) -> None:
        lease = self.lease
        assert lease is not None and lease.token is not None
        self._leaving = None
        if self._prepared is not None and self.fence is not None and self.fence.token is None:
            self.fence.token = lease.token  # the worker built at start-up runs first
        else:
            self.fence = self._new_fence(lease.token)
        self.metrics.lease_changes.labels(self.name, "acquired").inc()
        self.metrics.lease_held.labels(self.name).set(1)
        previous = lease.seen.previous if lease.seen is not None else None
        self.log.info("lease acquired", extra={
            "lease": lease.name, "token": lease.token,
            "previous": previous if previous and previous != lease.holder else "-"})

    async def _keep_lease(self) -> None:
        """Renew the lease every third of its ttl until it is lost or handed over.

        Paused, the holder hands the lease over to a replica standing by (one
        asked for it within a ttl), after the batch in flight. With nobody
        waiting it keeps the lease, so that a lone daemon paused changes
        nothing but the pause itself (views keeps its pub/sub subscription),
        and hands it over at the first renewal that finds a replica waiting.
        """
        lease = self.lease
        assert lease is not None
        renewal = trio.current_time() + lease.renew_every
        while True:
            if self.gate.paused and lease.contested:
                await self._leave("paused: lease handed to a replica standing by",
                                  release=True)
                return
            with trio.move_on_at(renewal):
                if not self.gate.paused:
                    await self.gate.wait_paused()
                    continue  # paused now: hand over if someone was waiting
                await trio.sleep_forever()
            renewal = trio.current_time() + lease.renew_every
            try:
                renewed = await lease.renew()
            except Exception as exc:
                if lease.overdue:
                    await self._leave(f"lease not renewed for {lease.ttl:g}s "
                                      f"({unwrap(exc)})", release=False)
                    return
                self.log.warning("lease not renewed; trying again",
                                 extra={"lease": lease.name, "error": str(unwrap(exc))})
                continue
            if not renewed:
                await self._leave("lease taken over by another replica", release=False)
                return

    async def _leave(self, reason: str, *, release: bool) -> None:
        """End the epoch between batches: a flush in flight finishes (or is fenced) first."""
        lease = self.lease
        assert lease is not None and self._epoch is not None
        if self._leaving is None:
            self._leaving = reason
        with trio.move_on_after(lease.ttl):
            async with self._flush_lock:
                if release:
                    await self._release_lease()
        lease.drop()
        self._epoch.cancel()

    async def _release_lease(self) -> None:
        """Hand the lease back, so a standby replica need not wait for it to expire."""
        lease = self.lease
        assert lease is not None
        if not lease.held:
            return
        try:
            with trio.move_on_after(lease.ttl):
                await lease.release()
        except Exception as exc:  # it expires by itself
            self.log.warning("lease not handed back", extra={"error": str(unwrap(exc))})
        lease.drop()
        self.metrics.lease_changes.labels(self.name, "released").inc()

    def _refused(self, fence: Fence, exc: Fenced) -> None:
        """The database refused a commit under ``fence``: the lease has passed on."""
        self.fenced_commits += 1
        self.metrics.fenced_commits.labels(self.name).inc()
        if fence is not self.fence or self._epoch is None:
            return  # a worker of an epoch that is over already
        # The most telling reason, whatever else noticed the loss first.
        self._leaving = f"commit fenced: {exc}"
        if self.lease is not None:
            self.lease.drop()
        self._epoch.cancel()

    def _stand_down(self, reason: str) -> None:
        """The epoch is over: say why, once, and stand by."""
        lease = self.lease
        assert lease is not None
        self._leaving = None
        released = reason.startswith("paused:")
        if lease.held:
            lease.drop()
        if not released:
            self.metrics.lease_changes.labels(self.name, "lost").inc()
        self.metrics.lease_held.labels(self.name).set(0)
        # The holder reports the backlog now: a standby replica's last figures
        # would only go stale (and mislead an autoscaler reading the gauge).
        self.backlog = self.lag = None
        for gauge in (self.metrics.backlog, self.metrics.oldest_pending_age):
            with contextlib.suppress(KeyError):
                gauge.remove(self.name)
        self._emit("syncd_worker_stopped", plugin=self.name)
        if released:
            self.log.info(reason, extra={"lease": lease.name})
        else:
            self.log.warning("lease lost; standing by", extra={
                "lease": lease.name, "reason": reason})
        self._set_state("paused" if self.gate.paused else "standby")

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
        lease = self.lease
        if lease is not None:
            if not lease.held:
                return  # standing by: the holder flushes
            # Renewed meanwhile (a final flush may outlast the ttl), then handed
            # back at once, so another replica takes over without waiting for it
            # to expire.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._renew_until_cancelled)
                try:
                    await self._flush_at_exit()
                finally:
                    nursery.cancel_scope.cancel()
            await self._release_lease()
            self.metrics.lease_held.labels(self.name).set(0)
            return
        await self._flush_at_exit()

    async def _renew_until_cancelled(self) -> None:
        lease = self.lease
        assert lease is not None
        while lease.held:
            await trio.sleep(lease.renew_every)
            try:
                await lease.renew()
            except Exception as exc:  # the flush's own commits will say if it is gone
                self.log.warning("lease not renewed during the final flush",
                                 extra={"error": str(unwrap(exc))})

    async def _flush_at_exit(self) -> None:
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
        lease = self.lease
        if lease is not None and not lease.held:
            seen = lease.seen
            holder = f": {seen.holder} holds its lease" if seen and seen.holder else ""
            raise NotRunning(f"plugin {self.name} is on standby on this replica{holder}")
        async with self._flush_lock:
            started = time.perf_counter()
            try:
                result = await worker.flush()
            except Exception as exc:
                if find_error(exc, Fenced) is not None:
                    raise  # not a failure of the plugin: see _refused
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
        if not callable(check) or self.state in ("starting", "failed", "stopped", "standby"):
            return None
        try:
            return check()
        except Exception as exc:  # a broken check must not break the probe
            return f"readiness check failed: {exc}"

    def pause(self) -> None:
        """Stop intake at the next batch boundary; an exclusive plugin also hands
        its lease to a replica standing by then, if one is (and a standby
        replica stops asking for it)."""
        self.gate.pause()
        self.metrics.paused.labels(self.name).set(1)
        if self.state in ("running", "standby"):
            self._set_state("paused")
        self.log.info("paused")

    def resume(self) -> None:
        self.gate.resume()
        self.metrics.paused.labels(self.name).set(0)
        if self.state == "paused":
            holding = self.lease is None or self.lease.held
            self._set_state("running" if holding else "standby")
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
            "exclusive": self.lease is not None,
            "lease": self.lease.status() if self.lease is not None else None,
            "fenced_commits": self.fenced_commits,
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

