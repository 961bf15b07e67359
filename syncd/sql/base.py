"""What every SQL dialect shares: the pool, the thread hop, the ledger, row isolation.

The drivers (psycopg, pymysql, sqlite3) are blocking, and STACK-FACTS.md
measured one `trio.to_thread.run_sync` hop at ~190 µs, so a `Database` makes
exactly one hop per call: the worker thread checks a connection out of the
pool, runs the caller's whole function inside one transaction, commits, and
puts the connection back. The connection is handed to that thread and to no
other (pymysql connections are not thread-safe; trio reuses worker threads,
so `threading.local` would be a trap), and at most ``pool_size`` threads run
at once because the hop goes through the database's own `CapacityLimiter`,
so the pool can never grow past it.

Threads are never abandoned on cancellation: a cancelled caller waits for
its thread to finish, so no thread is ever left holding a connection or a
half-applied transaction that nobody owns.

Dialect modules subclass `Database` and `Transaction` and supply only what
differs: how to connect, the SQL text, how to classify driver errors, and
their fast paths.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import inspect
import operator
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import attrs
import trio

from syncd.errors import DatabaseUnavailable, Fenced
from syncd.logs import get_logger
from syncd.redact import mask_url, scrub

if TYPE_CHECKING:
    from syncd.lease import Fence

T = TypeVar("T")

log = get_logger("sql")

#: Seconds a cancelled caller lets its statement finish on its own (a batch
#: in flight usually commits in milliseconds) before cancelling it on the
#: server; and between two cancel requests, should one land between statements.
CANCEL_AFTER = 1.0
#: The lock timeout of start-up DDL (`Database.setup_once`) at most: DDL
#: waiting for a lock queues every later writer of the table behind it.
DDL_LOCK_TIMEOUT = 1.0

#: How long a ledger ``plugin`` or ``batch_id`` may be (the columns are VARCHAR(100)).
LEDGER_KEY_MAX = 100
#: Keys per ``SELECT … IN (…)`` when reading totals back (below SQLite's
#: parameter limit of old versions, 999).
TOTALS_CHUNK = 900

_IDENTIFIER_PART = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
_IDENTIFIER = re.compile(rf"^{_IDENTIFIER_PART}(?:\.{_IDENTIFIER_PART})?$")
_COLUMN = re.compile(rf"^{_IDENTIFIER_PART}$")
_INTEGER_TEXT = re.compile(r"^[+-]?[0-9]+$")


class Dialect(enum.StrEnum):
    """The SQL flavours syncd speaks (MariaDB counts as ``mysql``)."""

    POSTGRESQL = "postgresql"
    MYSQL = "mysql"
    SQLITE = "sqlite"


def validate_identifier(name: str) -> str:
    """Return ``name`` if it is a plain table name (optionally ``schema.table``).

    Identifiers cannot be bound as parameters, so they are the one thing
    syncd ever writes into SQL text: this whitelist (letters, digits and
    underscores, at most 63 characters per part, as PostgreSQL allows) is
    what keeps a configured table name from smuggling SQL in.

    Raises:
        ValueError: naming the offending identifier.
    """
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(
            f"invalid SQL identifier {name!r}: use letters, digits and underscores "
            "(not starting with a digit, at most 63 characters), optionally schema.table"
        )
    return name


def quote_identifier(name: str, quote_char: str) -> str:
    """Validate ``name`` (``table`` or ``schema.table``) and quote each part.

    No escaping is needed: `validate_identifier` admits no quote characters.
    """
    validate_identifier(name)
    return ".".join(f"{quote_char}{part}{quote_char}" for part in name.split("."))


def _validate_column(name: str) -> str:
    """Like `validate_identifier`, but a column name has no schema part."""
    if not isinstance(name, str) or not _COLUMN.match(name):
        raise ValueError(
            f"invalid SQL column name {name!r}: use letters, digits and underscores "
            "(not starting with a digit, at most 63 characters)"
        )
    return name


@attrs.frozen
class InsertResult:
    """What `Transaction.insert_ignore` did.

    Attributes:
        inserted: Rows that were new and are now in the table.
        rejected: ``(row_index, database error message)`` for each row the
            database refused (only with ``isolate=True``); every other row
            was inserted or already existed.
    """

    inserted: int
    rejected: list[tuple[int, str]] = attrs.Factory(list)


@attrs.frozen
class IncrementResult:
    """What `Transaction.increment` did, counted in distinct keys.

    Attributes:
        updated: Existing rows whose columns were increased.
        inserted: Keys that did not exist and were inserted
            (only with ``insert_missing=True``).
        missing: Keys that were not applied: absent from the table (with
            ``insert_missing=False``), or not representable in the key
            column's type (e.g. ``"abc"`` for an integer key).
        rejected: ``(key, database error message)`` for each key whose
            increment the database refused (only with ``isolate=True``): the
            sum would overflow the column, a negative delta into an unsigned
            column, a key out of range for the key column, a CHECK
            constraint... Not applied; every other key was.
        totals: key → the new values of ``columns`` for every key applied
            (only with ``totals=True``), read in the same transaction.
    """

    updated: int
    inserted: int = 0
    missing: list[Any] = attrs.Factory(list)
    rejected: list[tuple[Any, str]] = attrs.Factory(list)
    totals: dict[Any, tuple[int, ...]] = attrs.Factory(dict)


@attrs.frozen
class LedgerEntry:
    """A batch the ledger says was applied.

    Attributes:
        plugin: The plugin that applied it.
        batch_id: Its id.
        applied_at: When its transaction ran (UTC, timezone-aware).
        detail: What the plugin stored with it, e.g. the rows the database
            rejected, so that a replay after a crash can still dead-letter them.
    """

    plugin: str
    batch_id: str
    applied_at: datetime
    detail: str | None


class _Rollback(Exception):
    """Raised inside a transaction to roll it back and still return ``value``."""

    def __init__(self, value: object) -> None:
        super().__init__()
        self.value = value


class _Pessimistic(Exception):
    """Raised inside a transaction whose optimistic path lost a race with
    another writer: roll it all back and run it once more, locking first
    (`Transaction.pessimistic`). Cheaper than a savepoint around every
    optimistic step when the race is rare."""


@attrs.frozen
class _Increment:
    """What every part of one isolating increment shares."""

    table_q: str
    key_q: str
    key_type: str
    cols_q: list[str]
    insert_missing: bool


class _Unrepresentable:
    """Marks an increment key that cannot exist in the key column's type."""


