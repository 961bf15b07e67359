"""SQLite through the standard library's sqlite3 (in a worker thread).

One connection, one thread at a time: SQLite has a single writer, so a
bigger pool would only add lock waits. The driver runs in autocommit mode
and syncd issues ``BEGIN IMMEDIATE`` itself, so a write transaction takes
the write lock up front instead of failing half-way when another process
(a second replica on the same file) holds it. Statements run in-process,
so plain ``executemany`` is already the fast path.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any, ClassVar

import attrs

from syncd.sql.base import Database, Dialect, Transaction

_PLACEHOLDER = re.compile(r"%(%|s)")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@attrs.define(eq=False)
class SQLiteTransaction(Transaction):
    dialect: ClassVar[Dialect] = Dialect.SQLITE

    def _placeholders(self, sql: str) -> str:
        # %s -> ?, and %% -> % (a literal percent, as psycopg and pymysql want it).
        return _PLACEHOLDER.sub(lambda m: "%" if m.group(1) == "%" else "?", sql)

    def _begin(self, readonly: bool) -> None:
        self._cursor().execute("BEGIN" if readonly else "BEGIN IMMEDIATE")

    def _insert_rows(self, table_q: str, cols_q: list[str], rows: list[tuple[Any, ...]]) -> int:
        cur = self._cursor()
        marks = ", ".join(["?"] * len(cols_q))
        cur.executemany(
            f"INSERT INTO {table_q} ({', '.join(cols_q)}) VALUES ({marks}) ON CONFLICT DO NOTHING",
            rows,
        )
        return cur.rowcount

    def _append_rows(self, table_q: str, cols_q: list[str], rows: list[tuple[Any, ...]]) -> int:
        cur = self._cursor()
        marks = ", ".join(["?"] * len(cols_q))
        cur.executemany(f"INSERT INTO {table_q} ({', '.join(cols_q)}) VALUES ({marks})", rows)
        return cur.rowcount

    def _existing(
        self, table_q: str, key_q: str, keys: list[Any], cols_q: list[str],
        deltas: list[list[int]],
    ) -> set[int]:
        """Indexes of ``keys`` present in the table (one query, the keys as one
        JSON array), refusing a delta whose sum would overflow 64 bits.

        SQLite stores such a sum as a REAL, without a word: the counter would
        lose its exact value for ever. The write lock is ours (BEGIN
        IMMEDIATE), so the values read here are the ones the UPDATE adds to.
        """
        columns = ", ".join(f"syncd_t.{c}" for c in cols_q)
        rows = self._cursor().execute(
            f"SELECT j.key, {columns} FROM json_each(?) AS j "
            f"JOIN {table_q} AS syncd_t ON syncd_t.{key_q} = j.value",
            (json.dumps(keys),),
        )
        found = set()
        for index, *current in rows:
            found.add(index)
            for column, value, delta in zip(cols_q, current, deltas[index], strict=True):
                if type(value) is int and not INT64_MIN <= value + delta <= INT64_MAX:
                    raise sqlite3.DataError(
                        f"integer overflow: {column} = {value} + {delta} does not fit 64 bits "
                        "(SQLite would store it as an inexact REAL)")
        return found

    def _update_existing(
        self,
        table_q: str,
        key_q: str,
        key_type: str,
        cols_q: list[str],
        keys: list[Any],
        deltas: list[list[int]],
    ) -> set[int]:
        found = self._existing(table_q, key_q, keys, cols_q, deltas)
        if found:
            sets = ", ".join(f"{c} = COALESCE({c}, 0) + ?" for c in cols_q)
            self._cursor().executemany(
                f"UPDATE {table_q} SET {sets} WHERE {key_q} = ?",
                [(*deltas[i], keys[i]) for i in sorted(found)],
            )
        return found

    def _upsert_increment(
        self,
        table_q: str,
        key_q: str,
        key_type: str,
        cols_q: list[str],
        keys: list[Any],
        deltas: list[list[int]],
    ) -> tuple[int, int]:
        # Counted before: the write lock is ours (BEGIN IMMEDIATE), so it is exact.
        existing = len(self._existing(table_q, key_q, keys, cols_q, deltas))
        marks = ", ".join(["?"] * (len(cols_q) + 1))
        sets = ", ".join(f"{c} = COALESCE({c}, 0) + excluded.{c}" for c in cols_q)
        self._cursor().executemany(
            f"INSERT INTO {table_q} ({key_q}, {', '.join(cols_q)}) VALUES ({marks}) "
            f"ON CONFLICT ({key_q}) DO UPDATE SET {sets}",
            [(k, *d) for k, d in zip(keys, deltas, strict=True)],
        )
        return existing, len(keys) - existing

    def _table_exists(self, schema: str | None, name: str) -> bool:
        return self._catalog_has(schema, "table", name)

    def _index_exists(self, schema: str | None, table: str, index: str) -> bool:
        return self._catalog_has(schema, "index", index, table)

    def _catalog_has(
        self, schema: str | None, kind: str, name: str, table: str | None = None
    ) -> bool:
        catalog = f'"{schema}".sqlite_master' if schema else "sqlite_master"
        sql = f"SELECT 1 FROM {catalog} WHERE type = %s AND name = %s"
        params = [kind, name]
        if table is not None:
            sql += " AND tbl_name = %s"
            params.append(table)
        return bool(self.fetchall(sql, params))

    def _column_type(self, table: str, column: str) -> str:
        schema, _, name = table.rpartition(".")
        pragma = f'"{schema}".table_info' if schema else "table_info"
        for row in self._cursor().execute(f'PRAGMA {pragma}("{name}")'):
            if row[1] == column:
                return str(row[2])
        raise ValueError(f"column {column!r} not found in table {table!r}")

    def _is_integer_type(self, column_type: str) -> bool:
        # SQLite's own rule: a declared type containing "INT" has integer affinity.
        return "INT" in column_type.upper()


@attrs.define(eq=False)
class SQLiteDatabase(Database):
    """SQLite: ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``sqlite:///:memory:``."""

    dialect: ClassVar[Dialect] = Dialect.SQLITE
    transaction_class: ClassVar[type[Transaction]] = SQLiteTransaction
    max_pool_size: ClassVar[int | None] = 1
    driver_error: ClassVar[type[BaseException]] = sqlite3.Error

    path: str = attrs.field(init=False, default="")

    def _parse_url(self) -> None:
        prefix = "sqlite:///"
        if not self.url.lower().startswith(prefix):
            raise ValueError(
                "a SQLite URL is sqlite:///relative/path.db, sqlite:////absolute/path.db "
                "or sqlite:///:memory:"
            )
        path = self.url[len(prefix):]
        if not path or "?" in path:
            raise ValueError("a SQLite URL needs a file path, and takes no options (no '?')")
        self.path = path

    @property
    def folder(self) -> Path | None:
        """The directory the file goes in (None for ``:memory:``); sqlite3
        cannot create it, so the config checks it exists."""
        if self.path == ":memory:":
            return None
        return Path(self.path).parent

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.lock_timeout,  # how long to wait for another writer's lock
            isolation_level=None,  # syncd issues BEGIN itself
            check_same_thread=False,  # handed from thread to thread, one at a time
        )
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            if self.path != ":memory:":
                # Readers do not block the writer, and a commit is one append.
                conn.execute("PRAGMA journal_mode = WAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _cancel_statement(self, conn: Any) -> None:
        conn.interrupt()  # documented as callable from another thread

    def _ledger_ddl(self) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {self._ledger_q} ("
            "plugin VARCHAR(100) NOT NULL, batch_id VARCHAR(100) NOT NULL, "
            "applied_at TIMESTAMP NOT NULL, detail TEXT NULL, "
            "PRIMARY KEY (plugin, batch_id))"
        )

    def _is_connection_error(self, exc: BaseException) -> bool:
        # Only "locked" / "busy" (another writer outlasted the busy timeout)
        # is worth a retry; other OperationalErrors (no such table, syntax)
        # are plain errors. A closed connection is reopened.
        if isinstance(exc, sqlite3.OperationalError):
            message = str(exc).lower()
            return "locked" in message or "busy" in message
        return isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc).lower()

    def _discards(self, exc: BaseException) -> bool:
        # Never throw a live connection away for a lock wait: with :memory:
        # that would throw the whole database away.
        return isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc).lower()

    def _is_row_error(self, exc: BaseException) -> bool:
        return isinstance(
            exc, sqlite3.IntegrityError | sqlite3.DataError | UnicodeEncodeError | OverflowError
        )

    # ISO text sorts chronologically, so prune_ledger's < works on it (rows
    # written before with microseconds compare right to the millisecond).
    now_sql: ClassVar[str] = "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')"

    def _prune_sql(self, older_than_seconds: float) -> tuple[str, Any]:
        return (f"DELETE FROM {self._ledger_q} WHERE applied_at <= "
                "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', %s)",
                f"-{float(older_than_seconds):f} seconds")

    def _now_plus_sql(self, seconds: float) -> tuple[str, Any]:
        return "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', %s)", f"{float(seconds):+f} seconds"

    def _lease_ddl(self) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {self._lease_q} ("
            "name VARCHAR(191) NOT NULL PRIMARY KEY, plugin VARCHAR(100) NOT NULL, "
            "holder VARCHAR(100) NOT NULL, token BIGINT NOT NULL, "
            "acquired_at TIMESTAMP NOT NULL, renewed_at TIMESTAMP NOT NULL, "
            "expires_at TIMESTAMP NOT NULL, asked_at TIMESTAMP NULL, "
            "commits BIGINT NOT NULL DEFAULT 0)"
        )
