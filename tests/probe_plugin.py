"""A throwaway plugin that drives the core's tests (never shipped).

It does what the supervisor needs to be tested against: batches at a steady
pace, crashes on demand, counts its starts, batches and flushes in Redis
under the test's prefix (and flushes begun, before their delay), can make
its final flush slow, and says when it is parked at a closed pause gate.
"""

from __future__ import annotations

import attrs
import trio

import syncd


@attrs.frozen
class ProbeConfig:
    """Attributes:
    key: Redis key prefix for the counters this plugin keeps.
    tick: Pause between batches.
    interval: Flush timer (0 = none).
    crash_every: Raise after every n-th batch (0 = never).
    fail_start: Raise before recovery is done.
    flush_delay: Seconds a flush takes (to test the shutdown deadline).
    """

    key: str = "probe"
    tick: syncd.Duration = syncd.Duration(0.01)
    interval: syncd.Duration = syncd.Duration(0)
    crash_every: int = 0
    fail_start: bool = False
    flush_delay: syncd.Duration = syncd.Duration(0)


@attrs.define
class ProbeWorker:
    ctx: syncd.PluginContext
    batches: int = 0
    #: True while it waits at a paused gate: no batch can start until resume.
    parked: bool = False

    @property
    def interval(self) -> float | None:
        return float(self.ctx.config.interval) or None

    async def _incr(self, what: str) -> int:
        key = f"{self.ctx.config.key}:{what}"
        return await self.ctx.redis.run(lambda r: r.incr(key))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._incr("starts")
        if self.ctx.config.fail_start:
            raise RuntimeError("probe failed to start")
        task_status.started()
        while True:
            # Read and acted on with no checkpoint between: True means it blocks.
            self.parked = self.ctx.gate.paused
            await self.ctx.gate.wait()
            self.parked = False
            self.batches += 1
            await self._incr("batches")
            self.ctx.report(syncd.SyncResult(items=2, batches=1), 0.001)
            if self.ctx.config.crash_every and self.batches % self.ctx.config.crash_every == 0:
                raise RuntimeError(f"probe crashed after batch {self.batches}")
            await trio.sleep(self.ctx.config.tick)

    async def flush(self) -> syncd.SyncResult:
        await self._incr("flushes_begun")
        if self.ctx.config.flush_delay:
            await trio.sleep(self.ctx.config.flush_delay)
        flushes = await self._incr("flushes")
        return syncd.SyncResult(items=1, batches=1, detail={"flushes": flushes})

    async def backlog(self) -> int:
        return 7


@syncd.hookimpl
def syncd_plugin() -> syncd.PluginSpec:
    return syncd.PluginSpec(
        name="probe", config=ProbeConfig, create=ProbeWorker,
        description="test plugin", uses_database=False,
    )