_UNREPRESENTABLE = _Unrepresentable()


@attrs.define(eq=False)
class Transaction:
    """One open transaction on one connection, used inside a worker thread.

    A plugin receives it as the argument of the function it hands to
    `Database.transaction` or `Database.apply_batch`; everything it does
    through it commits or rolls back together. It is only valid while that
    function runs.

    Placeholders are ``%s`` on every dialect (SQLite's ``?`` is translated),
    so a plugin writes one SQL string for simple statements. Write a literal
    ``%`` as ``%%`` when passing parameters.

    Attributes:
        ledger_detail: The detail stored with the ledger row of the batch
            being applied (`Database.apply_batch`); a plugin may set it late,
            e.g. once it knows which rows were rejected.
    """

    dialect: ClassVar[Dialect]
    #: The character that quotes identifiers in this dialect.
    quote_char: ClassVar[str] = '"'
    #: Whether the increment statements fill ``_totals`` themselves (RETURNING).
    returns_totals: ClassVar[bool] = False

    _db: Database
    _conn: Any
    _cur: Any = None
    ledger_detail: str | None = None
    #: Lock rows before relying on them; set on the one rerun of a
    #: transaction whose optimistic path lost a race (see `_Pessimistic`).
    pessimistic: bool = False
    _savepoints: int = 0
    #: key → new column values, while an increment with ``totals`` runs.
    _totals: dict[Any, tuple[int, ...]] | None = None

    def __attrs_post_init__(self) -> None:
        self._cur = self._conn.cursor()

    # -- plain SQL ------------------------------------------------------------------

    def quote(self, identifier: str) -> str:
        """Validate ``identifier`` (``table`` or ``schema.table``) and quote it."""
        return quote_identifier(identifier, self.quote_char)

    def quote_column(self, column: str) -> str:
        """Validate a column name (no schema part) and quote it."""
        q = self.quote_char
        return f"{q}{_validate_column(column)}{q}"

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> int:
        """Run one statement; return the driver's rowcount (rows affected)."""
        cur = self._cursor()
        if params is None:
            cur.execute(sql)
        else:
            cur.execute(self._placeholders(sql), params)
        return cur.rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run one statement for each parameter row; return the total rowcount."""
        if not rows:
            return 0
        cur = self._cursor()
        cur.executemany(self._placeholders(sql), rows)
        return cur.rowcount

    def fetchall(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a query and return all its rows as tuples."""
        cur = self._cursor()
        if params is None:
            cur.execute(sql)
        else:
            cur.execute(self._placeholders(sql), params)
        return [tuple(row) for row in cur.fetchall()]

    # -- the catalog ----------------------------------------------------------------

    def table_exists(self, table: str) -> bool:
        """Whether ``table`` (``name`` or ``schema.name``) exists, from the catalog.

        Ask this before any DDL: ``CREATE … IF NOT EXISTS`` still takes its
        lock before it checks (PostgreSQL's ``CREATE INDEX`` waits for every
        open write transaction on the table, and every later writer queues
        behind it), so a start-up that finds everything in place must run none.
        """
        schema, _, name = self.quote(table).replace(self.quote_char, "").rpartition(".")
        return self._table_exists(schema or None, name)

    def column_type(self, table: str, column: str) -> str:
        """The declared type of ``table.column`` as the catalog spells it
        (``jsonb``, ``character varying(191)``, ``bigint``...); ValueError if
        there is no such column."""
        return self._column_type(table, column)

    def index_exists(self, table: str, index: str) -> bool:
        """Whether an index named ``index`` exists on ``table``, from the catalog."""
        schema, _, name = self.quote(table).replace(self.quote_char, "").rpartition(".")
        return self._index_exists(schema or None, name, _validate_column(index))

    # -- batched writes -------------------------------------------------------------

    def insert_ignore(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        isolate: bool = False,
    ) -> InsertResult:
        """Insert ``rows``, skipping those whose unique key already exists.

        Existing keys are skipped with the dialect's conflict clause, never
        with MySQL's ``INSERT IGNORE``, which would also silently swallow
        data errors (truncation, NULL into NOT NULL).

        With ``isolate=True``, a batch the database refuses because of its
        data (value too long, NOT NULL, bad encoding, a check constraint…)
        is bisected under SAVEPOINTs: the offending rows are reported in
        `InsertResult.rejected` and all the others are still inserted, in
        this same transaction. Connection-level errors always propagate.
        Without it, the first data error propagates.
        """
        table_q, cols_q, batch = self._insert_args("insert_ignore", table, columns, rows)
        return self._write_rows(
            lambda part: self._insert_rows(table_q, cols_q, part), batch, isolate)

    def insert(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        isolate: bool = False,
    ) -> InsertResult:
        """Insert ``rows`` as they are, with no conflict handling: the fastest write.

        For tables whose exactly-once comes from the ledger
        (`Database.apply_batch`) rather than from a unique key, such as an
        append-only log of messages. PostgreSQL COPYs straight into the
        table, where `insert_ignore` must COPY into a temporary table first
        to skip conflicts (measured here with JSONB rows in batches of 1,000:
        ~1.7x the rows per second). A duplicate key is an error like any
        other; ``isolate`` works as in `insert_ignore`.
        """
        table_q, cols_q, batch = self._insert_args("insert", table, columns, rows)
        return self._write_rows(
            lambda part: self._append_rows(table_q, cols_q, part), batch, isolate)

    def _insert_args(
        self, what: str, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> tuple[str, list[str], list[tuple[Any, ...]]]:
        table_q = self.quote(table)
        cols_q = self._quote_columns(columns)
        batch = [tuple(row) for row in rows]
        for index, row in enumerate(batch):
            if len(row) != len(cols_q):
                raise ValueError(
                    f"{what}({table}): row {index} has {len(row)} values "
                    f"for {len(cols_q)} columns"
                )
        return table_q, cols_q, batch

    def _write_rows(
        self,
        write: Callable[[list[tuple[Any, ...]]], int],
        batch: list[tuple[Any, ...]],
        isolate: bool,
    ) -> InsertResult:
        if not batch:
            return InsertResult(0, [])
        if not isolate:
            return InsertResult(write(batch), [])
        rejected: list[tuple[int, str]] = []
        inserted = self._insert_isolating(write, batch, 0, rejected)
        rejected.sort()
        return InsertResult(inserted, rejected)

    def increment(
        self,
        table: str,
        key_column: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        insert_missing: bool = False,
        isolate: bool = False,
        totals: bool = False,
    ) -> IncrementResult:
        """Add each row's deltas to the row with its key: ``c = COALESCE(c, 0) + delta``.

        ``rows`` are ``(key, delta_1, …, delta_n)`` for ``columns``
        ``(c_1, …, c_n)``. Deltas of the same key are summed first (one
        statement cannot touch a row twice). Keys are coerced to the key
        column's kind — digit strings become ints for an integer column, ints
        become strings for a text column — because keys read from Redis are
        often strings; a key that cannot exist in that column is reported as
        missing. A NULL counter counts as 0: adding to NULL would silently
        drop the increment. Keys are merged by Python equality: keys that only
        the database deems equal (``"ABC"``/``"abc"`` under a case-insensitive
        collation) should be normalised by the caller.

        With ``insert_missing=True``, absent keys are inserted with the deltas
        as values (the key column needs a unique index, and the table must
        accept a row with only these columns). Otherwise absent keys are not
        inserted but returned in `IncrementResult.missing`, for the plugin
        to quarantine.

        With ``isolate=True``, a batch the database refuses because of one
        key's data (see `IncrementResult.rejected`) is bisected under
        SAVEPOINTs, as `insert_ignore` does: the refused keys are reported
        with the database's reason and every other key is applied, in this
        same transaction. A batch without a refused key costs one SAVEPOINT
        more. Errors that are not about the data (connection lost, deadlock,
        lock timeout) always propagate, so the caller retries rather than
        quarantine good counters. Without it, the first refusal propagates.
        SQLite would silently turn a sum that overflows 64 bits into a REAL
        (and lose the exact count for ever); syncd refuses it instead, as
        the other databases do.

        With ``totals=True``, the new values of every key applied come back
        in `IncrementResult.totals`, read in this transaction: with
        ``RETURNING`` on PostgreSQL (no second statement), with one SELECT
        afterwards elsewhere (the rows are locked by the UPDATE, so what it
        reads is what this transaction made them).
        """
        table_q = self.quote(table)
        key_q = self.quote_column(key_column)
        cols_q = self._quote_columns(columns)
        if key_q in cols_q:
            raise ValueError(f"increment({table}): key column {key_column!r} is also a delta")
        key_type = self._key_type(table, key_column)
        merged, unrepresentable = _merge_increments(
            rows, len(cols_q), integer=self._is_integer_type(key_type)
        )
        if not merged:
            return IncrementResult(0, 0, unrepresentable)
        keys = list(merged)
        deltas = list(merged.values())
        self._totals = {} if totals else None
        try:
            if isolate:
                result = self._increment_isolating(
                    _Increment(table_q, key_q, key_type, cols_q, insert_missing),
                    keys, deltas, unrepresentable,
                )
            elif insert_missing:
                updated, inserted = self._upsert_increment(
                    table_q, key_q, key_type, cols_q, keys, deltas
                )
                result = IncrementResult(updated, inserted, unrepresentable)
            else:
                found = self._update_existing(table_q, key_q, key_type, cols_q, keys, deltas)
                missing = [key for index, key in enumerate(keys) if index not in found]
                result = IncrementResult(len(found), 0, unrepresentable + missing)
            if totals:
                if not self.returns_totals:
                    left_out = {*result.missing, *(key for key, _ in result.rejected)}
                    applied = [key for key in keys if key not in left_out]
                    self._totals = self._read_totals(table_q, key_q, cols_q, applied)
                result = attrs.evolve(result, totals=self._totals)
        finally:
            self._totals = None
        return result

    # -- what each dialect provides -------------------------------------------------

    def _insert_rows(self, table_q: str, cols_q: list[str], rows: list[tuple[Any, ...]]) -> int:
        """Insert ``rows`` skipping existing keys, the fast way; return rows inserted."""
        raise NotImplementedError

    def _append_rows(self, table_q: str, cols_q: list[str], rows: list[tuple[Any, ...]]) -> int:
        """Insert ``rows`` with no conflict clause, the fast way; return rows inserted."""
        raise NotImplementedError

    def _upsert_increment(
        self,
        table_q: str,
        key_q: str,
        key_type: str,
        cols_q: list[str],
        keys: list[Any],
        deltas: list[list[int]],
    ) -> tuple[int, int]:
        """Increment or insert every key; return ``(updated, inserted)``."""
        raise NotImplementedError

    def _update_existing(
        self,
        table_q: str,
        key_q: str,
        key_type: str,
        cols_q: list[str],
        keys: list[Any],
        deltas: list[list[int]],
    ) -> set[int]:
        """Increment the keys that exist; return the indexes (into ``keys``) it updated."""
        raise NotImplementedError

    def _table_exists(self, schema: str | None, name: str) -> bool:
        raise NotImplementedError

    def _index_exists(self, schema: str | None, table: str, index: str) -> bool:
        raise NotImplementedError

    def _column_type(self, table: str, column: str) -> str:
        """The declared type of ``table.column``, read from the catalog."""
        raise NotImplementedError

    def _is_integer_type(self, column_type: str) -> bool:
        raise NotImplementedError

    def _placeholders(self, sql: str) -> str:
        """Rewrite ``%s`` placeholders for drivers that want something else."""
        return sql

    def _begin(self, readonly: bool) -> None:
        """Start the transaction (PostgreSQL and MySQL start one implicitly)."""

    @contextlib.contextmanager
    def _ddl_lock_wait(self, seconds: float) -> Iterator[None]:
        """Wait at most ``seconds`` for a lock in the block (DDL at start-up)."""
        yield

    # -- shared machinery -----------------------------------------------------------

    def _cursor(self) -> Any:
        if self._cur is None:
            raise RuntimeError("this transaction is over; use it only inside its function")
        return self._cur

    def _quote_columns(self, columns: Sequence[str]) -> list[str]:
        if isinstance(columns, str):
            raise TypeError("columns must be a sequence of column names, not a string")
        quoted = [self.quote_column(column) for column in columns]
        if not quoted:
            raise ValueError("at least one column is required")
        if len(set(quoted)) != len(quoted):
            raise ValueError(f"duplicate column in {list(columns)!r}")
        return quoted

    def _key_type(self, table: str, column: str) -> str:
        """The declared type of the key column, read once per database and table."""
        cache = self._db._column_types
        column_type = cache.get((table, column))
        if column_type is None:
            column_type = self._column_type(table, column)
            cache[(table, column)] = column_type
        return column_type

    def _insert_isolating(
        self,
        write: Callable[[list[tuple[Any, ...]]], int],
        rows: list[tuple[Any, ...]],
        offset: int,
        rejected: list[tuple[int, str]],
    ) -> int:
        """``write(rows)``; on a data error, bisect to find the rows to reject.

        One bad row among n costs about 2n row-inserts in O(log n)
        statements, instead of n round trips for row-at-a-time inserts; a
        batch without bad rows costs one SAVEPOINT more than a plain insert.
        """
        try:
            with self._savepoint():
                return write(rows)
        except Exception as exc:
            if not self._db._is_row_error(exc):
                raise
            if len(rows) == 1:
                rejected.append((offset, self._db._error_message(exc)))
                return 0
        middle = len(rows) // 2
        return self._insert_isolating(
            write, rows[:middle], offset, rejected
        ) + self._insert_isolating(write, rows[middle:], offset + middle, rejected)

    def _increment_isolating(
        self, call: _Increment, keys: list[Any], deltas: list[list[int]],
        unrepresentable: list[Any],
    ) -> IncrementResult:
        """`increment` with the keys the database refuses bisected out.

        One refused key among n costs O(log n) statements of shrinking size,
        each under its own SAVEPOINT; a batch the database accepts costs one
        SAVEPOINT and its RELEASE more than a plain increment.
        """
        counts = [0, 0]  # updated, inserted
        missing: list[Any] = []
        rejected: list[tuple[Any, str]] = []

        def apply(lo: int, hi: int) -> None:
            part_keys, part_deltas = keys[lo:hi], deltas[lo:hi]
            try:
                with self._savepoint():
                    if call.insert_missing:
                        updated, inserted = self._upsert_increment(
                            call.table_q, call.key_q, call.key_type, call.cols_q,
                            part_keys, part_deltas)
                    else:
                        found = self._update_existing(
                            call.table_q, call.key_q, call.key_type, call.cols_q,
                            part_keys, part_deltas)
            except Exception as exc:
                if not self._db._is_row_error(exc):
                    raise
                if hi - lo == 1:
                    rejected.append((keys[lo], self._db._error_message(exc)))
                    return
                middle = (lo + hi) // 2
                apply(lo, middle)
                apply(middle, hi)
                return
            if call.insert_missing:
                counts[0] += updated
                counts[1] += inserted
            else:
                counts[0] += len(found)
                missing.extend(key for i, key in enumerate(part_keys) if i not in found)

        apply(0, len(keys))
        return IncrementResult(counts[0], counts[1], unrepresentable + missing, rejected)

    def _read_totals(
        self, table_q: str, key_q: str, cols_q: list[str], keys: list[Any],
    ) -> dict[Any, tuple[int, ...]]:
        """The current values of ``cols_q`` for ``keys`` (in chunks of `TOTALS_CHUNK`)."""
        totals: dict[Any, tuple[int, ...]] = {}
        columns = ", ".join(cols_q)
        for start in range(0, len(keys), TOTALS_CHUNK):
            chunk = keys[start:start + TOTALS_CHUNK]
            marks = ", ".join(["%s"] * len(chunk))
            for key, *values in self.fetchall(
                    f"SELECT {key_q}, {columns} FROM {table_q} WHERE {key_q} IN ({marks})",
                    chunk):
                totals[key] = tuple(values)
        return totals

    @contextlib.contextmanager
    def _savepoint(self) -> Iterator[None]:
        """Undo only what the block did if it raises; the transaction goes on."""
        self._savepoints += 1
        name = f"syncd_sp_{self._savepoints}"
        cur = self._cursor()
        cur.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException as exc:
            try:
                cur.execute(f"ROLLBACK TO SAVEPOINT {name}")
                cur.execute(f"RELEASE SAVEPOINT {name}")
            except Exception:
                # A deadlock or lock timeout that ended the whole transaction
                # (MySQL rolls back all of it on a deadlock) took the savepoint
                # with it: the original, transient, error is the one to report,
                # so that the caller retries. Otherwise the connection is gone,
                # and its own error, chained to the original, says so.
                if self._db._is_connection_error(exc):
                    raise exc from None
                raise
            raise
        cur.execute(f"RELEASE SAVEPOINT {name}")

    # -- the ledger -----------------------------------------------------------------

    def _conflict_do_nothing(self, cols_q: list[str]) -> str:
        """The clause that makes an INSERT skip rows whose unique key exists."""
        return " ON CONFLICT DO NOTHING"

    def _claim_batch(self, plugin: str, batch_id: str, detail: str | None) -> bool:
        """Insert the ledger row; False if it exists (the batch was applied before).

        A concurrent transaction inserting the same key waits on the primary
        key until this one ends, then conflicts: exactly one of them applies.
        """
        cols = ["plugin", "batch_id", "applied_at", "detail"]
        cols_q = [self.quote_column(c) for c in cols]
        # The database's clock, not this replica's: pruning compares against
        # the same clock, so a replica whose clock is off can neither write
        # rows that look old enough to prune at once nor prune young ones.
        sql = (
            f"INSERT INTO {self._db._ledger_q} ({', '.join(cols_q)}) "
            f"VALUES (%s, %s, {self._db.now_sql}, %s)"
            + self._conflict_do_nothing(cols_q)
        )
        return self.execute(sql, (plugin, batch_id, detail)) == 1

    def check_fence(self, fence: Fence) -> None:
        """Make this transaction commit only while ``fence`` is the lease's current token.

        The lease row is updated (its ``commits`` count) where its token is
        ``fence.token``: one row, or the lease has passed to another replica
        and `Fenced` is raised, which rolls the transaction back. The update
        also locks the row until the commit, so a replica taking the lease
        over waits for this commit or sees its own token win: there is no
        moment in between. Called last in a transaction, the lock is held
        only for the commit itself.

        Raises:
            Fenced: the token is stale (or there is none yet).
        """
        if fence.token is None:
            raise Fenced(f"lease {fence.name!r} is not held by this replica")
        db = self._db
        if self.execute(f"UPDATE {db._lease_q} SET commits = commits + 1 "
                        "WHERE name = %s AND token = %s", (fence.name, fence.token)) == 1:
            return
        rows = self.fetchall(f"SELECT holder, token FROM {db._lease_q} WHERE name = %s",
                             (fence.name,))
        now = f"{rows[0][0]} holds it with token {rows[0][1]}" if rows else "it is gone"
        raise Fenced(f"lease {fence.name!r} has passed to another replica: this replica's "
                     f"token {fence.token} is stale, {now}")

    def _set_detail(self, plugin: str, batch_id: str, detail: str | None) -> None:
        self.execute(
            f"UPDATE {self._db._ledger_q} SET detail = %s WHERE plugin = %s AND batch_id = %s",
            (detail, plugin, batch_id),
        )

    def _close(self) -> None:
        cur, self._cur = self._cur, None
        if cur is not None:
            with contextlib.suppress(Exception):
                cur.close()


def _merge_increments(
    rows: Sequence[Sequence[Any]], n_deltas: int, *, integer: bool
) -> tuple[dict[Any, list[int]], list[Any]]:
    """Sum the deltas of equal keys, in first-seen order.

    Returns the merged rows and the keys that cannot exist in the key column.
    """
    if n_deltas == 1:
        merged = _merge_pairs(rows, int if integer else str)
        if merged is not None:
            return merged, []
    merged: dict[Any, list[int]] = {}
    unrepresentable: list[Any] = []
    for index, row in enumerate(rows):
        if len(row) != n_deltas + 1:
            raise ValueError(
                f"increment: row {index} has {len(row)} values; "
                f"expected a key and {n_deltas} deltas"
            )
        key = row[0]
        if type(key) is not (int if integer else str):  # the common case costs nothing
            key = _coerce_key(key, integer=integer)
        try:
            deltas = list(map(operator.index, row[1:]))
        except TypeError:
            raise TypeError(f"increment: row {index} has a non-integer delta: {row!r}") from None
        if key is _UNREPRESENTABLE:
            unrepresentable.append(row[0])
            continue
        total = merged.get(key)
        if total is None:
            merged[key] = deltas
        else:
            for i, d in enumerate(deltas):
                total[i] += d
    return merged, unrepresentable


def _merge_pairs(rows: Sequence[Sequence[Any]], key_type: type) -> dict[Any, list[int]] | None:
    """`_merge_increments` for ``(key, int delta)`` rows whose keys already
    have the column's Python type (int, or str for a text column), the
    counters' usual shape, at a third of the cost; None if any row is not
    that shape (the general path then does it all, and says what is wrong)."""
    merged: dict[Any, list[int]] = {}
    try:
        for key, delta in rows:
            if type(key) is not key_type or type(delta) is not int:
                return None
            total = merged.get(key)
            if total is None:
                merged[key] = [delta]
            else:
                total[0] += delta
    except (TypeError, ValueError):  # not a pair
        return None
    return merged


def _coerce_key(key: Any, *, integer: bool) -> Any:
    """Give a key the Python type of its column, so equal keys merge and match."""
    if isinstance(key, bytes | bytearray):
        try:
            key = bytes(key).decode()
        except UnicodeDecodeError:
            return _UNREPRESENTABLE
    if integer:
        if isinstance(key, bool):
            return _UNREPRESENTABLE
        if isinstance(key, int):
            return key
        if isinstance(key, str) and _INTEGER_TEXT.match(key.strip()):
            return int(key)
        return _UNREPRESENTABLE
    return key if isinstance(key, str) else str(key)


@attrs.define(eq=False)
class Database:
    """A SQL database reached through a small pool of blocking connections.

    Create it with `syncd.sql.open_database` (it does not connect), then
    ``await db.connect()``; ``await db.aclose()`` closes every connection.
    A connection that failed at the connection level is discarded and the
    next call reconnects, so a restarted database is picked up by itself.

    Attributes:
        name: The name the configuration gives this database.
        url: Its URL (shown with the password masked).
        pool_size: How many connections (and threads) it uses at most.
        ledger_table: The table recording applied batch ids.
        lease_table: The table of the exclusive plugins' leases (`syncd.lease`).
        on_error: Called with every database error that reaches a caller
            (the metrics count them); never with the caller's own exceptions.
        connect_timeout: Seconds to wait for a connection to open.
        lock_timeout: Longest wait of one statement for a lock another
            session holds; then it fails with a transient error (retried).
        idle_transaction_timeout: A session of ours idle inside a transaction
            this long is ended by the server (PostgreSQL, MariaDB), so a frozen
            replica does not hold its locks for ever.
        idle_check: A pooled connection idle longer than this many seconds is
            pinged before use, so a server-side idle timeout costs nothing.
        limiter: Caps concurrent worker threads at the pool size, so a burst
            of callers waits in Trio rather than in blocked threads.
    """

    dialect: ClassVar[Dialect]
    transaction_class: ClassVar[type[Transaction]]
    #: SQLite has one writer at a time: more connections only add lock waits.
    max_pool_size: ClassVar[int | None] = None
    #: The exception base class of the driver, for counting database errors.
    driver_error: ClassVar[type[BaseException]] = Exception

    name: str
    url: str = attrs.field(repr=mask_url)
    pool_size: int = 4
    ledger_table: str = "syncd_ledger"
    lease_table: str = "syncd_leases"
    on_error: Callable[[BaseException], None] | None = attrs.field(default=None, repr=False)
    connect_timeout: float = 5.0
    lock_timeout: float = 5.0
    idle_transaction_timeout: float = 60.0
    idle_check: float = 30.0
    limiter: trio.CapacityLimiter = attrs.field(init=False, repr=False)
    _ledger_q: str = attrs.field(init=False, repr=False)
    _lease_q: str = attrs.field(init=False, repr=False)
    _idle: list[tuple[Any, float]] = attrs.field(init=False, factory=list, repr=False)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)
    _ledger_lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)
    _ledger_ready: bool = attrs.field(init=False, default=False, repr=False)
    _closed: bool = attrs.field(init=False, default=False, repr=False)
    _column_types: dict[tuple[str, str], str] = attrs.field(init=False, factory=dict, repr=False)
    _setup_done: dict[str, trio.Lock | None] = attrs.field(init=False, factory=dict, repr=False)

    def __attrs_post_init__(self) -> None:
        validate_identifier(self.ledger_table)
        validate_identifier(self.lease_table)
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, not {self.pool_size}")
        for what in ("lock_timeout", "idle_transaction_timeout"):
            if not getattr(self, what) > 0:
                raise ValueError(f"{what} must be greater than 0, not {getattr(self, what)}")
        self._parse_url()
        size = self.pool_size
        if self.max_pool_size is not None:
            size = min(size, self.max_pool_size)
        self.limiter = trio.CapacityLimiter(size)
        self._ledger_q = quote_identifier(self.ledger_table, self.transaction_class.quote_char)
        self._lease_q = quote_identifier(self.lease_table, self.transaction_class.quote_char)

    # -- lifecycle ------------------------------------------------------------------

    async def connect(self) -> None:
        """Open a first connection and create the ledger table if it is missing.

        Raises:
            DatabaseUnavailable: when the database cannot be reached.
        """
        self._closed = False
        await self._run(lambda tx: None, readonly=True)

    async def aclose(self) -> None:
        """Close every pooled connection; ones in use close when they come back."""
        self._closed = True
        with self._lock:
            idle = [conn for conn, _ in self._idle]
            self._idle.clear()
        if idle:
            # Shielded: aclose runs during shutdown, often in a cancelled scope,
            # and a connection left unclosed would only be found by the GC.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._close_all, idle)

    async def ping(self) -> float:
        """Round-trip a trivial query; return the seconds it took.

        Raises:
            DatabaseUnavailable: when the database does not answer.
        """
        started = time.perf_counter()
        await self._run(lambda tx: tx.fetchall("SELECT 1"), readonly=True)
        return time.perf_counter() - started

    # -- transactions ---------------------------------------------------------------

    async def transaction(
        self, fn: Callable[[Transaction], T], *,
        after_commit: Callable[[T], Any] | None = None, fence: Fence | None = None,
    ) -> Any:
        """Run ``fn(tx)`` in one transaction in a worker thread; commit; return its result.

        Any exception rolls the transaction back and is re-raised;
        connection-level failures are raised as `DatabaseUnavailable`.
        ``fn`` may be called a second time, in a fresh transaction, when an
        optimistic step inside it lost a race with another writer (see
        `Transaction.pessimistic`): keep its effects inside the transaction.

        ``after_commit(result)``, if given, runs in the same worker thread
        once the commit succeeded (the connection already back in the pool),
        and what it returns is returned instead: for the acknowledgement that
        must follow the commit (telling Redis), without a second thread hop.
        Its exceptions propagate as they are; the transaction stays committed.

        With a ``fence`` (an exclusive plugin's lease), the transaction
        commits only if the fencing token is still current
        (`Transaction.check_fence`); otherwise it rolls back and `Fenced`
        is raised.
        """
        if fence is not None:
            fn = functools.partial(_then_check_fence, fn, fence)
        return await self._run(fn, after_commit=after_commit, fence=fence)

    async def apply_batch(
        self,
        plugin: str,
        batch_id: str,
        fn: Callable[[Transaction], T],
        *,
        detail: str | None = None,
        fence: Fence | None = None,
    ) -> tuple[bool, T | None]:
        """Apply a batch at most once: ``fn(tx)`` and its ledger row commit together.

        The ledger row ``(plugin, batch_id)`` is inserted first; if it is
        already there the batch was applied before, so the transaction is
        rolled back and ``(False, None)`` returned without calling ``fn``.
        Otherwise ``fn`` runs and everything commits: ``(True, result)``.
        Replicas racing on the same batch id end with exactly one
        application: the second waits on the ledger's primary key and then
        conflicts. ``detail`` (or ``tx.ledger_detail``, set by ``fn``) is
        stored with the ledger row and readable with `ledger_entry`. As with
        `transaction`, ``fn`` may run twice (the first run rolled back).

        With a ``fence`` (an exclusive plugin's lease), the batch commits
        only if the fencing token is still current, checked last in the same
        transaction (`Transaction.check_fence`); otherwise everything rolls
        back and `Fenced` is raised. A stale replica gets `Fenced` rather
        than ``(False, None)`` for a batch already applied too, so it
        learns of its loss at its first commit, whichever it is.
        """
        _check_ledger_key("plugin", plugin)
        _check_ledger_key("batch_id", batch_id)

        def apply(tx: Transaction) -> tuple[bool, T | None]:
            if not tx._claim_batch(plugin, batch_id, detail):
                if fence is not None:
                    tx.check_fence(fence)
                raise _Rollback((False, None))
            tx.ledger_detail = detail
            result = fn(tx)
            if tx.ledger_detail != detail:
                tx._set_detail(plugin, batch_id, tx.ledger_detail)
            if fence is not None:
                tx.check_fence(fence)
            return True, result

        return await self._run(apply, fence=fence)

    async def ledger_entry(self, plugin: str, batch_id: str) -> LedgerEntry | None:
        """The ledger row of a batch, or None if it was never applied."""

        def read(tx: Transaction) -> LedgerEntry | None:
            rows = tx.fetchall(
                f"SELECT applied_at, detail FROM {self._ledger_q} "
                "WHERE plugin = %s AND batch_id = %s",
                (plugin, batch_id),
            )
            if not rows:
                return None
            applied_at, detail = rows[0]
            return LedgerEntry(plugin, batch_id, self._timestamp_value(applied_at), detail)

        return await self._run(read, readonly=True)

    async def prune_ledger(self, older_than_seconds: float) -> int:
        """Delete ledger rows older than this (or exactly that old); return how many went.

        Keep them longer than a batch can stay in flight (a crashed replica's
        batch may be replayed much later), or a replay could apply twice.
        "Older" is measured by the database's clock, which also wrote
        ``applied_at``: a replica whose clock runs days ahead prunes nothing
        another replica may still need.
        """
        sql, param = self._prune_sql(older_than_seconds)
        return await self._run(lambda tx: tx.execute(sql, (param,)))

    async def setup_once(self, name: str, fn: Callable[[Transaction], T]) -> T | None:
        """Run start-up DDL ``fn(tx)`` once per process for ``name``; None once done.

        ``fn`` looks in the catalog first (`Transaction.table_exists`,
        `Transaction.index_exists`) and runs DDL only for what is missing:
        ``CREATE … IF NOT EXISTS`` takes its lock before it checks, and on
        PostgreSQL ``CREATE INDEX`` waits for every open write transaction
        on the table while every later writer queues behind it. DDL runs
        under a lock timeout of at most `DDL_LOCK_TIMEOUT` seconds (a timeout
        is a transient error: the caller retries later, and so does the next
        call). Once ``fn`` has succeeded, later calls (a worker restarted
        after a Redis blip) return None at once, without a round trip.
        """
        lock = self._setup_done.setdefault(name, trio.Lock())
        if lock is None:
            return None
        async with lock:
            if self._setup_done.get(name) is None:
                return None  # another task finished it meanwhile
            wait = min(self.lock_timeout, DDL_LOCK_TIMEOUT)

            def setup(tx: Transaction) -> T:
                with tx._ddl_lock_wait(wait):
                    return fn(tx)

            result = await self._run(setup)
            self._setup_done[name] = None
            return result

    # -- one-statement conveniences -------------------------------------------------

    async def insert_ignore(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        isolate: bool = False,
    ) -> InsertResult:
        """`Transaction.insert_ignore` in a transaction of its own."""
        return await self._run(lambda tx: tx.insert_ignore(table, columns, rows, isolate=isolate))

    async def increment(
        self,
        table: str,
        key_column: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        insert_missing: bool = False,
        isolate: bool = False,
        totals: bool = False,
    ) -> IncrementResult:
        """`Transaction.increment` in a transaction of its own."""
        return await self._run(
            lambda tx: tx.increment(table, key_column, columns, rows, insert_missing=insert_missing,
                                    isolate=isolate, totals=totals)
        )

    async def execute(self, sql: str, params: Sequence[Any] | None = None) -> int:
        """`Transaction.execute` in a transaction of its own."""
        return await self._run(lambda tx: tx.execute(sql, params))

    async def fetchall(
        self, sql: str, params: Sequence[Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """`Transaction.fetchall` in a transaction of its own."""
        return await self._run(lambda tx: tx.fetchall(sql, params))

    # -- what each dialect provides -------------------------------------------------

    def _parse_url(self) -> None:
        """Check the URL and keep what connecting needs; raise ValueError if wrong."""
        raise NotImplementedError

    def _open(self) -> Any:
        """Open and set up a new connection (blocking; in a worker thread)."""
        raise NotImplementedError

    def _ledger_ddl(self) -> str:
        raise NotImplementedError

    def _is_connection_error(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the database (or this connection) is away for now."""
        raise NotImplementedError

    def _discards(self, exc: BaseException) -> bool:
        """Whether a connection that raised ``exc`` must not be reused."""
        return self._is_connection_error(exc)

    def _is_row_error(self, exc: BaseException) -> bool:
        """Whether ``exc`` is about the data of a row (so isolating it makes sense)."""
        raise NotImplementedError

    def _error_message(self, exc: BaseException) -> str:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

    def _usable(self, conn: Any) -> bool:
        """Whether the driver still considers ``conn`` open (no round trip)."""
        return True

    def _alive(self, conn: Any) -> bool:
        """Whether ``conn`` answers a round trip (checked after long idleness)."""
        return True

    #: SQL for "now, in UTC", in the form ``applied_at`` holds.
    now_sql: ClassVar[str]

    def _prune_sql(self, older_than_seconds: float) -> tuple[str, Any]:
        """The DELETE of ledger rows older than this by the database's clock,
        and its one parameter."""
        raise NotImplementedError

    def _now_plus_sql(self, seconds: float) -> tuple[str, Any]:
        """SQL for "now plus ``seconds``" by the database's clock, in the
        form ``applied_at`` holds, and its one parameter."""
        raise NotImplementedError

    def _lease_ddl(self) -> str:
        """The CREATE TABLE of `lease_table` (see `syncd.sql.leases`)."""
        raise NotImplementedError

    def _timestamp_value(self, value: Any) -> datetime:
        """``applied_at`` as read back, as an aware UTC datetime."""
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def _cancel_statement(self, conn: Any) -> None:
        """Ask the server to cancel what ``conn`` runs now (from another thread)."""

    # -- the thread hop -------------------------------------------------------------

    async def _run(
        self, work: Callable[[Transaction], T], *, readonly: bool = False,
        after_commit: Callable[[T], Any] | None = None,
        fence: Fence | None = None,
    ) -> T:
        """One hop to a worker thread that runs ``work`` in one transaction.

        ``fence``: the lease ``work`` checks (`Transaction.check_fence`); it is
        told when the check refused the commit.
        """
        try:
            return await self._hop(work, readonly, after_commit)
        except BaseException as exc:
            if self.on_error is not None and isinstance(
                exc, DatabaseUnavailable | self.driver_error
            ):
                with contextlib.suppress(Exception):
                    self.on_error(exc)
            if fence is not None and isinstance(exc, Fenced):
                fence.refused(exc)
            raise

    async def _hop(
        self, work: Callable[[Transaction], T], readonly: bool,
        after_commit: Callable[[T], Any] | None,
    ) -> T:
        """Run ``work`` in a worker thread under the limiter and wait for it.

        Cancelled while the thread runs (the shutdown deadline passed), the
        caller first lets the statement finish for up to `CANCEL_AFTER`
        seconds, then cancels it on the server, and asks again should a
        request land between two statements; it returns (raising Cancelled)
        only once the thread is done. So a statement blocked on a lock held
        by an open transaction elsewhere cannot hold shutdown, and still no
        thread is ever left running with a connection. ``trio.to_thread``
        has no hook for "cancel requested", hence the thread is started
        with the lower-level `trio.lowlevel.start_thread_soon`.
        """
        call = _Call()
        async with self.limiter:
            done = trio.Event()
            answer: list[Any] = []
            token = trio.lowlevel.current_trio_token()

            def deliver(result: Any) -> None:  # in the worker thread
                answer.append(result)
                token.run_sync_soon(done.set)

            trio.lowlevel.start_thread_soon(
                lambda: self._run_in_thread(work, readonly, call, after_commit), deliver,
                name=f"syncd database {self.name}")
            try:
                await done.wait()
            except trio.Cancelled:
                with trio.CancelScope(shield=True):
                    while True:
                        with trio.move_on_after(CANCEL_AFTER):
                            await done.wait()
                        if done.is_set():
                            break
                        await trio.to_thread.run_sync(self._cancel_call, call)
                raise
        return answer[0].unwrap()  # type: ignore[no-any-return]

    def _cancel_call(self, call: _Call) -> None:
        """Cancel the statement ``call``'s thread runs, if any (in a thread)."""
        with call.lock:
            # Held throughout: the connection cannot go back to the pool (and
            # on to another caller) while a cancel request for it is under way.
            call.cancelled = True
            if call.conn is None:
                return
            log.info("cancelling a statement whose caller was cancelled",
                     extra={"database": self.name})
            try:
                self._cancel_statement(call.conn)
            except Exception as exc:
                log.warning("could not cancel a statement on the server",
                            extra={"database": self.name, "error": self._scrub(str(exc))})

    def _run_in_thread(
        self, work: Callable[[Transaction], T], readonly: bool, call: _Call,
        after_commit: Callable[[T], Any] | None = None,
    ) -> T:
        conn = self._checkout()
        with call.lock:
            if call.cancelled:  # the caller is gone already: do nothing
                self._release(conn, discard=False)
                raise _CallCancelled
            call.conn = conn
        try:
            if not self._ledger_ready:
                self._ensure_ledger(conn)
            result = self._transact(conn, work, readonly)
        except BaseException as exc:
            discard = self._discards(exc) or not self._usable(conn)
            self._release_call(call, conn, discard)
            if self._is_connection_error(exc):
                raise self._unavailable(exc) from exc
            raise
        self._release_call(call, conn, False)
        if after_commit is not None:
            return after_commit(result)
        return result

    def _release_call(self, call: _Call, conn: Any, discard: bool) -> None:
        with call.lock:
            call.conn = None
            # A cancel request may still be on its way: never reuse the connection.
            self._release(conn, discard=discard or call.cancelled)

    def _transact(self, conn: Any, work: Callable[[Transaction], T], readonly: bool) -> T:
        """Run ``work`` in one transaction and commit; run it once more,
        pessimistically, if its optimistic path lost a race (`_Pessimistic`)."""
        for pessimistic in (False, True):
            tx = self.transaction_class(self, conn, pessimistic=pessimistic)
            try:
                tx._begin(readonly)
                result = work(tx)
                if inspect.isawaitable(result):
                    # An async fn would "succeed" without having run: refuse to commit.
                    if inspect.iscoroutine(result):
                        result.close()
                    raise TypeError(
                        "the function given to a database transaction must not be async")
                conn.commit()
                return result
            except _Rollback as signal:
                conn.rollback()
                return signal.value  # type: ignore[return-value]
            except _Pessimistic:
                conn.rollback()
                if pessimistic:
                    raise RuntimeError("a pessimistic transaction asked to be rerun") from None
            except BaseException:
                # The original error is the one to report; if the rollback fails
                # too, the connection is broken and _usable() will discard it.
                with contextlib.suppress(Exception):
                    conn.rollback()
                raise
            finally:
                tx._close()
        raise AssertionError("unreachable")

    def _ensure_ledger(self, conn: Any) -> None:
        """Create the ledger table if the catalog lacks it, once per Database.

        Looked up first (no DDL, so no lock, when it exists), created under
        a short lock timeout (IF NOT EXISTS still: replicas race).
        Serialised by a lock so that this process's own threads do not race
        each other on the catalog (PostgreSQL can fail a concurrent CREATE).
        """

        def ensure(tx: Transaction) -> None:
            if not tx.table_exists(self.ledger_table):
                with tx._ddl_lock_wait(min(self.lock_timeout, DDL_LOCK_TIMEOUT)):
                    tx.execute(self._ledger_ddl())

        with self._ledger_lock:
            if not self._ledger_ready:
                self._transact(conn, ensure, readonly=False)
                self._ledger_ready = True

    def _checkout(self) -> Any:
        """Take an idle connection (newest first) or open one. In the worker thread."""
        with self._lock:
            entry = self._idle.pop() if self._idle else None
        if entry is not None:
            conn, since = entry
            if time.monotonic() - since < self.idle_check or self._alive(conn):
                return conn
            self._close_quietly(conn)
        try:
            return self._open()
        except Exception as exc:
            # Whatever stops a connection from opening (refused, timeout,
            # authentication, a missing directory) is "unavailable right now".
            raise self._unavailable(exc) from exc

    def _release(self, conn: Any, *, discard: bool) -> None:
        if discard or self._closed:
            self._close_quietly(conn)
            return
        with self._lock:
            self._idle.append((conn, time.monotonic()))

    def _close_all(self, conns: list[Any]) -> None:
        for conn in conns:
            self._close_quietly(conn)

    @staticmethod
    def _close_quietly(conn: Any) -> None:
        with contextlib.suppress(Exception):
            conn.close()

    def _scrub(self, message: str) -> str:
        """``message`` with every secret of our URL masked."""
        return scrub(message, self.url)

    def _unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        message = self._scrub(str(exc).strip() or type(exc).__name__)
        return DatabaseUnavailable(
            f"database {self.name!r} ({mask_url(self.url)}) unavailable: {message}"
        )


@attrs.define(eq=False)
class _Call:
    """The connection one `Database._run` call's thread is using, so that a
    cancelled caller can have its statement cancelled on the server."""

    lock: threading.Lock = attrs.Factory(threading.Lock)
    conn: Any = None
    cancelled: bool = False


class _CallCancelled(Exception):
    """The caller was cancelled before its thread had a connection."""


def _then_check_fence(fn: Callable[[Transaction], T], fence: Fence, tx: Transaction) -> T:
    """``fn(tx)``, then the fencing check, last in the same transaction."""
    result = fn(tx)
    tx.check_fence(fence)
    return result


def _check_ledger_key(what: str, value: str) -> None:
    if not isinstance(value, str) or not value or len(value) > LEDGER_KEY_MAX:
        raise ValueError(
            f"{what} must be a non-empty string of at most {LEDGER_KEY_MAX} characters"
        )
