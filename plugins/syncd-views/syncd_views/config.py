"""The ``plugins.views`` config section (names as issue 13 spells them)."""

from __future__ import annotations

import re
from typing import Any

import attrs

import syncd

#: A plain SQL identifier, optionally schema-qualified (``app.vods``).
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?")
_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
#: Keys per snapshot: above this, one Lua script holds Redis for too long.
MAX_BATCH = 50_000


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {value!r}", attribute)


def _batch_size(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 1 <= value <= MAX_BATCH:
        raise ValueError(f"must be between 1 and {MAX_BATCH}, got {value!r}", attribute)


def _key_pattern(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value.count("*") != 1 or any(c in value for c in "?[]\\"):
        raise ValueError(
            f"must contain * exactly once, where the VOD id is, and no other glob "
            f"character (e.g. 'vod:views:*'), got {value!r}", attribute)


def _identifier(pattern: re.Pattern[str], what: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
        if not pattern.fullmatch(value):
            raise ValueError(f"must be {what}, got {value!r}", attribute)

    return check


def _channel(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and not value:
        raise ValueError("must not be empty (null turns it off)", attribute)


def _non_empty(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        raise ValueError("must not be empty", attribute)


@attrs.frozen(slots=False)
class ViewsConfig:
    """Where the view counters are in Redis, where they go in SQL, and the pub/sub channels.

    Attributes:
        key_pattern: The application's string counter per VOD (INCR/INCRBY);
            the VOD id is what ``*`` matches.
        table: The SQL table with one row per VOD.
        id_column: Its key column (text ids such as ``vod_123``).
        column: Gets the views added.
        interval: How often the counters are flushed (the seed's ``BATCH_INTERVAL_MS``).
        batch_size: Counter keys per snapshot, and so per SQL transaction.
        channel: Pub/sub channel of ``{"vodId", "count"}`` updates, added to
            the counters the moment they arrive; null turns intake off.
        totals_channel: Where ``{"vodId", "views"}`` is published for each VOD
            a batch changed, after its commit; null turns it off.
        insert_missing: A VOD id with no row: False quarantines its counter
            in the dead-letter list, True inserts the row.
        create_table: Create a minimal table (id text primary key, the views
            column) when it does not exist; a warning names it.
        dead_letter: The Redis list for bad counters and malformed messages.
        inflight_prefix: Namespace of the in-flight snapshots.
        max_count: The largest ``count`` one message may carry; a bigger one
            is dead-lettered rather than trusted.
    """

    key_pattern: str = attrs.field(default="vod:views:*", validator=_key_pattern)
    table: str = attrs.field(
        default="vods", validator=_identifier(_IDENTIFIER, "a SQL table name"))
    id_column: str = attrs.field(
        default="id", validator=_identifier(_COLUMN, "a SQL column name"))
    column: str = attrs.field(
        default="views", validator=_identifier(_COLUMN, "a SQL column name"))
    interval: syncd.Duration = attrs.field(default=syncd.Duration(30), validator=_positive)
    batch_size: int = attrs.field(default=5000, validator=_batch_size)
    channel: str | None = attrs.field(default="view_count_updates", validator=_channel)
    totals_channel: str | None = attrs.field(default="view_count_totals", validator=_channel)
    insert_missing: bool = False
    create_table: bool = True
    dead_letter: str = attrs.field(default="views:dead", validator=_non_empty)
    inflight_prefix: str = attrs.field(default="syncd:inflight:views", validator=_non_empty)
    max_count: int = attrs.field(default=1_000_000, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.id_column == self.column:
            raise ValueError(
                f"id_column and column must differ, both are {self.column!r}",
                attrs.fields(ViewsConfig).column)

    @property
    def head(self) -> str:
        """The part of ``key_pattern`` before the id."""
        return self.key_pattern.split("*")[0]

    @property
    def tail(self) -> str:
        """The part of ``key_pattern`` after the id."""
        return self.key_pattern.split("*")[1]

    def key(self, vod_id: str) -> str:
        """The counter key of a VOD."""
        return f"{self.head}{vod_id}{self.tail}"
