"""A counter plugin's whole flush, written once: snapshot, judge, apply exactly once, release.

Counter plugins (traffic's node hashes, views' VOD strings) differ in what a
counter looks like and which SQL columns it feeds; how it gets there safely
is the same, and lives here. One batch is three thread hops, in this order,
and the order is the whole guarantee:

1. ``lane.snapshot`` (`CounterSnapshots`): one Lua script takes up to
   ``batch_size`` counter keys into the lane's in-flight snapshot and
   deletes them. An increment a moment later creates a fresh key for the
   next flush. The plugin's `CounterJudge` then turns the raw counters into
   SQL rows and dead letters (bad ids, bad values) — pure Python, no I/O.
2. ``db.apply_batch``: one SQL transaction adds the rows (`Transaction.increment`,
   with ``isolate``) and records the snapshot id in the ledger. Ids without
   a row and increments the database refuses (an overflow, a CHECK) are
   kept in the ledger's detail.
3. ``lane.commit``: one Lua script deletes the snapshot and pushes the dead
   letters. Only now has the data left Redis.

A crash between 1 and 2 leaves the snapshot in flight and unapplied;
between 2 and 3, in flight and applied. Either way `CounterFlusher.recover`
(which a worker's ``run`` calls before it reports ready) finds it in its
lane, the ledger says which case it is, and the dead letters for missing
and refused ids are rebuilt from the ledger detail: each unit is counted
once and each bad counter quarantined once.

The flush is a two-stage pipeline over two lanes (two in-flight areas in
Redis): while one snapshot's SQL transaction runs, the next one is taken and
judged in the other lane, so Redis and the SQL server work at the same time
(traffic measured 39k nodes/s with two lanes, 29k one batch after the
other). SQL transactions never overlap, so ours never wait on each other's
row locks; rows go in id order. Each lane holds at most one snapshot.

Crash points (`syncd.crash_point`) for reliability tests:
``<plugin>:after_snapshot`` and ``<plugin>:after_commit``.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio
from prometheus_client import Counter, Gauge, Histogram

from syncd.counters import CounterSnapshots, Kind, Snapshot
from syncd.deadletter import DeadLetter
from syncd.faults import crash_point
from syncd.plugin import SyncResult
from syncd.supervisor import error_kind

if TYPE_CHECKING:
    from syncd.metrics import PluginMetrics
    from syncd.plugin import PluginContext
    from syncd.sql import Database, Transaction

#: Seconds between two counts of the pending keys (each walks the keyspace).
BACKLOG_REFRESH = 60.0
FLUSH_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: In-flight areas: a fixed number, since recovery must look in every one a
#: previous version may have used.
LANES = 2

#: Dead-letter reasons (metric labels) the flusher itself gives; a judge adds its own.
MISSING_ROW, REFUSED = "missing_row", "refused"


@attrs.frozen
class CounterLetter:
    """A dead letter before it is pushed: its metric reason, and the entry."""

    kind: str
    entry: DeadLetter


def counter_letter(
    kind: str, dead_letter: str, plugin: str, key: bytes, value: Any, reason: str,
) -> CounterLetter:
    """A dead letter for one counter, its key and values exactly as Redis held them.

    The payload is JSON: ``{"key", "values": {field: value}}`` for a hash
    counter (``value`` its flat ``[field, value, ...]`` list or a field →
    value mapping), ``{"key", "value"}`` for a string counter (``value``
    bytes). ``ensure_ascii`` keeps it exact for any byte: odd bytes travel as
    surrogate escapes and come back out of ``json.loads`` the same way. The
    source is the counter's own key, where a requeue would put it back.
    """
    text_key = _text(key)
    doc: dict[str, Any] = {"key": text_key}
    if isinstance(value, bytes | str):
        doc["value"] = _text(value)
    else:
        doc["values"] = {_text(f): _text(v) for f, v in _field_items(value)}
    payload = json.dumps(doc, separators=(",", ":"))
    return CounterLetter(kind, DeadLetter(dead_letter, payload, reason, plugin, source=text_key))


@attrs.define
class JudgedCounters:
    """A snapshot sorted into what goes to SQL and what goes to the dead-letter list.

    Attributes:
        deltas: id → the judge's delta for it, summed over the snapshot's
            keys for that id (two keys can name one id, e.g. ``7``/``07``,
            and one UPDATE per id must carry both). Its shape is the judge's
            (traffic: ``[upload, download]``; views: an int).
        sources: id → the ``(key, value)`` pairs behind its delta, raw, to
            quarantine them verbatim if the row turns out missing or refused.
        letters: The entries rejected before SQL.
    """

    deltas: dict[Any, Any] = attrs.Factory(dict)
    sources: dict[Any, list[tuple[bytes, Any]]] = attrs.Factory(dict)
    letters: list[CounterLetter] = attrs.Factory(list)


class CounterJudge(Protocol):
    """What a counter plugin tells the `CounterFlusher`: what its counters mean.

    Judging is the plugin's hottest Python (every counter passes through it),
    so it gets the snapshot's raw pairs and builds `JudgedCounters` its own way.
    """

    def judge(self, pairs: Iterable[tuple[bytes, Any]]) -> JudgedCounters:
        """Sort a snapshot's ``(key, value)`` pairs (`Snapshot.pairs`) into deltas and letters."""
        ...

    def rows(self, judged: JudgedCounters) -> list[tuple[Any, ...]]:
        """``(id, delta per column)`` for `Transaction.increment`, in id order (lock order)."""
        ...

    def units(self, delta: Any) -> int:
        """What one id's delta counts for the units metric (bytes, views)."""
        ...


