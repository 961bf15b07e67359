"""Interop with BullMQ's Redis layout, through the Python port (asyncio).

Everything here runs in asyncio context (called through
``trio_asyncio.aio_as_trio``). It holds the workarounds a trial of the
port found necessary (STACK-FACTS.md):

- a connection *dict* with ``socket_timeout: None``: redis-py's default
  5 s socket timeout equals BullMQ's 5 s blocking wait, so pick-up stalled
  and ``close()`` could hang;
- the worker's Redis client name in npm BullMQ's form,
  ``bull:<base64(queue)>:w:<name>``, so Node's ``getWorkers()`` sees it;
- BullMQ's own ``moveJobFromActiveToWait`` script (shipped with the port,
  not wrapped by it) to put a job we stop at shutdown back in ``wait``.
"""

from __future__ import annotations

import base64
import importlib.resources
import time
from typing import Any
from urllib.parse import unquote, urlsplit

from bullmq import Job, Queue, Worker

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


async def make_worker(queue: str, processor: Any, opts: dict[str, Any], name: str) -> Worker:
    """Build (not start) a worker, named so that Node's ``getWorkers()`` lists it.

    Must be called in asyncio context: the port's constructor touches the loop.
    """
    worker = Worker(queue, processor, {**opts, "autorun": False})
    client_name = worker_client_name(opts.get("prefix", "bull"), queue, name)
    worker.clientName = client_name
    await worker.backend.setName(client_name)
    worker._client_name_set = True  # else run() renames it to the port's form
    text = (importlib.resources.files("bullmq") / "commands" /
            "moveJobFromActiveToWait-9.lua").read_text()
    worker.move_to_wait = worker.client.register_script(text)
    return worker


async def move_to_wait(worker: Worker, job: Job, token: str) -> int:
    """Put an active job we hold back in ``wait`` (or prioritized), lock released.

    Nothing is counted against its attempts; the processor must raise
    ``DelayedError`` afterwards so the worker does not also finish it.
    """
    keys = worker.keys
    return await worker.move_to_wait(
        keys=[keys["active"], keys["wait"], keys["stalled"], keys["paused"], keys["meta"],
              keys["limiter"], keys["prioritized"], keys["marker"], keys["events"]],
        args=[job.id, token, keys[""] + job.id],
    )


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


def now_ms() -> int:
    return round(time.time() * 1000)
