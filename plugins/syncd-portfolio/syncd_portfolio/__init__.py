"""syncd-portfolio: a BullMQ-compatible job worker in Trio, syncing on-chain
balances into PostgreSQL.

The seed's core service keeps enqueuing ``portfolio-sync``,
``bulk-user-sync``, ``chain-sync`` and ``token-metadata`` jobs with npm
bullmq; this plugin runs them with timeouts that really cancel, retries
with backoff, dead letters, cancel from any replica and a graceful
shutdown that leaves nothing in ``active``. See README.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pluggy

import syncd
from syncd_portfolio import hookspecs
from syncd_portfolio.config import PortfolioConfig, cluster_refusal
from syncd_portfolio.provider import EvmProvider, Provider, ProviderError, Snapshot, TokenInfo
from syncd_portfolio.worker import PortfolioWorker

NAME = "portfolio"

__all__ = ["EvmProvider", "PortfolioConfig", "PortfolioWorker", "Provider", "ProviderError",
           "Snapshot", "TokenInfo"]


@syncd.hookimpl
def syncd_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


@syncd.hookimpl
def syncd_plugin() -> syncd.PluginSpec:
    return syncd.PluginSpec(
        name=NAME,
        config=PortfolioConfig,
        create=PortfolioWorker,
        description="BullMQ portfolio-sync jobs → on-chain balances in PostgreSQL",
        dialects=("postgresql",),
        # BullMQ's keys need a hash-tagged prefix ({bull}) on a cluster.
        redis_cluster=cluster_refusal,
    )


@syncd.hookimpl
def syncd_workload(plugin: str, prefix: str) -> syncd.Workload | None:
    """Jobs for ``syncd chaos``, against a local deterministic JSON-RPC responder."""
    if plugin != NAME:
        return None
    from syncd_portfolio.workload import portfolio_workload

    return portfolio_workload(prefix)


@syncd.hookimpl
def syncd_http_routes(plugin: str, worker: Any) -> list[syncd.Route] | None:
    if plugin != NAME or not isinstance(worker, PortfolioWorker):
        return None
    from syncd_portfolio.routes import routes

    return routes(worker)


@syncd.hookimpl
def syncd_dead_letter_lists(plugin: str, config: Any) -> list[str] | None:
    """The list jobs go to after their last attempt: ``dead_letter``, else ``{<queue>}:dead``.

    Without it the core would fall back to ``config.dead_letter``, which is
    empty by default, and ``syncd dead-letters``, the HTTP dead-letter
    endpoints and the status page would see no dead letters at all.
    """
    return [config.dead_letter_key] if plugin == NAME else None


@syncd.hookimpl
def syncd_dead_letter_restore(
    plugin: str, config: Any, letter: syncd.DeadLetter,
) -> list[syncd.Restore] | None:
    """The core's dead-letter requeue: the job again, as a new BullMQ job.

    See `syncd_portfolio.requeue` (why a new id, ``<old id>-r<ms>``).
    """
    if plugin != NAME:
        return None
    from syncd_portfolio.requeue import restore_writes

    try:
        return restore_writes(config, letter.payload_bytes, letter.at,
                              lambda op, key, *args: getattr(syncd.Restore, op)(key, *args))
    except ValueError as exc:
        raise syncd.NotRequeueable(str(exc)) from None


@syncd.hookimpl
def syncd_status_panel(plugin: str, worker: Any) -> Callable[[], Awaitable[syncd.Panel]] | None:
    """Jobs by state, the jobs running here, each endpoint's circuit, paused or not."""
    if plugin != NAME or not isinstance(worker, PortfolioWorker):
        return None
    from syncd_portfolio.panel import build_panel

    return lambda: build_panel(worker)
