"""The ``plugins.portfolio`` config section."""

from __future__ import annotations

import re
from typing import Any

import attrs

import syncd

_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {value!r}", attribute)


def _table_name(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not _TABLE.match(value):
        raise ValueError(
            f"must be a plain SQL identifier (letters, digits, _; at most 63), got {value!r}",
            attribute)


def _queue_name(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    # BullMQ joins prefix, queue and id with ':'; a ':' in the name would
    # make its keys ambiguous (npm bullmq refuses it too).
    if not value or ":" in value:
        raise ValueError(f"must be a non-empty name without ':', got {value!r}", attribute)


@attrs.frozen
class ChainConfig:
    """One chain's data provider.

    Attributes:
        rpc_url: The EVM JSON-RPC endpoint (``http://`` or ``https://``).
        provider: ``evm`` (built in) or a name another package's
            ``portfolio_provider`` hook answers to.
        timeout: Longest wait for one HTTP request to the endpoint.
        batch_size: Calls per JSON-RPC batch request.
        options: Free-form settings for a third-party provider.
    """

    rpc_url: str = ""
    provider: str = "evm"
    timeout: syncd.Duration = attrs.field(default=syncd.Duration(30), validator=_positive)
    batch_size: int = attrs.field(default=100, validator=_positive)
    options: dict[str, Any] = attrs.Factory(dict)

    def __attrs_post_init__(self) -> None:
        if self.provider == "evm" and not self.rpc_url.startswith(("http://", "https://")):
            raise ValueError(
                f"must be an http:// or https:// URL, got {self.rpc_url!r}",
                attrs.fields(ChainConfig).rpc_url)


def _chain_ids(value: dict[Any, ChainConfig]) -> dict[int, ChainConfig]:
    """``1`` and ``"1"`` are the same chain: keys become ints."""
    chains: dict[int, ChainConfig] = {}
    for key, chain in value.items():
        text = str(key).strip()
        if not text.isdigit():
            raise ValueError(f"chain ids must be positive integers, got {key!r}")
        if int(text) in chains:
            raise ValueError(f"chain {int(text)} is configured twice")
        chains[int(text)] = chain
    return chains


@attrs.frozen
class BreakerConfig:
    """The circuit breaker around each provider endpoint.

    Attributes:
        failures: Consecutive failures that open the circuit.
        cooldown: How long it stays open before one trial call (half-open).
    """

    failures: int = attrs.field(default=5, validator=_positive)
    cooldown: syncd.Duration = attrs.field(default=syncd.Duration(30), validator=_positive)


@attrs.frozen
class PortfolioConfig:
    """How the portfolio worker takes jobs and where it writes.

    Attributes:
        queue: The BullMQ queue name (the seed's ``portfolio-sync``).
        prefix: BullMQ's key prefix (npm bullmq's default ``bull``).
        concurrency: Jobs this replica runs at once.
        timeout: An attempt running longer is cancelled (really) and retried.
        attempts: Attempts of a job that did not say (the seed's 3).
        backoff: First retry delay, doubled each time (the seed's 5 s).
        lock_duration: BullMQ's job lock; a replica that dies holding a job
            loses it after this long, and the stalled check puts it back.
        stalled_interval: How often this replica looks for stalled jobs.
        max_stalled: Times a job may stall before it is failed.
        keep_completed: Completed jobs BullMQ keeps (``portfolio_jobs`` keeps all).
        keep_failed: Failed jobs BullMQ keeps.
        chains: Chain id → provider; ``1`` and ``"1"`` are the same chain.
        breaker: The circuit breaker of each provider endpoint.
        dead_letter: The Redis list failed jobs go to (default ``{<queue>}:dead``,
            or ``<prefix>:<queue>:dead`` for a hash-tagged prefix such as ``{bull}``).
        jobs_table / balances_table / tokens_table: The PostgreSQL tables.
        max_users: Largest ``bulk-user-sync``.
        max_wallets: Most wallets in one user's job.
        create_tables: Create missing tables and indexes at start.
    """

    queue: str = attrs.field(default="portfolio-sync", validator=_queue_name)
    prefix: str = attrs.field(default="bull", validator=_queue_name)
    concurrency: int = attrs.field(default=10, validator=_positive)
    timeout: syncd.Duration = attrs.field(default=syncd.Duration(300), validator=_positive)
    attempts: int = attrs.field(default=3, validator=_positive)
    backoff: syncd.Duration = attrs.field(default=syncd.Duration(5), validator=_positive)
    lock_duration: syncd.Duration = attrs.field(default=syncd.Duration(30), validator=_positive)
    stalled_interval: syncd.Duration = attrs.field(
        default=syncd.Duration(30), validator=_positive)
    max_stalled: int = attrs.field(default=1, validator=_positive)
    keep_completed: int = attrs.field(default=1000, validator=_positive)
    keep_failed: int = attrs.field(default=5000, validator=_positive)
    chains: dict[str, ChainConfig] = attrs.field(factory=dict, converter=_chain_ids)
    breaker: BreakerConfig = attrs.Factory(BreakerConfig)
    dead_letter: str = ""
    jobs_table: str = attrs.field(default="portfolio_jobs", validator=_table_name)
    balances_table: str = attrs.field(default="portfolio_balances", validator=_table_name)
    tokens_table: str = attrs.field(default="portfolio_tokens", validator=_table_name)
    max_users: int = attrs.field(default=10_000, validator=_positive)
    max_wallets: int = attrs.field(default=100, validator=_positive)
    create_tables: bool = True

    @property
    def dead_letter_key(self) -> str:
        """``dead_letter``; else next to BullMQ's keys when their prefix has a
        hash tag (``{bull}:portfolio-sync:dead``: one slot with the jobs, so
        a requeue is one script on a cluster), else ``{<queue>}:dead``."""
        if self.dead_letter:
            return self.dead_letter
        if syncd.hash_tag(f"{self.prefix}:{self.queue}") is not None:
            return f"{self.prefix}:{self.queue}:dead"
        return syncd.slot_key(self.queue, "dead")


def cluster_refusal(config: PortfolioConfig) -> tuple[str, str] | None:
    """Why ``config`` cannot run on Redis Cluster (`syncd.PluginSpec.redis_cluster`).

    BullMQ's scripts touch many of a queue's keys at once; on a cluster
    they must share a slot, so the prefix (or the queue name) needs a hash
    tag, on the Node side too.
    """
    if syncd.hash_tag(f"{config.prefix}:{config.queue}") is not None:
        return None
    return ("prefix", "on Redis Cluster BullMQ's keys need a hash tag so that they share a "
            f"slot: set prefix: '{{{config.prefix}}}' here and in the producers' Queue "
            f"options (BullMQ's own advice), got {config.prefix!r}")
