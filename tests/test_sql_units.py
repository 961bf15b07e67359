"""syncd.sql logic that needs no server: URLs, identifiers, key handling, SQL text."""

from __future__ import annotations

from typing import Any

import pytest

from syncd.sql import Dialect, open_database, validate_identifier
from syncd.sql.base import _merge_increments
from syncd.sql.mysql import MySQLDatabase, MySQLTransaction, ServerInfo
from syncd.sql.sqlite import SQLiteTransaction


class TestOpenDatabase:
    """URLs are checked when the config is loaded; nothing connects."""

    @pytest.mark.parametrize(
        ("url", "dialect"),
        [
            ("postgresql://postgres@127.0.0.1:5432/test", Dialect.POSTGRESQL),
            ("postgres://u:p@db/app?sslmode=require", Dialect.POSTGRESQL),
            ("mysql://root@127.0.0.1:3306/test", Dialect.MYSQL),
            ("mariadb://u:p@db/app?unix_socket=/run/mysqld/mysqld.sock", Dialect.MYSQL),
            ("sqlite:///relative/path.db", Dialect.SQLITE),
            ("sqlite:////abs/path.db", Dialect.SQLITE),
            ("sqlite:///:memory:", Dialect.SQLITE),
        ],
    )
    def test_accepted(self, url: str, dialect: Dialect) -> None:
        assert open_database("x", url).dialect == dialect

    def test_sqlite_paths(self) -> None:
        assert open_database("x", "sqlite:///relative/path.db").path == "relative/path.db"
        assert open_database("x", "sqlite:////abs/path.db").path == "/abs/path.db"
        assert open_database("x", "sqlite:///:memory:").path == ":memory:"
        assert open_database("x", "sqlite:///x.db", pool_size=8).limiter.total_tokens == 1

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("oracle://scott:tiger@db/orcl", "unsupported database URL"),
            ("just-a-path.db", "unsupported database URL"),
            ("mysql://root@127.0.0.1:3306/", "needs a database name"),
            ("mysql://root@127.0.0.1:3306/test?bogus=1", "unknown MySQL URL option 'bogus'"),
            ("mysql://root@127.0.0.1:notaport/test", "invalid port"),
            ("postgresql://u@h/db?bogus=1", "invalid PostgreSQL URL"),
            ("sqlite:///", "needs a file path"),
            ("sqlite://relative.db", "sqlite:///relative/path.db"),
        ],
    )
    def test_rejected(self, url: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            open_database("x", url)

    def test_bad_ledger_table_and_pool_size(self) -> None:
        with pytest.raises(ValueError, match="invalid SQL identifier"):
            open_database("x", "sqlite:///:memory:", ledger_table="ledger; DROP TABLE x")
        with pytest.raises(ValueError, match="pool_size"):
            open_database("x", "sqlite:///:memory:", pool_size=0)

    def test_repr_masks_the_password(self) -> None:
        db = open_database("main", "postgresql://app:s3cret@db:5432/app")
        assert "s3cret" not in repr(db)
        assert "***" in repr(db)


class TestIdentifiers:
    """Only plain names (optionally schema-qualified) ever reach SQL text."""

    @pytest.mark.parametrize("name", ["users", "_x1", "public.users", "T" * 63, "a.b"])
    def test_valid(self, name: str) -> None:
        assert validate_identifier(name) == name

    @pytest.mark.parametrize(
        "name",
        [
            "users; DROP TABLE x", "users --", 'a"b', "a`b", "a'b", "", " users", "1abc",
            "a.b.c", ".a", "a.", "x" * 64, "na me", "naïve", "a-b", "a/*", None, 42,
        ],
    )
    def test_invalid(self, name: Any) -> None:
        with pytest.raises(ValueError, match="invalid SQL identifier"):
            validate_identifier(name)


class TestMergeIncrements:
    """Deltas of equal keys are summed before any SQL runs."""

    def test_sums_duplicates_in_first_seen_order(self) -> None:
        merged, bad = _merge_increments([(2, 1, 1), (1, 5, 0), (2, 3, 4)], 2, integer=True)
        assert merged == {2: [4, 5], 1: [5, 0]}
        assert list(merged) == [2, 1]
        assert bad == []

    def test_integer_keys_from_strings_and_bytes(self) -> None:
        merged, bad = _merge_increments(
            [("42", 1), (42, 1), (b"42", 1), (" 7 ", 1), ("x", 1), (True, 1), (1.5, 1)],
            1, integer=True,
        )
        assert merged == {42: [3], 7: [1]}
        assert bad == ["x", True, 1.5]

    def test_text_keys(self) -> None:
        merged, _ = _merge_increments([(7, 1), ("7", 2), (b"a", 1)], 1, integer=False)
        assert merged == {"7": [3], "a": [1]}

    def test_bad_rows(self) -> None:
        with pytest.raises(ValueError, match="row 1"):
            _merge_increments([(1, 1), (2,)], 1, integer=True)
        with pytest.raises(TypeError, match="non-integer delta"):
            _merge_increments([(1, 1.5)], 1, integer=True)


class TestServerInfo:
    """The ON DUPLICATE KEY form depends on the server (MariaDB rejects the alias form)."""

    @pytest.mark.parametrize(
        ("version", "mariadb", "row_alias"),
        [
            ("5.5.5-10.11.19-MariaDB-0+deb12u1", True, False),
            ("11.4.2-MariaDB", True, False),
            ("8.0.36", False, True),
            ("8.0.20-log", False, True),
            ("8.0.19", False, False),
            ("5.7.44", False, False),
        ],
    )
    def test_flavour(self, version: str, mariadb: bool, row_alias: bool) -> None:
        info = ServerInfo.parse(version, 64 * 1024 * 1024)
        assert (info.mariadb, info.row_alias) == (mariadb, row_alias)

    def test_statement_budget_follows_max_allowed_packet(self) -> None:
        assert ServerInfo.parse("8.0.36", 4 * 1024 * 1024).max_statement_chars < 1024 * 1024
        assert ServerInfo.parse("8.0.36", 1 << 30).max_statement_chars == 4 * 1024 * 1024


class _RecordingCursor:
    """Just enough of a pymysql cursor to see the SQL text that would be sent."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def mogrify(self, pattern: str, args: tuple[Any, ...]) -> str:
        return pattern % tuple(repr(arg) for arg in args)

    def execute(self, sql: str) -> int:
        self.statements.append(sql)
        return 0

    def close(self) -> None:
        pass


class _RecordingConnection:
    server_status = 0  # no NO_BACKSLASH_ESCAPES

    def __init__(self) -> None:
        self.cur = _RecordingCursor()

    def escape(self, value: Any) -> str:
        return repr(value)

    def cursor(self) -> _RecordingCursor:
        return self.cur


class TestMySQLStatements:
    """The SQL text of the MySQL fast paths, for both server flavours."""

    def _upsert(self, version: str) -> list[str]:
        db = open_database("x", "mysql://root@127.0.0.1/test")
        assert isinstance(db, MySQLDatabase)
        db._server = ServerInfo.parse(version, 16 * 1024 * 1024)
        conn = _RecordingConnection()
        tx = MySQLTransaction(db, conn)
        tx._upsert_increment("`t`", "`id`", "bigint", ["`n`"], [1, 2], [[5], [0]])
        return conn.cur.statements

    def test_mysql_8_uses_the_row_alias(self) -> None:
        changing, still = self._upsert("8.0.36")
        assert changing == (
            "INSERT INTO `t` (`id`, `n`) VALUES (1, 5) AS `syncd_new` "
            "ON DUPLICATE KEY UPDATE `n` = COALESCE(`n`, 0) + `syncd_new`.`n`"
        )
        assert still == (
            "INSERT INTO `t` (`id`, `n`) VALUES (2, 0) ON DUPLICATE KEY UPDATE `id` = `id`"
        )

    def test_mariadb_uses_the_values_function(self) -> None:
        changing, _ = self._upsert("5.5.5-10.11.19-MariaDB")
        assert changing.endswith("ON DUPLICATE KEY UPDATE `n` = COALESCE(`n`, 0) + VALUES(`n`)")
        assert "INSERT IGNORE" not in changing

    def test_large_batches_are_split(self) -> None:
        db = open_database("x", "mysql://root@127.0.0.1/test")
        conn = _RecordingConnection()
        tx = MySQLTransaction(db, conn)
        tx._insert_rows("`t`", ["`id`"], [(i,) for i in range(12_000)])
        assert [s.count("(") - 1 for s in conn.cur.statements] == [5000, 5000, 2000]


def test_sqlite_placeholders() -> None:
    tx = SQLiteTransaction.__new__(SQLiteTransaction)
    assert tx._placeholders("SELECT %s, '100%%', %s") == "SELECT ?, '100%', ?"
