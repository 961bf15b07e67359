"""Job outcomes: committed to ``portfolio_jobs``, then told to BullMQ, for many jobs at once.

Each job's outcome is in PostgreSQL before BullMQ hears of it, so a crash
can only leave the record early (the job is then run again and recorded
again), never missing. A commit and a round trip per job would cap the
worker at the database's commit rate, so jobs that end while a round is in
flight wait for the next, and the first of them then sends all of theirs: one
transaction with every record and, in the same worker thread right after
the commit (``Database.transaction(after_commit=...)``), one Redis pipeline
with every BullMQ script call. No background task: jobs still end this way
while ``run`` drains them at shutdown.

These commits do not wait for their WAL flush (``synchronous_commit`` off,
for this transaction only): a crash of syncd loses nothing committed; only
a crash of PostgreSQL itself within a fraction of a second could lose the
newest records, and those jobs are still in BullMQ's finished sets. It
doubled the no-op job rate measured here.
"""

from __future__ import annotations

from typing import Any

import attrs
import redis
import trio

import syncd
from syncd_portfolio import store
from syncd_portfolio.protocol import SLOT_AWAY, Op, Protocol

_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError, *SLOT_AWAY)


@attrs.define(eq=False)
class _Entry:
    record: store.JobRecord | None
    op: Op | None
    result: Any = None
    error: BaseException | None = None


@attrs.define(eq=False)
class _Round:
    entries: list[_Entry] = attrs.Factory(list)
    done: trio.Event = attrs.Factory(trio.Event)


@attrs.define(eq=False)
class Outcomes:
    """Group commits of job records and BullMQ calls.

    Attributes:
        database: Where the jobs table lives.
        table: The jobs table.
        redis: The shared Redis handle (its client is used in the database's thread).
        protocol: Builds and runs the BullMQ scripts.
        rounds: Rounds in flight at once (each a thread and a pooled connection):
            while one commits, the next batch is already on its way.
    """

    database: syncd.Database
    table: str
    redis: syncd.RedisHandle
    protocol: Protocol
    rounds: int = 2
    _next: _Round = attrs.Factory(_Round)
    _in_flight: int = 0
    _freed: trio.Event = attrs.Factory(trio.Event)

    async def send(self, record: store.JobRecord | None, op: Op | None = None) -> Any:
        """Commit ``record``, then run ``op``; return the op's result (errors included)."""
        entry = _Entry(record, op)
        mine = self._next
        mine.entries.append(entry)
        while not mine.done.is_set():
            if mine is not self._next:  # taken by a round in flight
                await mine.done.wait()
            elif self._in_flight < self.rounds:
                await self._round()
            else:
                await self._freed.wait()
        if entry.error is not None:
            raise entry.error
        return entry.result

    async def _round(self) -> None:
        current, self._next = self._next, _Round()
        self._in_flight += 1
        records = [e.record for e in current.entries if e.record is not None]
        with_ops = [e for e in current.entries if e.op is not None]
        ops = [e.op for e in with_ops]
        client = self.redis.client
        table = self.table

        def tell_redis(_: object = None) -> list[Any]:
            if not ops:
                return []
            try:
                return self.protocol.run(client, ops)
            except _REDIS_DOWN as exc:
                raise syncd.RedisUnavailable(f"redis: {exc}") from exc

        try:
            if records:
                results = await self.database.transaction(
                    lambda tx: store.record_jobs(tx, table, records, synchronous_commit_off=True),
                    after_commit=tell_redis)
            else:
                results = await self.redis.run(lambda _client: tell_redis())
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else RuntimeError(
                "the write of job outcomes was interrupted")
            for entry in current.entries:
                entry.error = error
            raise
        else:
            for entry, result in zip(with_ops, results, strict=True):
                entry.result = result
        finally:
            self._in_flight -= 1
            current.done.set()
            self._freed.set()
            self._freed = trio.Event()
