"""Items per second over the last 15 minutes, kept in the daemon's memory.

The status page draws a sparkline from it. A fixed ring of samples of each
plugin's cumulative ``items_synced``, taken by one task every `SAMPLE_EVERY`
seconds (`syncd.observer`): memory and work stay constant however long the
daemon runs, and nothing outside the process is needed.
"""

from __future__ import annotations

import collections
import itertools

import attrs

#: Seconds between two samples.
SAMPLE_EVERY = 5.0
#: Samples kept: 15 minutes' worth.
KEEP = int(15 * 60 / SAMPLE_EVERY) + 1


@attrs.define
class Throughput:
    """A ring of ``(time, items so far)`` samples for one plugin.

    Attributes:
        keep: How many samples are kept (the oldest drop out).
    """

    keep: int = KEEP
    _samples: collections.deque[tuple[float, int]] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._samples = collections.deque(maxlen=self.keep)

    def sample(self, now: float, items: int) -> None:
        """Record the cumulative count ``items`` at ``now`` (monotonic seconds)."""
        self._samples.append((now, items))

    def rates(self) -> list[float]:
        """Items per second between consecutive samples, oldest first."""
        samples = list(self._samples)
        return [
            round(max(0, b_items - a_items) / (b_at - a_at), 3)
            for (a_at, a_items), (b_at, b_items) in itertools.pairwise(samples)
            if b_at > a_at
        ]

    def now(self, now: float, items: int) -> float | None:
        """Items per second lately: since the last sample, or over the last
        interval when that sample is too fresh (under a second) to say much."""
        if not self._samples:
            return None
        at, before = self._samples[-1]
        if now - at >= 1.0:
            return round(max(0, items - before) / (now - at), 3)
        if len(self._samples) < 2:
            return None
        (a_at, a_items), (b_at, b_items) = self._samples[-2], self._samples[-1]
        return round(max(0, b_items - a_items) / (b_at - a_at), 3) if b_at > a_at else None
