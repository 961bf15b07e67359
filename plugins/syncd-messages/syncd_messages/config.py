"""The ``plugins.messages`` config section.

The names the issue and the seed's users know (``queues``, ``writers``,
``table``, ``file_path``, ``webhook_url``, ``webhook_secret``,
``webhook_timeout``, ``batch_size``) are the interface; the rest are
knobs with defaults that rarely need touching.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import attrs

import syncd

#: The writers a message can go to, in the order they are described.
WRITERS = ("database", "file", "webhook")

#: A queue type names a file (``messages_<type>_<date>.jsonl``), a row's
#: ``queue_type`` and an event field (``<type>Processed``): keep it plain.
_QUEUE_TYPE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {value!r}", attribute)


def _queues(instance: object, attribute: attrs.Attribute[Any], value: dict[str, str]) -> None:
    if not value:
        raise ValueError("must name at least one queue type and its Redis list", attribute)
    for queue_type, key in value.items():
        if not _QUEUE_TYPE.match(queue_type):
            raise ValueError(
                f"queue type {queue_type!r}: use letters, digits, _ and - (at most 64)",
                attribute)
        if not key:
            raise ValueError(f"queue type {queue_type!r}: the Redis list name is empty", attribute)
        try:
            syncd.slot_key(key, "writer")
        except ValueError as exc:
            raise ValueError(f"queue type {queue_type!r}: {exc}", attribute) from None
    if len(set(value.values())) != len(value):
        raise ValueError("two queue types name the same Redis list", attribute)


def _writers(instance: object, attribute: attrs.Attribute[Any], value: list[str]) -> None:
    if not value:
        raise ValueError(f"must list at least one of {', '.join(WRITERS)}", attribute)
    for writer in value:
        if writer not in WRITERS:
            raise ValueError(
                f"unknown writer {writer!r} (known: {', '.join(WRITERS)})", attribute)
    if len(set(value)) != len(value):
        raise ValueError("lists a writer twice", attribute)


def _table(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not _TABLE.match(value):
        raise ValueError(
            f"must be a plain SQL identifier (letters, digits, _; at most 63), got {value!r}",
            attribute)


def _secret(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    if secret_bytes(value) is None:
        raise ValueError(
            "must be a Standard Webhooks secret: whsec_ followed by base64 "
            "(at least 16 random bytes), e.g. from `openssl rand -base64 32`", attribute)


def secret_bytes(secret: str) -> bytes | None:
    """The key a ``whsec_<base64>`` secret stands for, or None if it is not one.

    Strict: the signing library itself skips characters that are not base64,
    which would turn a typo into a different, weaker key without a word.
    """
    text = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if len(key) >= 16 else None


@attrs.frozen
class MessagesConfig:
    """How the messages plugin reads its queues and where it writes.

    Attributes:
        queues: Queue type → the Redis list the application LPUSHes to. Any
            number; the type names the files and the rows' ``queue_type``.
        writers: Where every message goes; any non-empty combination of
            ``database``, ``file`` and ``webhook``. Each writer has its own
            Redis list per queue (``{<list>}:writer:<writer>``) and its own
            pace: one that is down keeps its backlog there, the others go on.
        table: The SQL table of the ``database`` writer (created if missing).
        file_path: The directory of the ``file`` writer's daily JSONL files
            (created if missing).
        webhook_url: Where the ``webhook`` writer POSTs each batch.
        webhook_secret: Signs every request (Standard Webhooks), when set.
        webhook_timeout: The longest one request may take, connecting included.
        batch_size: The most messages one batch takes.
        batch_max_wait: A batch closes this long after its first message
            even if it is not full.
        max_item_bytes: Larger items are dead-lettered unread.
        retry_initial: First pause after a writer failed (then doubling,
            with jitter)...
        retry_max: ...up to this. A webhook's ``Retry-After`` is honoured
            up to `RETRY_AFTER_MAX`.
        heartbeat_ttl: A replica silent this long counts as dead; its
            batches are finished by the others.
        block: Longest wait for a first message before looking around again
            (pause, shutdown, orphans).
        create_table: Create the table if it is missing.
    """

    queues: dict[str, str] = attrs.field(
        factory=lambda: {"in": "whatsapp:in", "out": "whatsapp:out"}, validator=_queues)
    writers: list[str] = attrs.field(factory=lambda: ["database"], validator=_writers)
    table: str = attrs.field(default="messages", validator=_table)
    file_path: str = "./data/sync"
    webhook_url: str | None = None
    webhook_secret: syncd.Secret | None = attrs.field(default=None, validator=_secret)
    webhook_timeout: syncd.Duration = attrs.field(
        default=syncd.Duration(10), validator=_positive)
    batch_size: int = attrs.field(default=1000, validator=_positive)
    batch_max_wait: syncd.Duration = syncd.Duration(0.1)
    max_item_bytes: int = attrs.field(default=1 << 20, validator=_positive)
    retry_initial: syncd.Duration = attrs.field(default=syncd.Duration(0.5), validator=_positive)
    retry_max: syncd.Duration = attrs.field(default=syncd.Duration(30), validator=_positive)
    heartbeat_ttl: syncd.Duration = attrs.field(default=syncd.Duration(15), validator=_positive)
    block: syncd.Duration = attrs.field(default=syncd.Duration(1), validator=_positive)
    create_table: bool = True

    def __attrs_post_init__(self) -> None:
        fields = attrs.fields(MessagesConfig)
        if "webhook" in self.writers and not self.webhook_url:
            raise ValueError("is required when writers include webhook", fields.webhook_url)
        if self.webhook_url and not re.match(r"^https?://[^/\s]+", self.webhook_url):
            raise ValueError(
                f"must be an http:// or https:// URL, got {self.webhook_url!r}",
                fields.webhook_url)
        if "file" in self.writers and not self.file_path:
            raise ValueError("is required when writers include file", fields.file_path)
        if self.retry_max < self.retry_initial:
            raise ValueError("must not be less than retry_initial", fields.retry_max)


#: The longest a webhook's ``Retry-After`` is honoured (seconds): a receiver
#: asking for more is asked again after this long.
RETRY_AFTER_MAX = 600.0
