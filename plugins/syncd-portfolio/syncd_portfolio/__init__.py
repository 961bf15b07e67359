"""syncd-portfolio: a BullMQ-compatible job worker in Trio, syncing on-chain
balances into PostgreSQL.

The seed's core service keeps enqueuing ``portfolio-sync``,
``bulk-user-sync``, ``chain-sync`` and ``token-metadata`` jobs with npm
bullmq; this plugin runs them with timeouts that really cancel, retries
with backoff, dead letters, cancel from any replica and a graceful
shutdown that leaves nothing in ``active``. See README.md.
"""

from __future__ import annotations

from typing import Any

import pluggy

import syncd
from syncd_portfolio import hookspecs
from syncd_portfolio.config import PortfolioConfig
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
    )


@syncd.hookimpl
def syncd_http_routes(plugin: str, worker: Any) -> list[syncd.Route] | None:
    if plugin != NAME or not isinstance(worker, PortfolioWorker):
        return None
    from syncd_portfolio.routes import routes

    return routes(worker)
