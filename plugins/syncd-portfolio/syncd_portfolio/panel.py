"""The portfolio plugin's panel on syncd's status page (``syncd_status_panel``).

What an operator looks at first when jobs pile up: the queue's jobs by
BullMQ state (queue-wide, as ``getJobCounts`` counts them, Node workers'
jobs included), the jobs running on this replica and for how long, each
provider endpoint's circuit, and whether this replica or the whole queue is
paused, with the buttons that pause or resume it. Data only: the core's page
renders every cell as text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
import trio_asyncio

import syncd
from syncd_portfolio import bull

if TYPE_CHECKING:
    from syncd_portfolio.worker import PortfolioWorker

#: Longest the panel waits for Redis before it shows what it has.
READ_TIMEOUT = 5.0
#: Running jobs listed, longest-running first.
MAX_ACTIVE_ROWS = 50


async def build_panel(worker: PortfolioWorker) -> syncd.Panel:
    """Build the panel from Redis (counts, queue pause) and this replica's state."""
    cfg = worker.config
    counts: dict[str, int] | None = None
    queue_paused: bool | None = None
    queue = worker.queue  # None until the worker has started
    with trio.move_on_after(READ_TIMEOUT):
        if queue is not None:
            counts = await trio_asyncio.aio_as_trio(queue.getJobCounts)(*bull.STATES)
            queue_paused = bool(await trio_asyncio.aio_as_trio(queue.isPaused)())
    replica_paused = worker.ctx.gate.paused

    state_rows = ([[state, int(counts.get(state, 0))] for state in bull.STATES]
                  if counts is not None else [])
    now = trio.current_time()
    running = sorted(worker.active.values(), key=lambda a: a.started)[:MAX_ACTIVE_ROWS]
    active_rows = [[a.job.id, a.job.name, a.job.attemptsMade + 1,
                    round(now - a.started, 1), "running" if a.working else "finishing"]
                   for a in running]
    circuit_rows = [[b.name, b.state, b.consecutive] for b in worker.breakers.values()]

    if replica_paused:
        pause_action = syncd.Action("resume this replica", "/workers/resume")
    else:
        pause_action = syncd.Action("pause this replica", "/workers/pause",
                                    confirm="Stop taking jobs on this replica?")
    if queue_paused:
        queue_action = syncd.Action("resume the queue", "/workers/resume?scope=queue")
    else:
        queue_action = syncd.Action(
            "pause the queue", "/workers/pause?scope=queue",
            confirm=f"Pause queue {cfg.queue} for every worker, Node ones included?")

    paused = "paused" if replica_paused else "taking jobs"
    whole = {True: "paused", False: "not paused", None: "unknown (Redis did not answer)"}
    return syncd.Panel(
        title=f"Portfolio jobs: queue {cfg.queue}",
        note=(f"this replica ({worker.ctx.instance}): {paused}, "
              f"{len(worker.active)} of {cfg.concurrency} slots busy; "
              f"queue: {whole[queue_paused]}"),
        tables=[
            syncd.Table(title="Jobs by state (whole queue)", columns=["state", "jobs"],
                        rows=state_rows, empty="Redis did not answer in time"),
            syncd.Table(title="Running on this replica",
                        columns=["job", "name", "attempt", "seconds", "status"],
                        rows=active_rows, empty="no job running here"),
            syncd.Table(title="Circuit breakers",
                        columns=["endpoint", "state", "consecutive failures"],
                        rows=circuit_rows, empty="no provider configured"),
        ],
        actions=[pause_action, queue_action],
    )
