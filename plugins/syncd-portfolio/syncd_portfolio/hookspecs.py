"""The portfolio plugin's own hook: other packages add chain providers.

Registered on the daemon's plugin manager through ``syncd_addhooks``. A
package implements it with ``@syncd.hookimpl``::

    @syncd.hookimpl
    def portfolio_provider(chain_id, config, client):
        if config.provider != "solana":
            return None
        return SolanaProvider(chain_id, config.rpc_url, client)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import syncd

if TYPE_CHECKING:
    import httpx

    from syncd_portfolio.config import ChainConfig
    from syncd_portfolio.provider import Provider


@syncd.hookspec(firstresult=True)
def portfolio_provider(
    chain_id: int, config: ChainConfig, client: httpx.AsyncClient
) -> Provider | Any | None:
    """Build the provider for one configured chain, or None if ``config.provider``
    is not yours. Called once per chain when the worker starts; the first
    answer wins, and the built-in ``evm`` provider answers last.

    :param chain_id: the chain's id.
    :param config: its section under ``chains`` (``provider``, ``rpc_url``,
        ``timeout``, ``batch_size``, ``options``).
    :param client: the worker's shared ``httpx.AsyncClient`` (Trio-native).
    """
