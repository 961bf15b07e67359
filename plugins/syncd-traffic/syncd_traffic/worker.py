"""The traffic worker: snapshot node counters, add them in SQL, then let go of them.

One batch is three thread hops, in this order, and the order is the whole
guarantee:

1. ``lane.snapshot``: one Lua script reads up to ``batch_size`` counter
   hashes, copies them into the lane's in-flight snapshot hash (no TTL) and
   deletes them. An HINCRBY landing a moment later creates a fresh hash for
   the next flush.
2. ``db.apply_batch``: one SQL transaction adds the deltas and records the
   snapshot id in the ledger; node ids without a row go in the ledger detail.
3. ``lane.commit``: one Lua script deletes the snapshot hash and pushes the
   dead letters. Only now has the data left Redis.

A crash between 1 and 2 leaves the snapshot in flight and unapplied; between
2 and 3, in flight and applied. Either way ``run`` (before the worker reports
ready) finds it in its lane, the ledger says which case it is, and the
missing-row dead letters are rebuilt from the ledger detail, so each byte is
counted once and each bad counter quarantined once.

Step 1 of the next batch runs in the other lane while steps 2-3 of this one
run (see `TrafficWorker`).
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import time
from typing import Any

import attrs
import trio
from prometheus_client import Counter, Gauge, Histogram

import syncd
from syncd_traffic.config import TrafficConfig
from syncd_traffic.judge import Judged, Letter, judge, missing_letters, refused_letters

#: Seconds between two counts of the pending keys (each walks the keyspace).
BACKLOG_REFRESH = 60.0
FLUSH_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


@attrs.frozen
class TrafficMetrics:
    """The seed's "metrics to monitor", under the names the README lists."""

    nodes_flushed: Counter
    bytes_flushed: Counter
    dead_lettered: Counter
    errors: Counter
    flush_duration: Histogram
    pending: Gauge

    @classmethod
    def create(cls, metrics: syncd.PluginMetrics) -> TrafficMetrics:
        return cls(
            nodes_flushed=metrics.counter(
                "traffic_nodes_flushed", "Node counters added to SQL."),
            bytes_flushed=metrics.counter(
                "traffic_bytes_flushed", "Bytes (upload + download) added to SQL."),
            dead_lettered=metrics.counter(
                "traffic_dead_lettered", "Node counters quarantined, by reason.", ["reason"]),
            errors=metrics.counter(
                "traffic_errors", "Flushes that failed, by kind (redis, database, ...).",
                ["kind"]),
            flush_duration=metrics.histogram(
                "traffic_flush_duration_seconds", "Time of a whole flush (all its batches).",
                buckets=FLUSH_BUCKETS),
            pending=metrics.gauge(
                "traffic_pending_keys", "Node counter keys waiting in Redis, in flight included."),
        )


@attrs.frozen
class Taken:
    """A snapshot out of circulation and judged, waiting for its SQL transaction.

    Attributes:
        lane: The `CounterSnapshots` it is in flight in.
        snapshot: The counters taken.
        judged: What they mean: deltas per node and dead letters.
        rows: The deltas as ``(id, delta per column)`` rows for SQL.
    """

    lane: syncd.CounterSnapshots
    snapshot: syncd.Snapshot
    judged: Judged
    rows: list[tuple[int, ...]]


