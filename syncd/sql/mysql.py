"""MySQL and MariaDB through PyMySQL (sync, in worker threads).

pymysql always interpolates parameters on the client, so the fast path is to
build multi-row statements ourselves — ``INSERT … VALUES (…), (…), …`` —
escaping values exactly as the driver does (and as it honours
NO_BACKSLASH_ESCAPES), in chunks that stay far below ``max_allowed_packet``.
That is what ``cursor.executemany`` does for plain INSERTs, but it also
covers the MySQL 8 row-alias form and derived tables, which its regular
expression does not recognise (it then falls back to one round trip per
row: 8k rows/s instead of 100k).

Increments of existing rows use ``UPDATE t JOIN (SELECT … UNION ALL …) v``,
not ``INSERT … ON DUPLICATE KEY UPDATE``: in strict mode the latter fails
with 1364 "Field doesn't have a default value" on tables with other NOT NULL
columns even when every key exists. Per chunk that is one UPDATE whose
affected-row count proves it found every key, and only when it did not, a
plain read of which keys have no row (see `MySQLTransaction._update_chunk`).
Measured on MariaDB 10.11 here, for 100k keys in chunks of 2,000, the server
time is about 0.3 s when every key has a row and 0.45 s when a few per chunk
are missing. The raw upsert takes about 0.35 s. A per-row ``UPDATE``
executemany manages about 7.5k rows/s, and the ``insert_missing`` upsert
about 70k; inserts are on par with pymysql's executemany.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs
import pymysql
import pymysql.err
from pymysql.constants import SERVER_STATUS
from pymysql.converters import escape_string

from syncd.sql.base import Database, Dialect, Transaction, _Pessimistic

#: Rows per multi-row statement, and a character budget per statement (a
#: quarter of max_allowed_packet, as a character may take 4 bytes in utf8mb4).
MAX_ROWS_PER_STATEMENT = 5000
MAX_STATEMENT_CHARS = 4 * 1024 * 1024

_INTEGER_TYPES = frozenset({"tinyint", "smallint", "mediumint", "int", "integer", "bigint"})

#: Server error numbers meaning "away or refusing work for now" (the client's
#: own 2xxx errors — can't connect, gone away, lost connection — are all in).
_TRANSIENT_ERRNOS = frozenset({
    1040,  # too many connections
    1053,  # server shutdown in progress
    1152, 1153, 1154, 1155, 1156, 1157, 1158, 1159, 1160, 1161,  # aborted / network
    1205,  # lock wait timeout
    1213,  # deadlock
    1290, 1792,  # read-only server or transaction (failover)
    1317,  # query interrupted (KILL QUERY)
    1927,  # MariaDB: connection was killed
    1969,  # MariaDB: max_statement_time exceeded
    3024,  # MySQL: max_execution_time exceeded
    4031,  # MySQL: disconnected by the server (idle timeout)
})

#: Server error numbers about the data of a row, beyond what pymysql already
#: maps to DataError / IntegrityError.
_ROW_ERRNOS = frozenset({
    1048,  # column cannot be null
    1292,  # truncated incorrect value
    1364,  # field has no default value
    1366,  # incorrect string / integer value
    1406,  # data too long
    1690,  # BIGINT (UNSIGNED) value is out of range: a counter's sum overflowing
    3819,  # MySQL: check constraint violated
    4025,  # MariaDB: check constraint failed
})

#: Transient errors after which the connection itself is fine.
_KEEP_CONNECTION_ERRNOS = frozenset({1205, 1213, 1317, 1969, 3024})

_URL_OPTIONS = {
    "unix_socket": str,
    "connect_timeout": float,
    "read_timeout": float,
    "write_timeout": float,
}

_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


@attrs.frozen
class ServerInfo:
    """What syncd needs to know about the server it talks to.

    Attributes:
        version: The ``VERSION()`` string.
        mariadb: MariaDB rather than MySQL.
        row_alias: Use ``VALUES (…) AS new … new.c`` rather than the
            ``VALUES(c)`` function, deprecated since MySQL 8.0.20 (and a
            syntax error on MariaDB).
        max_statement_chars: Character budget of one statement.
        values_union: Derived tables as ``SELECT … UNION ALL VALUES (…), …``
            (MariaDB 10.3+): the server parses that list about twice as fast
            as one ``SELECT`` per row. MySQL spells it ``VALUES ROW(…)``
            (8.0.19+); not used there, as it is untested here.
    """

    version: str
    mariadb: bool
    row_alias: bool
    max_statement_chars: int
    values_union: bool = False

    @classmethod
    def parse(cls, version: str, max_allowed_packet: int) -> ServerInfo:
        mariadb = "mariadb" in version.lower()
        match = _VERSION.search(version.removeprefix("5.5.5-"))
        numbers = tuple(int(part) for part in match.groups()) if match else (0, 0, 0)
        budget = max(64 * 1024, min(MAX_STATEMENT_CHARS, max_allowed_packet // 4 - 1024))
        return cls(version, mariadb, not mariadb and numbers >= (8, 0, 20), budget,
                   values_union=mariadb and numbers >= (10, 3, 0))


#: Joins the strings of a batch for escaping them in one pass (`MySQLTransaction._literals`):
#: a control character that neither way of escaping touches.
_SEPARATOR = "\x1f"


def _double_quotes(text: str) -> str:
    """String escaping under NO_BACKSLASH_ESCAPES, as pymysql does it."""
    return text.replace("'", "''")


@attrs.frozen
class _Update:
    """What every chunk of one increment call shares: the table and the SET list."""

    table_q: str
    key_q: str
    sets: str
    names: list[str]

    @property
    def join(self) -> str:
        return f"JOIN {self.table_q} AS syncd_t ON syncd_t.{self.key_q} = syncd_v.k"


@attrs.frozen
class _Chunk:
    """A contiguous run of increment rows, rendered once as SQL literals.

    Attributes:
        indexes: Their positions in the increment call's rows.
        lits: The keys as literals.
        values: The deltas.
        keyed: ``i, k`` per row: input index and key, to read which are absent.
        rendered: ``k, d0, …`` per row, for the UPDATE.
    """

    indexes: range
    lits: list[str]
    values: list[list[int]]
    keyed: list[str]
    rendered: list[str]

    def keyed_head(self) -> list[str]:
        return [str(self.indexes.start), self.lits[0]]

    def head(self, j: int) -> list[str]:
        """Row ``j`` of `rendered` as separate values (it names the derived columns)."""
        return [self.lits[j], *map(str, self.values[j])]


@attrs.define(eq=False)
class MySQLTransaction(Transaction):
    dialect: ClassVar[Dialect] = Dialect.MYSQL
    quote_char: ClassVar[str] = "`"

    def _conflict_do_nothing(self, cols_q: list[str]) -> str:
        # Not INSERT IGNORE: that also turns data errors into warnings.
        return f" ON DUPLICATE KEY UPDATE {cols_q[0]} = {cols_q[0]}"

    # Rows are rendered as SQL literals in Python, exactly as the driver's
    # own escaping renders them: by str() for the ints of increments (keys
    # rendered once), which halves the Python time of a 50k-row increment,
    # and for inserts by `_literals`.

    def _literals(self, rows: list[tuple[Any, ...]], width: int) -> list[str]:
        """Each row rendered as ``a, b, c``, as ``cursor.mogrify`` would render it.

        Strings and ints, nearly all that plugins insert, are rendered here,
        anything else by the driver's ``escape``. Rows of nothing but strings
        are escaped in one pass over all their text, joined by a character no
        value holds and escaping leaves alone, then split again: ~0.4 µs per
        row of three strings against ~1.7 µs for one mogrify call per row,
        which was a sixth of the votes plugin's Python time per vote.
        """
        flat = list(chain.from_iterable(rows))
        escape_text = self._escape_text()
        if set(map(type, flat)) == {str}:
            joined = _SEPARATOR.join(flat)
            if joined.count(_SEPARATOR) == len(flat) - 1:
                values = escape_text(joined).split(_SEPARATOR)
                quoted = ", ".join(["'%s'"] * width)
                return [quoted % row for row in zip(*[iter(values)] * width, strict=True)]
        escape = self._conn.escape
        values = [
            f"'{escape_text(v)}'" if type(v) is str else str(v) if type(v) is int else escape(v)
            for v in flat
        ]
        pattern = ", ".join(["%s"] * width)
        return [pattern % row for row in zip(*[iter(values)] * width, strict=True)]

    def _escape_text(self) -> Callable[[str], str]:
        """How the driver escapes the inside of a string literal on this
        connection (``pymysql.connections.Connection._escape_string``): it
        depends on the session's NO_BACKSLASH_ESCAPES, which pymysql tracks."""
        if self._conn.server_status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES:
            return _double_quotes
        return escape_string

    def _statements(self, rendered: list[str]) -> Iterator[str]:
        """``(…), (…), …`` lists of rendered rows, each small enough for one statement."""
        budget = self._db._server.max_statement_chars
        sizes = [len(row) + 4 for row in rendered]
        if len(rendered) <= MAX_ROWS_PER_STATEMENT and sum(sizes) <= budget:
            yield "(" + "), (".join(rendered) + ")"
            return
        start = size = 0
        for i, row_size in enumerate(sizes):
            if i > start and (size + row_size > budget or i - start >= MAX_ROWS_PER_STATEMENT):
                yield "(" + "), (".join(rendered[start:i]) + ")"
                start, size = i, 0
            size += row_size
        yield "(" + "), (".join(rendered[start:]) + ")"

    def _key_literal(self, key: int | str) -> str:
        return str(key) if type(key) is int else self._cursor().mogrify("%s", (key,))

    def _chunks(self, rows: Iterable[tuple[str, ...]]) -> Iterator[list[tuple[str, ...]]]:
        """Group rendered rows into statements below the size budget."""
        budget = self._db._server.max_statement_chars
        chunk: list[tuple[str, ...]] = []
        size = 0
        for row in rows:
            row_size = sum(map(len, row)) + 2 * len(row) + 2
            if chunk and (size + row_size > budget or len(chunk) >= MAX_ROWS_PER_STATEMENT):
                yield chunk
                chunk, size = [], 0
            chunk.append(row)
            size += row_size
        if chunk:
            yield chunk

    def _execute_values(self, prefix: str, rows: Iterable[tuple[str, ...]], suffix: str) -> int:
        """Run ``prefix (…), (…), … suffix`` in as few statements as fit; sum rowcounts."""
        cur = self._cursor()
        total = 0
        for chunk in self._chunks(rows):
            values = ", ".join(["(" + ", ".join(row) + ")" for row in chunk])
            # No parameters: the values are escaped already, and pymysql
            # leaves a query without args alone (no % interpolation).
            total += cur.execute(prefix + values + suffix)
        return total

    def _derived_table(self, head: list[str], names: list[str], rest: list[str]) -> str:
        """``(SELECT a AS x, b AS y UNION ALL …)``: ``head`` names the columns,
        ``rest`` are the other rows, each already rendered as ``c, d``.

        The rest is ``SELECT c, d`` per row, portable across MySQL 5.7/8 and
        MariaDB (~114k rows/s here), or one ``VALUES (c, d), …`` list where
        the server has it (`ServerInfo.values_union`).
        """
        first = ", ".join(f"{value} AS {name}" for value, name in zip(head, names, strict=True))
        if not rest:
            return f"(SELECT {first})"
        if self._db._server.values_union:
            return f"(SELECT {first} UNION ALL VALUES ({'), ('.join(rest)}))"
        return f"(SELECT {first} UNION ALL SELECT {' UNION ALL SELECT '.join(rest)})"

    def _insert_rows(self, table_q: str, cols_q: list[str], rows: list[tuple[Any, ...]]) -> int:
        return self._insert_values(table_q, cols_q, rows, self._conflict_do_nothing(cols_q))

    def _append_rows(self, table_q: str, cols_q: list[str], rows: list[tuple[Any, ...]]) -> int:
        return self._insert_values(table_q, cols_q, rows, "")

    def _insert_values(
        self, table_q: str, cols_q: list[str], rows: list[tuple[Any, ...]], suffix: str
    ) -> int:
        prefix = f"INSERT INTO {table_q} ({', '.join(cols_q)}) VALUES "
        cur = self._cursor()
        total = 0
        for values in self._statements(self._literals(rows, len(cols_q))):
            # No parameters: the values are escaped already, and pymysql
            # leaves a query without args alone (no % interpolation).
            total += cur.execute(prefix + values + suffix)
        return total

    def _upsert_increment(
        self,
        table_q: str,
        key_q: str,
        key_type: str,
        cols_q: list[str],
        keys: list[Any],
        deltas: list[list[int]],
    ) -> tuple[int, int]:
        # Affected rows count 1 per inserted row and 2 per changed row, so
        # with every delta non-zero, updated = affected - n. All-zero rows
        # would count 0 when they exist; they go in a statement of their own
        # that only inserts (affected = inserted).
        prefix = f"INSERT INTO {table_q} ({key_q}, {', '.join(cols_q)}) VALUES "
        changing: list[tuple[str, ...]] = []
        still: list[tuple[str, ...]] = []
        for key, row in zip(keys, deltas, strict=True):
            (changing if any(row) else still).append((self._key_literal(key), *map(str, row)))
        updated = inserted = 0
        if changing:
            if self._db._server.row_alias:
                new = "`syncd_new`"
                sets = ", ".join(f"{c} = COALESCE({c}, 0) + {new}.{c}" for c in cols_q)
                suffix = f" AS {new} ON DUPLICATE KEY UPDATE {sets}"
            else:
                sets = ", ".join(f"{c} = COALESCE({c}, 0) + VALUES({c})" for c in cols_q)
                suffix = f" ON DUPLICATE KEY UPDATE {sets}"
            affected = self._execute_values(prefix, changing, suffix)
            changed = min(max(affected - len(changing), 0), len(changing))
            updated += changed
            inserted += len(changing) - changed
        if still:
            new_rows = self._execute_values(prefix, still, self._conflict_do_nothing([key_q]))
            inserted += new_rows
            updated += len(still) - new_rows
        return updated, inserted

    def _update_existing(
        self,
        table_q: str,
        key_q: str,
        key_type: str,
        cols_q: list[str],
        keys: list[Any],
        deltas: list[list[int]],
    ) -> set[int]:
        # Every row rendered once, as text: ~1 µs a row, a third of what
        # tuples of literals joined per statement cost (traffic pushes
        # 100,000 rows a second through here).
        literal = self._key_literal
        lits = [str(key) if type(key) is int else literal(key) for key in keys]
        keyed = [f"{i}, {lit}" for i, lit in enumerate(lits)]
        if len(cols_q) == 1:
            rendered = [f"{lit}, {row[0]}" for lit, row in zip(lits, deltas, strict=True)]
        else:
            rendered = [f"{lit}, {', '.join(map(str, row))}"
                        for lit, row in zip(lits, deltas, strict=True)]
        zero = {i for i, row in enumerate(deltas) if not any(row)}
        sets = ", ".join(
            f"syncd_t.{c} = COALESCE(syncd_t.{c}, 0) + syncd_v.d{i}" for i, c in enumerate(cols_q)
        )
        update = _Update(table_q, key_q, sets, ["k"] + [f"d{i}" for i in range(len(cols_q))])
        found: set[int] = set()
        for span in self._spans([len(k) + len(r) for k, r in zip(keyed, rendered, strict=True)]):
            window = slice(span.start, span.stop)
            chunk = _Chunk(span, lits[window], deltas[window], keyed[window], rendered[window])
            found.update(self._update_chunk(update, chunk, zero))
        return found

    def _spans(self, sizes: list[int]) -> Iterator[range]:
        """Consecutive index ranges whose rows fit one statement each."""
        budget = self._db._server.max_statement_chars // 2  # a chunk is sent twice at worst
        start, size = 0, 0
        for i, row_size in enumerate(sizes):
            if i > start and (size + row_size + 4 > budget
                              or i - start >= MAX_ROWS_PER_STATEMENT):
                yield range(start, i)
                start, size = i, 0
            size += row_size + 4
        if start < len(sizes):
            yield range(start, len(sizes))

    def _update_chunk(self, update: _Update, chunk: _Chunk, zero: set[int]) -> list[int]:
        """Increment a chunk's keys that have a row; return their indexes.

        The UPDATE goes first. Without CLIENT_FOUND_ROWS its affected-row
        count is the rows it changed, one per key with a non-zero delta (the
        key column is unique), so when that is every key, every key had a
        row and one statement did it all: the usual case. Otherwise a plain
        read (by input index rather than by key, so nothing depends on how
        the server spells or compares keys) says which keys are absent. The
        rows the UPDATE changed stay locked until commit, so the read can
        only disagree if a row appeared in between: then the count of
        absent changing keys is short of what the UPDATE missed, and the
        whole transaction is rolled back and run again pessimistically
        (`_update_locked`): rarer than a savepoint around every UPDATE
        would be costly (two round trips per chunk). A key that gets its
        row after that is reported missing: its deltas go to the caller,
        never nowhere.
        """
        if self.pessimistic:
            return self._update_locked(update, chunk)
        start = chunk.indexes.start
        changing = [j for j in range(len(chunk.indexes)) if start + j not in zero]
        changed = self._update_rows(update, chunk, changing)
        if changed == len(chunk.indexes):
            return list(chunk.indexes)
        absent = self._absent(update, chunk, lock=False)
        if sum(1 for j in changing if j in absent) != len(changing) - changed:
            raise _Pessimistic
        return [start + j for j in range(len(chunk.indexes)) if j not in absent]

    def _update_rows(self, update: _Update, chunk: _Chunk, rows: list[int]) -> int:
        """UPDATE the chunk's rows at positions ``rows``; the affected-row count."""
        if not rows:
            return 0
        rest = (chunk.rendered[1:] if len(rows) == len(chunk.indexes)
                else [chunk.rendered[j] for j in rows[1:]])
        table = self._derived_table(chunk.head(rows[0]), update.names, rest)
        return self._cursor().execute(
            f"UPDATE {update.table_q} AS syncd_t JOIN {table} "
            f"AS syncd_v ON syncd_t.{update.key_q} = syncd_v.k SET {update.sets}")

    def _absent(self, update: _Update, chunk: _Chunk, *, lock: bool) -> set[int]:
        """Positions (in the chunk) of the keys without a row."""
        table = self._derived_table(chunk.keyed_head(), ["i", "k"], chunk.keyed[1:])
        start = chunk.indexes.start
        return {int(i) - start for (i,) in self.fetchall(
            f"SELECT syncd_v.i FROM {table} AS syncd_v LEFT {update.join} "
            f"WHERE syncd_t.{update.key_q} IS NULL" + (" FOR UPDATE" if lock else "")
        )}

    def _update_locked(self, update: _Update, chunk: _Chunk) -> list[int]:
        """`_update_chunk` with the rows that exist locked first, so none can vanish."""
        table = self._derived_table(chunk.keyed_head(), ["i", "k"], chunk.keyed[1:])
        ((count,),) = self.fetchall(
            f"SELECT COUNT(*) FROM {table} AS syncd_v {update.join} FOR UPDATE"
        )
        if count == 0:
            return []
        absent = self._absent(update, chunk, lock=True) if count < len(chunk.indexes) else set()
        present = [j for j in range(len(chunk.indexes)) if j not in absent]
        self._update_rows(update, chunk, present)  # a zero delta changes nothing
        start = chunk.indexes.start
        return [start + j for j in present]

    @contextlib.contextmanager
    def _ddl_lock_wait(self, seconds: float) -> Iterator[None]:
        # DDL commits by itself on MySQL: session settings, put back afterwards.
        db: MySQLDatabase = self._db  # type: ignore[assignment]
        cur = self._cursor()
        cur.execute(db._lock_settings(seconds))
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # a broken connection is discarded
                cur.execute(db._lock_settings(db.lock_timeout))

    def _table_exists(self, schema: str | None, name: str) -> bool:
        rows = self.fetchall(
            "SELECT 1 FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s",
            (schema, name),
        )
        return bool(rows)

    def _index_exists(self, schema: str | None, table: str, index: str) -> bool:
        rows = self.fetchall(
            "SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = "
            "COALESCE(%s, DATABASE()) AND TABLE_NAME = %s AND INDEX_NAME = %s LIMIT 1",
            (schema, table, index),
        )
        return bool(rows)

    def _column_type(self, table: str, column: str) -> str:
        schema, _, name = table.rpartition(".")
        rows = self.fetchall(
            "SELECT DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
            "COALESCE(%s, DATABASE()) AND TABLE_NAME = %s AND COLUMN_NAME = %s",
            (schema or None, name, column),
        )
        if not rows:
            raise ValueError(f"column {column!r} not found in table {table!r}")
        return str(rows[0][0]).lower()

    def _is_integer_type(self, column_type: str) -> bool:
        return column_type in _INTEGER_TYPES


