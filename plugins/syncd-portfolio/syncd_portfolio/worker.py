"""The portfolio worker: BullMQ's queue, Trio's cancel scopes.

Jobs are taken from a BullMQ queue with BullMQ's own Lua scripts (see
`syncd_portfolio.protocol`), so npm BullMQ producers, ``getJobCounts``,
``QueueEvents``, ``getWorkers`` and bull-board see a normal queue and a
normal worker. Each job then runs as a Trio task in its own cancel scope:

- ``timeout`` really cancels the attempt (its HTTP requests are closed),
  and the attempt is retried with exponential backoff;
- ``DELETE /jobs/:id`` cancels the scope on whichever replica runs the job
  (a pub/sub message every replica listens to); the job fails with reason
  ``cancelled`` and is never retried;
- at shutdown, intake stops, running jobs get until the shutdown deadline
  (less a reserve) to finish, and the rest are cancelled and put back in
  ``wait``: not failed, not left in ``active``.

Redis work goes through sync redis-py in worker threads, batched: one
thread hop takes as many jobs as there are free slots; a job's slot is free
again as soon as its work is done, while its outcome goes, with the
outcomes of other jobs, into one ``portfolio_jobs`` commit and one BullMQ
pipeline (`syncd_portfolio.outcomes`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

import attrs
import httpx
import redis
import trio
import trio_asyncio
from bullmq import Job

import syncd
from syncd_portfolio import bull, jobs, store
from syncd_portfolio.breaker import CircuitBreaker
from syncd_portfolio.config import PortfolioConfig
from syncd_portfolio.metrics import JobMetrics
from syncd_portfolio.outcomes import Outcomes
from syncd_portfolio.protocol import Op, Protocol, backoff_ms, error_of, now_ms
from syncd_portfolio.provider import NATIVE, EvmProvider, Provider, TokenInfo

#: Seconds kept, out of the shutdown deadline, to put unfinished jobs back in wait.
REQUEUE_RESERVE = 2.0
#: Longest blocking wait for a job, in a thread: bounds how late a stop is noticed.
BLOCK = 1.0
#: Seconds between two refreshes of this replica's entry in the workers registry.
REGISTRY_EVERY = 2.0
#: How long a cancel request is remembered for a job not (yet) running here.
CANCEL_MEMORY = 600.0
NATIVE_DECIMALS = 18


class JobTimeout(Exception):
    """The attempt ran past ``timeout`` and was cancelled."""


class Requeued(Exception):
    """Internal: the job went back to wait or delayed without an attempt counted."""


@attrs.define(eq=False)
class ActiveJob:
    """A job attempt running on this replica, and how to stop it."""

    job: Job
    scope: trio.CancelScope
    started: float
    reason: str | None = None  # why the scope was cancelled: cancelled | shutdown
    working: bool = True  # False once its work is done and only its outcome is on its way

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
    protocol: Protocol = attrs.field(init=False)
    active: dict[str, ActiveJob] = attrs.Factory(dict)
    breakers: dict[str, CircuitBreaker] = attrs.Factory(dict)
    providers: dict[int, Provider] = attrs.Factory(dict)
    tokens: dict[tuple[int, str], TokenInfo] = attrs.Factory(dict)
    queue: Any = None
    http: httpx.AsyncClient | None = None
    worker_id: str = attrs.Factory(lambda: uuid.uuid4().hex)
    stopping: bool = False
    taking: bool = False  # False while paused (or before start): no job will be taken
    _cancels: dict[str, float] = attrs.Factory(dict)
    _idle: trio.Event = attrs.Factory(trio.Event)
    _slot: trio.Event = attrs.Factory(trio.Event)
    _jobs_done: trio.Event = attrs.Factory(trio.Event)
    _tokens_made: int = 0
    _working: int = 0
    _tables: store.Tables = attrs.field(init=False)
    _outcomes: Outcomes = attrs.field(init=False)
    #: Where BullMQ's keys live: ``ctx.redis``, or on a cluster the master of their slot.
    bull_redis: syncd.RedisHandle = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        cfg = self.config
        self.metrics = JobMetrics.create(self.ctx.metrics)
        self._tables = store.Tables(cfg.jobs_table, cfg.balances_table, cfg.tokens_table)
        self._idle.set()
        self.protocol = Protocol(cfg.queue, cfg.prefix, int(float(cfg.lock_duration) * 1000))
        self.bull_redis = self.ctx.redis
        self._outcomes = Outcomes(self.database, cfg.jobs_table, self.bull_redis, self.protocol)

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

    @property
    def client_name(self) -> str:
        """How npm BullMQ's ``getWorkers()`` will name this replica's worker."""
        return bull.worker_client_name(self.config.prefix, self.config.queue,
                                       f"syncd-{self.ctx.instance}")

    # -- the Worker protocol -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tables, providers; then take jobs until stopped, and stop gracefully.

        Jobs run in a nursery shielded from the intake's cancellation: when
        the daemon stops the plugin, intake ends at once, and running jobs
        get until the shutdown deadline to finish (`_drain`).
        """
        cfg = self.config
        if cfg.create_tables:
            made = await store.ensure_schema_once(self.database, self._tables)
            if made:
                self.ctx.log.info("created", extra={"tables": ",".join(made)})
        # On a cluster, BullMQ's keys (one hash tag) live on one master: the
        # port and the scripts talk to it as to a single Redis. A failover or
        # resharding fails this run as Redis unavailable; the next one finds
        # the slot's new master.
        self.bull_redis = await self.ctx.redis.node_for(self.protocol.keys["wait"])
        self._outcomes.redis = self.bull_redis
        self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=100))
        blocking = self._blocking_client()
        try:
            self._build_providers()
            self.queue = await trio_asyncio.aio_as_trio(self._open_queue)()
            async with trio.open_nursery() as intake:
                running = await intake.start(self._hold_jobs)
                try:
                    await intake.start(self._listen_cancels)
                    # Named as npm BullMQ names its workers: getWorkers() lists it.
                    await trio.to_thread.run_sync(blocking.ping)
                    intake.start_soon(self._serve_registry)
                    intake.start_soon(self._check_stalled)
                    task_status.started()
                    self.ctx.log.info("taking jobs", extra={
                        "queue": cfg.queue, "concurrency": cfg.concurrency,
                        "chains": ",".join(map(str, sorted(self.providers))) or "-"})
                    await self._take_jobs(running, blocking)
                finally:
                    self.stopping = True
                    if self.ctx.stop_deadline is not None:
                        deadline = self.ctx.stop_deadline()
                    else:
                        deadline = trio.current_time() + 2 * REQUEUE_RESERVE
                    with trio.CancelScope(shield=True, deadline=deadline):
                        await self._drain(deadline)
                    self._jobs_done.set()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(REQUEUE_RESERVE):
                await self._close(blocking)

    async def _hold_jobs(
        self, *, task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The nursery jobs run in, shielded from the intake's cancellation.

        It closes once `run` has drained it (``_jobs_done``); the lock renewer
        lives here too, since a job that keeps running must keep its lock.
        """
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as running:
                running.start_soon(self._renew_locks)
                task_status.started(running)
                await self._jobs_done.wait()
                running.cancel_scope.cancel()

    async def flush(self) -> syncd.SyncResult:
        """Jobs are not batched: there is nothing pending to flush (``run`` drains)."""
        return syncd.SyncResult()

    async def backlog(self) -> int:
        """Jobs waiting or running; also refreshes the queue gauges."""
        try:
            counts = await trio_asyncio.aio_as_trio(self.queue.getJobCounts)(*bull.STATES)
        except (redis.RedisError, OSError) as exc:
            raise syncd.RedisUnavailable(f"redis: {exc}") from exc
        for state, n in counts.items():
            self.metrics.queue.labels(self.config.queue, state).set(n)
        return sum(counts.get(s, 0) for s in ("waiting", "prioritized", "delayed", "active"))

    # -- start and stop --------------------------------------------------------------------

    def _blocking_client(self) -> redis.Redis:
        """One connection for the blocking wait on the queue's marker, named for getWorkers()."""
        pool_kwargs = self.bull_redis.client.connection_pool.connection_kwargs
        kwargs = {k: v for k, v in pool_kwargs.items()
                  if k in ("host", "port", "db", "username", "password", "path")}
        return redis.Redis(**kwargs, client_name=self.client_name,
                           socket_timeout=BLOCK + 10, socket_connect_timeout=5,
                           single_connection_client=True)

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
        # The port's Queue, for the HTTP API (add, getState, remove, retry, counts).
        return bull.make_queue(self.config.queue, {
            "connection": bull.connection(self.bull_redis.url), "prefix": self.config.prefix})

    async def _drain(self, deadline: float) -> None:
        """Let running jobs finish until shortly before ``deadline``; requeue the rest."""
        if self.active:
            self.ctx.log.info("stopping: waiting for running jobs", extra={
                "jobs": len(self.active),
                "seconds": round(max(0.0, deadline - trio.current_time()), 3)})
        reserve = min(REQUEUE_RESERVE, max(0.0, deadline - trio.current_time()) / 2)
        with trio.move_on_at(deadline - reserve):
            await self._idle.wait()
        for active in list(self.active.values()):
            active.cancel("shutdown")
        with trio.move_on_at(deadline):
            await self._idle.wait()
        if self.active:
            self.ctx.log.warning("jobs still running at the deadline; they come back "
                                 "through BullMQ's stalled check", extra={
                                     "jobs": ",".join(self.active)})

    async def _close(self, blocking: redis.Redis) -> None:
        await trio.to_thread.run_sync(blocking.close)
        if self.queue is not None:
            await trio_asyncio.aio_as_trio(self.queue.close)()
        if self.http is not None:
            await self.http.aclose()

    # -- taking jobs ----------------------------------------------------------------------

    async def _take_jobs(self, running: trio.Nursery, blocking: redis.Redis) -> None:
        """Take up to the free slots' worth of jobs per round trip; block briefly when none."""
        cfg = self.config
        marker = self.protocol.keys["marker"]
        while True:
            if self.ctx.gate.paused:
                self.taking = False
                self.ctx.log.info("paused: taking no jobs on this replica")
                await self.ctx.gate.wait()
                self.ctx.log.info("taking jobs again")
            self.taking = True
            while self._working >= cfg.concurrency:
                self._slot = trio.Event()
                await self._slot.wait()
            free = cfg.concurrency - self._working
            tokens = [self._token() for _ in range(free)]
            ops = [self.protocol.move_to_active(token) for token in tokens]
            results = await self.bull_redis.run(self.protocol.run, ops)
            taken, delay_until = 0, 0
            for token, raw in zip(tokens, results, strict=True):
                if isinstance(raw, Exception):
                    raise raw
                job, until = self.protocol.parse_active(raw, token)
                delay_until = until or delay_until
                if job is not None:
                    taken += 1
                    self._start(running, job)
            if taken:
                continue
            block = BLOCK
            if delay_until:
                block = min(BLOCK, max(0.001, (delay_until - now_ms()) / 1000))
            # Wait for a new job's marker (or the next delayed job's time).
            try:
                await trio.to_thread.run_sync(blocking.bzpopmin, marker, block)
            except (redis.ConnectionError, redis.TimeoutError, OSError,
                    # On a cluster: the slot moved away from this node.
                    redis.exceptions.AskError, redis.exceptions.ReadOnlyError) as exc:
                raise syncd.RedisUnavailable(f"redis: {exc}") from exc

    def _token(self) -> str:
        self._tokens_made += 1
        return f"{self.worker_id}:{self._tokens_made}"

    def _start(self, running: trio.Nursery, job: Job) -> None:
        active = ActiveJob(job, trio.CancelScope(), trio.current_time())
        if not self.active:
            self._idle = trio.Event()
        self.active[job.id] = active
        self._working += 1
        self.metrics.active.set(len(self.active))
        if job.id in self._cancels:
            active.cancel("cancelled")
        running.start_soon(self.run_job, active)

    def _done_working(self, active: ActiveJob) -> None:
        """The job's work is over: its slot takes the next job while the outcome
        is committed and told to BullMQ, in a round with other jobs' outcomes."""
        if active.working:
            active.working = False
            self._working -= 1
            self._slot.set()

    def _ended(self, active: ActiveJob) -> None:
        self._done_working(active)
        # A run that lost its lock (this replica was frozen) may end after
        # this replica took the same job again: the entry is the new run's.
        if self.active.get(active.job.id) is active:
            del self.active[active.job.id]
        self.metrics.active.set(len(self.active))
        if not self.active:
            self._idle.set()

    async def _renew_locks(self) -> None:
        """Keep the locks of running jobs, as BullMQ's workers do, every half lock."""
        every = float(self.config.lock_duration) / 2
        while True:
            await trio.sleep(every)
            running = [a.job for a in self.active.values()]
            if not running:
                continue
            try:
                [lost] = await self.bull_redis.run(
                    self.protocol.run, [self.protocol.extend_locks(running)])
            except syncd.TransientError as exc:
                self.ctx.log.warning("could not renew job locks", extra={"error": str(exc)})
                continue
            if lost:
                self.ctx.log.warning("job locks lost (another worker may take them)",
                                     extra={"jobs": ",".join(map(str, lost))[:300]})

    async def _check_stalled(self) -> None:
        """BullMQ's stalled check: jobs of dead workers back to wait (one replica per interval)."""
        cfg = self.config
        interval_ms = int(float(cfg.stalled_interval) * 1000)
        while True:
            op = self.protocol.stalled_check(cfg.max_stalled, interval_ms)
            try:
                [moved] = await self.bull_redis.run(self.protocol.run, [op])
            except syncd.TransientError as exc:
                self.ctx.log.warning("stalled check failed", extra={"error": str(exc)})
            else:
                if isinstance(moved, list) and moved:
                    self.ctx.log.info("stalled jobs back to wait", extra={
                        "jobs": ",".join(str(_text(m)) for m in moved)[:300]})
            await trio.sleep(float(cfg.stalled_interval))

    # -- cancel requests from any replica ---------------------------------------------------

    async def _listen_cancels(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Cancel the jobs named on the cancel channel that run here.

        Sync pub/sub in a thread with a short read timeout (a thread is
        never abandoned), so a request reaches its job within half a second.
        """
        channel = self.cancel_channel
        # A plain SUBSCRIBE on one node: a cluster's PUBLISH reaches every node.
        pubsub = self.bull_redis.client.pubsub(ignore_subscribe_messages=True)
        try:
            await self.bull_redis.run(lambda client: pubsub.subscribe(channel))
            task_status.started()
            while True:
                message = await self.bull_redis.run(
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
            "client_name": self.client_name,
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

    async def run_job(self, active: ActiveJob) -> None:
        """One attempt of a job, in its own cancel scope, then BullMQ is told how it ended.

        The outcome is in ``portfolio_jobs`` before BullMQ hears of it; a last
        failure is also in the dead letters.
        """
        cfg = self.config
        job = active.job
        self._apply_defaults(job)
        attempt = job.attemptsMade + 1
        started = time.perf_counter()
        self.metrics.attempt_started(job.name)
        outcome = "failed"
        try:
            outcome = await self._attempt(active, attempt)
        except syncd.TransientError as exc:
            # Redis or PostgreSQL went away while finishing: the lock expires
            # and BullMQ's stalled check gives the job back.
            self.ctx.log.warning("could not finish a job; it comes back when its lock "
                                 "expires", extra={"job": job.id, "error": str(exc)})
        except Exception:
            self.ctx.log.exception("job runner failed", extra={"job": job.id})
        finally:
            self._ended(active)
            self.metrics.attempt_ended(cfg.queue, job.name, outcome,
                                       time.perf_counter() - started)

    async def _attempt(self, active: ActiveJob, attempt: int) -> str:
        """Run the attempt and finish it in BullMQ; return the outcome's name."""
        cfg = self.config
        job = active.job
        if job.stalledCounter > await self._stalls_seen(job):
            # It ran before and its worker died: retry it with its backoff,
            # not at once as BullMQ's stalled check did.
            await self._delay_stalled(active)
            return "requeued"
        if active.reason == "cancelled":  # asked before it started
            await self._fail(active, attempt, "cancelled", dead_letter=False)
            self.metrics.cancellations.labels(job.name).inc()
            return "cancelled"
        try:
            parsed = jobs.parse(job.name, job.data, max_wallets=cfg.max_wallets,
                                max_users=cfg.max_users)
        except jobs.BadJob as exc:
            await self._fail(active, attempt, str(exc))
            return "failed"
        active.scope.deadline = active.started + float(cfg.timeout)
        result: Any = None
        error: BaseException | None = None
        bad: str | None = None
        with active.scope:
            try:
                result = await self._handle(job, parsed)
            except Exception as exc:  # provider, circuit, backend, or a bug: retried
                bad_input = _bad_input(exc)
                if bad_input is not None:
                    bad = str(bad_input)
                else:
                    error = exc
        self._done_working(active)
        if bad is not None:
            await self._fail(active, attempt, bad)
            return "failed"
        if active.scope.cancelled_caught:
            if active.reason == "cancelled":
                self.metrics.cancellations.labels(job.name).inc()
                await self._fail(active, attempt, "cancelled", dead_letter=False)
                return "cancelled"
            if active.reason == "shutdown":
                await self._finish(active, self.protocol.back_to_wait(job),
                                   self._outcome(job, "waiting", attempts=job.attemptsMade))
                return "requeued"
            self.metrics.timeouts.labels(job.name).inc()
            error = JobTimeout(f"timed out after {float(cfg.timeout):g}s "
                               f"(attempt {attempt} of {job.attempts})")
        if error is not None:
            reason = _reason(error)
            if attempt < job.attempts:
                self.metrics.retries.labels(job.name).inc()
                delay = backoff_ms(job.opts.get("backoff"), attempt)
                self.ctx.log.info("job attempt failed; retrying", extra={
                    "job": job.id, "job_name": job.name, "attempt": attempt,
                    "in_seconds": delay / 1000, "reason": reason[:300]})
                await self._finish(active, self.protocol.retry_later(job, reason, delay),
                                   self._outcome(job, "delayed", attempts=attempt,
                                                 failed_reason=reason))
                return "retried"
            await self._fail(active, attempt, reason)
            return "failed"
        await self._finish(
            active,
            self.protocol.completed(job, result, cfg.keep_completed),
            self._outcome(job, "completed", attempts=attempt, returnvalue=result,
                          finished=True))
        return "completed"

    async def _finish(self, active: ActiveJob, op: Op, record: store.JobRecord) -> None:
        """Commit the job's record, then tell BullMQ (batched with other jobs)."""
        job = active.job
        problem = error_of(await self._outcomes.send(record, op))
        if problem is not None:
            # Typically: the lock expired (a stall) and another worker has the job.
            self.ctx.metrics.error("bullmq")
            self.ctx.log.warning("BullMQ refused to finish the job", extra={
                "job": job.id, "script": op.script, "error": problem})

    def _apply_defaults(self, job: Job) -> None:
        """The seed's attempts and backoff for jobs enqueued without them."""
        cfg = self.config
        if not job.opts.get("attempts"):
            job.opts["attempts"] = cfg.attempts
        job.attempts = int(job.opts["attempts"])
        if not job.opts.get("backoff"):
            job.opts["backoff"] = {"type": "exponential", "delay": int(float(cfg.backoff) * 1000)}

    async def _stalls_seen(self, job: Job) -> int:
        if not job.stalledCounter:
            return 0
        key = self.protocol.job_key(job.id)
        seen = await self.bull_redis.run(lambda c: c.hget(key, "syncdStalls"))
        return int(seen or 0)

    async def _delay_stalled(self, active: ActiveJob) -> None:
        job = active.job
        key = self.protocol.job_key(job.id)
        await self.bull_redis.run(lambda c: c.hset(key, "syncdStalls", job.stalledCounter))
        delay = backoff_ms(job.opts.get("backoff"), max(1, job.attemptsMade + 1))
        self.ctx.log.info("stalled job retried with backoff", extra={
            "job": job.id, "in_seconds": delay / 1000})
        reason = "stalled: its worker stopped answering"
        await self._finish(
            active, self.protocol.retry_later(job, reason, max(delay, 1), count_attempt=False),
            self._outcome(job, "delayed", attempts=job.attemptsMade, failed_reason=reason))

    async def _fail(self, active: ActiveJob, attempt: int, reason: str, *,
                    dead_letter: bool = True) -> None:
        """The last failure: recorded, dead-lettered, then failed in BullMQ (no retry)."""
        job = active.job
        if dead_letter:
            letter = syncd.DeadLetter(
                self.config.dead_letter_key,
                json.dumps({"id": job.id, "name": job.name, "data": job.data,
                            "opts": _plain_opts(job.opts), "attemptsMade": attempt},
                           separators=(",", ":"), default=str),
                reason, self.ctx.name, source=self.config.queue)
            # Before BullMQ hears of the failure, so that a crash cannot lose
            # the letter; once per attempt, so that the job run again after a
            # stall in between (a frozen replica) does not quarantine it twice.
            if await syncd.push_dead_letters(self.ctx.redis, [letter],
                                             once=f"job:{job.id}:{attempt}"):
                self.ctx.report(syncd.SyncResult(dead_lettered=1), None)
        self.ctx.log.info("job failed", extra={
            "job": job.id, "job_name": job.name, "attempt": attempt, "reason": reason[:300]})
        await self._finish(
            active,
            self.protocol.failed(job, reason, self.config.keep_failed),
            self._outcome(job, "failed", attempts=attempt, failed_reason=reason,
                          finished=True))

    def _outcome(self, job: Job, state: str, *, attempts: int,
                 failed_reason: str | None = None, returnvalue: Any = None,
                 finished: bool = False) -> store.JobRecord:
        return store.JobRecord(
            self.config.queue, job.id, job.name, job.data, state, attempts, failed_reason,
            returnvalue, job.timestamp, job.processedOn or now_ms(),
            now_ms() if finished else None, job.attemptsStarted)

    async def record(self, job: Job, state: str, *, attempts: int) -> None:
        """Write a job's state to ``portfolio_jobs`` (no BullMQ call): removed, retried."""
        await self._outcomes.send(self._outcome(job, state, attempts=attempts))

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
            async with self._breaker(provider.endpoint).guard(answered=(jobs.BadJob,)):
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
        async with self._breaker(provider.endpoint).guard(answered=(jobs.BadJob,)):
            found = await provider.token_metadata(list(tokens))
        if found:
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
        # Its attempts count from 1 again: so do the names its dead letters go by.
        attempts = max(int(job.opts.get("attempts") or 0), self.config.attempts)
        await syncd.forget_dead_letters_pushed(
            self.ctx.redis, self.config.dead_letter_key,
            [f"job:{job_id}:{n}" for n in range(1, attempts + 1)])
        await self.record(job, "waiting", attempts=0)
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


def _bad_input(error: BaseException) -> jobs.BadJob | None:
    """The `jobs.BadJob` that ``error`` is, alone or as every error of a
    nursery's group (a user's chains are read in parallel): such a job fails
    at once, and retrying it would only fail again."""
    if isinstance(error, jobs.BadJob):
        return error
    if isinstance(error, BaseExceptionGroup):
        found, rest = error.split(jobs.BadJob)
        if found is not None and rest is None:
            while isinstance(found, BaseExceptionGroup):
                found = found.exceptions[0]
            return found  # type: ignore[return-value]
    return None


def _reason(error: BaseException) -> str:
    # A nursery's group of one says "Exceptions from Trio nursery (1
    # sub-exception)": the one inside is the reason.
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
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


