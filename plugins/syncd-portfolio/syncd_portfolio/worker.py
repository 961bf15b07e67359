"""The portfolio worker: BullMQ's queue, Trio's cancel scopes.

The BullMQ port (asyncio) takes jobs, holds their locks, checks for stalled
jobs and moves each job to completed, delayed (retry with backoff) or
failed with BullMQ's own scripts, so npm BullMQ producers, ``getJobCounts``,
``QueueEvents`` and bull-board see a normal queue. What each job *does*
runs as a Trio task in its own cancel scope (``trio_asyncio.trio_as_aio``):

- ``timeout`` really cancels the attempt (its HTTP requests are closed),
  and the attempt is retried with exponential backoff;
- ``DELETE /jobs/:id`` cancels the scope on whichever replica runs the job
  (a pub/sub message every replica listens to); the job fails with reason
  ``cancelled`` and is never retried;
- at shutdown, jobs get until the ``shutdown_grace`` deadline to finish;
  the rest are cancelled and put back in ``wait`` (not failed, not left in
  ``active``).

The port's worker loop runs as an asyncio task, not a Trio one: cancelled
from Trio, its ``finally`` cancels jobs in flight with a ``CancelledError``
nothing catches, and they stay ``active`` (STACK-FACTS.md). So job tasks
live in the trio-asyncio loop, outside the plugin's intake scope, and the
final ``flush`` (shielded, under the grace deadline) is what drains them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

import attrs
import httpx
import trio
import trio_asyncio
from bullmq import DelayedError, Job, UnrecoverableError

import syncd
from syncd_portfolio import bull, jobs, store
from syncd_portfolio.breaker import CircuitBreaker
from syncd_portfolio.config import PortfolioConfig
from syncd_portfolio.metrics import JobMetrics
from syncd_portfolio.provider import NATIVE, EvmProvider, Provider, TokenInfo

#: Seconds kept, out of the shutdown deadline, to put unfinished jobs back in wait.
REQUEUE_RESERVE = 2.0
#: Seconds between two refreshes of this replica's entry in the workers registry.
REGISTRY_EVERY = 2.0
#: How long a cancel request is remembered for a job not (yet) running here.
CANCEL_MEMORY = 600.0
NATIVE_DECIMALS = 18


class JobTimeout(Exception):
    """The attempt ran past ``timeout`` and was cancelled."""


@attrs.define(eq=False)
class ActiveJob:
    """A job attempt running on this replica, and how to stop it."""

    job: Job
    token: str
    scope: trio.CancelScope
    started: float
    reason: str | None = None  # why the scope was cancelled: cancelled | shutdown

    def cancel(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.scope.cancel()


@attrs.define(eq=False)
class PortfolioWorker:
    """The portfolio plugin's worker (see the module docstring)."""

    ctx: syncd.PluginContext
    interval: float | None = None
    metrics: JobMetrics = attrs.field(init=False)
    active: dict[str, ActiveJob] = attrs.Factory(dict)
    breakers: dict[str, CircuitBreaker] = attrs.Factory(dict)
    providers: dict[int, Provider] = attrs.Factory(dict)
    tokens: dict[tuple[int, str], TokenInfo] = attrs.Factory(dict)
    bull_worker: Any = None
    queue: Any = None
    http: httpx.AsyncClient | None = None
    stopping: bool = False
    stopped: bool = False
    paused_here: bool = False
    _cancels: dict[str, float] = attrs.Factory(dict)
    _idle: trio.Event = attrs.Factory(trio.Event)
    _tables: store.Tables = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        cfg = self.config
        self.metrics = JobMetrics.create(self.ctx.metrics)
        self._tables = store.Tables(cfg.jobs_table, cfg.balances_table, cfg.tokens_table)
        self._idle.set()

    @property
    def config(self) -> PortfolioConfig:
        return self.ctx.config

    @property
    def database(self) -> syncd.Database:
        assert self.ctx.database is not None
        return self.ctx.database

    @property
    def cancel_channel(self) -> str:
        return syncd.slot_key(self.config.queue, "cancel")

    @property
    def registry_key(self) -> str:
        return syncd.slot_key(self.config.queue, "syncd-workers")

    def bull_opts(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "connection": bull.connection(self.ctx.redis.url),
            "prefix": cfg.prefix,
            "concurrency": cfg.concurrency,
            "lockDuration": int(float(cfg.lock_duration) * 1000),
            "stalledInterval": int(float(cfg.stalled_interval) * 1000),
            "maxStalledCount": cfg.max_stalled,
            "removeOnComplete": {"count": cfg.keep_completed},
            "removeOnFail": {"count": cfg.keep_failed},
        }

    # -- the Worker protocol -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tables, providers, the BullMQ worker; then listen for cancels until stopped."""
        cfg = self.config
        if cfg.create_tables:
            made = await store.ensure_schema_once(self.database, self._tables)
            if made:
                self.ctx.log.info("created", extra={"tables": ",".join(made)})
        self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=100))
        self._build_providers()
        self.queue = await trio_asyncio.aio_as_trio(self._open_queue)()
        crashed = True
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._listen_cancels)
                self.bull_worker = await trio_asyncio.aio_as_trio(self._start_bull)()
                nursery.start_soon(self._serve_registry)
                nursery.start_soon(self._follow_gate)
                task_status.started()
                self.ctx.log.info("taking jobs", extra={
                    "queue": cfg.queue, "concurrency": cfg.concurrency,
                    "chains": ",".join(map(str, sorted(self.providers))) or "-"})
            crashed = False
        except BaseException as exc:
            crashed = not _only_cancelled(exc)
            raise
        finally:
            self.stopping = True
            if crashed or self.ctx.gate.paused:
                # No final flush will come (a crash, or paused: the core
                # skips it), so stop now: jobs back to wait, worker closed.
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(REQUEUE_RESERVE * 3):
                        await self._stop(trio.current_time())

    async def flush(self) -> syncd.SyncResult:
        """At shutdown: let running jobs finish until the deadline, requeue the rest.

        Jobs are not batched, so outside shutdown there is nothing to flush.
        """
        if not self.stopping or self.stopped:
            return syncd.SyncResult()
        deadline = trio.current_effective_deadline()
        running = len(self.active)
        await self._stop(deadline - min(REQUEUE_RESERVE, max(0.0, deadline -
                                                             trio.current_time()) / 2))
        return syncd.SyncResult(detail={"running_at_stop": running})

    async def backlog(self) -> int:
        """Jobs waiting or running; also refreshes the queue gauges."""
        counts = await trio_asyncio.aio_as_trio(self.queue.getJobCounts)(*bull.STATES)
        for state, n in counts.items():
            self.metrics.queue.labels(self.config.queue, state).set(n)
        return sum(counts.get(s, 0) for s in ("waiting", "prioritized", "delayed", "active"))

    # -- start and stop --------------------------------------------------------------------

    def _build_providers(self) -> None:
        assert self.http is not None
        for chain_id, chain in self.config.chains.items():
            provider = None
            hook = getattr(self.ctx.hook, "portfolio_provider", None) if self.ctx.hook else None
            if hook is not None and chain.provider != "evm":
                provider = hook(chain_id=chain_id, config=chain, client=self.http)
            if provider is None:
                if chain.provider != "evm":
                    raise syncd.ConfigError(f"plugins.portfolio.chains.{chain_id}.provider",
                                            f"no installed package provides {chain.provider!r}")
                provider = EvmProvider(chain_id, chain.rpc_url, self.http,
                                       batch_size=chain.batch_size, timeout=float(chain.timeout))
            self.providers[chain_id] = provider
            self._breaker(provider.endpoint)

    def _breaker(self, endpoint: str) -> CircuitBreaker:
        breaker = self.breakers.get(endpoint)
        if breaker is None:
            cfg = self.config.breaker
            breaker = self.breakers[endpoint] = CircuitBreaker(
                endpoint, cfg.failures, float(cfg.cooldown), on_change=self._circuit_changed)
            self.metrics.circuit_state(endpoint, breaker.state)
        return breaker

    def _circuit_changed(self, endpoint: str, state: str) -> None:
        self.metrics.circuit_state(endpoint, state)
        self.ctx.log.warning("circuit %s", state, extra={"endpoint": endpoint})

    async def _open_queue(self) -> Any:
        return bull.make_queue(self.config.queue, {
            "connection": bull.connection(self.ctx.redis.url), "prefix": self.config.prefix})

    async def _start_bull(self) -> Any:
        worker = await bull.make_worker(
            self.config.queue, self._process, self.bull_opts(), f"syncd-{self.ctx.instance}")
        worker.on("error", self._bull_error)
        worker.run_task = asyncio.ensure_future(worker.run())
        return worker

    def _bull_error(self, error: Any, *args: Any) -> None:
        self.ctx.metrics.error("bullmq")
        self.ctx.log.warning("bullmq worker error", extra={"error": str(error)[:300]})

    async def _stop(self, requeue_at: float) -> None:
        """Stop taking jobs; wait for running ones until ``requeue_at``; requeue the rest."""
        if self.stopped:
            return
        self.stopped = True
        worker = self.bull_worker
        closing = None
        if worker is not None:
            closing = await trio_asyncio.aio_as_trio(self._begin_close)(worker)
        with trio.move_on_at(requeue_at):
            await self._idle.wait()
        for active in list(self.active.values()):
            active.cancel("shutdown")
        with trio.move_on_after(REQUEUE_RESERVE):
            await self._idle.wait()
            if closing is not None:
                await trio_asyncio.aio_as_trio(asyncio.shield)(closing)
        if self.active:
            self.ctx.log.warning("jobs still running at the deadline; they come back "
                                 "through BullMQ's stalled check", extra={
                                     "jobs": ",".join(self.active)})
        with trio.move_on_after(REQUEUE_RESERVE):
            await trio_asyncio.aio_as_trio(self._close_clients)()
        if self.http is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.http.aclose()

    async def _begin_close(self, worker: Any) -> asyncio.Future[Any]:
        # close() stops taking jobs at once and waits for running ones.
        return asyncio.ensure_future(worker.close())

    async def _close_clients(self) -> None:
        if self.queue is not None:
            await self.queue.close()

    async def _follow_gate(self) -> None:
        """Pause and resume this replica's BullMQ worker with the plugin's gate."""
        while True:
            await self.ctx.gate.wait()
            if self.paused_here:
                self.paused_here = False
                self.bull_worker.resume()
                self.ctx.log.info("taking jobs again")
            await self.ctx.gate.wait_paused()
            self.paused_here = True
            # Stops taking jobs now; running ones finish (pause only waits for them).
            await trio_asyncio.aio_as_trio(self.bull_worker.pause)(True)
            self.ctx.log.info("paused: no new jobs on this replica")

    # -- cancel requests from any replica ---------------------------------------------------

    async def _listen_cancels(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Cancel the jobs named on the cancel channel that run here.

        Sync pub/sub in a thread with a short read timeout (a thread is
        never abandoned), so a request reaches its job within half a second.
        """
        channel = self.cancel_channel
        pubsub = self.ctx.redis.client.pubsub(ignore_subscribe_messages=True)
        try:
            await self.ctx.redis.run(lambda client: pubsub.subscribe(channel))
            task_status.started()
            while True:
                message = await self.ctx.redis.run(
                    lambda client: pubsub.get_message(timeout=0.5))
                if message and message.get("type") == "message":
                    self.request_cancel(_text(message["data"]))
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(pubsub.close)

    def request_cancel(self, job_id: str) -> bool:
        """Cancel ``job_id`` if it runs here; remember the request a while if not."""
        now = time.monotonic()
        self._cancels = {k: t for k, t in self._cancels.items() if now - t < CANCEL_MEMORY}
        active = self.active.get(job_id)
        if active is None:
            self._cancels[job_id] = now
            return False
        self.ctx.log.info("cancelling job", extra={"job": job_id})
        active.cancel("cancelled")
        return True

    # -- the workers registry ---------------------------------------------------------------

    async def _serve_registry(self) -> None:
        """Keep this replica's entry (active jobs, breakers) fresh for ``GET /workers``."""
        key = self.registry_key
        field = self.ctx.instance
        try:
            while True:
                entry = json.dumps(self.status(), default=str)
                await self.ctx.redis.run(lambda c, e=entry: c.hset(key, field, e))
                await trio.sleep(REGISTRY_EVERY)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self.ctx.redis.run(lambda c: c.hdel(key, field))

    def status(self) -> dict[str, Any]:
        now = trio.current_time()
        return {
            "instance": self.ctx.instance,
            "kind": "syncd",
            "queue": self.config.queue,
            "concurrency": self.config.concurrency,
            "paused": self.ctx.gate.paused,
            "at": time.time(),
            "active": [
                {"id": a.job.id, "name": a.job.name, "running_seconds": round(now - a.started, 3)}
                for a in self.active.values()
            ],
            "circuits": [b.status() for b in self.breakers.values()],
        }

    # -- one job --------------------------------------------------------------------------

    async def _process(self, job: Job, token: str) -> Any:
        """The port calls this (asyncio) for each job; the work runs as a Trio task."""
        return await trio_asyncio.trio_as_aio(self.run_job)(job, token)

    async def run_job(self, job: Job, token: str) -> Any:
        """One attempt of ``job``, in its own cancel scope.

        Whatever the outcome, it is written to ``portfolio_jobs`` before
        BullMQ is told; a last failure also goes to the dead letters.
        """
        cfg = self.config
        self._apply_defaults(job)
        attempt = job.attemptsMade + 1
        started = time.perf_counter()
        active = ActiveJob(job, token, trio.CancelScope(), trio.current_time())
        self.active[job.id] = active
        self._idle = trio.Event() if len(self.active) == 1 else self._idle
        self.metrics.active.set(len(self.active))
        self.metrics.attempts.labels(job.name).inc()
        if job.id in self._cancels:
            active.cancel("cancelled")
        outcome = "completed"
        try:
            if job.stalledCounter > await self._stalls_seen(job):
                # It ran before and its worker died: retry it with its backoff,
                # not at once as BullMQ's stalled check would.
                outcome = "requeued"
                await self._delay_stalled(job, token)
                raise DelayedError()
            try:
                parsed = jobs.parse(job.name, job.data, max_wallets=cfg.max_wallets,
                                    max_users=cfg.max_users)
            except jobs.BadJob as exc:
                outcome = "failed"
                await self._finish_failed(job, attempt, str(exc), final=True)
                raise UnrecoverableError(str(exc)) from None
            result = None
            active.scope.deadline = active.started + float(cfg.timeout)
            error: BaseException | None = None
            with active.scope:
                try:
                    result = await self._handle(job, parsed)
                except jobs.BadJob as exc:
                    outcome = "failed"
                    await self._finish_failed(job, attempt, str(exc), final=True)
                    raise UnrecoverableError(str(exc)) from None
                except Exception as exc:  # provider, circuit, backend, or a bug: retried
                    error = exc
            if active.scope.cancelled_caught:
                if active.reason == "cancelled":
                    outcome = "cancelled"
                    self.metrics.cancellations.labels(job.name).inc()
                    await self._finish_failed(job, attempt, "cancelled", final=True,
                                              dead_letter=False)
                    raise UnrecoverableError("cancelled")
                if active.reason == "shutdown":
                    outcome = "requeued"
                    await trio_asyncio.aio_as_trio(bull.move_to_wait)(
                        self.bull_worker, job, token)
                    await self._record(job, "waiting", attempts=job.attemptsMade)
                    raise DelayedError()
                self.metrics.timeouts.labels(job.name).inc()
                error = JobTimeout(f"timed out after {float(cfg.timeout):g}s "
                                   f"(attempt {attempt} of {job.opts['attempts']})")
            if error is not None:
                final = attempt >= int(job.opts.get("attempts") or 1)
                outcome = "failed" if final else "retried"
                if not final:
                    self.metrics.retries.labels(job.name).inc()
                await self._finish_failed(job, attempt, _reason(error), final=final)
                raise error
            await self._record(job, "completed", attempts=attempt, returnvalue=result,
                               finished=True)
            return result
        finally:
            del self.active[job.id]
            self.metrics.active.set(len(self.active))
            if not self.active:
                self._idle.set()
            self.metrics.jobs.labels(cfg.queue, job.name, outcome).inc()
            self.metrics.duration.labels(job.name, outcome).observe(
                time.perf_counter() - started)

    def _apply_defaults(self, job: Job) -> None:
        """The seed's attempts and backoff for jobs enqueued without them.

        The port reads ``job.opts`` in memory when the attempt fails, so the
        defaults must be there before the first failure.
        """
        cfg = self.config
        if not job.opts.get("attempts"):
            job.opts["attempts"] = cfg.attempts
        if not job.opts.get("backoff"):
            job.opts["backoff"] = {"type": "exponential", "delay": int(float(cfg.backoff) * 1000)}

    async def _stalls_seen(self, job: Job) -> int:
        if not job.stalledCounter:
            return 0
        key = f"{self.config.prefix}:{self.config.queue}:{job.id}"
        seen = await self.ctx.redis.run(lambda c: c.hget(key, "syncdStalls"))
        return int(seen or 0)

    async def _delay_stalled(self, job: Job, token: str) -> None:
        cfg = self.config
        key = f"{cfg.prefix}:{cfg.queue}:{job.id}"
        await self.ctx.redis.run(lambda c: c.hset(key, "syncdStalls", job.stalledCounter))
        delay = float(cfg.backoff) * 2 ** max(0, job.attemptsMade)
        until = bull.now_ms() + int(delay * 1000)
        await trio_asyncio.aio_as_trio(job.moveToDelayed)(until, token)
        self.ctx.log.info("stalled job retried with backoff", extra={
            "job": job.id, "in_seconds": round(delay, 3)})
        await self._record(job, "delayed", attempts=job.attemptsMade,
                           failed_reason="stalled (its worker stopped answering)")

    async def _finish_failed(self, job: Job, attempt: int, reason: str, *, final: bool,
                             dead_letter: bool = True) -> None:
        if final and dead_letter:
            letter = syncd.DeadLetter(
                self.config.dead_letter_key,
                json.dumps({"id": job.id, "name": job.name, "data": job.data,
                            "opts": _plain_opts(job.opts), "attemptsMade": attempt},
                           separators=(",", ":"), default=str),
                reason, self.ctx.name, source=self.config.queue)
            await syncd.push_dead_letters(self.ctx.redis, [letter])
            self.ctx.report(syncd.SyncResult(dead_lettered=1), None)
        self.ctx.log.info("job failed" if final else "job attempt failed; retrying", extra={
            "job": job.id, "name": job.name, "attempt": attempt, "reason": reason[:300]})
        await self._record(job, "failed" if final else "delayed", attempts=attempt,
                           failed_reason=reason, finished=final)

    async def _record(self, job: Job, state: str, *, attempts: int,
                      failed_reason: str | None = None, returnvalue: Any = None,
                      finished: bool = False) -> None:
        record = store.JobRecord(
            self.config.queue, job.id, job.name, job.data, state, attempts, failed_reason,
            returnvalue, job.timestamp, job.processedOn or bull.now_ms(),
            bull.now_ms() if finished else None)
        table = self.config.jobs_table
        await self.database.transaction(lambda tx: store.record_jobs(tx, table, [record]))

    # -- what jobs do --------------------------------------------------------------------------

    async def _handle(self, job: Job, parsed: jobs.Parsed) -> Any:
        if isinstance(parsed, jobs.UserSync):
            return await self.sync_user(parsed)
        if isinstance(parsed, jobs.BulkSync):
            return await self._fan_out(job, parsed)
        return await self._token_metadata(parsed.chain_id, parsed.tokens)

    def provider(self, chain_id: int) -> Provider:
        provider = self.providers.get(chain_id)
        if provider is None:
            raise jobs.BadJob(f"chain {chain_id} is not configured (plugins.portfolio.chains)")
        return provider

    async def sync_user(self, user: jobs.UserSync) -> dict[str, Any]:
        """Read every wallet of the user, chain by chain in parallel; write all in one go."""
        rows: list[store.BalanceRow] = []
        blocks: dict[int, int] = {}
        for chain in user.chains():
            self.provider(chain)  # an unconfigured chain is bad input: fail before any call

        async def one_chain(chain: int) -> None:
            wallets = [w.address for w in user.wallets if w.chain_id == chain]
            tokens = list(user.tokens.get(chain, ()))
            infos = await self._token_metadata_cached(chain, tokens)
            provider = self.provider(chain)
            async with self._breaker(provider.endpoint).guard():
                snapshot = await provider.snapshot(wallets, tokens)
            blocks[chain] = snapshot.block
            for (wallet, token), balance in snapshot.balances.items():
                decimals = NATIVE_DECIMALS if token == NATIVE else infos[token].decimals
                rows.append(store.BalanceRow(user.user_id, chain, wallet, token, balance,
                                             decimals, snapshot.block))

        async with trio.open_nursery() as nursery:
            for chain in user.chains():
                nursery.start_soon(one_chain, chain)
        table = self.config.balances_table
        written = await self.database.transaction(
            lambda tx: store.upsert_balances(tx, table, rows))
        return {"userId": user.user_id, "balances": len(rows), "written": written,
                "blocks": {str(k): v for k, v in sorted(blocks.items())}}

    async def _token_metadata_cached(self, chain: int, tokens: list[str]) -> dict[
            str, TokenInfo]:
        missing = [t for t in tokens if (chain, t) not in self.tokens]
        if missing:
            await self._token_metadata(chain, tuple(missing))
        return {t: self.tokens[(chain, t)] for t in tokens}

    async def _token_metadata(self, chain: int, tokens: tuple[str, ...]) -> dict[str, Any]:
        provider = self.provider(chain)
        async with self._breaker(provider.endpoint).guard():
            found = await provider.token_metadata(list(tokens))
        table = self.config.tokens_table
        await self.database.transaction(
            lambda tx: store.upsert_tokens(tx, table, chain, found.values()))
        for token, info in found.items():
            self.tokens[(chain, token)] = info
        return {"chainId": chain, "tokens": [attrs.asdict(i) for i in found.values()]}

    async def _fan_out(self, job: Job, bulk: jobs.BulkSync) -> dict[str, Any]:
        """One ``portfolio-sync`` child per user, with ids derived from the parent's,
        so a retried or re-run fan-out adds nobody twice."""
        children = [{
            "name": jobs.PORTFOLIO_SYNC,
            "data": dict(user),
            "opts": {"jobId": f"{job.id}-u{i}", "priority": job.priority or 0,
                     "attempts": job.opts.get("attempts"), "backoff": job.opts.get("backoff")},
        } for i, user in enumerate(bulk.users)]
        await self.enqueue_bulk(children)
        return {"children": [c["opts"]["jobId"] for c in children]}

    async def enqueue_bulk(self, entries: list[dict[str, Any]]) -> list[Any]:
        return await trio_asyncio.aio_as_trio(self.queue.addBulk)(entries)

    # -- retry (POST /jobs/:id/retry, and the dead-letter requeue) --------------------------

    async def retry(self, job_id: str, letter: syncd.DeadLetter | None = None) -> dict[str, Any]:
        """Bring a failed job back to ``wait`` with fresh attempts; drop its dead letters.

        The one way back for a failed job, for ``POST /jobs/:id/retry`` and
        for a dead-letter requeue (which passes the dead letter: a job that
        BullMQ has trimmed from its failed set is then enqueued again from
        it, under its old id).

        Raises:
            LookupError: no such job, and no dead letter to rebuild it from.
            NotRetryable: the job exists but has not failed.
        """
        job = await trio_asyncio.aio_as_trio(Job.fromId)(self.queue, job_id)
        if job is not None:
            state = await trio_asyncio.aio_as_trio(job.getState)()
            if state != "failed":
                raise NotRetryable(f"job {job_id} is {state}, not failed")
            await trio_asyncio.aio_as_trio(job.retry)(
                "failed", {"resetAttemptsMade": True, "resetAttemptsStarted": True})
        else:
            if letter is None:
                letter = await self._find_dead_letter(job_id)
            if letter is None:
                raise LookupError(f"no job {job_id!r}")
            doc = json.loads(letter.payload_bytes)
            opts = {**doc.get("opts", {}), "jobId": job_id}
            job = (await self.enqueue_bulk([{"name": doc["name"], "data": doc["data"],
                                             "opts": opts}]))[0]
        await self._drop_dead_letters(job_id)
        await self._record(job, "waiting", attempts=0)
        self.ctx.log.info("job retried", extra={"job": job_id})
        return {"id": job_id, "name": job.name, "state": "waiting"}

    async def _dead_letters(self) -> list[tuple[bytes, dict[str, Any]]]:
        key = self.config.dead_letter_key
        raw = await self.ctx.redis.run(lambda c: c.lrange(key, 0, -1))
        found = []
        for item in raw:
            try:
                letter = syncd.DeadLetter.decode(key, item)
                found.append((item, json.loads(letter.payload_bytes)))
            except (ValueError, KeyError):
                continue
        return found

    async def _find_dead_letter(self, job_id: str) -> syncd.DeadLetter | None:
        key = self.config.dead_letter_key
        for raw, doc in reversed(await self._dead_letters()):
            if doc.get("id") == job_id:
                return syncd.DeadLetter.decode(key, raw)
        return None

    async def _drop_dead_letters(self, job_id: str) -> None:
        key = self.config.dead_letter_key
        mine = [raw for raw, doc in await self._dead_letters() if doc.get("id") == job_id]

        def drop(client: Any) -> None:
            with client.pipeline(transaction=True) as pipe:
                for raw in mine:
                    pipe.lrem(key, 0, raw)
                pipe.execute()

        if mine:
            await self.ctx.redis.run(drop)


class NotRetryable(Exception):
    """The job exists but is not in the failed state."""


def _reason(error: BaseException) -> str:
    text = str(error)
    return text if text else type(error).__name__


def _plain_opts(opts: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("attempts", "backoff", "priority", "delay", "jobId")
    return {k: opts[k] for k in keep if k in opts and opts[k] is not None}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancelled(e) for e in exc.exceptions)
    return False


