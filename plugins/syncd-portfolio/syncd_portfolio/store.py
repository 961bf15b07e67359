"""The PostgreSQL side: job outcomes, balances, token metadata.

Every function here runs inside a `syncd.Transaction` (a worker thread);
the worker calls them through ``database.transaction``. Balances are
upserted so that an older block never overwrites a newer one: a zombie
attempt (a timed-out job whose provider answered late, a stalled job
re-run) can only write what it read if nothing newer is there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

import syncd

#: Tables made by this process already (DDL runs once per process).
_ready: set[tuple[str, str, str, str]] = set()


@attrs.frozen
class Tables:
    jobs: str
    balances: str
    tokens: str


def ensure_schema(tx: syncd.Transaction, tables: Tables) -> list[str]:
    """Create what is missing, looking in the catalog first; return what was made.

    ``CREATE … IF NOT EXISTS`` would take its lock before looking (and a
    ``CREATE INDEX`` waits behind every open writer of the table), so a
    start-up that finds everything in place runs no DDL at all.
    """
    if tx.dialect != "postgresql":
        raise syncd.ConfigError("plugins.portfolio.database",
                                f"the portfolio tables need PostgreSQL, not {tx.dialect}")
    made: list[str] = []
    j, b, t = (tx.quote(n) for n in (tables.jobs, tables.balances, tables.tokens))
    if not tx.table_exists(tables.jobs):
        tx.execute(
            f"CREATE TABLE IF NOT EXISTS {j} ("
            " queue TEXT NOT NULL,"
            " id TEXT NOT NULL,"
            " name TEXT NOT NULL,"
            " data JSONB,"
            " state TEXT NOT NULL,"
            " attempts INTEGER NOT NULL DEFAULT 0,"
            " failed_reason TEXT,"
            " returnvalue JSONB,"
            " created_at TIMESTAMPTZ,"
            " started_at TIMESTAMPTZ,"
            " finished_at TIMESTAMPTZ,"
            " updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
            " run INTEGER NOT NULL DEFAULT 0,"
            " PRIMARY KEY (queue, id))")
        made.append(tables.jobs)
    else:
        try:
            tx.column_type(tables.jobs, "run")
        except ValueError:
            # A table made before outcomes were ordered by run.
            tx.execute(f"ALTER TABLE {j} ADD COLUMN IF NOT EXISTS run INTEGER NOT NULL DEFAULT 0")
            made.append(f"{tables.jobs}.run")
    index = f"{tables.jobs}_state_idx"[:63]
    if not tx.index_exists(tables.jobs, index):
        tx.execute(f"CREATE INDEX IF NOT EXISTS {tx.quote_column(index)} "
                   f"ON {j} (state, updated_at)")
        made.append(index)
    if not tx.table_exists(tables.balances):
        tx.execute(
            f"CREATE TABLE IF NOT EXISTS {b} ("
            " user_id TEXT NOT NULL,"
            " chain_id BIGINT NOT NULL,"
            " wallet TEXT NOT NULL,"
            " token TEXT NOT NULL,"  # 'native' or the contract address
            " balance NUMERIC(78, 0) NOT NULL,"  # uint256 fits, exactly
            " decimals INTEGER,"
            " block_number BIGINT NOT NULL,"
            " synced_at TIMESTAMPTZ NOT NULL,"
            " PRIMARY KEY (user_id, chain_id, wallet, token))")
        made.append(tables.balances)
    if not tx.table_exists(tables.tokens):
        tx.execute(
            f"CREATE TABLE IF NOT EXISTS {t} ("
            " chain_id BIGINT NOT NULL,"
            " address TEXT NOT NULL,"
            " name TEXT,"
            " symbol TEXT,"
            " decimals INTEGER,"
            " updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
            " PRIMARY KEY (chain_id, address))")
        made.append(tables.tokens)
    return made


async def ensure_schema_once(database: syncd.Database, tables: Tables) -> list[str]:
    """`ensure_schema` once per process (through the core's ``setup_once``, with
    its bounded lock wait, where the core has it)."""
    setup_once = getattr(database, "setup_once", None)
    if setup_once is not None:
        name = f"portfolio:{tables.jobs}:{tables.balances}:{tables.tokens}"
        return await setup_once(name, lambda tx: ensure_schema(tx, tables)) or []
    key = (database.name, tables.jobs, tables.balances, tables.tokens)
    if key in _ready:
        return []
    made = await database.transaction(lambda tx: ensure_schema(tx, tables))
    _ready.add(key)
    return made


def _ts(ms: int | float | None) -> datetime | None:
    if not ms:
        return None
    return datetime.fromtimestamp(float(ms) / 1000, UTC)


@attrs.frozen
class JobRecord:
    """One row of ``portfolio_jobs``: a job's latest known outcome."""

    queue: str
    id: str
    name: str
    data: Any
    state: str
    attempts: int
    failed_reason: str | None = None
    returnvalue: Any = None
    created_ms: int | None = None
    started_ms: int | None = None
    finished_ms: int | None = None
    #: The run this outcome is of: BullMQ's attemptsStarted, counted in Redis
    #: by every moveToActive (0 for a job not run yet). Orders outcomes.
    run: int = 0