@attrs.frozen
class CounterSpec:
    """Where a counter plugin's counters are, and where they go.

    Attributes:
        kind: ``"hash"`` (HINCRBY'd fields) or ``"string"`` (INCR'd keys).
        pattern: SCAN MATCH pattern of the counter keys.
        inflight_prefix: Namespace of the in-flight snapshots; lane ``n``
            uses ``{inflight_prefix}:{n}``.
        batch_size: Keys per snapshot, and so per SQL transaction.
        table: The SQL table, one row per id.
        id_column: Its key column.
        columns: The counter columns, in the order of the judge's rows.
        insert_missing: An id with no row: False quarantines it, True inserts it.
        dead_letter: The Redis list for quarantined counters.
        totals: Read each changed row's new values in the transaction that
            changed them (RETURNING on PostgreSQL), for `CounterFlusher.on_commit`.
        item_label: What one id is, in logs (``nodes``, ``vods``).
        unit_label: What the judge's `CounterJudge.units` count, in logs.
    """

    kind: Kind
    pattern: str
    inflight_prefix: str
    batch_size: int
    table: str
    id_column: str
    columns: tuple[str, ...]
    insert_missing: bool
    dead_letter: str
    totals: bool = False
    item_label: str = "counters"
    unit_label: str = "units"

    @property
    def inflight_prefixes(self) -> tuple[str, ...]:
        """One in-flight namespace per pipeline lane, under ``inflight_prefix``."""
        return tuple(f"{self.inflight_prefix}:{lane}" for lane in range(LANES))


