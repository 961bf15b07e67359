"""The ``plugins.traffic`` config section."""

from __future__ import annotations

import functools
import re
from typing import Any

import attrs

import syncd

#: Where the node id sits in ``key_pattern``.
NODE_ID = "{node_id}"

#: A plain SQL identifier, optionally schema-qualified (``app.nodes``).
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63})?")
_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

#: In-flight areas (see `TrafficWorker`): a fixed number, since recovery must
#: look in every one a previous version may have used.
LANES = 2

#: Keys per snapshot: above this, one Lua script holds Redis for too long.
MAX_BATCH = 50_000


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {value!r}", attribute)


def _batch_size(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 1 <= value <= MAX_BATCH:
        raise ValueError(f"must be between 1 and {MAX_BATCH}, got {value!r}", attribute)


def _key_pattern(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value.count(NODE_ID) != 1:
        raise ValueError(
            f"must contain {NODE_ID} exactly once (e.g. 'node:{NODE_ID}:traffic'), got {value!r}",
            attribute,
        )


def _identifier(pattern: re.Pattern[str], what: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
        if value is not None and not pattern.fullmatch(value):
            raise ValueError(f"must be {what}, got {value!r}", attribute)

    return check


_table = _identifier(_IDENTIFIER, "a SQL table name (letters, digits, _; optionally schema.table)")
_column = _identifier(_COLUMN, "a SQL column name (letters, digits, _; at most 64)")


def _non_empty(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        raise ValueError("must not be empty", attribute)


@attrs.frozen(slots=False)
class TrafficConfig:
    """Where the node counters are in Redis and where their bytes go in SQL.

    Attributes:
        key_pattern: The application's hash per node; ``{node_id}`` marks the
            id. Its fields ``upload`` and ``download`` are HINCRBY'd.
        interval: How often the accumulated bytes are flushed.
        table: The SQL table holding one row per node.
        id_column: Its key column (the node id, an integer).
        total_column: Gets ``upload + download`` added; None to not write it.
        upload_column: Gets ``upload`` added, if set.
        download_column: Gets ``download`` added, if set.
        batch_size: Keys per snapshot, and so per SQL transaction.
        insert_missing: A node id with no row: False quarantines it in the
            dead-letter list, True inserts the row.
        create_table: Create a minimal table (id plus the configured columns)
            when it does not exist, so the daemon works out of the box; a
            warning names the table when this happens, since on an existing
            schema it usually means a misspelled ``table``.
        dead_letter: The Redis list bad counters go to, with the reason.
        inflight_prefix: Namespace of the in-flight snapshot keys (never
            expire; removed once their bytes are committed in SQL).
    """

    key_pattern: str = attrs.field(default="node:{node_id}:traffic", validator=_key_pattern)
    interval: syncd.Duration = attrs.field(default=syncd.Duration(300), validator=_positive)
    table: str = attrs.field(default="nodes", validator=_table)
    id_column: str = attrs.field(default="id", validator=_column)
    total_column: str | None = attrs.field(default="traffic_used", validator=_column)
    upload_column: str | None = attrs.field(default=None, validator=_column)
    download_column: str | None = attrs.field(default=None, validator=_column)
    batch_size: int = attrs.field(default=5000, validator=_batch_size)
    insert_missing: bool = False
    create_table: bool = True
    dead_letter: str = attrs.field(default="traffic:dead", validator=_non_empty)
    inflight_prefix: str = attrs.field(default="syncd:inflight:traffic", validator=_non_empty)

    def __attrs_post_init__(self) -> None:
        columns = self.columns
        if not columns:
            raise ValueError(
                "set at least one of total_column, upload_column, download_column",
                attrs.fields(TrafficConfig).total_column,
            )
        if self.id_column in columns or len(set(columns)) != len(columns):
            raise ValueError(
                f"the id and counter columns must all differ, got id_column={self.id_column!r} "
                f"and columns {list(columns)}",
                attrs.fields(TrafficConfig).total_column,
            )

    @functools.cached_property
    def columns(self) -> tuple[str, ...]:
        """The counter columns written: total, upload, download (those configured)."""
        return tuple(
            c for c in (self.total_column, self.upload_column, self.download_column) if c
        )

    @property
    def inflight_prefixes(self) -> tuple[str, ...]:
        """One in-flight namespace per pipeline lane, under ``inflight_prefix``."""
        return tuple(f"{self.inflight_prefix}:{lane}" for lane in range(LANES))

    @property
    def scan_pattern(self) -> str:
        """``key_pattern`` as a SCAN MATCH glob (the rest of the name matched literally)."""
        head, tail = self.key_pattern.split(NODE_ID)
        return f"{_glob_escape(head)}*{_glob_escape(tail)}"


def _glob_escape(text: str) -> str:
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)
