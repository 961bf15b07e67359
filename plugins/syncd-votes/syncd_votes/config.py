"""The ``plugins.votes`` config section."""

from __future__ import annotations

import re
from typing import Any

import attrs

import syncd

#: The schema's column widths (VARCHAR(10), VARCHAR(255)).
VOTE_MAX = 10
VOTER_ID_MAX = 255

_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {value!r}", attribute)


def _table_name(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not _TABLE.match(value):
        raise ValueError(
            f"must be a plain SQL identifier (letters, digits, _; at most 63), got {value!r}",
            attribute,
        )


def _non_empty(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        raise ValueError("must not be empty", attribute)


def _lanes(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 1 <= value <= 16:
        raise ValueError(f"must be between 1 and 16, got {value!r}", attribute)


def _allowed(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not value:
        raise ValueError("must list at least one vote, or be left out", attribute)
    for vote in value:
        if not vote or len(vote) > VOTE_MAX:
            raise ValueError(
                f"every vote must be 1 to {VOTE_MAX} characters (the column's width), "
                f"got {vote!r}",
                attribute,
            )


@attrs.frozen
class VotesConfig:
    """How the votes plugin reads its queue and where it writes.

    Attributes:
        queue: The Redis list the application LPUSHes votes onto.
        table: The SQL table the votes go to (created if missing).
        dead_letter: The Redis list invalid or rejected votes go to, with the reason.
        batch_size: A batch closes once it holds this many votes...
        batch_max_wait: ...or this long after its first vote arrived.
        allowed_votes: If set, only these vote values are accepted; anything
            else is dead-lettered. Unset: any 1-10 character string.
        max_item_bytes: Items larger than this are dead-lettered unparsed (a
            vote is well under 1 KiB; this stops a runaway producer's
            megabyte blobs from being parsed and written to SQL).
        heartbeat_ttl: A consumer silent this long counts as dead, and the
            batch it held is reclaimed by a live replica.
        lanes: Batches this instance works on at once, each through its own
            processing list (``<instance>``, ``<instance>#1``, ...). Two let
            one batch be validated while another commits; 1 commits batches
            strictly in queue order.
        block: Longest wait for the first vote of a batch before looking
            around again (for orphaned batches, pause, shutdown).
        create_table: Create the table (and its indexes) if it is missing.
        max_vote_labels: Distinct ``vote`` label values kept on
            ``votes_processed_total``; further values are counted under
            ``_other`` so a producer cannot blow up the metric's cardinality.
    """

    queue: str = attrs.field(default="votes", validator=_non_empty)
    table: str = attrs.field(default="votes", validator=_table_name)
    dead_letter: str = attrs.field(default="votes:dead", validator=_non_empty)
    batch_size: int = attrs.field(default=500, validator=_positive)
    batch_max_wait: syncd.Duration = syncd.Duration(0.1)
    allowed_votes: list[str] | None = attrs.field(default=None, validator=_allowed)
    max_item_bytes: int = attrs.field(default=65536, validator=_positive)
    heartbeat_ttl: syncd.Duration = attrs.field(default=syncd.Duration(15), validator=_positive)
    block: syncd.Duration = attrs.field(default=syncd.Duration(1), validator=_positive)
    lanes: int = attrs.field(default=2, validator=_lanes)
    create_table: bool = True
    max_vote_labels: int = attrs.field(default=100, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.dead_letter == self.queue:
            raise ValueError(
                "must differ from queue (a dead-lettered vote would come straight back)",
                attrs.fields(VotesConfig).dead_letter,
            )
