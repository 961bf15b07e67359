"""The Python port's ``Queue`` (asyncio, through trio-asyncio) for the HTTP API,
and the names BullMQ gives things.

The port's queue-side API (add, getState, remove, retry, getJobCounts,
pause) is used as it is, through ``trio_asyncio.aio_as_trio``, with a
connection *dict* whose ``socket_timeout`` is None: redis-py's default 5 s
timeout cut BullMQ's blocking waits short in a trial (STACK-FACTS.md). The
worker side is syncd's own (`syncd_portfolio.protocol`): its blocking
connection is named as npm BullMQ names its workers,
``bull:<base64(queue)>:w:<name>``, because Node's ``getWorkers()`` finds
workers by client name and the port's ``bull:<queue>`` is invisible to it.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import unquote, urlsplit

from bullmq import Job, Queue

#: BullMQ's job states, as ``getState`` names them.
STATES = ("waiting", "prioritized", "delayed", "active", "completed", "failed",
          "waiting-children")


def connection(url: str) -> dict[str, Any]:
    """redis-py keyword arguments for ``url``, with no socket timeout."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"BullMQ needs a redis:// or rediss:// URL, got {parts.scheme}://")
    options: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": parts.port or 6379,
        "db": int((parts.path or "/0").strip("/") or 0),
        "password": unquote(parts.password) if parts.password else None,
        "username": unquote(parts.username) if parts.username else None,
        # BullMQ blocks up to 10 s in BZPOPMIN; a shorter socket timeout
        # breaks that wait (and close()) instead of bounding it.
        "socket_timeout": None,
        "socket_connect_timeout": 5,
    }
    if parts.scheme == "rediss":
        options["ssl"] = True
    return options


def worker_client_name(prefix: str, queue: str, name: str) -> str:
    """The client name npm BullMQ's ``getWorkers()`` recognises."""
    encoded = base64.b64encode(queue.encode()).decode()
    return f"{prefix}:{encoded}:w:{name}"


def node_client_names(prefix: str, queue: str) -> tuple[str, str, str]:
    """Client-name stems of the queue's workers: Node's base64 form, and the port's own."""
    encoded = base64.b64encode(queue.encode()).decode()
    return f"{prefix}:{encoded}", f"{prefix}:{queue}", f"{prefix}:{encoded}:w:"


def make_queue(queue: str, opts: dict[str, Any]) -> Queue:
    return Queue(queue, opts)


def job_view(job: Job, state: str) -> dict[str, Any]:
    """A job as ``GET /jobs/:id`` shows it (BullMQ's names and fields)."""
    return {
        "id": job.id,
        "name": job.name,
        "data": job.data,
        "state": state,
        "priority": job.priority,
        "attemptsMade": job.attemptsMade,
        "attempts": job.opts.get("attempts"),
        "failedReason": job.failedReason or None,
        "progress": job.progress,
        "returnvalue": job.returnvalue,
        "timestamp": job.timestamp,
        "processedOn": job.processedOn or None,
        "finishedOn": job.finishedOn or None,
        "delay": job.delay,
    }


