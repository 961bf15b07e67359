"""The messages worker: each queue fans out to one durable list per writer.

For every queue type (``in`` → ``whatsapp:in``, ...):

1. **Intake.** A `syncd.ReliableQueue` on the queue's list takes a batch
   into this instance's processing list. Its items become messages once,
   here (`syncd_messages.normalize`): so the database, the file and the
   webhook receive identical bytes. In one Lua script
   (`syncd.ReliableQueue.ack` with ``forward_to``) the batch leaves the
   processing list, its messages go to every writer's list
   (``{whatsapp:in}:writer:<writer>``) and the items that are no message
   go to the dead-letter list. Nothing is in two places, nothing in none.
2. **Writers.** Each writer consumes its own list through a ReliableQueue
   of its own, at its own pace, with its own exactly-once mechanism: the
   database through the ledger, the file through its append marker, the
   webhook through a batch id the receiver can deduplicate. A batch leaves
   a writer's list only once that writer has it (its ack), so a crash
   anywhere replays it to that writer only, and a writer that is down
   keeps its backlog in Redis while the others go on.

A writer that fails with a transient error (database away, webhook 5xx or
timeout, disk full) retries on its own: capped exponential backoff with
jitter (stamina), honouring a webhook's ``Retry-After``, waiting at the
pause gate, cancelled at shutdown. Each failure is reported (status,
``syncd_errors_total``, ``sync_error``) without restarting the others.

Order: one intake per queue and one consumer per writer list in each
instance, each a batch at a time, so messages reach every writer in queue
order.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import attrs
import stamina
import trio

import syncd
from syncd_messages.config import MessagesConfig
from syncd_messages.database import DatabaseWriter, Unparsed
from syncd_messages.files import FileWriter
from syncd_messages.keys import dead_key, lane_key
from syncd_messages.metrics import MessageMetrics
from syncd_messages.normalize import messages_of, normalize_batch, open_envelope
from syncd_messages.webhook import WebhookUnavailable, WebhookWriter
from syncd_messages.written import Written


class Writer(Protocol):
    name: str

    async def prepare(self) -> None: ...

    def session(self) -> contextlib.AbstractAsyncContextManager[None]: ...

    async def write(
        self, queue_type: str, source: str, batch: syncd.Batch, messages: list[bytes]
    ) -> Written: ...


WRITER_CLASSES: dict[str, Callable[[syncd.PluginContext], Writer]] = {
    "database": DatabaseWriter,
    "file": FileWriter,
    "webhook": WebhookWriter,
}


@attrs.define(eq=False)
class Consumer:
    """One ReliableQueue of this instance, and the lock that makes its
    take → write → ack one unit, shared by the loop, flush and reclaim."""

    queue: syncd.ReliableQueue
    lock: trio.Lock = attrs.Factory(trio.Lock)


@attrs.define(eq=False)
class Health:
    """How a loop is doing, for status and metrics."""

    state: str = "starting"
    last_error: dict[str, Any] | None = None
    failures: int = 0

    def ok(self) -> None:
        self.state, self.failures = "ok", 0

    def failing(self, exc: BaseException, retry_in: float | None = None) -> None:
        self.state = "retrying"
        self.failures += 1
        self.last_error = {"type": type(exc).__name__, "message": str(exc),
                           "at": time.time(), "failures": self.failures}
        if retry_in is not None:
            self.last_error["retry_after"] = retry_in


@attrs.define(eq=False)
class Intake:
    """A queue's list, taken in batches and fanned out to the writers' lists."""

    queue_type: str
    source: str
    consumer: Consumer
    lanes: list[str]
    health: Health = attrs.Factory(Health)
    #: With ``database`` as the only writer, its lane (see `MessagesWorker.direct`).
    direct: Lane | None = None
    forwarded: int = 0
    dead_lettered: int = 0
    waiting: int | None = None
    dead_letters: int | None = None


@attrs.define(eq=False)
class Lane:
    """One writer's list for one queue type."""

    queue_type: str
    source: str
    writer: Writer
    consumer: Consumer
    health: Health = attrs.Factory(Health)
    delivered: int = 0
    dead_lettered: int = 0
    waiting: int | None = None
    oldest_age: float | None = None

    @property
    def key(self) -> str:
        return self.consumer.queue.source

    @property
    def label(self) -> str:
        return f"{self.queue_type}/{self.writer.name}"


