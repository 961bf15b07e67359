"""The daemon's eyes: throughput history and dead-letter gauges, one small task.

Every `SAMPLE_EVERY` seconds it samples each plugin's items synced into its
`Throughput` ring (the status page's sparkline); every `DEAD_LETTERS_EVERY`
seconds it counts each plugin's dead letters and reads the oldest one's
time: one LLEN and one LINDEX per list in one round trip, whatever the
lists hold. The age gauge is computed at scrape time from that timestamp, so
it is exact between refreshes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs
import trio

from syncd.errors import TransientError
from syncd.logs import get_logger
from syncd.throughput import SAMPLE_EVERY

if TYPE_CHECKING:
    from syncd.metrics import Metrics
    from syncd.quarantine import Quarantine
    from syncd.supervisor import PluginRunner

log = get_logger("observer")

#: Seconds between two dead-letter counts (one round trip per plugin: cheap).
DEAD_LETTERS_EVERY = 5.0


@attrs.define(eq=False)
class Observer:
    """Samples throughput and refreshes the dead-letter gauges (see the module docstring)."""

    runners: Mapping[str, PluginRunner]
    quarantines: Mapping[str, Quarantine]
    metrics: Metrics
    sample_every: float = SAMPLE_EVERY
    dead_letters_every: float = DEAD_LETTERS_EVERY
    _oldest: dict[str, float | None] = attrs.Factory(dict)

    def __attrs_post_init__(self) -> None:
        for name in self.quarantines:
            self.metrics.dead_letters.labels(name).set(0)
            self.metrics.dead_letter_oldest_age.labels(name).set_function(
                lambda name=name: self._age(name))

    def _age(self, name: str) -> float:
        oldest = self._oldest.get(name)
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        next_count = trio.current_time()
        while True:
            now = trio.current_time()
            for runner in self.runners.values():
                runner.throughput.sample(now, runner.items_synced)
            if now >= next_count:
                next_count = now + self.dead_letters_every
                for name in self.quarantines:
                    await self.refresh(name)
            await trio.sleep(self.sample_every)

    async def refresh(self, name: str) -> None:
        """Count ``name``'s dead letters now (also right after a requeue or purge)."""
        quarantine = self.quarantines.get(name)
        if quarantine is None:
            return
        try:
            stats = await quarantine.stats()
        except TransientError as exc:
            log.debug("dead letters not counted", extra={"plugin": name, "error": str(exc)})
            return
        self._oldest[name] = stats.oldest_at
        self.metrics.dead_letters.labels(name).set(stats.waiting)
        runner = self.runners.get(name)
        if runner is not None:
            runner.dead_letters = stats
