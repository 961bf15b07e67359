"""The traffic worker: node counter hashes flushed into SQL by the core's `syncd.CounterFlusher`.

What is traffic's own is small: which hashes (``key_pattern``), what they
mean (`syncd_traffic.judge`: ``upload`` + ``download`` per node, bad ids and
values quarantined), which columns they feed, and the minimal table it
creates when asked. Taking the counters out of Redis atomically, applying
them exactly once under the ledger (two lanes, so Redis and SQL work at the
same time), quarantining nodes with no row or refused by the database,
finishing what a crash left in flight and the backlog gauge are the core's,
shared with the views plugin: see `syncd.counterflush`.
"""

from __future__ import annotations

import attrs
import trio

import syncd
from syncd_traffic.config import TrafficConfig
from syncd_traffic.judge import TrafficJudge


def traffic_metrics(metrics: syncd.PluginMetrics) -> syncd.CounterMetrics:
    """The seed's "metrics to monitor", under the names the README lists."""
    return syncd.CounterMetrics.create(
        metrics, "traffic",
        items=("nodes", "Node counters added to SQL."),
        units=("bytes", "Bytes (upload + download) added to SQL."),
    )


@attrs.define(eq=False)
class TrafficWorker:
    """Flushes node traffic counters on the supervisor's timer.

    Attributes:
        ctx: What the core handed this plugin.
        config: The validated ``plugins.traffic`` section.
        flusher: The core's counter pipeline, set up for node hashes.
        interval: Flush period in seconds (the supervisor's timer reads it).
    """

    ctx: syncd.PluginContext
    config: TrafficConfig
    flusher: syncd.CounterFlusher
    interval: float

    @classmethod
    def create(cls, ctx: syncd.PluginContext) -> TrafficWorker:
        config: TrafficConfig = ctx.config
        spec = syncd.CounterSpec(
            kind="hash",
            pattern=config.scan_pattern,
            inflight_prefix=config.inflight_prefix,
            batch_size=config.batch_size,
            table=config.table,
            id_column=config.id_column,
            columns=config.columns,
            insert_missing=config.insert_missing,
            dead_letter=config.dead_letter,
            item_label="nodes",
            unit_label="bytes",
        )
        flusher = syncd.CounterFlusher(
            ctx, spec, TrafficJudge(config, ctx.name), traffic_metrics(ctx.metrics))
        return cls(ctx, config, flusher, float(config.interval))

    @property
    def db(self) -> syncd.Database:
        assert self.ctx.database is not None  # the spec says uses_database
        return self.ctx.database

    # -- the Worker protocol ----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Prepare the table, finish what a crash left in flight, report ready.

        The flushing itself happens on the supervisor's timer, so this returns.
        """
        if self.config.create_table:
            await self._ensure_table()
        await self.flusher.recover()
        task_status.started()

    async def flush(self) -> syncd.SyncResult:
        """Move the node counters pending now to SQL (see `syncd.CounterFlusher.flush`)."""
        return await self.flusher.flush()

    async def backlog(self) -> int:
        """Counter keys waiting plus those in flight (see `syncd.CounterFlusher.backlog`)."""
        return await self.flusher.backlog()

    async def lag(self) -> float | None:
        """An upper bound on the age of the oldest byte waiting (see `syncd.CounterFlusher.lag`)."""
        return await self.flusher.lag()

    # -- the table ------------------------------------------------------------------------

    async def _ensure_table(self) -> None:
        # Once per process, catalog first, DDL under a short lock timeout.
        created = await self.db.setup_once(f"traffic:{self.config.table}", self._create_table)
        if created:
            self.ctx.log.warning(
                "created the missing table; if an existing table was meant, check "
                "plugins.traffic.table", extra={"table": self.config.table})

    def _create_table(self, tx: syncd.Transaction) -> bool:
        """Create a minimal nodes table unless it exists; True if it was created."""
        config = self.config
        if tx.table_exists(config.table):
            return False
        integer = "INTEGER" if tx.dialect == "sqlite" else "BIGINT"
        columns = [f"{tx.quote_column(config.id_column)} {integer} PRIMARY KEY"]
        columns += [f"{tx.quote_column(c)} BIGINT NOT NULL DEFAULT 0" for c in config.columns]
        tx.execute(f"CREATE TABLE IF NOT EXISTS {tx.quote(config.table)} ({', '.join(columns)})")
        return True