@attrs.define(eq=False)
class TrafficWorker:
    """Flushes node traffic counters on the supervisor's timer.

    A flush is a two-stage pipeline over two lanes (two in-flight areas in
    Redis): while one snapshot's SQL transaction runs, the next snapshot is
    taken and judged in the other lane, so the Redis and the SQL server work
    at the same time (measured: 39k nodes/s with the two lanes, 29k one
    batch after the other). SQL transactions themselves never overlap, so
    ours never wait on each other's row locks. Each lane holds at most one
    snapshot, and recovery finishes both.

    Attributes:
        ctx: What the core handed this plugin.
        config: The validated ``plugins.traffic`` section.
        lanes: Snapshot-and-reset of the counter hashes, one per lane.
        metrics: The plugin's own series.
        interval: Flush period in seconds (the supervisor's timer reads it).
    """

    ctx: syncd.PluginContext
    config: TrafficConfig
    lanes: tuple[syncd.CounterSnapshots, ...]
    metrics: TrafficMetrics
    interval: float
    _bytes: int = 0
    _backlog: tuple[float, int] | None = None
    #: Set while a flush runs, and set (fired) when it ends; see `backlog`.
    _flushing: trio.Event | None = None

    @classmethod
    def create(cls, ctx: syncd.PluginContext) -> TrafficWorker:
        config: TrafficConfig = ctx.config
        lanes = tuple(
            syncd.CounterSnapshots(ctx.redis, config.scan_pattern, prefix, kind="hash",
                                   scan_count=max(1000, config.batch_size))
            for prefix in config.inflight_prefixes
        )
        return cls(ctx, config, lanes, TrafficMetrics.create(ctx.metrics),
                   float(config.interval))

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
        for lane in self.lanes:
            if not await self._in_flight(lane):
                continue
            # snapshot() hands back the one in flight rather than taking more.
            started = time.perf_counter()
            taken = await self._take(lane)
            if taken is not None:
                result = await self._release(taken)
                self.ctx.report(result, time.perf_counter() - started)
                self.ctx.log.info("finished the snapshot a previous run left in flight",
                                  extra={"snapshot": taken.snapshot.id, **result.as_dict()})
        task_status.started()

    async def flush(self) -> syncd.SyncResult:
        """Move the counters pending now to SQL, batch by batch.

        "Now" bounds the flush, so that steady production cannot keep one
        flush (the final one included) going for ever: it stops when a fresh
        snapshot comes back short of ``batch_size`` (its scan covered the
        whole keyspace), or once it has taken as many keys as the database
        held when it began (DBSIZE: O(1), and never less than our keys).
        What arrives meanwhile is the next flush's.
        """
        started = time.perf_counter()
        bytes_before = self._bytes
        self._flushing = flushing = trio.Event()
        self._backlog = None  # a flush changes it
        try:
            total, walked = await self._pipeline()
        except Exception as exc:
            self.metrics.errors.labels(syncd.error_kind(exc)).inc()
            raise
        else:
            if walked:  # the flush took every key the whole keyspace had
                self._set_backlog(0)
        finally:
            self.metrics.flush_duration.observe(time.perf_counter() - started)
            self._flushing = None
            flushing.set()
        flushed_bytes = self._bytes - bytes_before
        if total.batches:
            self.ctx.log.info("flushed", extra={
                "nodes": total.items, "bytes": flushed_bytes, "batches": total.batches,
                "dead_lettered": total.dead_lettered, "replayed": total.skipped,
                "seconds": round(time.perf_counter() - started, 3)})
        return attrs.evolve(total, detail={"bytes": flushed_bytes})

    async def backlog(self) -> int:
        """Counter keys waiting plus those in flight, for the supervisor's gauge.

        Counting walks the whole keyspace with SCAN, so it is refreshed at most
        every `BACKLOG_REFRESH` seconds (the supervisor asks every few): on a
        big production Redis a full walk every 5 s would cost more than the
        flushes it reports on. A flush walks the keyspace anyway, so while
        one runs this waits for it rather than walk beside it (at start-up,
        that second walk took 0.3 s of a 1.2 s flush of 100,000 nodes), a
        count under way gives up when a flush starts, and a flush that took
        everything there was sets the count to 0 itself.
        """
        while True:
            flushing = self._flushing
            if flushing is not None:
                await flushing.wait()
            if self._backlog is not None and (
                    trio.current_time() - self._backlog[0] < BACKLOG_REFRESH):
                return self._backlog[1]
            # The first lane's count covers the waiting keys and its own in-flight ones.
            counted = await self.lanes[0].pending(stop=lambda: self._flushing is not None)
            if counted is not None:
                break
        pending = counted
        for lane in self.lanes[1:]:
            pending += await self.ctx.redis.run(lane.in_flight)
        self._set_backlog(pending)
        return pending

    def _set_backlog(self, pending: int) -> None:
        self.metrics.pending.set(pending)
        self._backlog = (trio.current_time(), pending)

    # -- the pipeline ----------------------------------------------------------------------

    async def _pipeline(self) -> tuple[syncd.SyncResult, bool]:
        """Release each snapshot while the next one is taken; see `flush` for the end.

        Returns what was flushed, and whether the flush ended because the
        keyspace had nothing more (rather than on the budget).
        """
        total = syncd.SyncResult()
        walked = True
        batch_size = self.config.batch_size
        budget = await self.ctx.redis.run(lambda client: int(client.dbsize()))
        lanes = itertools.cycle(await self._lanes_in_flight_first())
        current = await self._take(next(lanes))
        while current is not None:
            snapshot = current.snapshot
            more = True
            if not snapshot.recovered:
                budget -= len(snapshot)
                more = len(snapshot) >= batch_size and budget > 0
                walked = len(snapshot) < batch_size
            box: list[Taken | None] = [None]
            try:
                async with trio.open_nursery() as nursery:
                    if more:
                        nursery.start_soon(self._take_into, next(lanes), box)
                    result = await self._release(current)
            except BaseExceptionGroup as group:
                error = _first_error(group)
                if error is None:
                    raise
                if total.batches:
                    # The supervisor reports what flush returns; this flush
                    # will not return, so account for what did commit.
                    self.ctx.report(total)
                raise error from None
            total += result
            current = box[0]
        return total, walked

    async def _take_into(self, lane: syncd.CounterSnapshots, box: list[Taken | None]) -> None:
        box[0] = await self._take(lane)

    async def _take(self, lane: syncd.CounterSnapshots) -> Taken | None:
        """Stage 1: take a snapshot in ``lane`` (or the one in flight there) and judge it."""
        snapshot = await lane.snapshot(self.config.batch_size)
        if snapshot is None:
            return None
        judged = judge(snapshot.pairs(), self.config, self.ctx.name)
        syncd.crash_point(self.ctx.name, "after_snapshot")
        return Taken(lane, snapshot, judged, judged.rows(self.config))

    async def _release(self, taken: Taken) -> syncd.SyncResult:
        """Stage 2: apply a snapshot exactly once, then release it with its dead letters."""
        config, name = self.config, self.ctx.name
        outcome = Outcome()
        if taken.rows:
            outcome = await self._apply(taken)
        letters = (taken.judged.letters
                   + missing_letters(taken.judged, outcome.missing, config, name)
                   + refused_letters(taken.judged, outcome.refused, config, name))
        syncd.crash_point(name, "after_commit")
        await taken.lane.commit(taken.snapshot, [letter.entry for letter in letters])
        return self._account(taken, outcome, letters)

    async def _apply(self, taken: Taken) -> Outcome:
        """Add the deltas under the snapshot's id."""
        snapshot_id = taken.snapshot.id
        applied, outcome = await self.db.apply_batch(
            self.ctx.name, snapshot_id, functools.partial(self._increment, taken.rows))
        if applied:
            assert outcome is not None
            return outcome
        # Applied before a crash: the ids it could not apply are in the ledger.
        entry = await self.db.ledger_entry(self.ctx.name, snapshot_id)
        return Outcome.from_detail(entry.detail if entry is not None else None)

    def _increment(self, rows: list[tuple[int, ...]], tx: syncd.Transaction) -> Outcome:
        """Inside the transaction (a worker thread): the UPDATEs, and the ledger detail.

        ``isolate``: a node the database refuses (its sum would overflow the
        column, a CHECK constraint...) is set aside with the database's
        reason rather than fail the whole batch for ever.
        """
        config = self.config
        result = tx.increment(
            config.table, config.id_column, list(config.columns), rows,
            insert_missing=config.insert_missing, isolate=True,
        )
        outcome = Outcome(
            applied=True,
            missing=sorted(int(nid) for nid in result.missing),
            refused=sorted((int(nid), reason) for nid, reason in result.rejected),
        )
        tx.ledger_detail = outcome.detail()
        return outcome

    def _account(self, taken: Taken, outcome: Outcome, letters: list[Letter]) -> syncd.SyncResult:
        reasons = collections.Counter(letter.kind for letter in letters)
        for reason, count in reasons.items():
            self.metrics.dead_lettered.labels(reason).inc(count)
        if letters:
            self.ctx.log.warning("quarantined node counters", extra={
                "dead_letter": self.config.dead_letter, **reasons,
                "examples": [json.loads(letter.entry.payload)["key"] for letter in letters[:3]]})
        applied, left_out = outcome.applied, outcome.left_out
        nodes = len(taken.rows) - len(left_out)
        if applied:
            deltas = taken.judged.deltas
            flushed = taken.judged.bytes - sum(sum(deltas[nid]) for nid in left_out)
            self._bytes += flushed
            self.metrics.nodes_flushed.inc(nodes)
            self.metrics.bytes_flushed.inc(flushed)
        return syncd.SyncResult(
            items=nodes if applied else 0,
            batches=1,
            dead_lettered=len(letters),
            skipped=0 if applied else nodes,
        )

    async def _lanes_in_flight_first(self) -> list[syncd.CounterSnapshots]:
        """The lanes, one holding a snapshot first: a failed flush may have left
        one in flight, and it must not wait for a restart to be finished."""
        keys = [lane.current_key for lane in self.lanes]
        current = await self.ctx.redis.run(lambda client: client.mget(keys))
        return sorted(self.lanes, key=lambda lane: current[self.lanes.index(lane)] is None)

    async def _in_flight(self, lane: syncd.CounterSnapshots) -> bool:
        return bool(await self.ctx.redis.run(lambda client: client.exists(lane.current_key)))

    # -- the table ------------------------------------------------------------------------

    async def _ensure_table(self) -> None:
        created = await self.db.transaction(self._create_table)
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


