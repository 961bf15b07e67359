"""A dead-lettered job back in its BullMQ queue, as a few plain Redis writes.

The core's dead-letter requeue (issue 15) asks a plugin, through a pure hook,
for the writes that put an item back, and runs them in one Lua script with
removing the dead letter: each item ends either still a dead letter or back
at its source, never both. For a BullMQ job those writes create a *new*
job, exactly as BullMQ's ``addStandardJob``/``addPrioritizedJob`` scripts
store one (its hash, then the wait list or the prioritized set, then the
queue's marker so that blocked workers wake), under the id
``<old id>-r<when it was dead-lettered, ms>``: deterministic, so a replayed
requeue writes the same job again; new, so the old failed job stays in
BullMQ's failed set as its history (moving it out of there takes BullMQ's
own retry, ``POST /jobs/:id/retry``, which the hook's vocabulary has no
word for). Fresh attempts; same name, data, priority, attempts and backoff.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from syncd_portfolio.config import PortfolioConfig

#: BullMQ's prioritized score: priority in the high 32 bits, an order within it below.
PRIORITY_SHIFT = 0x100000000


def restore_writes(config: PortfolioConfig, payload: bytes, at: float,
                   make: Callable[..., Any]) -> list[Any]:
    """The writes that enqueue the dead-lettered job ``payload`` again.

    ``make(op, key, *args)`` builds one write (``syncd.Restore``'s
    constructors once the core has them: ``hset``, ``lpush``, ``zadd``).

    Raises:
        ValueError: the payload is not a job this plugin dead-lettered.
    """
    doc = json.loads(payload)
    if not isinstance(doc, dict) or not {"id", "name", "data"} <= set(doc):
        raise ValueError("not a portfolio job (no id, name and data)")
    stamp = round(at * 1000)
    job_id = f"{doc['id']}-r{stamp}"
    opts = {k: v for k, v in (doc.get("opts") or {}).items()
            if k in ("attempts", "backoff", "priority")}
    priority = int(opts.get("priority") or 0)
    base = f"{config.prefix}:{config.queue}:"
    writes = [
        make("hset", base + job_id, field, value) for field, value in (
            ("name", str(doc["name"])),
            ("data", json.dumps(doc["data"], separators=(",", ":"))),
            ("opts", json.dumps(opts, separators=(",", ":"))),
            ("timestamp", str(stamp)),
            ("delay", "0"),
            ("priority", str(priority)),
        )
    ]
    if priority:
        writes.append(make("zadd", base + "prioritized",
                           priority * PRIORITY_SHIFT + stamp % PRIORITY_SHIFT, job_id))
    else:
        writes.append(make("lpush", base + "wait", job_id))
    writes.append(make("zadd", base + "marker", 0, "0"))
    return writes
