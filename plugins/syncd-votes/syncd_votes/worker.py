"""The votes worker: queue → validated rows → SQL, in ledgered batches.

Exactly once, step by step (the seed popped a vote, then inserted it: a
crash in between lost it, and a failed insert dropped it):

1. ``take`` *moves* up to ``batch_size`` votes into a processing list of
   this instance, under a batch id (`syncd.ReliableQueue`).
2. The batch is validated; valid votes are inserted and the batch id is
   recorded in the ledger in the same transaction (``db.apply_batch``). A
   row the database refuses is isolated and the rest still commits. The
   ledger entry's detail lists the position and reason of every item that
   did not become a row.
3. ``ack`` deletes the batch and pushes its dead letters, atomically.

A crash before 3 leaves the batch in the processing list. The next ``take``
(after a restart, or a replica reclaiming an orphan) gets the same items
under the same id; the ledger says whether step 2 committed, and if it did,
only step 3 runs, with the dead letters read back from the ledger detail.

Lanes: an instance consumes through ``lanes`` processing lists at once
(``<instance>``, ``<instance>#1``, ...), each one batch at a time. While one
lane waits for the database to commit, another validates its batch: the
Python work of one overlaps the server work of the other, which is most of
the gain over the seed beyond batching. Each lane is a consumer in its own
right for `syncd.ReliableQueue` (own heartbeat, reclaimable when dead).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import attrs
import trio

import syncd
from syncd_votes.config import VotesConfig
from syncd_votes.metrics import VoteMetrics
from syncd_votes.schema import COLUMNS, index_statements, table_statement
from syncd_votes.validate import Invalid, Parsed, parse_batch, parse_timestamp


@attrs.frozen
class Outcome:
    """What happened to one batch.

    Attributes:
        result: For status, metrics and ``sync_success`` listeners.
        items: Items the batch held (valid or not).
        seconds: From having the batch to having acked it.
    """

    result: syncd.SyncResult
    items: int
    seconds: float


@attrs.frozen(eq=False)
class Lane:
    """One processing list of this instance and the lock that makes its
    take → apply → ack one unit, shared by ``run`` and ``flush``.

    Attributes:
        queue: The consumer of this lane.
        lock: Held from ``take`` to ``ack``.
    """

    queue: syncd.ReliableQueue
    lock: trio.Lock = attrs.Factory(trio.Lock)


def lane_names(instance: str, lanes: int) -> list[str]:
    """Consumer names of an instance's lanes; the first is the instance itself."""
    return [instance] + [f"{instance}#{n}" for n in range(1, lanes)]


