"""Turning one raw queue item into a row, or into the reason it cannot be one.

Pure functions, no I/O: the worker calls `parse_batch` once per batch on the
Trio thread. Everything here is deterministic given the item and ``now``, so
a batch replayed after a crash sorts items into rows and dead letters exactly
as the first attempt did (only a missing timestamp depends on ``now``, and a
replay never re-inserts rows the ledger says were committed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import attrs

from syncd_votes.config import VOTE_MAX, VOTER_ID_MAX

_EPOCH = datetime(1970, 1, 1)
#: Epoch numbers at or above this are milliseconds: 1e11 s is the year 5138,
#: 1e11 ms is 1973.
_MS_THRESHOLD = 1e11
#: The range every supported database stores in a DATETIME/TIMESTAMP column
#: (MySQL's DATETIME is the narrowest: years 1000 to 9999).
_MIN_YEAR = 1000


class Invalid(Exception):
    """The item cannot become a vote; ``str(exc)`` is the reason for the dead letter."""


class Vote(NamedTuple):
    """A validated vote: also the row, in `syncd_votes.schema.COLUMNS` order.

    A NamedTuple rather than an attrs class: one is built per item, and a
    frozen attrs instance costs as much to build as parsing the JSON.

    Attributes:
        vote: The choice, 1-10 characters.
        voter_id: Who voted, 1-255 characters.
        timestamp: When, in UTC, naive, whole seconds (the column is DATETIME).
    """

    vote: str
    voter_id: str
    timestamp: datetime


@attrs.frozen
class Parsed:
    """One batch sorted out: rows to insert and items to dead-letter.

    Attributes:
        votes: ``(position in the batch, vote)`` for every valid item.
        invalid: ``(position in the batch, reason)`` for every invalid one.
    """

    votes: list[tuple[int, Vote]]
    invalid: list[tuple[int, str]]


def parse_batch(
    items: Sequence[bytes],
    *,
    now: datetime,
    allowed: Collection[str] | None = None,
    max_bytes: int = 65536,
) -> Parsed:
    """Validate every item of a batch; positions are indexes into ``items``."""
    votes: list[tuple[int, Vote]] = []
    invalid: list[tuple[int, str]] = []
    for position, raw in enumerate(items):
        try:
            votes.append((position, parse_vote(raw, now=now, allowed=allowed, max_bytes=max_bytes)))
        except Invalid as exc:
            invalid.append((position, str(exc)))
    return Parsed(votes, invalid)


def parse_vote(
    raw: bytes,
    *,
    now: datetime,
    allowed: Collection[str] | None = None,
    max_bytes: int = 65536,
) -> Vote:
    """``{"vote": ..., "voter_id": ..., "timestamp": ...}`` → `Vote`, or raise `Invalid`.

    ``now`` (naive UTC) stands in for a missing or null timestamp: the seed
    stamped votes with the time it consumed them. Unknown extra fields are
    ignored, as an application adding a field must not stop the queue.
    """
    if len(raw) > max_bytes:
        raise Invalid(f"item is {len(raw)} bytes, more than max_item_bytes ({max_bytes})")
    doc = _load(raw)
    if type(doc) is not dict:
        raise Invalid(f"not a JSON object (got {_kind(doc)})")
    vote = _text(doc, "vote", VOTE_MAX)
    if allowed is not None and vote not in allowed:
        raise Invalid(f"vote {vote!r} is not one of allowed_votes")
    return Vote(vote, _text(doc, "voter_id", VOTER_ID_MAX),
                parse_timestamp(doc.get("timestamp"), now))


def _load(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Invalid(f"not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise Invalid(f"not JSON: {exc.msg} at char {exc.pos}") from None
    except RecursionError:
        raise Invalid("not JSON we accept: nested too deeply") from None
    except ValueError as exc:  # NaN / Infinity
        raise Invalid(f"not JSON we accept: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


# One decoder for all items: json.loads(..., parse_constant=...) would build a
# new one per call, which costs more than parsing a vote.
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def _text(doc: dict[str, Any], field: str, limit: int) -> str:
    # Runs twice per vote: the common case costs a few attribute lookups.
    value = doc.get(field)
    if type(value) is not str:
        if field not in doc:
            raise Invalid(f"missing field {field!r}")
        raise Invalid(f"field {field!r} must be a string, got {_kind(value)}")
    if not value or value.isspace():
        raise Invalid(f"field {field!r} is empty")
    if len(value) > limit:
        raise Invalid(f"field {field!r} is {len(value)} characters, more than {limit}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # JSON may spell a lone surrogate (\ud800); no database can store it.
            raise Invalid(f"field {field!r} is not valid Unicode (lone surrogate)") from None
    return value


def parse_timestamp(value: Any, now: datetime) -> datetime:
    """ISO 8601 text, or epoch seconds/milliseconds, as naive UTC whole seconds.

    ISO text without an offset is taken as UTC. A number is epoch seconds,
    or milliseconds when it is 1e11 or more. Missing (None) means ``now``.
    """
    kind = type(value)  # exact types: a bool is not an epoch
    if kind is str:
        when = _from_iso(value)
    elif kind is int or kind is float:
        when = _from_epoch(value)
    elif value is None:
        when = now
    else:
        raise Invalid(
            f"field 'timestamp' must be ISO 8601 text or epoch seconds, got {_kind(value)}"
        )
    # The upper end (9999-12-31) is datetime's own.
    if when.year < _MIN_YEAR:
        raise Invalid(f"field 'timestamp' is out of range (years 1000-9999): {when.isoformat()}")
    return when.replace(microsecond=0) if when.microsecond else when


def _from_epoch(value: float) -> datetime:
    if not math.isfinite(value):
        raise Invalid("field 'timestamp' is not a finite number")
    millis = abs(value) >= _MS_THRESHOLD
    try:
        # Whole seconds, rounded down; integers stay exact (floats lose
        # precision past 2**53).
        if type(value) is int:
            seconds = value // 1000 if millis else value
        else:
            seconds = math.floor(value / 1000 if millis else value)
        return _EPOCH + timedelta(seconds=seconds)
    except OverflowError:
        raise Invalid(f"field 'timestamp' is out of range: {value!r}") from None


def _from_iso(value: str) -> datetime:
    if len(value) > 64:
        raise Invalid(f"field 'timestamp' is not ISO 8601 ({len(value)} characters)")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise Invalid(f"field 'timestamp' is not ISO 8601: {value!r}") from None
    if when.tzinfo is not None:
        try:
            when = when.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:
            raise Invalid(f"field 'timestamp' is out of range: {value!r}") from None
    return when


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)