@attrs.define(eq=False)
class MySQLDatabase(Database):
    """MySQL or MariaDB: ``mysql://user:password@host:port/dbname`` (or ``mariadb://``)."""

    dialect: ClassVar[Dialect] = Dialect.MYSQL
    transaction_class: ClassVar[type[Transaction]] = MySQLTransaction
    driver_error: ClassVar[type[BaseException]] = pymysql.MySQLError

    _params: dict[str, Any] = attrs.field(init=False, factory=dict, repr=False)
    _server: ServerInfo = attrs.field(
        init=False, repr=False, factory=lambda: ServerInfo.parse("", 16 * 1024 * 1024)
    )

    def _parse_url(self) -> None:
        parts = urlsplit(self.url)
        database = unquote(parts.path.lstrip("/"))
        if not database or "/" in database:
            raise ValueError("a MySQL URL needs a database name: mysql://user:pass@host:port/db")
        try:
            port = parts.port or 3306
        except ValueError:
            raise ValueError("invalid port in MySQL URL") from None
        params: dict[str, Any] = {
            "host": parts.hostname or "localhost",
            "port": port,
            "user": unquote(parts.username) if parts.username else "root",
            "password": unquote(parts.password) if parts.password else "",
            "database": database,
            "connect_timeout": self.connect_timeout,
            # A statement may wait up to lock_timeout for a lock; a peer that
            # vanished must not hold a thread forever either.
            "read_timeout": max(120.0, self.lock_timeout + 60.0),
            "write_timeout": 120.0,
        }
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key not in _URL_OPTIONS:
                raise ValueError(
                    f"unknown MySQL URL option {key!r} (known: {', '.join(sorted(_URL_OPTIONS))})"
                )
            try:
                params[key] = _URL_OPTIONS[key](value)
            except ValueError:
                raise ValueError(f"invalid value for MySQL URL option {key!r}: {value!r}") from None
            # pymysql refuses these only when it connects.
            if key.endswith("_timeout") and not 0 < params[key] <= 31536000:
                raise ValueError(f"MySQL URL option {key!r} must be more than 0 and at most "
                                 f"31536000 (seconds), got {value!r}")
        self._params = params

    def _open(self) -> pymysql.connections.Connection:
        # No CLIENT_FOUND_ROWS: affected-row counts are what the fast paths
        # count inserts with. No multi-statements, no LOCAL INFILE.
        conn = pymysql.connect(
            charset="utf8mb4", autocommit=False, local_infile=False, **self._params
        )
        try:
            with conn.cursor() as cur:
                # Strict mode, whatever the server default: an over-long value
                # must be an error (and dead-lettered), not silently truncated.
                cur.execute(
                    "SET SESSION sql_mode = IF(FIND_IN_SET('STRICT_TRANS_TABLES', "
                    "@@SESSION.sql_mode) > 0, @@SESSION.sql_mode, CONCAT_WS(',', "
                    "NULLIF(@@SESSION.sql_mode, ''), 'STRICT_TRANS_TABLES'))"
                )
                # As on PostgreSQL: fewer gap locks, so fewer deadlocks between replicas.
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                # Bounded lock waits, row locks and metadata locks alike (the
                # server defaults are 50 s and a year); on MariaDB a session
                # idle inside a transaction (a replica frozen mid-batch) is
                # ended, which frees its locks. Session settings only.
                cur.execute(self._lock_settings(self.lock_timeout))
                if "mariadb" in conn.get_server_info().lower():
                    cur.execute("SET SESSION idle_transaction_timeout = %s",
                                (math.ceil(self.idle_transaction_timeout),))
                cur.execute("SELECT VERSION(), @@max_allowed_packet")
                version, max_packet = cur.fetchone()
            conn.commit()
        except BaseException:
            conn.close()
            raise
        self._server = ServerInfo.parse(str(version), int(max_packet))
        return conn

    def _ledger_ddl(self) -> str:
        # utf8mb4_bin: batch ids are case-sensitive. DATETIME(6), not
        # TIMESTAMP: no session time-zone conversion, no 2038 limit, no
        # implicit ON UPDATE CURRENT_TIMESTAMP on old servers; syncd writes UTC.
        return (
            f"CREATE TABLE IF NOT EXISTS {self._ledger_q} ("
            "plugin VARCHAR(100) NOT NULL, batch_id VARCHAR(100) NOT NULL, "
            "applied_at DATETIME(6) NOT NULL, detail MEDIUMTEXT NULL, "
            "PRIMARY KEY (plugin, batch_id)"
            ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        )

    now_sql: ClassVar[str] = "UTC_TIMESTAMP(6)"

    def _prune_sql(self, older_than_seconds: float) -> tuple[str, Any]:
        return (f"DELETE FROM {self._ledger_q} WHERE applied_at <= "
                f"{self.now_sql} - INTERVAL %s MICROSECOND", round(older_than_seconds * 1e6))

    def _now_plus_sql(self, seconds: float) -> tuple[str, Any]:
        return f"({self.now_sql} + INTERVAL %s MICROSECOND)", round(seconds * 1e6)

    def _lease_ddl(self) -> str:
        # As the ledger: DATETIME(6) holding UTC, case-sensitive names.
        return (
            f"CREATE TABLE IF NOT EXISTS {self._lease_q} ("
            "name VARCHAR(191) NOT NULL PRIMARY KEY, plugin VARCHAR(100) NOT NULL, "
            "holder VARCHAR(100) NOT NULL, token BIGINT NOT NULL, "
            "acquired_at DATETIME(6) NOT NULL, renewed_at DATETIME(6) NOT NULL, "
            "expires_at DATETIME(6) NOT NULL, asked_at DATETIME(6) NULL, "
            "commits BIGINT NOT NULL DEFAULT 0"
            ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        )

    @staticmethod
    def _lock_settings(seconds: float) -> str:
        """SET statement for lock waits of at most ``seconds`` (whole, at least 1)."""
        whole = max(1, math.ceil(seconds))
        return (f"SET SESSION innodb_lock_wait_timeout = {whole}, "
                f"SESSION lock_wait_timeout = {whole}")

    def _cancel_statement(self, conn: Any) -> None:
        # KILL QUERY ends the statement, not the session; from a connection
        # of its own, since this one is busy.
        killer = pymysql.connect(**{**self._params, "read_timeout": self.connect_timeout,
                                    "write_timeout": self.connect_timeout})
        try:
            with killer.cursor() as cur:
                cur.execute("KILL QUERY %s", (conn.thread_id(),))
        except pymysql.MySQLError as exc:
            if not (exc.args and exc.args[0] == 1094):  # unknown thread: it ended
                raise
        finally:
            killer.close()

    def _discards(self, exc: BaseException) -> bool:
        if isinstance(exc, pymysql.MySQLError) and exc.args[:1] and (
                exc.args[0] in _KEEP_CONNECTION_ERRNOS):
            return False
        return self._is_connection_error(exc)

    def _is_connection_error(self, exc: BaseException) -> bool:
        if isinstance(exc, pymysql.err.InterfaceError | OSError):
            return True
        if isinstance(exc, pymysql.MySQLError) and exc.args:
            errno = exc.args[0]
            return isinstance(errno, int) and (2000 <= errno < 3000 or errno in _TRANSIENT_ERRNOS)
        return False

    def _is_row_error(self, exc: BaseException) -> bool:
        if self._is_connection_error(exc):
            return False
        if isinstance(exc, pymysql.err.DataError | pymysql.err.IntegrityError | UnicodeError):
            return True
        if isinstance(exc, pymysql.MySQLError) and exc.args:
            sqlstate = getattr(exc, "sqlstate", None) or ""
            return exc.args[0] in _ROW_ERRNOS or sqlstate[:2] in ("22", "23")
        return False

    def _error_message(self, exc: BaseException) -> str:
        if isinstance(exc, pymysql.MySQLError) and len(exc.args) >= 2:
            return f"({exc.args[0]}) {exc.args[1]}"
        return super()._error_message(exc)

    def _usable(self, conn: Any) -> bool:
        return bool(conn.open)

    def _alive(self, conn: Any) -> bool:
        try:
            conn.ping(reconnect=False)
        except (pymysql.MySQLError, OSError):
            return False
        return True
