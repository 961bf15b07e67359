"""BullMQ's worker protocol, spoken with sync redis-py in worker threads, in batches.

The Python port's own ``Worker`` does one round trip per command over one
connection shared by every job (``single_connection_client``), under
trio-asyncio: measured here it drained no-op jobs at a fraction of npm
BullMQ's rate. So the hot path is syncd's, on BullMQ's own terms: the Lua
scripts the port ships (``moveToActive``, ``moveToFinished``,
``moveToDelayed``, ``retryJob``, ``extendLocks``,
``moveStalledJobsToWait``, ``moveJobFromActiveToWait``), their keys and
arguments built by the port's ``Scripts`` and jobs parsed by its ``Job``,
sent several at a time in one pipeline per thread hop. Producers, Node
workers, ``QueueEvents`` and ``getJobCounts`` see a normal BullMQ queue.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import time
import types
from collections.abc import Sequence
from typing import Any

import attrs
import hiredis
import msgpack
import redis
from bullmq import Job
from bullmq.scripts import Scripts
from redis.exceptions import NoScriptError

SCRIPTS = {
    "moveToActive": "moveToActive-11.lua",
    "moveToFinished": "moveToFinished-14.lua",
    "moveToDelayed": "moveToDelayed-11.lua",
    "retryJob": "retryJob-11.lua",
    "extendLocks": "extendLocks-1.lua",
    "moveStalledJobsToWait": "moveStalledJobsToWait-9.lua",
    "moveJobFromActiveToWait": "moveJobFromActiveToWait-9.lua",
}

#: BullMQ's error codes from its scripts (negative integers).
ERRORS = {-1: "job does not exist", -2: "lock is missing", -3: "job is not in the active state",
          -4: "job has pending dependencies", -5: "parent job does not exist",
          -6: "lock held by another worker"}

#: Replies that mean the node no longer serves BullMQ's slot.
SLOT_AWAY = (redis.exceptions.AskError, redis.exceptions.ReadOnlyError,
              redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError)


def now_ms() -> int:
    return round(time.time() * 1000)


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


@attrs.frozen
class Op:
    """One script call of a batch: which script, its keys and arguments."""

    script: str
    keys: list[Any]
    args: list[Any]


@attrs.define(eq=False)
class Protocol:
    """A queue's keys, scripts and argument builders.

    Attributes:
        queue: The queue name.
        prefix: BullMQ's key prefix.
        lock_ms: The job lock's duration.
    """

    queue: str
    prefix: str
    lock_ms: int
    scripts: Scripts = attrs.field(init=False)
    _stub: Any = attrs.field(init=False)
    _source: dict[str, str] = attrs.Factory(dict)
    _sha: dict[str, str] = attrs.Factory(dict)
    _active_keys: list[str] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # The port's Scripts only reads `commands` from its connection when a
        # script runs through it; we use it for keys and arguments only.
        self.scripts = Scripts(self.prefix, self.queue,
                               types.SimpleNamespace(conn=None, commands={}))
        # What Job.fromJSON and the argument builders read from a "queue".
        self._stub = types.SimpleNamespace(
            backend=None, qualifiedName=f"{self.prefix}:{self.queue}",
            opts={"lockDuration": self.lock_ms}, keys=self.scripts.keys)
        self._active_keys = self.scripts.getKeys([
            'wait', 'active', 'prioritized', 'events', 'stalled', 'limiter', 'delayed',
            'paused', 'meta', 'pc', 'marker'])
        commands = importlib.resources.files("bullmq") / "commands"
        for name, filename in SCRIPTS.items():
            self._source[name] = (commands / filename).read_text()
            self._sha[name] = hashlib.sha1(self._source[name].encode()).hexdigest()

    @property
    def keys(self) -> dict[str, str]:
        return self.scripts.keys

    def job_key(self, job_id: str) -> str:
        return f"{self.keys['']}{job_id}"

    def run(self, client: redis.Redis, ops: Sequence[Op]) -> list[Any]:
        """Every op in one pipeline (one round trip); their results, errors included.

        EVALSHA directly: redis-py's script objects make every pipeline ask
        SCRIPT EXISTS first, a second round trip. A script the server does
        not know (first use, or Redis restarted) is loaded and its ops run
        again: a NOSCRIPT reply means the script did not run.
        """
        results = self._evalsha(client, ops)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            for name in {ops[i].script for i in missing}:
                client.script_load(self._source[name])
            again = self._evalsha(client, [ops[i] for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        # On a cluster node pinned for BullMQ's slot: the slot moved (a
        # failover, a resharding). Nothing ran; Redis is "away" for us, not
        # refusing one job (the caller's handle says RedisUnavailable).
        away = next((r for r in results if isinstance(r, SLOT_AWAY)), None)
        if away is not None:
            raise away
        return results

    def _evalsha(self, client: redis.Redis, ops: Sequence[Op]) -> list[Any]:
        """Every EVALSHA packed into one write on one pooled connection, then every reply.

        Not redis-py's ``Pipeline``: its per-command bookkeeping cost three
        times the CPU of packing with hiredis directly (measured: 33 µs vs
        10 µs a script call), and this is the hot path, two calls a job, on
        a machine whose cores Redis and PostgreSQL share. Nothing is retried
        on a broken connection (a script is not idempotent: a lost reply of
        ``moveToActive`` must not take a second job); the connection is
        dropped and the error raised.
        """
        sha = self._sha
        packed = b"".join([
            hiredis.pack_command(("EVALSHA", sha[op.script], len(op.keys), *op.keys, *op.args))
            for op in ops])
        pool = client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([packed])
            results: list[Any] = []
            for _ in ops:
                try:
                    results.append(conn.read_response())
                except redis.ResponseError as exc:
                    results.append(exc)
            return results
        except BaseException:
            conn.disconnect()  # replies may still be on their way: never reuse it
            raise
        finally:
            pool.release(conn)

    # -- taking jobs -------------------------------------------------------------------

    def move_to_active(self, token: str) -> Op:
        keys = self._active_keys
        opts = msgpack.packb({"token": token, "lockDuration": self.lock_ms, "limiter": None},
                             use_bin_type=True)
        return Op("moveToActive", keys, [self.keys[''], now_ms(), opts])

    def parse_active(self, raw: Any, token: str) -> tuple[Job | None, int]:
        """A ``moveToActive`` answer: (the job, or None; when the next delayed job is due)."""
        if not isinstance(raw, list) or not raw:
            return None, 0
        data, job_id = raw[0], raw[1]
        delay_until = int(raw[3]) if len(raw) > 3 and raw[3] else 0
        if not data:
            return None, delay_until
        fields = dict(zip(map(_text, data[0::2]), map(_text, data[1::2]), strict=True))
        job = Job.fromJSON(self._stub, fields, _text(job_id))
        job.token = token
        return job, delay_until

    # -- finishing jobs ----------------------------------------------------------------

    def completed(self, job: Job, value: Any, keep: int, *, fetch_next: bool = False) -> Op:
        """Completed; with ``fetch_next`` the same call takes the next job under the
        same token (as npm BullMQ's workers do): its answer is `parse_active`'s.
        The worker does not: a slot is freed before its outcome is sent."""
        keys, args = self.scripts.moveToFinishedArgs(
            job, value, "returnvalue", {"count": keep}, "completed", job.token,
            fetchNext=fetch_next)
        return Op("moveToFinished", keys, args)

    def failed(self, job: Job, reason: str, keep: int, *, fetch_next: bool = False) -> Op:
        keys, args = self.scripts.moveToFinishedArgs(
            job, reason, "failedReason", {"count": keep}, "failed", job.token,
            fetchNext=fetch_next,
            fields_to_update={"failedReason": reason,
                              "stacktrace": json.dumps(job.stacktrace[-10:])})
        return Op("moveToFinished", keys, args)

    def retry_later(self, job: Job, reason: str, delay_ms: int, *,
                    count_attempt: bool = True) -> Op:
        """Back to delayed (or straight to wait when ``delay_ms`` is 0)."""
        fields = {"failedReason": reason}
        if delay_ms <= 0 and count_attempt:
            keys, args = self.scripts.retryJobArgs(job.id, False, job.token,
                                                   {"fieldsToUpdate": fields})
            return Op("retryJob", keys, args)
        keys, args = self.scripts.moveToDelayedArgs(
            job.id, now_ms(), job.token, max(delay_ms, 0),
            {"skipAttempt": not count_attempt, "fieldsToUpdate": fields})
        return Op("moveToDelayed", keys, args)

    def back_to_wait(self, job: Job) -> Op:
        """Release an active job we hold; nothing counted against its attempts."""
        k = self.keys
        return Op("moveJobFromActiveToWait",
                  [k["active"], k["wait"], k["stalled"], k["paused"], k["meta"], k["limiter"],
                   k["prioritized"], k["marker"], k["events"]],
                  [job.id, job.token, self.job_key(job.id)])

    # -- housekeeping ------------------------------------------------------------------

    def extend_locks(self, jobs: Sequence[Job]) -> Op:
        return Op("extendLocks", [self.keys['stalled']], [
            self.keys[''], msgpack.packb([j.token for j in jobs], use_bin_type=True),
            msgpack.packb([j.id for j in jobs], use_bin_type=True), self.lock_ms])

    def stalled_check(self, max_stalled: int, interval_ms: int) -> Op:
        keys = self.scripts.getKeys(['stalled', 'wait', 'active', 'stalled-check', 'meta',
                                     'paused', 'marker', 'events', 'repeat'])
        return Op("moveStalledJobsToWait", keys,
                  [max_stalled, self.keys[''], now_ms(), interval_ms])


def error_of(result: Any) -> str | None:
    """What went wrong with a finishing script's result, or None."""
    if isinstance(result, Exception):
        return str(result)
    if isinstance(result, int) and result < 0:
        return ERRORS.get(result, f"BullMQ error code {result}")
    return None


def backoff_ms(backoff: Any, attempts_made: int) -> int:
    """BullMQ's built-in strategies; ``attempts_made`` counts the attempt that just failed."""
    if isinstance(backoff, int | float):
        return int(backoff)
    if not isinstance(backoff, dict):
        return 0
    delay = int(backoff.get("delay") or 0)
    if backoff.get("type") == "exponential":
        return round(2 ** (attempts_made - 1) * delay)
    return delay

