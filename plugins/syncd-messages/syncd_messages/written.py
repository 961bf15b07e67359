"""What a writer did with one batch."""

from __future__ import annotations

import attrs


@attrs.frozen
class Written:
    """One batch through one writer.

    Attributes:
        delivered: Messages that reached the sink through this call.
        skipped: Messages found there already (a batch replayed after a crash).
        refused: ``(position, reason)`` of each message this sink refused
            for good: dead-lettered for this writer only, the rest went on.
    """

    delivered: int
    skipped: int = 0
    refused: list[tuple[int, str]] = attrs.Factory(list)