@attrs.frozen
class Outcome:
    """One batch through the intake or a writer.

    Attributes:
        result: For status, metrics and ``sync_success`` listeners.
        items: Items the batch held.
        seconds: From having the batch to having acked it.
    """

    result: syncd.SyncResult
    items: int
    seconds: float


@attrs.define(eq=False)
class MessagesWorker:
    """The messages plugin's worker."""

    ctx: syncd.PluginContext
    interval: float | None = None
    writers: dict[str, Writer] = attrs.field(init=False)
    intakes: list[Intake] = attrs.field(init=False)
    lanes: list[Lane] = attrs.field(init=False)
    metrics: MessageMetrics = attrs.field(init=False)
    #: The database writer alone: each intake writes its batches itself (see `run`).
    direct: bool = attrs.field(init=False, default=False)
    _prepared: set[str] = attrs.field(init=False, factory=set)
    _backlog_at: float | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        cfg = self.config
        ttl = float(cfg.heartbeat_ttl)

        def consumer(key: str) -> Consumer:
            return Consumer(syncd.ReliableQueue(
                self.ctx.redis, key, self.ctx.instance, heartbeat_ttl=ttl))

        self.writers = {name: WRITER_CLASSES[name](self.ctx) for name in cfg.writers}
        self.direct = cfg.writers == ["database"]
        self.intakes, self.lanes = [], []
        for queue_type, source in cfg.queues.items():
            keys = [lane_key(source, name) for name in cfg.writers]
            intake = Intake(queue_type, source, consumer(source), [] if self.direct else keys)
            self.intakes.append(intake)
            for name, key in zip(cfg.writers, keys, strict=True):
                lane = Lane(queue_type, source, self.writers[name], consumer(key))
                self.lanes.append(lane)
                if self.direct:
                    intake.direct = lane
        self.metrics = MessageMetrics.create(self.ctx.metrics)

    @property
    def config(self) -> MessagesConfig:
        return self.ctx.config

    @property
    def consumers(self) -> list[Consumer]:
        return [i.consumer for i in self.intakes] + [lane.consumer for lane in self.lanes]

    # -- the Worker protocol -------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Finish what a crash left in flight, then take, fan out and write until cancelled.

        Recovery tries each writer's held batch once: a writer that is down
        at start-up must not hold the others (its loop retries it).

        With the database writer alone (`direct`), a writer list is one Redis
        round trip per batch and a copy of every message too many: each
        intake writes its batch to the database itself, under the intake
        batch's id, and acks it only then. Re-normalizing a replayed batch is
        harmless there, as the ledger decides (raw text would be wrapped with
        a new ``receivedAt``, which a file or a webhook could tell apart: they
        keep their lists). Older messages left in the writer's list by an
        earlier configuration go first.
        """
        async with self._sessions(), trio.open_nursery() as nursery:
            for consumer in self.consumers:
                await nursery.start(consumer.queue.serve_heartbeat)
            if self.direct:
                for lane in self.lanes:
                    await self._drain_leftovers(lane)
            for intake in self.intakes:
                outcome = await self._intake_step(intake, held_only=True)
                if outcome is not None:
                    self._finished_in_flight(intake.consumer, outcome)
                    self._report_intake(outcome)
            for lane in [] if self.direct else self.lanes:
                try:
                    outcome = await self._lane_step(lane, held_only=True)
                except syncd.TransientError as exc:
                    self._failed(lane.health, lane.label, exc)
                    continue
                if outcome is not None:
                    self._finished_in_flight(lane.consumer, outcome)
                    self.ctx.report(outcome.result, outcome.seconds)
            task_status.started()
            nursery.start_soon(self._serve_reclaim)
            for intake in self.intakes:
                nursery.start_soon(self._serve, intake.health, f"{intake.queue_type}/intake",
                                   lambda i=intake: self._intake_step(i, pausable=True))
            for lane in [] if self.direct else self.lanes:
                nursery.start_soon(self._serve, lane.health, lane.label,
                                   lambda lane=lane: self._lane_step(lane, pausable=True))

    async def _drain_leftovers(self, lane: Lane) -> None:
        """Write what an earlier configuration left in ``lane``'s list, as it was then."""
        [left] = await self._lengths([lane.consumer])
        while left > 0:
            outcome = await self._lane_step(lane)
            if outcome is None:
                return
            left -= outcome.items
            self._finished_in_flight(lane.consumer, outcome)
            self.ctx.report(outcome.result, outcome.seconds)

    async def flush(self) -> syncd.SyncResult:
        """The seed's ``manualSync``: move what is waiting now, once.

        Every queue's list is taken as long as it was at the start and fanned
        out; then every writer writes its list as long as it was then, all
        writers side by side. Never waits for a batch to fill, and tries a
        failing writer once: its backlog stays in Redis, the others still
        flush, and the answer says which writer failed.
        """
        started = time.perf_counter()
        outcomes: list[Outcome] = []
        failed: dict[str, str] = {}

        async def drain(step: Callable[..., Awaitable[Outcome | None]], target: Any,
                        left: int, label: str, health: Health) -> None:
            try:
                while left > 0:
                    outcome = await step(target)
                    if outcome is None:
                        return
                    left -= outcome.items
                    outcomes.append(outcome)
                    health.ok()
            except syncd.TransientError as exc:
                failed[label] = str(exc)
                self._failed(health, label, exc)

        async with self._sessions():
            lengths = await self._lengths([i.consumer for i in self.intakes])
            async with trio.open_nursery() as nursery:
                for intake, length in zip(self.intakes, lengths, strict=True):
                    nursery.start_soon(drain, self._intake_step, intake,
                                       length + 1, f"{intake.queue_type}/intake", intake.health)
            lengths = await self._lengths([lane.consumer for lane in self.lanes])
            async with trio.open_nursery() as nursery:
                for lane, length in zip(self.lanes, lengths, strict=True):
                    nursery.start_soon(drain, self._lane_step, lane, length + 1, lane.label,
                                       lane.health)
        total = syncd.SyncResult()
        for outcome in outcomes:
            total += outcome.result
        detail = self._detail(
            {q: sum(o.result.items for o in outcomes
                    if o.result.detail.get("queueType") == q and "writer" in o.result.detail)
             for q in self.config.queues},
            time.perf_counter() - started)
        detail["writers"] = {
            name: sum(o.result.items for o in outcomes if o.result.detail.get("writer") == name)
            for name in self.writers}
        if failed:
            detail["failed"] = failed
        return attrs.evolve(total, detail=detail)

    async def backlog(self) -> int:
        """Messages in Redis not yet written by every writer; refreshes the
        per-writer figures of `status` and the gauges (the core polls it)."""
        cfg = self.config
        now_ms = time.time() * 1000

        def read(client: Any) -> list[Any]:
            with client.pipeline(transaction=False) as pipe:
                for intake in self.intakes:
                    pipe.llen(intake.source)
                    pipe.llen(intake.consumer.queue.processing_key)
                    pipe.llen(dead_key(intake.source))
                for lane in self.lanes:
                    pipe.llen(lane.key)
                    pipe.llen(lane.consumer.queue.processing_key)
                    pipe.lindex(lane.consumer.queue.processing_key, -1)
                    pipe.lindex(lane.key, -1)
                return pipe.execute()

        found = await self.ctx.redis.run(read)
        total, oldest_overall = 0, 0.0
        per_queue: dict[str, int] = {}
        for n, intake in enumerate(self.intakes):
            queued, held, dead = found[3 * n: 3 * n + 3]
            intake.waiting, intake.dead_letters = int(queued) + int(held), int(dead)
            per_queue[intake.queue_type] = intake.waiting
            self.metrics.queue_length.labels(intake.queue_type).set(int(queued))
        base = 3 * len(self.intakes)
        most: dict[str, int] = dict.fromkeys(cfg.queues, 0)
        for n, lane in enumerate(self.lanes):
            listed, held, first_held, first_listed = found[base + 4 * n: base + 4 * n + 4]
            lane.waiting = int(listed) + int(held)
            stamps = [open_envelope(item)[0] for item in (first_held, first_listed) if item]
            stamps = [s for s in stamps if s is not None]
            lane.oldest_age = max(0.0, (now_ms - min(stamps)) / 1000) if stamps else 0.0
            if self.direct and per_queue[lane.queue_type]:
                # It reads the queue itself, whose items carry no time: unknown.
                lane.waiting += per_queue[lane.queue_type]
                per_queue[lane.queue_type] = 0
                lane.oldest_age = None
            most[lane.queue_type] = max(most[lane.queue_type], lane.waiting)
            self.metrics.waiting.labels(lane.queue_type, lane.writer.name).set(lane.waiting)
            if lane.oldest_age is not None:
                oldest_overall = max(oldest_overall, lane.oldest_age)
                self.metrics.oldest_age.labels(lane.queue_type, lane.writer.name).set(
                    lane.oldest_age)
        for queue_type in cfg.queues:
            total += per_queue[queue_type] + most[queue_type]
        self.ctx.metrics.backlog(total, oldest_overall)
        self._backlog_at = time.time()
        return total

    def status(self) -> dict[str, Any]:
        """Per queue and per writer: what waits, how old, how it goes (no I/O:
        the figures are the ones `backlog` read last, at ``as_of``)."""
        queues: dict[str, Any] = {}
        for intake in self.intakes:
            queues[intake.queue_type] = {
                "list": intake.source,
                "waiting": intake.waiting,
                "dead_letter_list": dead_key(intake.source),
                "dead_letters": intake.dead_letters,
                "intake": {"state": intake.health.state, "forwarded": intake.forwarded,
                           "dead_lettered": intake.dead_lettered,
                           "last_error": _error(intake.health)},
                "writers": {},
            }
        for lane in self.lanes:
            queues[lane.queue_type]["writers"][lane.writer.name] = {
                "list": lane.key,
                "state": lane.health.state,
                "waiting": lane.waiting,
                "oldest_age_seconds": None if lane.oldest_age is None
                else round(lane.oldest_age, 3),
                "delivered": lane.delivered,
                "dead_lettered": lane.dead_lettered,
                "last_error": _error(lane.health),
            }
        return {"queues": queues, "writers": list(self.writers),
                "as_of": _iso(self._backlog_at)}

    # -- loops ---------------------------------------------------------------------

    async def _serve(
        self, health: Health, label: str, step: Callable[[], Awaitable[Outcome | None]]
    ) -> None:
        """Run ``step`` forever, each batch retried on its own when it fails transiently."""
        cfg = self.config
        while True:
            await self.ctx.gate.wait()
            outcome = None
            async for attempt in stamina.retry_context(
                on=lambda exc: self._retry(health, label, exc),
                attempts=None, timeout=None,
                wait_initial=float(cfg.retry_initial), wait_max=float(cfg.retry_max),
                wait_jitter=float(cfg.retry_initial),
            ):
                with attempt:
                    await self.ctx.gate.wait()
                    outcome = await step()
            if health.state != "ok":
                if health.failures:
                    self.ctx.log.info("writer recovered", extra={"lane": label})
                health.ok()
            if outcome is not None and (outcome.result.items or outcome.result.dead_lettered
                                        or outcome.result.skipped):
                self.ctx.report(outcome.result, outcome.seconds)

    def _retry(self, health: Health, label: str, exc: Exception) -> bool | float:
        """stamina's verdict on a failed attempt: retry transient errors only
        (after ``Retry-After`` if the receiver said so); anything else is a bug
        and crashes the worker, for the supervisor to restart."""
        if not isinstance(exc, syncd.TransientError):
            return False
        wait = exc.retry_after if isinstance(exc, WebhookUnavailable) else None
        self._failed(health, label, exc, wait)
        return True if wait is None else wait

    def _failed(self, health: Health, label: str, exc: BaseException,
                wait: float | None = None) -> None:
        health.failing(exc, wait)
        queue_type, _, writer = label.partition("/")
        if writer != "intake":
            self.metrics.writer_up.labels(queue_type, writer).set(0)
        self.ctx.log.warning("batch failed; retrying", extra={
            "lane": label, "error": str(exc), "failures": health.failures})
        self.ctx.report_error(exc)

    async def _serve_reclaim(self) -> None:
        """Every third of the heartbeat TTL, finish the batches of dead replicas."""
        while True:
            await trio.sleep(float(self.config.heartbeat_ttl) / 3)
            await self.ctx.gate.wait()
            for owner in [*self.intakes, *self.lanes]:
                try:
                    await self._reclaim(owner)
                except syncd.TransientError as exc:
                    self.ctx.log.warning("reclaim failed; trying again later",
                                         extra={"error": str(exc)})

    async def _reclaim(self, owner: Intake | Lane) -> None:
        queue = owner.consumer.queue
        for orphan in await queue.orphans():
            async with owner.consumer.lock:
                batch = await queue.claim_orphan(orphan)
                if batch is None:
                    continue
                if isinstance(owner, Intake):
                    outcome = await self._forward(owner, batch)
                    self._report_intake(outcome)
                else:
                    await self._prepare(owner.writer)
                    outcome = await self._deliver(owner, batch)
                    self.ctx.report(outcome.result, outcome.seconds)
            self.ctx.log.info("finished the batch of a dead consumer", extra={
                "list": queue.source, "consumer": orphan, "items": outcome.items,
                "skipped": outcome.result.skipped})

    # -- one batch ---------------------------------------------------------------------

    async def _intake_step(
        self, intake: Intake, *, pausable: bool = False, held_only: bool = False
    ) -> Outcome | None:
        """Take → normalize → fan out one batch of a queue; None if there was none.

        In the loop it waits up to ``block`` for a first item; in flush and
        recovery (``pausable`` false) it takes only what is there.
        """
        cfg = self.config
        block, max_wait = (float(cfg.block), float(cfg.batch_max_wait)) if pausable else (0, 0)
        if intake.direct is not None:
            await self._prepare(intake.direct.writer)
        async with intake.consumer.lock:
            queue = intake.consumer.queue
            if held_only and await queue.processing_length() == 0:
                return None
            batch = await queue.take(cfg.batch_size, max_wait, block)
            if batch is None:
                return None
            syncd.crash_point(self.ctx.name, "intake:after_take")
            if pausable and self.ctx.gate.paused:
                return None  # stays in the processing list for resume or a flush
            return await self._forward(intake, batch)

    async def _forward(self, intake: Intake, batch: syncd.Batch) -> Outcome:
        started = time.perf_counter()
        if intake.direct is not None:
            return await self._write_direct(intake, intake.direct, batch, started)
        normalized = normalize_batch(
            batch.items, queue_type=intake.queue_type, max_bytes=self.config.max_item_bytes)
        letters = [
            syncd.DeadLetter(dead_key(intake.source), batch.items[position], reason,
                             self.ctx.name, source=intake.source)
            for position, reason in normalized.rejected
        ]
        acked = await intake.consumer.queue.ack(
            batch, letters, forward_to=intake.lanes, forward=normalized.messages)
        seconds = time.perf_counter() - started
        dead = len(letters) if acked else 0
        if acked:
            intake.forwarded += len(normalized.messages)
            intake.dead_lettered += dead
            if dead:
                self.metrics.dead_lettered.labels(intake.queue_type, "intake").inc(dead)
        self.metrics.duration.labels("intake").observe(seconds)
        result = syncd.SyncResult(dead_lettered=dead, detail={
            "queueType": intake.queue_type, "intake": True,
            "forwarded": len(normalized.messages) if acked else 0})
        return Outcome(result, len(batch), seconds)

    async def _write_direct(
        self, intake: Intake, lane: Lane, batch: syncd.Batch, started: float,
    ) -> Outcome:
        """The database writer alone: write the intake's batch, then ack it with
        every dead letter (items that are no message, rows the database refused).

        Into JSONB, what looks like a JSON object goes unparsed first: the
        database parses every message anyway, and refuses the batch if one
        is no JSON, which is then normalized again, parsed (see
        `normalize_batch`). Bare messages: no envelope on this path.
        """
        writer = lane.writer
        assert isinstance(writer, DatabaseWriter)
        unparsed = writer.parses_json
        normalized = normalize_batch(
            batch.items, queue_type=intake.queue_type, max_bytes=self.config.max_item_bytes,
            envelope=False, unparsed=unparsed)
        try:
            written = await writer.write(intake.queue_type, intake.source, batch,
                                         normalized.messages, unparsed=unparsed)
        except Unparsed as exc:
            self.ctx.log.info("database refused an unparsed batch; parsing it", extra={
                "batch": batch.id, "error": str(exc)[:200]})
            normalized = normalize_batch(
                batch.items, queue_type=intake.queue_type,
                max_bytes=self.config.max_item_bytes, envelope=False)
            written = await writer.write(intake.queue_type, intake.source, batch,
                                         normalized.messages)
        messages = normalized.messages
        syncd.crash_point(self.ctx.name, f"{writer.name}:after_write")
        letters = [
            syncd.DeadLetter(dead_key(intake.source), batch.items[position], reason,
                             self.ctx.name, source=intake.source)
            for position, reason in normalized.rejected
        ] + [
            syncd.DeadLetter(dead_key(intake.source), messages[position], reason,
                             self.ctx.name, source=intake.source)
            for position, reason in written.refused
        ]
        acked = await intake.consumer.queue.ack(batch, letters)
        seconds = time.perf_counter() - started
        rejected = len(normalized.rejected) if acked else 0
        refused = len(written.refused) if acked else 0
        intake.dead_lettered += rejected
        lane.delivered += written.delivered
        lane.dead_lettered += refused
        if rejected:
            self.metrics.dead_lettered.labels(intake.queue_type, "intake").inc(rejected)
        self._count(lane, written.delivered, refused, seconds)
        detail = self._detail({intake.queue_type: written.delivered}, seconds)
        detail.update(writer=writer.name, queueType=intake.queue_type)
        result = syncd.SyncResult(
            items=written.delivered, batches=1, dead_lettered=rejected + refused,
            skipped=written.skipped, detail=detail)
        return Outcome(result, len(batch), seconds)

    def _count(self, lane: Lane, delivered: int, dead: int, seconds: float) -> None:
        name = lane.writer.name
        self.metrics.delivered.labels(lane.queue_type, name).inc(delivered)
        if dead:
            self.metrics.dead_lettered.labels(lane.queue_type, name).inc(dead)
        self.metrics.writer_up.labels(lane.queue_type, name).set(1)
        self.metrics.duration.labels(name).observe(seconds)

    async def _lane_step(
        self, lane: Lane, *, pausable: bool = False, held_only: bool = False
    ) -> Outcome | None:
        """Take → write → ack one batch of a writer's list; None if there was none."""
        cfg = self.config
        block, max_wait = (float(cfg.block), float(cfg.batch_max_wait)) if pausable else (0, 0)
        await self._prepare(lane.writer)
        async with lane.consumer.lock:
            queue = lane.consumer.queue
            if held_only and await queue.processing_length() == 0:
                return None
            batch = await queue.take(cfg.batch_size, max_wait, block)
            if batch is None:
                return None
            if pausable and self.ctx.gate.paused:
                return None
            return await self._deliver(lane, batch)

    async def _deliver(self, lane: Lane, batch: syncd.Batch) -> Outcome:
        started = time.perf_counter()
        writer = lane.writer
        messages = messages_of(batch.items)
        syncd.crash_point(self.ctx.name, f"{writer.name}:before_write")
        written = await writer.write(lane.queue_type, lane.source, batch, messages)
        syncd.crash_point(self.ctx.name, f"{writer.name}:after_write")
        letters = [
            syncd.DeadLetter(dead_key(lane.source), messages[position], reason,
                             self.ctx.name, source=lane.key)
            for position, reason in written.refused
        ]
        acked = await lane.consumer.queue.ack(batch, letters)
        seconds = time.perf_counter() - started
        dead = len(letters) if acked else 0
        lane.delivered += written.delivered
        lane.dead_lettered += dead
        self._count(lane, written.delivered, dead, seconds)
        detail = self._detail({lane.queue_type: written.delivered}, seconds)
        detail.update(writer=writer.name, queueType=lane.queue_type)
        result = syncd.SyncResult(
            items=written.delivered, batches=1, dead_lettered=dead, skipped=written.skipped,
            detail=detail)
        return Outcome(result, len(batch), seconds)

    # -- helpers -----------------------------------------------------------------------

    async def _prepare(self, writer: Writer) -> None:
        """Create the writer's table or directory, once (retried with the batch if it fails)."""
        if writer.name not in self._prepared:
            await writer.prepare()
            self._prepared.add(writer.name)

    @contextlib.asynccontextmanager
    async def _sessions(self) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for writer in self.writers.values():
                await stack.enter_async_context(writer.session())
            yield

    def _detail(self, processed: dict[str, int], seconds: float) -> dict[str, Any]:
        """The seed's ``sync_success`` fields: ``processedCount``, ``duration``
        (milliseconds, as the seed measured it) and ``<queue type>Processed``."""
        detail: dict[str, Any] = {
            "processedCount": sum(processed.values()),
            "duration": round(seconds * 1000, 3),
        }
        for queue_type in self.config.queues:
            detail[f"{queue_type}Processed"] = processed.get(queue_type, 0)
        return detail

    def _report_intake(self, outcome: Outcome) -> None:
        # Forwarding writes no sink: only its dead letters are worth an event
        # (a `direct` intake writes, and is reported like a writer).
        result = outcome.result
        if result.items or result.dead_lettered or result.skipped:
            self.ctx.report(result, outcome.seconds)

    def _finished_in_flight(self, consumer: Consumer, outcome: Outcome) -> None:
        self.ctx.log.info("finished a batch left in flight", extra={
            "list": consumer.queue.source, "items": outcome.items,
            "skipped": outcome.result.skipped})

    async def _lengths(self, consumers: list[Consumer]) -> list[int]:
        """Items in each consumer's list plus its batch in flight, in one round trip."""

        def read(client: Any) -> list[int]:
            with client.pipeline(transaction=False) as pipe:
                for consumer in consumers:
                    pipe.llen(consumer.queue.source)
                    pipe.llen(consumer.queue.processing_key)
                found = [int(n) for n in pipe.execute()]
            return [found[i] + found[i + 1] for i in range(0, len(found), 2)]

        return await self.ctx.redis.run(read)


def _error(health: Health) -> dict[str, Any] | None:
    if health.last_error is None:
        return None
    return {**health.last_error, "at": _iso(health.last_error["at"])}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