@attrs.frozen
class CounterMetrics:
    """A counter plugin's own series (the core's per-plugin ones come on top).

    Build with `CounterMetrics.create`: ``<stem>_<items>_flushed_total``,
    ``<stem>_<units>_flushed_total``, ``<stem>_dead_lettered_total{reason}``,
    ``<stem>_errors_total{kind}``, ``<stem>_flush_duration_seconds`` and
    ``<stem>_pending_keys``.
    """

    items_flushed: Counter
    units_flushed: Counter
    dead_lettered: Counter
    errors: Counter
    flush_duration: Histogram
    pending: Gauge

    @classmethod
    def create(
        cls, metrics: PluginMetrics, stem: str, *, items: tuple[str, str],
        units: tuple[str, str],
    ) -> CounterMetrics:
        """``items`` and ``units``: (name, help) of the two flushed counters,
        e.g. ``("nodes", "Node counters added to SQL.")``."""
        return cls(
            items_flushed=metrics.counter(f"{stem}_{items[0]}_flushed", items[1]),
            units_flushed=metrics.counter(f"{stem}_{units[0]}_flushed", units[1]),
            dead_lettered=metrics.counter(
                f"{stem}_dead_lettered", "Counters quarantined, by reason.", ["reason"]),
            errors=metrics.counter(
                f"{stem}_errors", "Flushes that failed, by kind (redis, database, ...).",
                ["kind"]),
            flush_duration=metrics.histogram(
                f"{stem}_flush_duration_seconds", "Time of a whole flush (all its batches).",
                buckets=FLUSH_BUCKETS),
            pending=metrics.gauge(
                f"{stem}_pending_keys", "Counter keys waiting in Redis, in flight included."),
        )


@attrs.frozen
class Taken:
    """A snapshot out of circulation and judged, waiting for its SQL transaction.

    Attributes:
        lane: The `CounterSnapshots` it is in flight in.
        snapshot: The counters taken.
        judged: What they mean: deltas per id and dead letters.
        rows: The deltas as ``(id, delta per column)`` rows for SQL.
    """

    lane: CounterSnapshots
    snapshot: Snapshot
    judged: JudgedCounters
    rows: list[tuple[Any, ...]]


@attrs.frozen
class Outcome:
    """What applying a snapshot did to its ids.

    Attributes:
        applied: Applied by this call (False: nothing to apply, or applied
            before a crash, and only its ledger detail is known).
        missing: Ids with no row.
        refused: ``(id, database reason)`` for the increments the database refused.
        totals: id → the new values of its columns, read in the transaction
            (only with `CounterSpec.totals`, and only when ``applied``).
    """

    applied: bool = False
    missing: list[Any] = attrs.Factory(list)
    refused: list[tuple[Any, str]] = attrs.Factory(list)
    totals: Mapping[Any, tuple[int, ...]] = attrs.Factory(dict)

    @property
    def left_out(self) -> list[Any]:
        return self.missing + [key for key, _ in self.refused]

    def detail(self) -> str | None:
        """For the ledger: what a replay after a crash needs to rebuild the dead letters."""
        detail: dict[str, Any] = {}
        if self.missing:
            detail["missing"] = self.missing
        if self.refused:
            detail["refused"] = [list(pair) for pair in self.refused]
        return json.dumps(detail, separators=(",", ":")) if detail else None

    @classmethod
    def from_detail(cls, detail: str | None) -> Outcome:
        if not detail:
            return cls()
        parsed = json.loads(detail)
        return cls(
            applied=False,
            missing=list(parsed.get("missing", [])),
            refused=[(key, str(reason)) for key, reason in parsed.get("refused", [])],
        )