def record_jobs(tx: syncd.Transaction, table: str, records: Sequence[JobRecord], *,
                synchronous_commit_off: bool = False) -> None:
    """Upsert job records; ``synchronous_commit_off`` lets the commit skip its WAL flush.

    One statement for the lot, its columns as arrays through ``unnest``:
    ``executemany`` sends one statement per row, and with a round of
    outcomes per few jobs that was the biggest CPU cost of a no-op job in
    this process. A round with two records of one job (which one upsert
    cannot apply twice) takes the row-by-row path, in order.
    """
    if not records:
        return
    if synchronous_commit_off:
        tx.execute("SET LOCAL synchronous_commit TO OFF")
    now = datetime.now(UTC)
    t = tx.quote(table)
    keys = {(r.queue, r.id) for r in records}
    if len(keys) < len(records):
        rows = [
            (r.queue, r.id, r.name, _json(r.data), r.state, r.attempts, r.failed_reason,
             _json(r.returnvalue), _ts(r.created_ms), _ts(r.started_ms), _ts(r.finished_ms),
             now, r.run)
            for r in records
        ]
        tx.executemany(
            f"INSERT INTO {t} ({_JOB_COLUMNS})"
            " VALUES (%s, %s, %s, %s::jsonb, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s)"
            + _JOB_UPSERT.replace("{t}", t),
            rows,
        )
        return
    ordered = sorted(records, key=lambda r: r.id)  # one lock order for concurrent rounds
    columns = (
        [r.queue for r in ordered], [r.id for r in ordered], [r.name for r in ordered],
        [_json(r.data) for r in ordered], [r.state for r in ordered],
        [r.attempts for r in ordered], [r.failed_reason for r in ordered],
        [_json(r.returnvalue) for r in ordered], [_ts(r.created_ms) for r in ordered],
        [_ts(r.started_ms) for r in ordered], [_ts(r.finished_ms) for r in ordered],
        [r.run for r in ordered],
    )
    tx.execute(
        f"INSERT INTO {t} ({_JOB_COLUMNS})"
        " SELECT q, i, n, d::jsonb, s, a, f, r::jsonb, c, st, fi, %s, ru FROM unnest("
        "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::int[], %s::text[],"
        " %s::text[], %s::timestamptz[], %s::timestamptz[], %s::timestamptz[], %s::int[])"
        " AS u(q, i, n, d, s, a, f, r, c, st, fi, ru)" + _JOB_UPSERT.replace("{t}", t),
        (now, *columns),
    )


_JOB_COLUMNS = ("queue, id, name, data, state, attempts, failed_reason, returnvalue,"
                " created_at, started_at, finished_at, updated_at, run")
_JOB_UPSERT = (
    " ON CONFLICT (queue, id) DO UPDATE SET name = EXCLUDED.name, data = EXCLUDED.data,"
    " state = EXCLUDED.state, attempts = GREATEST(EXCLUDED.attempts, {t}.attempts),"
    " failed_reason = EXCLUDED.failed_reason, returnvalue = EXCLUDED.returnvalue,"
    " created_at = COALESCE({t}.created_at, EXCLUDED.created_at),"
    " started_at = COALESCE(EXCLUDED.started_at, {t}.started_at),"
    " finished_at = EXCLUDED.finished_at, updated_at = EXCLUDED.updated_at,"
    " run = EXCLUDED.run"
    # An outcome of an older run never overwrites a newer run's: a replica
    # frozen before its outcome's commit writes it when it wakes, after the
    # job, stalled meanwhile, ran again and completed elsewhere (chaos). The
    # run is Redis' count, not a clock: a replica frozen between reading its
    # clock and taking the job stamps a new run with an old time. A job
    # waiting again (added, retried) starts over.
    " WHERE EXCLUDED.state = 'waiting' OR EXCLUDED.run >= {t}.run")


def _json(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, separators=(",", ":"), default=str)


@attrs.frozen
class BalanceRow:
    user_id: str
    chain_id: int
    wallet: str
    token: str
    balance: int
    decimals: int | None
    block: int


def upsert_balances(tx: syncd.Transaction, table: str, rows: Iterable[BalanceRow]) -> int:
    """Write balances; a row read at an older block than the stored one is skipped.

    Returns how many rows were written (new or newer).
    """
    now = datetime.now(UTC)
    params = [(r.user_id, r.chain_id, r.wallet, r.token, str(r.balance), r.decimals, r.block,
               now) for r in rows]
    if not params:
        return 0
    t = tx.quote(table)
    return tx.executemany(
        f"INSERT INTO {t} AS b (user_id, chain_id, wallet, token, balance, decimals,"
        " block_number, synced_at) VALUES (%s, %s, %s, %s, %s::numeric, %s, %s, %s)"
        " ON CONFLICT (user_id, chain_id, wallet, token) DO UPDATE SET"
        " balance = EXCLUDED.balance, decimals = EXCLUDED.decimals,"
        " block_number = EXCLUDED.block_number, synced_at = EXCLUDED.synced_at"
        " WHERE b.block_number <= EXCLUDED.block_number",
        params,
    )


def upsert_tokens(tx: syncd.Transaction, table: str, chain_id: int,
                  tokens: Iterable[Any]) -> int:
    params = [(chain_id, t.address, t.name, t.symbol, t.decimals) for t in tokens]
    if not params:
        return 0
    t = tx.quote(table)
    return tx.executemany(
        f"INSERT INTO {t} (chain_id, address, name, symbol, decimals, updated_at)"
        " VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (chain_id, address) DO UPDATE SET"
        " name = EXCLUDED.name, symbol = EXCLUDED.symbol, decimals = EXCLUDED.decimals,"
        " updated_at = now()",
        params,
    )


def read_tokens(tx: syncd.Transaction, table: str, chain_id: int,
                addresses: Sequence[str]) -> list[tuple[str, str | None, str | None, int | None]]:
    if not addresses:
        return []
    return tx.fetchall(
        f"SELECT address, name, symbol, decimals FROM {tx.quote(table)}"
        " WHERE chain_id = %s AND address = ANY(%s)", (chain_id, list(addresses)))
