"""From a raw queue item to the message every writer receives, or the reason it cannot be one.

Pure functions, no I/O. A message is a JSON object; the bytes that reach the
writers are decided once, here, when the item is taken from its queue, so the
database row, the file line and the webhook body carry identical bytes:

- a JSON object is kept as the application wrote it (key order, spacing,
  big numbers), only line breaks between its tokens become spaces, so that
  it is one line of a JSONL file;
- anything else that is text (plain text, or JSON that is not an object) is
  wrapped, as the seed did: ``{"text": ..., "queueType": ..., "receivedAt": ...}``;
- an empty item, one over the size limit, or bytes that are not UTF-8
  cannot be a message: dead-lettered with the reason.

Each message then travels through Redis in an envelope, ``<ms since epoch>``
TAB ``<message>``: the time syncd took it, so every writer's backlog can
tell the age of its oldest message. The envelope never reaches a writer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import attrs
import orjson

_LINE_BREAKS = (b"\n", b"\r")


@attrs.frozen
class Normalized:
    """One batch sorted out.

    Attributes:
        messages: The envelopes for the writers, in queue order.
        rejected: ``(position in the batch, reason)`` of every item that is
            not a message.
        wrapped: How many of the messages were raw text, wrapped.
    """

    messages: list[bytes]
    rejected: list[tuple[int, str]]
    wrapped: int


def normalize_batch(
    items: Sequence[bytes], *, queue_type: str, max_bytes: int, now: datetime | None = None,
    envelope: bool = True, unparsed: bool = False,
) -> Normalized:
    """Turn a batch of raw items into envelopes and rejections (see the module).

    ``envelope=False``: bare messages, for a writer that takes the batch
    straight from the intake (nothing goes back to Redis, so nothing needs
    an age), sparing it an envelope made only to be opened again.

    ``unparsed=True``: an item that looks like a one-line JSON object
    (ASCII, ``{`` first, ``}`` last, no line break) is taken as one without
    parsing it: for a writer that parses every message itself and refuses
    the whole batch if one is no JSON (PostgreSQL's JSONB). That writer
    must then have the batch normalized again without this, where such an
    item is raw text and wrapped. Parsing is half of this function's time.
    """
    now = now or datetime.now(UTC)
    received_at = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    prefix = b"%d\t" % int(now.timestamp() * 1000) if envelope else b""
    messages: list[bytes] = []
    rejected: list[tuple[int, str]] = []
    wrapped = 0
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    append = messages.append
    for position, raw in enumerate(items):
        if len(raw) > max_bytes:
            rejected.append((position, f"item of {len(raw)} bytes is over max_item_bytes "
                                       f"({max_bytes})"))
            continue
        if (unparsed and raw[:1] == b"{" and raw[-1:] == b"}" and raw.isascii()
                and b"\n" not in raw and b"\r" not in raw):
            append(prefix + raw)
            continue
        # The usual message: a JSON object on one line, parsed in C (the
        # checks of `_one_line` inline: this loop runs for every message).
        # What does not start with a brace is no object, whatever else it
        # is: wrapped without a parse (a failed one raises an exception
        # built in Python, ~1 µs).
        if raw[:1] == b"{" or raw.lstrip()[:1] == b"{":
            try:
                doc = loads(raw)
            except decode_error:
                doc = _not_parsed
        else:
            doc = _not_parsed
        if type(doc) is dict:
            if b"\n" in raw or b"\r" in raw or raw[:1] != b"{" or raw[-1:] != b"}":
                raw = _one_line(raw)
            append(prefix + raw)
            continue
        body = _slow_path(raw, doc, queue_type, received_at)
        if isinstance(body, str):
            rejected.append((position, body))
            continue
        if body is not raw:
            wrapped += 1
        messages.append(prefix + (_one_line(raw) if body is raw else body))
    return Normalized(messages, rejected, wrapped)


_not_parsed = object()


def _slow_path(raw: bytes, doc: object, queue_type: str, received_at: str) -> bytes | str:
    """``raw`` itself (a JSON object orjson would not take), the wrapped text,
    or the reason it is no message (a str)."""
    if not raw.strip():
        return "empty item"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8: {exc.reason} at byte {exc.start}"
    if doc is _not_parsed and text.lstrip().startswith("{"):
        # orjson refuses integers beyond 64 bits and lone surrogate escapes,
        # which are still JSON; the standard library takes them (a database
        # may refuse the latter: that writer then dead-letters it alone).
        try:
            parsed = json.loads(text, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            parsed = None
        if type(parsed) is dict:
            return raw
    return orjson.dumps({"text": text, "queueType": queue_type, "receivedAt": received_at})


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _one_line(raw: bytes) -> bytes:
    """The JSON object as one line. Inside JSON strings line breaks are
    escaped (a raw one makes the document invalid), so any left are
    whitespace between tokens, and a space does the same job."""
    if b"\n" in raw or b"\r" in raw:
        raw = raw.replace(b"\r", b" ").replace(b"\n", b" ")
    if raw[:1] != b"{" or raw[-1:] != b"}":
        raw = raw.strip()
    return raw


def envelope(message: bytes, taken_ms: int) -> bytes:
    return b"%d\t" % taken_ms + message


def open_envelope(item: bytes) -> tuple[int | None, bytes]:
    """``(ms since epoch when taken, message)``; a bare message (put back by
    hand, or by a dead-letter requeue) has no time."""
    if item[:1] == b"{":
        return None, item
    head, tab, message = item.partition(b"\t")
    if not tab or not head.isdigit():
        return None, item
    return int(head), message


def messages_of(items: Sequence[bytes]) -> list[bytes]:
    """The messages of a writer's batch, envelopes opened."""
    out = []
    for item in items:
        tab = item.find(b"\t")
        out.append(item[tab + 1:] if 0 < tab < 20 and item[:1] != b"{" else item)
    return out
