"""Every hook a syncd plugin can implement.

Hooks are synchronous and declarative: they return specs, routes or
callables, and the core owns every nursery and decides when to run what they
return. Implement them with ``@syncd.hookimpl``; a misspelled hook name fails
at start-up (``PluginManager.check_pending``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from syncd.deadletter import DeadLetter
    from syncd.metrics import Metrics
    from syncd.panel import Panel
    from syncd.plugin import PluginSpec, Route, SyncResult
    from syncd.restore import Restore
    from syncd.workload import Workload

PROJECT = "syncd"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- declaring plugins ---------------------------------------------------------


@hookspec(historic=True)
def syncd_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    """Add a plugin's own hookspecs, so other packages can extend that plugin.

    Called once for each registered package as it is registered (historic),
    before unknown hook names are checked. Call
    ``pluginmanager.add_hookspecs(module)`` with a module of ``@hookspec``
    functions marked with the ``syncd`` project name; the plugin calls its
    hooks at run time through ``ctx.hook``. As pytest's ``pytest_addhooks``.

    :param pluginmanager: the daemon's plugin manager.
    """


@hookspec
def syncd_plugin() -> PluginSpec | list[PluginSpec] | None:
    """Declare the plugin(s) this package provides.

    Called once when the plugin manager is built. Return a `PluginSpec` (or a
    list of them): name, attrs config class and the factory that builds the
    `Worker` from a `PluginContext`.
    """


@hookspec
def syncd_http_routes(plugin: str, worker: Any) -> list[Route] | None:
    """Add HTTP routes to the control plane for a running plugin.

    Called once per enabled plugin when the control plane is built, with the
    plugin's name and the worker its factory returned. Return routes only for
    your own plugin (check ``plugin``); state-changing methods need the token.

    :param plugin: name of the enabled plugin the routes would belong to.
    :param worker: the object that plugin's factory returned.
    """


@hookspec
def syncd_metrics(metrics: Metrics) -> None:
    """Register extra collectors in the daemon's Prometheus registry.

    Called once at start-up. Metrics a worker updates are better created from
    ``ctx.metrics`` in its factory; this hook is for custom collectors.
    """


@hookspec
def syncd_workload(plugin: str, prefix: str) -> Workload | list[Workload] | None:
    """Describe how to produce and count test data for this plugin.

    Used by ``syncd bench`` and ``syncd chaos`` (and their CI smoke tests) to
    drive a plugin the way the user's application would, then check that
    every item arrived exactly once. Return None unless ``plugin`` is yours.
    A plugin whose configurations differ enough to measure apart returns a
    list, each with its own `Workload.variant` (messages: the database
    writer alone, and all its writers); each runs as its own row.

    :param prefix: unique per run; name every key and table with it.
    """


# -- dead letters ------------------------------------------------------------------


@hookspec
def syncd_dead_letter_lists(plugin: str, config: Any) -> Sequence[str] | str | None:
    """Name the Redis lists that hold this plugin's dead letters.

    Called when the daemon starts and by ``syncd dead-letters``. Return None
    unless ``plugin`` is yours. Without an answer, the core uses the plugin
    config's ``dead_letter`` attribute when it has one.

    :param plugin: the plugin's name.
    :param config: its validated config instance.
    """


@hookspec(firstresult=True)
def syncd_dead_letter_restore(
    plugin: str, config: Any, letter: DeadLetter
) -> Sequence[Restore] | None:
    """Say how a dead letter goes back where it came from, so it can be requeued.

    Return the `syncd.Restore` operations that put the item back (e.g.
    ``[Restore.rpush(letter.source or config.queue, letter.payload_bytes)]``
    for a queue item, one ``Restore.hincrby`` per field for a hash counter).
    The core runs them in one Lua script together with removing the entry, so
    the item is either still a dead letter or back at its source, never both.
    Raise `syncd.NotRequeueable` with the reason when this item cannot go
    back (it stays a dead letter); return None unless ``plugin`` is yours.
    Pure: no I/O, called per item, also while the daemon is stopped.

    :param plugin: the plugin's name.
    :param config: its validated config instance.
    :param letter: the decoded entry (``letter.source``: where it came from, if recorded).
    """


# -- the status page -------------------------------------------------------------------


@hookspec
def syncd_status_panel(plugin: str, worker: Any) -> Callable[[], Awaitable[Panel]] | None:
    """Give the status page a panel of this plugin's own (jobs by state, failures...).

    Called per request of ``GET /plugins/{name}/panel`` with the running
    worker; return an async callable that builds a `syncd.Panel` (tables of
    text, and buttons that POST to your routes), or None unless ``plugin`` is
    yours. The core's page renders it as text, never as HTML.

    :param plugin: the plugin's name.
    :param worker: the object that plugin's factory returned.
    """


# -- lifecycle events (the messages seed's events) -----------------------------


@hookspec
def syncd_worker_started(plugin: str, config: Any) -> None:
    """A plugin's worker finished recovery and is running.

    :param plugin: the plugin's name.
    :param config: its validated config instance.
    """


@hookspec
def syncd_worker_stopped(plugin: str) -> None:
    """A plugin's worker stopped (shutdown, or before a restart after a crash)."""


@hookspec
def syncd_sync_success(plugin: str, result: SyncResult, duration: float) -> None:
    """A batch or flush committed.

    :param result: what it moved; ``duration`` is in seconds.
    """


@hookspec
def syncd_sync_error(plugin: str, error: BaseException) -> None:
    """A plugin's batch, flush or worker failed; the supervisor will retry."""
