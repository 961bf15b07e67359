"""The seed's HTTP API on syncd's control plane.

::

    POST   /jobs                 {"name", "data", "priority"?, "delay"?, "attempts"?} -> 201
    GET    /jobs/<id>            BullMQ's view of the job (or its durable record)
    DELETE /jobs/<id>            remove a waiting/delayed job; cancel an active one anywhere
    POST   /jobs/<id>/retry      a failed job back to wait, fresh attempts
    GET    /workers              every worker of the queue (Node ones too), breakers, active jobs
    POST   /workers/pause        this replica (``?scope=queue``: BullMQ's queue-wide pause)
    POST   /workers/resume

The control plane asks for the bearer token on every method but GET; bad
bodies get 400 with the reason, unknown ids 404, never a traceback.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import trio
import trio_asyncio
from bullmq import Job
from quart import request

import syncd
from syncd_portfolio import bull, jobs

if TYPE_CHECKING:
    from syncd_portfolio.worker import PortfolioWorker

MAX_ATTEMPTS = 100
#: How long DELETE waits to see an active job end before answering.
CANCEL_WAIT = 3.0


def _error(status: int, message: str) -> tuple[dict[str, Any], int]:
    return {"error": message, "status": status}, status


async def _body() -> dict[str, Any] | tuple[dict[str, Any], int]:
    raw = await request.get_data()
    try:
        body = json.loads(raw or b"null")
    except ValueError as exc:
        return _error(400, f"the body is not JSON: {exc}")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    return body


def job_options(body: dict[str, Any], worker: PortfolioWorker) -> dict[str, Any]:
    """BullMQ options from a ``POST /jobs`` body; `jobs.BadJob` says what is wrong."""
    unknown = set(body) - {"name", "data", "priority", "delay", "attempts"}
    if unknown:
        raise jobs.BadJob(f"unknown field(s): {', '.join(sorted(unknown))}")
    cfg = worker.config
    opts: dict[str, Any] = {
        "attempts": cfg.attempts,
        "backoff": {"type": "exponential", "delay": int(float(cfg.backoff) * 1000)},
    }
    if body.get("priority") is not None:
        opts["priority"] = jobs.priority(body["priority"])
    if body.get("delay") is not None:
        try:
            opts["delay"] = int(float(syncd.Duration.parse(body["delay"])) * 1000)
        except ValueError as exc:
            raise jobs.BadJob(f"delay: {exc}") from None
    if body.get("attempts") is not None:
        attempts = body["attempts"]
        if isinstance(attempts, bool) or not isinstance(attempts, int) or not (
                1 <= attempts <= MAX_ATTEMPTS):
            raise jobs.BadJob(f"attempts must be an integer from 1 to {MAX_ATTEMPTS}, "
                              f"got {attempts!r}")
        opts["attempts"] = attempts
    return opts


def routes(worker: PortfolioWorker) -> list[syncd.Route]:
    aio = trio_asyncio.aio_as_trio

    async def find(job_id: str) -> Job | None:
        return await aio(Job.fromId)(worker.queue, job_id)

    async def create() -> Any:
        body = await _body()
        if isinstance(body, tuple):
            return body
        name = body.get("name")
        if not isinstance(name, str):
            return _error(400, f"name must be one of {', '.join(jobs.NAMES)}")
        try:
            opts = job_options(body, worker)
            jobs.parse(name, body.get("data"), max_wallets=worker.config.max_wallets,
                       max_users=worker.config.max_users)
        except jobs.BadJob as exc:
            return _error(400, str(exc))
        job = await aio(worker.queue.add)(name, body.get("data"), opts)
        state = await aio(job.getState)()
        return {"id": job.id, "name": name, "state": state}, 201

    async def show(job_id: str) -> Any:
        job = await find(job_id)
        if job is None:
            record = await worker_record(job_id)
            if record is None:
                return _error(404, f"no job {job_id!r}")
            return record
        state = await aio(job.getState)()
        return bull.job_view(job, state)

    async def worker_record(job_id: str) -> dict[str, Any] | None:
        """A job BullMQ has trimmed, from ``portfolio_jobs``."""
        cfg = worker.config
        rows = await worker.database.fetchall(
            f"SELECT id, name, data, state, attempts, failed_reason, returnvalue, created_at,"
            f" started_at, finished_at FROM {cfg.jobs_table} WHERE queue = %s AND id = %s",
            (cfg.queue, job_id))
        if not rows:
            return None
        (id_, name, data, state, attempts, reason, value, created, started, finished) = rows[0]
        return {"id": id_, "name": name, "data": data, "state": state, "attemptsMade": attempts,
                "failedReason": reason, "progress": None, "returnvalue": value,
                "timestamp": _ms(created), "processedOn": _ms(started),
                "finishedOn": _ms(finished), "source": "portfolio_jobs"}

    async def delete(job_id: str) -> Any:
        job = await find(job_id)
        if job is None:
            return _error(404, f"no job {job_id!r}")
        state = await aio(job.getState)()
        if state in ("waiting", "prioritized", "delayed", "waiting-children", "paused"):
            try:
                await aio(job.remove)()
            except Exception:  # locked: it became active meanwhile
                state = "active"
            else:
                await worker.record(job, "removed", attempts=job.attemptsMade)
                return {"id": job_id, "name": job.name, "state": "removed"}
        if state != "active":
            return _error(409, f"job {job_id} is {state}; only waiting, delayed or active "
                               "jobs can be cancelled")
        # Every replica listens; the one running it cancels its scope.
        channel = worker.cancel_channel
        await worker.ctx.redis.run(lambda c: c.publish(channel, job_id))
        worker.request_cancel(job_id)
        with trio.move_on_after(CANCEL_WAIT):
            while state == "active":
                await trio.sleep(0.05)
                state = await aio(job.getState)()
        return {"id": job_id, "name": job.name,
                "state": state if state != "active" else "cancelling"}

    async def retry(job_id: str) -> Any:
        from syncd_portfolio.worker import NotRetryable

        try:
            return await worker.retry(job_id)
        except LookupError as exc:
            return _error(404, str(exc))
        except NotRetryable as exc:
            return _error(409, str(exc))

    async def workers() -> Any:
        return await list_workers(worker)

    async def pause() -> Any:
        if request.args.get("scope") == "queue":
            await aio(worker.queue.pause)()
            return {"scope": "queue", "queue": worker.config.queue, "paused": True}
        worker.ctx.gate.pause()
        return {"scope": "replica", "instance": worker.ctx.instance, "paused": True}

    async def resume() -> Any:
        if request.args.get("scope") == "queue":
            await aio(worker.queue.resume)()
            return {"scope": "queue", "queue": worker.config.queue, "paused": False}
        worker.ctx.gate.resume()
        return {"scope": "replica", "instance": worker.ctx.instance, "paused": False}

    return [
        syncd.Route("/jobs", create, ("POST",)),
        syncd.Route("/jobs/<job_id>", show, ("GET",)),
        syncd.Route("/jobs/<job_id>", delete, ("DELETE",)),
        syncd.Route("/jobs/<job_id>/retry", retry, ("POST",)),
        syncd.Route("/workers", workers, ("GET",)),
        syncd.Route("/workers/pause", pause, ("POST",)),
        syncd.Route("/workers/resume", resume, ("POST",)),
    ]


async def list_workers(worker: PortfolioWorker) -> dict[str, Any]:
    """Every client BullMQ would call a worker of this queue, and syncd's replicas' details."""
    cfg = worker.config
    stems = bull.node_client_names(cfg.prefix, cfg.queue)
    key = worker.registry_key

    # Workers' connections are on the node that holds BullMQ's keys.
    clients = await worker.bull_redis.run(lambda client: client.client_list())
    registry = await worker.ctx.redis.run(lambda client: client.hgetall(key))
    found = []
    for c in clients:
        name = c.get("name") or ""
        if name in stems[:2] or name.startswith(stems[2]):
            found.append({"name": name, "addr": c.get("addr"), "age": int(c.get("age", 0)),
                          "idle": int(c.get("idle", 0)),
                          "worker": name[len(stems[2]):] if name.startswith(stems[2]) else None})
    replicas = []
    now = trio_now()
    for raw in registry.values():
        entry = json.loads(raw)
        if now - float(entry.get("at", 0)) < 15:
            replicas.append(entry)
    return {"queue": cfg.queue, "workers": found, "syncd": replicas,
            "this": worker.status()}


def trio_now() -> float:
    import time

    return time.time()


def _ms(value: Any) -> int | None:
    return int(value.timestamp() * 1000) if value is not None else None
