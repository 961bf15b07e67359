"""syncd.sql.copytext: rows as COPY text, and PostgreSQL storing exactly what write_row stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sql_support import own_database, unique

from syncd.sql import Transaction
from syncd.sql.copytext import copy_text, escape_copy_text


def test_escapes_only_what_the_text_format_needs() -> None:
    assert escape_copy_text('plain "json" ü 😀') == 'plain "json" ü 😀'
    assert escape_copy_text("a\\b\tc\nd\re") == "a\\\\b\\tc\\nd\\re"
    assert escape_copy_text('{"a": "x\\u0000"}') == '{"a": "x\\\\u0000"}'


def test_formats_rows_of_text_numbers_nulls_and_timestamps() -> None:
    stamp = datetime(2026, 11, 30, 5, 6, 7, 890000, tzinfo=UTC)
    rows = [("in", '{"a":"b\\n"}', 7, None, stamp, True), ("out", "x\ty", -1, None, stamp, False)]
    assert copy_text(rows) == (
        'in\t{"a":"b\\\\n"}\t7\t\\N\t2026-11-30T05:06:07.890000+00:00\tt\n'
        "out\tx\\ty\t-1\t\\N\t2026-11-30T05:06:07.890000+00:00\tf\n"
    )
    assert copy_text([]) == ""


@pytest.mark.parametrize("value", [1.5, Decimal("1"), b"bytes", "nul \x00 inside",
                                   datetime(2026, 1, 1).date()])
def test_anything_else_falls_back_to_write_row(value: object) -> None:
    assert copy_text([("ok", 1), ("ok", value)]) is None


async def test_postgresql_stores_what_write_row_would(pg_url: str) -> None:
    """The same rows through `Transaction.insert` (COPY text) and through
    psycopg's own adaptation (a row with a float forces ``write_row``):
    equal in every column, including escapes in JSONB and text and zones."""
    tricky = ['{"k": "tab\\there", "q": "\\"", "u": "\\u00e9 \\ud83d\\ude00"}',
              '{"k":\t"raw tab between tokens"}', '{"b": "back\\\\slash"}', "{}"]
    texts = ["a\\b", "tab\there", "line\nbreak\r\n", "ü 😀", "\\N", ""]
    zone = timezone(timedelta(hours=5, minutes=30))
    stamps = [datetime(2026, 11, 30, 5, 6, 7, 123456, tzinfo=UTC),
              datetime(2026, 11, 30, 5, 6, 7, tzinfo=zone), datetime(2026, 11, 30, 5, 6, 7)]
    rows = [(i, tricky[i % len(tricky)], texts[i % len(texts)], stamps[i % len(stamps)],
             stamps[i % len(stamps)].replace(tzinfo=None), None if i % 7 == 0 else i % 2 == 0)
            for i in range(240)]
    columns = ["id", "doc", "txt", "at", "wall", "flag"]
    async with own_database(pg_url) as db:
        tables = [unique("copytext"), unique("copyrow")]
        for table in tables:
            await db.execute(f"CREATE TABLE {table} (id INT, doc JSONB, txt TEXT, at TIMESTAMPTZ,"
                             " wall TIMESTAMP, flag BOOLEAN, f FLOAT8)")
        try:
            def write(tx: Transaction) -> None:
                tx.insert(tables[0], columns, rows)  # all copy_text can format
                tx.insert(tables[1], [*columns, "f"], [(*r, 0.5) for r in rows])  # write_row

            await db.transaction(write)
            found = [await db.fetchall(f"SELECT {', '.join(columns)} FROM {t} ORDER BY id")
                     for t in tables]
            assert len(found[0]) == len(rows)
            assert found[0] == found[1]
        finally:
            for table in tables:
                await db.execute(f"DROP TABLE IF EXISTS {table}")
