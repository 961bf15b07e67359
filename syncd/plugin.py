"""The types a plugin author works with.

A plugin package implements the `syncd_plugin` hook and returns a `PluginSpec`:
its name, its attrs config class and a factory. When the plugin is enabled,
the core calls the factory with a `PluginContext` (config, Redis, SQL,
metrics, logger, pause gate) and supervises the `Worker` it returns. The core
owns every nursery; a worker only provides coroutines for it to run.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
import trio

if TYPE_CHECKING:
    from syncd.gate import PauseGate
    from syncd.lease import Fence
    from syncd.metrics import PluginMetrics
    from syncd.redis import RedisHandle
    from syncd.sql import Database


@attrs.frozen
class SyncResult:
    """What one flush or batch achieved; feeds status, metrics and events.

    Attributes:
        items: Items (rows, counters, messages) written to their sink.
        batches: Batches committed (0 when there was nothing to do).
        dead_lettered: Items quarantined with a reason instead of synced.
        skipped: Items found already applied (replays after a crash).
        detail: Free-form facts for the event listeners and the flush answer.
    """

    items: int = 0
    batches: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    detail: Mapping[str, Any] = attrs.field(factory=dict)

    def __add__(self, other: SyncResult) -> SyncResult:
        return SyncResult(
            self.items + other.items,
            self.batches + other.batches,
            self.dead_lettered + other.dead_lettered,
            self.skipped + other.skipped,
            {**self.detail, **other.detail},
        )

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@runtime_checkable
class Worker(Protocol):
    """The object a plugin's factory returns; the core runs it.

    ``run`` is the intake loop. It first finishes whatever a previous process
    left in flight (so a crash never strands data), then calls
    ``task_status.started()``, then moves data until cancelled, waiting on
    ``ctx.gate`` at every batch boundary so pause takes effect between
    batches. Plugins that only flush on a timer return after ``started()``.

    ``flush`` moves what is pending now and returns what it did. The core
    calls it on the interval timer, on manual flush and, shielded under the
    shutdown grace deadline, at shutdown; it never calls two at once.

    ``interval`` is the flush period in seconds, or None for no timer.

    Optional, polled by the supervisor every few seconds when present:
    ``async def backlog() -> int`` (items waiting in Redis) and
    ``async def lag() -> float | None`` (seconds the oldest waiting item has
    waited, None when unknown), for the status page and the
    ``syncd_backlog`` / ``syncd_oldest_pending_age_seconds`` gauges.

    Optional, asked by ``/health/ready`` on every probe:
    ``def not_ready() -> str | None``: why the worker cannot do its job right
    now although it runs (e.g. "not subscribed to view_count_updates"), or
    None when it can. Sync and cheap; the probe answers 503 with the reason
    while it is not None.

    Optional: ``status() -> dict`` (sync, no I/O): shown under ``detail``
    in ``/plugins/{name}`` (messages shows each writer's backlog there).
    """

    interval: float | None

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None: ...

    async def flush(self) -> SyncResult: ...


@attrs.frozen
class PluginSpec:
    """A plugin's declaration, returned by its `syncd_plugin` hook.

    Attributes:
        name: Section name in the config and label in metrics (``[a-z0-9_]+``).
        config: An attrs class; the plugin's config section (minus the core's
            ``enabled`` and ``database`` keys) is validated into it.
        create: Called with the context; returns the `Worker` to supervise.
        description: One line for ``syncd plugins``.
        uses_database: False for plugins that write nowhere in SQL.
        exclusive: Whether, by default, at most one replica runs the plugin
            at a time, under a lease (the config's ``exclusive`` overrides
            it). Counter plugins declare it: their replicas share the
            in-flight snapshots, and would only redo each other's work.
        lease_name: From the plugin's config, the name its replicas share
            the lease under: what identifies the Redis data they take turns
            on (e.g. the in-flight namespace), so that two deployments
            writing to one database do not block each other. None: the
            plugin's name. The config's ``lease_name`` overrides it.
        dialects: The SQL dialects it can write to (``"postgresql"``,
            ``"mysql"``, ``"sqlite"``); None: every one syncd supports. A
            config that points it at another is refused at start with one
            line; the embedded default (every plugin on SQLite) leaves it
            disabled instead.
        redis_cluster: False if it cannot run on Redis Cluster: refused (or,
            on the embedded default, left disabled) the same way. Or a check
            of its options there: ``redis_cluster(options)`` returns None if
            they can, else ``(option, reason)``, refused as
            ``plugins.<name>.<option>: <reason>`` (e.g. keys a library's
            scripts touch together need a hash tag).
    """

    name: str
    config: type
    create: Callable[[PluginContext], Worker]
    description: str = ""
    uses_database: bool = True
    exclusive: bool = False
    lease_name: Callable[[Any], str] | None = None
    dialects: tuple[str, ...] | None = None
    redis_cluster: bool | Callable[[Any], tuple[str, str] | None] = True


@attrs.frozen
class Route:
    """An HTTP route a plugin adds to the control plane.

    ``handler`` is a quart view function (``async def handler(**path_params)``
    using ``quart.request``); it returns anything quart accepts, typically a
    dict (sent as JSON) or ``(dict, status)``. Routes whose methods change
    state are protected by the same bearer token as the core's.
    """

    path: str
    handler: Callable[..., Awaitable[Any]]
    methods: tuple[str, ...] = ("GET",)


@attrs.frozen
class PluginContext:
    """Everything the core hands a plugin; the plugin's only door to it.

    Attributes:
        name: The plugin's name.
        config: The plugin's validated attrs config instance.
        redis: Shared Redis handle (`RedisHandle.run` hops to a thread).
        database: The SQL database named by the section's ``database`` key,
            or None when the plugin declared ``uses_database=False``.
        metrics: Creates this plugin's own metrics in the daemon registry.
        log: Logger whose lines carry ``plugin=<name>``.
        gate: Await ``gate.wait()`` at batch boundaries (pause/resume/stop).
        instance: This daemon's identity (stable across restarts), used to
            name per-consumer Redis keys so replicas never share them.
        report: Call as ``report(result, seconds)`` for each batch committed
            inside ``run`` so status, metrics and ``sync_success`` listeners
            see it. What ``flush`` returns is reported by the core: report
            it again and it counts twice.
        hook: The plugin manager's hook relay, for calling hooks a plugin
            declared itself (`syncd_addhooks`), e.g. ``ctx.hook.my_hook(...)``.
        stop_deadline: Called once ``run`` has been cancelled, answers the
            Trio time by which the plugin must have stopped (the shutdown
            grace). For a plugin whose ``run`` holds work that should finish
            rather than be cut (jobs in flight): shield it, bounded by this.
        report_error: Call with an exception the worker handles itself (it
            backs off and retries one sink while the others go on) so that
            it is counted, shown as the plugin's last error and reaches
            ``sync_error`` listeners. Errors that escape ``run`` or
            ``flush`` are reported by the core.
        fence: For an exclusive plugin, the lease this worker runs under:
            its name and fencing token. ``database`` then already checks
            the token in every transaction it commits (`syncd.Fenced` if
            the lease has passed to another replica); a plugin writing to
            another sink that understands fencing tokens can pass it on.
            None for a plugin that is not exclusive.
    """

    name: str
    config: Any
    redis: RedisHandle
    database: Database | None
    metrics: PluginMetrics
    log: logging.LoggerAdapter[logging.Logger]
    gate: PauseGate
    instance: str
    report: Callable[[SyncResult, float | None], None]
    hook: Any = None
    stop_deadline: Callable[[], float] | None = None
    report_error: Callable[[BaseException], None] = lambda error: None
    fence: Fence | None = None
