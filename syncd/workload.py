"""Workloads: how `syncd bench`, `syncd chaos` and their CI smoke tests drive a plugin.

A plugin returns a `Workload` from its `syncd_workload` hook. The harness
then produces items the way the user's application would, runs syncd (and
the plugin's seed-algorithm baseline and the raw database ceiling, for the
benchmark), and asks the workload to count what arrived. Everything here is
synchronous: the harness calls it from threads or subprocess-side code, and
it uses plain clients so it shares nothing with the code under test.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
import redis


@attrs.frozen
class WorkloadEnv:
    """What a workload gets to talk to.

    Attributes:
        redis: A sync redis-py client on the Redis syncd uses.
        database_url: The URL of the database the plugin writes to.
        dialect: ``"postgresql"``, ``"mysql"`` or ``"sqlite"``.
        connect: Opens a new DB-API connection to that database (caller closes).
        prefix: Unique per run (``[a-z0-9_]+``); every key and table the
            workload touches carries it, so runs never see each other's data.
    """

    redis: redis.Redis
    database_url: str
    dialect: str
    connect: Callable[[], Any]
    prefix: str

    @contextlib.contextmanager
    def connection(self, *, autocommit: bool = False) -> Iterator[Any]:
        """A new DB-API connection, closed afterwards (sqlite3's own ``with``
        only commits); ``autocommit`` for the seeds' one-statement-at-a-time
        baselines, whatever the driver calls it."""
        conn = self.connect()
        try:
            if autocommit:
                if self.dialect == "mysql":
                    conn.autocommit(True)
                elif self.dialect == "postgresql":
                    conn.autocommit = True
                else:
                    conn.isolation_level = None
            yield conn
        finally:
            conn.close()


@attrs.frozen
class Tally:
    """The exact accounting after a run; ``ok`` means nothing lost or doubled.

    Attributes:
        produced: Items produced (valid and malformed).
        expected: Items (or units, e.g. bytes) that should be in SQL.
        in_sql: What is in SQL.
        duplicates: Units applied more than once.
        lost: Units produced but neither in SQL nor dead-lettered.
        expected_dead: Malformed items produced.
        dead_lettered: Items in the dead-letter store.
    """

    produced: int
    expected: int
    in_sql: int
    duplicates: int
    lost: int
    expected_dead: int
    dead_lettered: int

    @property
    def ok(self) -> bool:
        return (
            self.duplicates == 0
            and self.lost == 0
            and self.in_sql == self.expected
            and self.dead_lettered == self.expected_dead
        )


@attrs.frozen
class Workload:
    """A plugin's test data, baseline and ceiling.

    Attributes:
        plugin: The plugin's name.
        options: The plugin's config section for this run (without ``enabled``
            and ``database``), naming keys and tables with ``env.prefix``.
        unit: What the counts mean, e.g. ``"votes"`` or ``"nodes"`` (for tables).
        setup: Creates tables/rows the run needs and clears old data.
        produce: ``produce(env, start, count)`` makes items ``start..start+count-1``
            exactly as the user's app would; item numbers decide which are
            malformed, so the same numbers always make the same items.
        pending: Items still waiting in Redis (0 once syncd has drained).
        tally: ``tally(env, produced)`` counts what arrived.
        baseline: ``baseline(env, produced)`` moves the same data with the
            seed's own algorithm (for the benchmark), or None.
        ceiling: ``ceiling(env, produced)`` writes the same rows to the
            database with nothing else in the way, or None.
        teardown: Drops what ``setup`` made.
        dialects: The database dialects the plugin can write to, the one its
            seed used first (e.g. ``("mysql", "postgresql")``); empty means
            any. The harness skips other databases and runs CI's short chaos
            on the first.
        variant: Names this workload among several of one plugin (e.g.
            ``"all writers"``); shown after the plugin's name in reports.
        prefix: The unique name this workload's keys and tables carry, when
            it is not the hook's ``prefix`` as given: each variant names its
            keys apart, e.g. ``f"{prefix}_all"``, so that resetting one
            (every key containing its prefix) leaves the others alone.
        max_rate: The most items per second `syncd chaos` produces for it
            (``--rate`` above it is capped): a plugin whose items are slow
            jobs drains far fewer than the default rate. None: no cap.
    """

    plugin: str
    options: Mapping[str, Any]
    unit: str
    setup: Callable[[WorkloadEnv], None]
    produce: Callable[[WorkloadEnv, int, int], None]
    pending: Callable[[WorkloadEnv], int]
    tally: Callable[[WorkloadEnv, int], Tally]
    baseline: Callable[[WorkloadEnv, int], None] | None = None
    ceiling: Callable[[WorkloadEnv, int], None] | None = None
    teardown: Callable[[WorkloadEnv], None] | None = None
    dialects: tuple[str, ...] = ()
    variant: str = ""
    prefix: str | None = None
    max_rate: float | None = None

    @property
    def label(self) -> str:
        """``plugin`` or ``plugin (variant)``, for reports."""
        return f"{self.plugin} ({self.variant})" if self.variant else self.plugin


def stop_process(proc: subprocess.Popen[Any] | None, grace: float = 10.0) -> None:
    """Stop a workload's peer process (a webhook receiver, a JSON-RPC
    responder): SIGTERM, then SIGKILL if it has not exited within ``grace``
    seconds; every wait bounded, and the process reaped."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)
