"""The views worker: VOD view counters flushed by the core's `syncd.CounterFlusher`,
fed by pub/sub, with live totals published after each commit.

What is views' own: which keys (``key_pattern``, string counters), what
they mean (`syncd_views.judge`), the pub/sub intake (`syncd_views.intake`)
and publishing the new totals. Taking the counters out of Redis atomically,
applying them exactly once under the ledger, quarantining ids with no row or
refused by the database, finishing what a crash left in flight and the
backlog gauge are the core's, shared with traffic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import orjson
import trio
from prometheus_client import Counter

import syncd
from syncd_views.config import ViewsConfig
from syncd_views.intake import Intake, IntakeMetrics
from syncd_views.judge import ViewsJudge

# Publish each ARGV after the first on the channel ARGV[1] (no keys: a
# channel is not a key, and Redis Cluster broadcasts PUBLISH anyway).
_PUBLISH = """
for i = 2, #ARGV do redis.call('PUBLISH', ARGV[1], ARGV[i]) end
return #ARGV - 1
"""


def views_metrics(metrics: syncd.PluginMetrics) -> syncd.CounterMetrics:
    return syncd.CounterMetrics.create(
        metrics, "views",
        items=("vods", "VOD counters added to SQL."),
        units=("views", "Views added to SQL."),
    )


@attrs.define(eq=False)
class ViewsWorker:
    """Flushes view counters on the supervisor's timer; its ``run`` is the pub/sub intake.

    Attributes:
        ctx: What the core handed this plugin.
        config: The validated ``plugins.views`` section.
        flusher: The core's counter pipeline, set up for string counters.
        intake: The pub/sub subscription, or None when ``channel`` is null.
        interval: Flush period in seconds (the supervisor's timer reads it).
        published: Totals published (``views_totals_published_total``).
    """

    ctx: syncd.PluginContext
    config: ViewsConfig
    flusher: syncd.CounterFlusher
    intake: Intake | None
    interval: float
    published: Counter
    _publish_script: Any = None

    @classmethod
    def create(cls, ctx: syncd.PluginContext) -> ViewsWorker:
        config: ViewsConfig = ctx.config
        spec = syncd.CounterSpec(
            kind="string",
            pattern=config.key_pattern,
            inflight_prefix=config.inflight_prefix,
            batch_size=config.batch_size,
            table=config.table,
            id_column=config.id_column,
            columns=(config.column,),
            insert_missing=config.insert_missing,
            dead_letter=config.dead_letter,
            totals=config.totals_channel is not None,
            item_label="vods",
            unit_label="views",
        )
        intake = None
        if config.channel is not None:
            intake = Intake(ctx, config, IntakeMetrics.create(ctx.metrics))
        published = ctx.metrics.counter(
            "views_totals_published", "New VOD totals published after a commit.")
        worker = cls(ctx, config, None, intake, float(config.interval), published,  # type: ignore[arg-type]
                     ctx.redis.client.register_script(_PUBLISH))
        worker.flusher = syncd.CounterFlusher(
            ctx, spec, ViewsJudge(config, ctx.name), views_metrics(ctx.metrics),
            on_commit=worker._publish if config.totals_channel is not None else None,
            wants_totals=worker._listened if config.totals_channel is not None else None)
        return worker

    @property
    def db(self) -> syncd.Database:
        assert self.ctx.database is not None
        return self.ctx.database

    # -- the Worker protocol ----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Prepare the table, finish what a crash left in flight, subscribe, report ready,
        then take pub/sub updates until cancelled (unsubscribing and storing what
        arrived before the final flush)."""
        if self.config.create_table:
            await self._ensure_table()
        await self.flusher.recover()
        if self.intake is None:
            task_status.started()
            return
        await self.intake.run(task_status=task_status)

    async def flush(self) -> syncd.SyncResult:
        """Move the view counters pending now to SQL (see `syncd.CounterFlusher.flush`)."""
        return await self.flusher.flush()

    async def backlog(self) -> int:
        return await self.flusher.backlog()

    async def lag(self) -> float | None:
        """An upper bound on the age of the oldest view waiting (see `syncd.CounterFlusher.lag`)."""
        return await self.flusher.lag()

    def not_ready(self) -> str | None:
        """Not ready while the subscription is lost (readiness hook of the core)."""
        if self.intake is not None and not self.intake.subscribed:
            return f"not subscribed to {self.config.channel}"
        return None

    # -- live totals ----------------------------------------------------------------------

    async def _listened(self) -> bool:
        """Before each batch: does anybody listen for totals (PUBSUB NUMSUB)?

        If not, the batch reads none back and nothing is built or sent:
        pub/sub would drop every message anyway, and 100,000 of them cost
        ~0.2 s of this process' CPU and as much of Redis'. A subscriber that
        arrives during the batch gets the totals of the batches after it, as
        one that subscribed a moment later would: pub/sub promises nothing
        older.
        """
        channel = self.config.totals_channel
        return bool(await self.ctx.redis.run(
            lambda client: client.pubsub_numsub(channel)[0][1]))

    async def _publish(self, totals: Mapping[Any, tuple[int, ...]]) -> None:
        """After a commit: ``{"vodId", "views"}`` per VOD the batch changed.

        Only called with totals when `_listened` said someone listens, just
        before the batch's transaction. One script call publishes them all:
        as a redis-py pipeline, 100,000 PUBLISH commands cost ~0.9 s of this
        process' CPU (each packed and its reply parsed in Python); as one
        EVALSHA, ~0.1 s.
        """
        script, channel = self._publish_script, self.config.totals_channel

        def publish(client: Any) -> int:
            dumps = orjson.dumps
            messages = [dumps({"vodId": vod, "views": values[0]})
                        for vod, values in totals.items()]
            script(keys=[], args=[channel, *messages], client=client)
            return len(messages)

        self.published.inc(await self.ctx.redis.run(publish))

    # -- the table ------------------------------------------------------------------------

    async def _ensure_table(self) -> None:
        # Once per process, catalog first, DDL under a short lock timeout.
        created = await self.db.setup_once(f"views:{self.config.table}", self._create_table)
        if created:
            self.ctx.log.warning(
                "created the missing table; if an existing table was meant, check "
                "plugins.views.table", extra={"table": self.config.table})

    def _create_table(self, tx: syncd.Transaction) -> bool:
        config = self.config
        if tx.table_exists(config.table):
            return False
        tx.execute(
            f"CREATE TABLE IF NOT EXISTS {tx.quote(config.table)} ("
            f"{tx.quote_column(config.id_column)} VARCHAR(191) PRIMARY KEY, "
            f"{tx.quote_column(config.column)} BIGINT NOT NULL DEFAULT 0)")
        return True