@attrs.frozen
class Outcome:
    """What applying a snapshot did to its nodes.

    Attributes:
        applied: Applied by this call (False: there was nothing to apply, or
            it was applied before a crash and only its ledger detail is known).
        missing: Node ids with no row.
        refused: ``(node id, database reason)`` for the increments the
            database refused.
    """

    applied: bool = False
    missing: list[int] = attrs.Factory(list)
    refused: list[tuple[int, str]] = attrs.Factory(list)

    @property
    def left_out(self) -> list[int]:
        return self.missing + [nid for nid, _ in self.refused]

    def detail(self) -> str | None:
        """For the ledger: what a replay after a crash needs to rebuild the dead letters."""
        detail: dict[str, Any] = {}
        if self.missing:
            detail["missing"] = self.missing
        if self.refused:
            detail["refused"] = [list(pair) for pair in self.refused]
        return json.dumps(detail, separators=(",", ":")) if detail else None

    @classmethod
    def from_detail(cls, detail: Any) -> Outcome:
        if not detail:
            return cls()
        parsed = json.loads(detail)
        return cls(
            applied=False,
            missing=[int(nid) for nid in parsed.get("missing", [])],
            refused=[(int(nid), str(reason)) for nid, reason in parsed.get("refused", [])],
        )


def _first_error(group: BaseExceptionGroup) -> Exception | None:
    """The first plain error in a nursery's group (None if it holds only cancellations)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            inner = _first_error(exc)
            if inner is not None:
                return inner
        elif isinstance(exc, Exception):
            return exc
    return None