@attrs.define(eq=False)
class CounterFlusher:
    """Snapshot, judge, apply exactly once and release a plugin's counters.

    A worker builds one in its factory and delegates to it: ``run`` awaits
    `recover` before ``task_status.started()``, ``flush`` returns `flush`,
    and the optional ``backlog`` and ``lag`` return `backlog` and `lag`.

    Attributes:
        ctx: The plugin's context (its name, Redis, database, logger).
        spec: Where the counters are and where they go.
        judge: What they mean.
        metrics: The plugin's own series.
        on_commit: Awaited after each batch's SQL commit with the new totals
            of the ids it changed (`CounterSpec.totals`), e.g. to publish
            them; never before the commit, never for a replayed batch (whose
            totals were not read). An error here fails the flush, but the
            batch stays committed and is released on the next.
        wants_totals: Asked before each batch's transaction whether to read
            its totals at all (`CounterSpec.totals`): e.g. only while
            somebody listens for them. Reading them back costs the database
            and this process about a tenth of a flush.
        lanes: Snapshot-and-reset of the counter keys, one per lane.
    """

    ctx: PluginContext
    spec: CounterSpec
    judge: CounterJudge
    metrics: CounterMetrics
    on_commit: Callable[[Mapping[Any, tuple[int, ...]]], Awaitable[None]] | None = None
    wants_totals: Callable[[], Awaitable[bool]] | None = None
    lanes: tuple[CounterSnapshots, ...] = attrs.field(init=False)
    _units: int = 0
    _backlog: tuple[float, int] | None = None
    #: Set while a flush runs, and set (fired) when it ends; see `backlog`.
    _flushing: trio.Event | None = None
    #: When (epoch seconds) the last flush that took every key there was began; see `lag`.
    _swept_at: float | None = None

    def __attrs_post_init__(self) -> None:
        spec = self.spec
        self.lanes = tuple(
            CounterSnapshots(self.ctx.redis, spec.pattern, prefix, kind=spec.kind,
                             scan_count=max(1000, spec.batch_size))
            for prefix in spec.inflight_prefixes
        )

    @property
    def db(self) -> Database:
        assert self.ctx.database is not None  # a counter plugin uses a database
        return self.ctx.database

    @property
    def flushing(self) -> bool:
        return self._flushing is not None

    # -- recovery -----------------------------------------------------------------------

    async def recover(self) -> None:
        """Finish what a crash left in flight in any lane: apply it unless the
        ledger says it was, push its dead letters, release it."""
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

    # -- flush --------------------------------------------------------------------------

    async def flush(self) -> SyncResult:
        """Move the counters pending now to SQL, batch by batch.

        "Now" bounds the flush, so that steady production cannot keep one
        flush (the final one included) going for ever: it stops when a fresh
        snapshot comes back short of ``batch_size`` (its scan covered the
        whole keyspace), or once it has taken as many keys as the database
        held when it began (DBSIZE: O(1), and never less than our keys).
        What arrives meanwhile is the next flush's.
        """
        started = time.perf_counter()
        began = time.time()
        units_before = self._units
        self._flushing = flushing = trio.Event()
        self._backlog = None  # a flush changes it
        try:
            total, walked = await self._pipeline()
        except Exception as exc:
            self.metrics.errors.labels(error_kind(exc)).inc()
            raise
        else:
            if walked:  # the flush took every key the whole keyspace had
                self._set_backlog(0)
                self._swept(began)
        finally:
            self.metrics.flush_duration.observe(time.perf_counter() - started)
            self._flushing = None
            flushing.set()
        flushed_units = self._units - units_before
        spec = self.spec
        if total.batches:
            self.ctx.log.info("flushed", extra={
                spec.item_label: total.items, spec.unit_label: flushed_units,
                "batches": total.batches, "dead_lettered": total.dead_lettered,
                "replayed": total.skipped, "seconds": round(time.perf_counter() - started, 3)})
        return attrs.evolve(total, detail={spec.unit_label: flushed_units})

    # -- backlog ------------------------------------------------------------------------

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
            counted_from = time.time()
            counted = await self.lanes[0].pending(stop=lambda: self._flushing is not None)
            if counted is not None:
                break
        pending = counted
        for lane in self.lanes[1:]:
            pending += await self.ctx.redis.run(lane.in_flight)
        self._set_backlog(pending)
        if pending == 0:
            self._swept(counted_from)
        return pending

    async def lag(self) -> float | None:
        """An upper bound on the age of the oldest counter waiting, in seconds.

        Redis keeps no time per increment, but once a flush has taken every
        key there was (or a count found none), whatever waits was counted
        after that moment began: the age is at most the time since. None
        until the first such moment.
        """
        if self._swept_at is None:
            return None
        return max(0.0, time.time() - self._swept_at)

    def _swept(self, since: float) -> None:
        """Nothing older than ``since`` (epoch seconds) waits any more."""
        self._swept_at = since if self._swept_at is None else max(self._swept_at, since)

    def _set_backlog(self, pending: int) -> None:
        self.metrics.pending.set(pending)
        self._backlog = (trio.current_time(), pending)

    # -- the pipeline -------------------------------------------------------------------

    async def _pipeline(self) -> tuple[SyncResult, bool]:
        """Release each snapshot while the next one is taken; see `flush` for the end.

        Returns what was flushed, and whether the flush ended because the
        keyspace had nothing more (rather than on the budget).
        """
        total = SyncResult()
        walked = True
        batch_size = self.spec.batch_size
        budget = await self.ctx.redis.run(lambda client: int(client.dbsize()))
        lanes = itertools.cycle(await self._lanes_in_flight_first())
        current = await self._take(next(lanes))
        while current is not None:
            snapshot = current.snapshot
            more = True
            if not snapshot.recovered:
                budget -= len(snapshot)
                # On a cluster a snapshot holds one slot's counters, so it
                # is often short of batch_size while more are waiting.
                full = len(snapshot) >= batch_size or snapshot.more
                more = full and budget > 0
                walked = not full
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
                    self.ctx.report(total, None)
                raise error from None
            total += result
            current = box[0]
        return total, walked

    async def _take_into(self, lane: CounterSnapshots, box: list[Taken | None]) -> None:
        box[0] = await self._take(lane)

    async def _take(self, lane: CounterSnapshots) -> Taken | None:
        """Stage 1: take a snapshot in ``lane`` (or the one in flight there) and judge it."""
        snapshot = await lane.snapshot(self.spec.batch_size)
        if snapshot is None:
            return None
        judged = self.judge.judge(snapshot.pairs())
        crash_point(self.ctx.name, "after_snapshot")
        return Taken(lane, snapshot, judged, self.judge.rows(judged))

    async def _release(self, taken: Taken) -> SyncResult:
        """Stage 2: apply a snapshot exactly once, then release it with its dead letters."""
        outcome = Outcome()
        if taken.rows:
            outcome = await self._apply(taken)
            if outcome.applied and self.on_commit is not None and outcome.totals:
                await self.on_commit(outcome.totals)
        letters = [*taken.judged.letters, *self._letters(taken.judged, outcome)]
        crash_point(self.ctx.name, "after_commit")
        await taken.lane.commit(taken.snapshot, [letter.entry for letter in letters])
        return self._account(taken, outcome, letters)

    async def _apply(self, taken: Taken) -> Outcome:
        """Add the deltas under the snapshot's id."""
        snapshot_id = taken.snapshot.id
        totals = self.spec.totals and (self.wants_totals is None or await self.wants_totals())
        applied, outcome = await self.db.apply_batch(
            self.ctx.name, snapshot_id,
            functools.partial(self._increment, taken.rows, totals=totals))
        if applied:
            assert outcome is not None
            return outcome
        # Applied before a crash: the ids it could not apply are in the ledger.
        entry = await self.db.ledger_entry(self.ctx.name, snapshot_id)
        return Outcome.from_detail(entry.detail if entry is not None else None)

    def _increment(self, rows: list[tuple[Any, ...]], tx: Transaction, *,
                   totals: bool) -> Outcome:
        """Inside the transaction (a worker thread): the UPDATEs, and the ledger detail.

        ``isolate``: an id the database refuses (its sum would overflow the
        column, a CHECK constraint...) is set aside with the database's
        reason rather than fail the whole batch for ever (issue 11).
        """
        spec = self.spec
        result = tx.increment(
            spec.table, spec.id_column, spec.columns, rows,
            insert_missing=spec.insert_missing, isolate=True, totals=totals,
        )
        outcome = Outcome(
            applied=True,
            missing=sorted(result.missing, key=_order),
            refused=sorted(result.rejected, key=lambda pair: _order(pair[0])),
            totals=result.totals,
        )
        tx.ledger_detail = outcome.detail()
        return outcome

    def _letters(self, judged: JudgedCounters, outcome: Outcome) -> Iterator[CounterLetter]:
        """Dead letters for the ids SQL did not take: no row, or refused."""
        spec, plugin = self.spec, self.ctx.name
        sources = judged.sources
        for key in outcome.missing:
            for raw_key, value in _sources_of(sources, key):
                yield counter_letter(
                    MISSING_ROW, spec.dead_letter, plugin, raw_key, value,
                    f"no row with {spec.id_column} = {key} in {spec.table} "
                    "(insert_missing is off)")
        for key, reason in outcome.refused:
            for raw_key, value in _sources_of(sources, key):
                yield counter_letter(
                    REFUSED, spec.dead_letter, plugin, raw_key, value,
                    f"the database refused to add it to {spec.table} "
                    f"({spec.id_column} = {key}): {reason}")

    def _account(
        self, taken: Taken, outcome: Outcome, letters: Sequence[CounterLetter],
    ) -> SyncResult:
        reasons = collections.Counter(letter.kind for letter in letters)
        for reason, count in reasons.items():
            self.metrics.dead_lettered.labels(reason).inc(count)
        if letters:
            self.ctx.log.warning("quarantined counters", extra={
                "dead_letter": self.spec.dead_letter, **reasons,
                "examples": [json.loads(letter.entry.payload)["key"] for letter in letters[:3]]})
        left_out = outcome.left_out
        items = len(taken.rows) - len(left_out)
        if outcome.applied:
            judged, units = taken.judged, self.judge.units
            flushed = sum(map(units, judged.deltas.values()))
            if left_out:
                deltas = judged.deltas
                flushed -= sum(units(deltas[local]) for local in
                               (_local(judged, key) for key in left_out) if local in deltas)
            self._units += flushed
            self.metrics.items_flushed.inc(items)
            self.metrics.units_flushed.inc(flushed)
        return SyncResult(
            items=items if outcome.applied else 0,
            batches=1,
            dead_lettered=len(letters),
            skipped=0 if outcome.applied else items,
        )

    async def _lanes_in_flight_first(self) -> list[CounterSnapshots]:
        """The lanes, one holding a snapshot first: a failed flush may have left
        one in flight, and it must not wait for a restart to be finished."""
        if self.ctx.redis.cluster:
            held = await self.ctx.redis.run(
                lambda client: [lane.has_in_flight(client) for lane in self.lanes])
            return sorted(self.lanes, key=lambda lane: not held[self.lanes.index(lane)])
        keys = [lane.current_key for lane in self.lanes]
        current = await self.ctx.redis.run(lambda client: client.mget(keys))
        return sorted(self.lanes, key=lambda lane: current[self.lanes.index(lane)] is None)

    async def _in_flight(self, lane: CounterSnapshots) -> bool:
        return bool(await self.ctx.redis.run(lane.has_in_flight))


def _order(key: Any) -> tuple[int, Any]:
    """Sort ints and texts apart (a ledger detail may hold either)."""
    return (0, key) if isinstance(key, int) else (1, str(key))


def _local(judged: JudgedCounters, key: Any) -> Any:
    """``key`` as the judge spelled it: the ledger detail (JSON) and the
    database may give back an int where the judge had one, or a str."""
    if key in judged.deltas:
        return key
    try:
        return str(key) if isinstance(key, int) else int(key)
    except ValueError:
        return key


def _sources_of(sources: Mapping[Any, list[tuple[bytes, Any]]], key: Any) -> list:
    found = sources.get(key)
    if found is None:
        try:
            found = sources.get(str(key) if isinstance(key, int) else int(key))
        except ValueError:
            found = None
    return found or []


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _field_items(value: Any) -> Iterable[tuple[Any, Any]]:
    if isinstance(value, Mapping):
        return value.items()
    return zip(value[0::2], value[1::2], strict=True)


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