@attrs.define(eq=False)
class VotesWorker:
    """The votes plugin's worker: ``lanes`` consumers of the vote queue."""

    ctx: syncd.PluginContext
    interval: float | None = None
    lanes: list[Lane] = attrs.field(init=False)
    metrics: VoteMetrics = attrs.field(init=False)
    _allowed: frozenset[str] | None = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        cfg = self.config
        self.lanes = [
            Lane(syncd.ReliableQueue(
                self.ctx.redis, cfg.queue, name, heartbeat_ttl=float(cfg.heartbeat_ttl)))
            for name in lane_names(self.ctx.instance, cfg.lanes)
        ]
        self.metrics = VoteMetrics.create(self.ctx.metrics, cfg.max_vote_labels)
        self._allowed = None if cfg.allowed_votes is None else frozenset(cfg.allowed_votes)

    @property
    def config(self) -> VotesConfig:
        return self.ctx.config

    @property
    def database(self) -> syncd.Database:
        assert self.ctx.database is not None  # the spec declares uses_database
        return self.ctx.database

    # -- the Worker protocol -------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Create the table, finish our batches left from a crash, then consume.

        A database or Redis outage raises out of here: the supervisor backs
        off and starts a fresh worker, which resumes from the processing lists.
        """
        if self.config.create_table:
            await self.database.setup_once(f"votes:{self.config.table}", self._create_table)
        async with trio.open_nursery() as nursery:
            # Heartbeats first: registered and alive before anything is taken.
            for lane in self.lanes:
                await nursery.start(lane.queue.serve_heartbeat)
            for lane in self.lanes:
                outcome = await self._recover(lane)
                if outcome is not None:
                    self.ctx.log.info("finished a batch left in flight", extra={
                        "consumer": lane.queue.consumer, "items": outcome.items,
                        "skipped": outcome.result.skipped})
                    self.ctx.report(outcome.result, outcome.seconds)
            task_status.started()
            nursery.start_soon(self._serve_reclaim)
            for lane in self.lanes:
                nursery.start_soon(self._consume, lane)

    async def flush(self) -> syncd.SyncResult:
        """Store what is pending now: our batches in flight, then the queue as
        long as it was at the start.

        Bounded by that length, so a steady producer cannot make the final
        flush at shutdown endless; never waits for a batch to fill.
        """
        queued = (await self._lengths())[0]
        outcomes: list[Outcome] = []
        for lane in self.lanes:
            outcome = await self._recover(lane)
            if outcome is not None:
                outcomes.append(outcome)
        left = [queued]

        async def drain(lane: Lane) -> None:
            while left[0] > 0:
                outcome = await self._step(lane, block=0.0, max_wait=0.0)
                if outcome is None:
                    return
                left[0] -= outcome.items
                outcomes.append(outcome)

        async with trio.open_nursery() as nursery:
            for lane in self.lanes:
                nursery.start_soon(drain, lane)
        total = syncd.SyncResult()
        for outcome in outcomes:
            total += outcome.result
        return total

    async def backlog(self) -> int:
        """Votes in Redis not yet in SQL; also refreshes the queue gauges (every 5 s)."""
        queued, in_flight, dead = await self._lengths(dead=True)
        self.metrics.lengths(queued, in_flight, dead)
        return queued + in_flight

    async def lag(self) -> float | None:
        """Age of the oldest vote waiting in the queue, by its own timestamp.

        The queue's oldest vote is at its right end; Redis keeps no time of
        arrival, so the vote's ``timestamp`` stands in (the application's
        clock). None when that vote has no readable timestamp; 0 when the
        queue is empty.
        """
        queue = self.config.queue
        oldest = await self.ctx.redis.run(lambda client: client.lindex(queue, -1))
        if oldest is None:
            return 0.0
        try:
            doc = json.loads(oldest)
            stamp = doc.get("timestamp") if isinstance(doc, dict) else None
            if stamp is None:
                return None
            when = parse_timestamp(stamp, datetime.now(UTC).replace(tzinfo=None))
        except (ValueError, Invalid):
            return None
        now = datetime.now(UTC).replace(tzinfo=None)
        return max(0.0, (now - when).total_seconds())

    # -- loops ---------------------------------------------------------------------

    async def _recover(self, lane: Lane) -> Outcome | None:
        """Finish the batch this lane holds (left by a crash or a cancelled run)."""
        # Looked at first without the lock: while the queue is empty, run()
        # holds it for up to `block` seconds waiting for a vote.
        if await lane.queue.processing_length() == 0:
            return None
        return await self._step(lane, block=0.0, max_wait=0.0, held_only=True)

    async def _consume(self, lane: Lane) -> None:
        cfg = self.config
        while True:
            await self.ctx.gate.wait()
            outcome = await self._step(
                lane, block=float(cfg.block), max_wait=float(cfg.batch_max_wait), pausable=True)
            if outcome is not None:
                self.ctx.report(outcome.result, outcome.seconds)

    async def _serve_reclaim(self) -> None:
        """Every heartbeat interval, finish the batches of consumers that died."""
        queue = self.lanes[0].queue
        while True:
            await self.ctx.gate.wait()
            for consumer in await queue.orphans():
                await self.ctx.gate.wait()
                batch = await queue.claim_orphan(consumer)
                if batch is None:
                    continue
                outcome = await self._process(queue, batch)
                self.ctx.log.info("finished the batch of a dead consumer", extra={
                    "consumer": consumer, "items": outcome.items,
                    "skipped": outcome.result.skipped})
                self.ctx.report(outcome.result, outcome.seconds)
            await trio.sleep(float(self.config.heartbeat_ttl) / 3)

    # -- one batch -------------------------------------------------------------------

    async def _step(
        self, lane: Lane, *, block: float, max_wait: float, pausable: bool = False,
        held_only: bool = False,
    ) -> Outcome | None:
        """Take → apply → ack one batch on ``lane``; None if there was none.

        ``held_only``: only the batch the lane's processing list already holds
        (``take`` hands that back before anything new). ``pausable``: if the
        gate closed while waiting for votes, leave the batch for later.
        """
        async with lane.lock:
            if held_only and await lane.queue.processing_length() == 0:
                return None
            batch = await lane.queue.take(self.config.batch_size, max_wait, block)
            if batch is None:
                return None
            syncd.crash_point(self.ctx.name, "after_take")
            if pausable and self.ctx.gate.paused:
                # Paused while this lane waited for votes: the batch stays in
                # the processing list for resume (or a flush) to apply.
                return None
            return await self._process(lane.queue, batch)

    async def _process(self, queue: syncd.ReliableQueue, batch: syncd.Batch) -> Outcome:
        cfg = self.config
        started = time.perf_counter()
        now = datetime.now(UTC).replace(tzinfo=None)
        parsed = parse_batch(
            batch.items, now=now, allowed=self._allowed, max_bytes=cfg.max_item_bytes,
            text=text_timestamps(self.database.dialect))
        applied, dead = True, parsed.invalid
        stored: list[str] = []
        if parsed.votes:
            applied, answer = await self._apply(batch, parsed)
            if answer is not None:
                stored, dead = answer
            else:
                committed = await self._committed_dead(batch)
                dead = parsed.invalid if committed is None else committed
        elif batch.recovered and (committed := await self._committed_dead(batch)) is not None:
            # Nothing is valid now, but the batch committed under an earlier
            # config: its rows are in SQL, and only its dead letters go.
            applied, dead = False, committed
        syncd.crash_point(self.ctx.name, "after_commit")
        letters = [
            syncd.DeadLetter(cfg.dead_letter, batch.items[position], reason, self.ctx.name,
                             source=cfg.queue)
            for position, reason in dead
        ]
        acked = await queue.ack(batch, letters)
        seconds = time.perf_counter() - started
        self.metrics.count(stored)
        self.metrics.duration.observe(seconds)
        result = syncd.SyncResult(
            items=len(stored),
            batches=1 if applied else 0,
            dead_lettered=len(letters) if acked else 0,
            skipped=0 if applied else len(batch) - len(dead),
        )
        return Outcome(result, len(batch), seconds)

    async def _apply(self, batch: syncd.Batch, parsed: Parsed) -> tuple[bool, Any]:
        """Insert the batch's valid votes under its ledger entry.

        The ledger entry's detail records every item that does not become a
        row, so a replay dead-letters exactly these: known up front, unless
        the database refuses a row. Isolating refused rows costs a SAVEPOINT
        per batch (a fifth of the batch's time on MariaDB), so a batch is
        first tried whole; only if the database refuses it is it tried again,
        in a new transaction, isolating the rows it refuses. The failed
        attempt was rolled back entirely, ledger entry included.
        """
        detail = _encode_detail(parsed.invalid)
        try:
            return await self.database.apply_batch(
                self.ctx.name, batch.id, lambda tx: self._insert(tx, parsed, isolate=False),
                detail=detail)
        except syncd.TransientError:
            raise
        except Exception as exc:
            self.ctx.log.info("database refused the batch; isolating the rows it refuses",
                              extra={"batch": batch.id, "error": str(exc)[:200]})
        return await self.database.apply_batch(
            self.ctx.name, batch.id, lambda tx: self._insert(tx, parsed, isolate=True),
            detail=detail)

    async def _committed_dead(self, batch: syncd.Batch) -> list[tuple[int, str]] | None:
        """The dead letters of ``batch`` if the ledger says it committed, else None.

        They come from its ledger entry, never from validating the items
        again: the config may have changed since (``allowed_votes``
        narrowed), and an item that became a row must not be dead-lettered too.
        """
        entry = await self.database.ledger_entry(self.ctx.name, batch.id)
        return None if entry is None else _decode_detail(entry.detail)

    def _insert(
        self, tx: syncd.Transaction, parsed: Parsed, *, isolate: bool
    ) -> tuple[list[str], list[tuple[int, str]]]:
        """In the database thread: insert the valid votes; return what went where.

        Returns the stored votes' choices (for the metric) and ``(position,
        reason)`` of every item that was not stored.
        """
        answer = tx.insert_ignore(
            self.config.table, COLUMNS, [vote for _, vote in parsed.votes], isolate=isolate)
        if not answer.rejected:
            return [vote.vote for _, vote in parsed.votes], parsed.invalid
        refused = dict(answer.rejected)
        dead = sorted([
            *parsed.invalid,
            *((parsed.votes[index][0], f"database rejected the row: {message}")
              for index, message in refused.items()),
        ])
        tx.ledger_detail = _encode_detail(dead)
        stored = [vote.vote for i, (_, vote) in enumerate(parsed.votes) if i not in refused]
        return stored, dead

    def _create_table(self, tx: syncd.Transaction) -> None:
        """Create what the catalog lacks, nothing else: ``CREATE INDEX IF NOT
        EXISTS`` would wait for every open write transaction on the table on
        PostgreSQL, and queue every later writer behind it."""
        table = self.config.table
        if not tx.table_exists(table):
            tx.execute(table_statement(tx.dialect, table))
        for index, statement in index_statements(tx.dialect, table):
            if not tx.index_exists(table, index):
                tx.execute(statement)

    async def _lengths(self, *, dead: bool = False) -> list[int]:
        """[queued, in our processing lists(, dead letters)] in one round trip."""
        cfg = self.config
        keys = [lane.queue.processing_key for lane in self.lanes]

        def lengths(client: Any) -> list[int]:
            with client.pipeline(transaction=False) as pipe:
                pipe.llen(cfg.queue)
                for key in keys:
                    pipe.llen(key)
                if dead:
                    pipe.llen(cfg.dead_letter)
                found = [int(n) for n in pipe.execute()]
            counts = [found[0], sum(found[1:1 + len(keys)])]
            return counts + found[1 + len(keys):]

        return await self.ctx.redis.run(lengths)


def text_timestamps(dialect: str) -> bool:
    """Whether timestamps go to ``dialect`` as ``YYYY-MM-DD HH:MM:SS`` text
    rather than a datetime: the form its driver takes fastest.

    MySQL and SQLite take text (pymysql escapes a datetime three times slower
    than a string, and a batch of only strings is escaped in one pass;
    sqlite3's datetime adapter is deprecated). PostgreSQL takes the datetime
    (text would be typed ``text``).
    """
    return dialect != "postgresql"


def _encode_detail(dead: list[tuple[int, str]]) -> str | None:
    """The ledger detail of a batch: ``(position, reason)`` of its dead letters."""
    if not dead:
        return None
    return json.dumps({"dead": dead}, ensure_ascii=False, separators=(",", ":"))


def _decode_detail(detail: str | None) -> list[tuple[int, str]]:
    """The dead letters of a batch that committed before a crash, from its ledger entry.

    Never from validating the items again: the config may have changed
    since (``allowed_votes`` narrowed), and an item that became a row must
    not be dead-lettered too. No detail means every item became a row
    (`_encode_detail` writes one whenever there is a dead letter).
    """
    if not detail:
        return []
    return [(int(position), str(reason)) for position, reason in json.loads(detail)["dead"]]
