"""Test data for ``syncd chaos``: portfolio jobs as the DEX platform's core service enqueues them.

Item ``i`` is one BullMQ job with the id ``j<i>``, added with the Python
port's ``Queue.addBulk`` (the same Lua script npm BullMQ's ``Queue.add``
runs), so the tally can tell exactly which jobs ended how, and how often:

- mostly ``portfolio-sync`` of user ``u<i>``: one or two wallets on chains
  1 and 137, native balance and one or two ERC-20 tokens, some with
  upper-case hex addresses, some at priority high or low;
- every tenth (``i % 10 == 7``) a ``chain-sync`` on chain 137, bare addresses;
- every hundredth (``i % 100 == 13``) a ``bulk-user-sync`` of two users,
  whose children ``j<i>-u0`` and ``j<i>-u1`` are jobs of their own;
- every 50th (``i % 50 == 49``) bad input the plugin refuses at once and
  dead-letters: a wallet that is not an address, a chain not configured, a
  token that is no ERC-20 contract (in turn).

The chains are a `syncd_portfolio.responder` process (real HTTP, JSON-RPC
batches) whose balances are a pure function of (wallet, token), so every
balance row syncd writes can be checked to the last unit.

The tally counts jobs (bulk children included): a job is *in SQL* when its
``portfolio_jobs`` row says completed, BullMQ's completed set has it and
every balance row it should write is there with the right value and
decimals. BullMQ delivers at least once (a job whose replica was frozen
past its lock runs again elsewhere), so a job may *run* twice; what must
not happen twice is its outcome: a *duplicate* is a job with two dead
letters, or with both a completed and a failed outcome (in
``portfolio_jobs``, BullMQ's sets or the dead letters). *Lost* is a job
neither in SQL nor dead-lettered.

No baseline and no ceiling: the seed's throughput is measured by
``bench/portfolio_bench.py`` against npm BullMQ and ganache. Everything
here is synchronous (the harness calls it from threads); BullMQ's asyncio
``Queue`` runs on an event loop of its own in one background thread.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import json
import select
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import attrs
from bullmq import Queue

import syncd
from syncd_portfolio.provider import NATIVE
from syncd_portfolio.responder import TOKENS, balance

#: Jobs per second `syncd chaos` produces at most (`syncd.Workload.max_rate`).
MAX_RATE = 300.0
#: Items per ``addBulk`` (one Redis pipeline).
CHUNK = 500
NATIVE_DECIMALS = 18
#: A contract address the responder has no code at (its ``eth_call`` answers ``0x``).
NOT_A_TOKEN = "0x" + "dead" * 10
#: A chain the workload's config does not name.
UNKNOWN_CHAIN = 999
#: BullMQ's key prefix: hash-tagged, as BullMQ advises for Redis Cluster, so
#: that one workload runs on single Redis and on a cluster alike.
BULL = "{bull}"
#: The BullMQ lists and sets a job waits or runs in.
WAITING_LISTS = ("wait", "active", "paused")
WAITING_SETS = ("delayed", "prioritized", "waiting-children")

USDC, USDT = sorted(TOKENS[1])[0], sorted(TOKENS[1])[1]
WETH = next(iter(TOKENS[137]))

#: (user, chain, wallet, token) → (balance, decimals): one balance row.
Row = tuple[tuple[str, int, str, str], tuple[int, int]]


def malformed(i: int) -> bool:
    return i % 50 == 49


def job_id(i: int) -> str:
    # Not a bare number: BullMQ refuses integer custom ids.
    return f"j{i}"


def _wallet(i: int, k: int, *, upper: bool = False) -> str:
    hexits = hashlib.sha256(f"wallet:{i}:{k}".encode()).hexdigest()[:40]
    return "0x" + (hexits.upper() if upper else hexits)


def _user(i: int, tag: str = "") -> dict[str, Any]:
    """``portfolio-sync`` data of user ``u<i><tag>``."""
    seed = int(hashlib.sha256(f"user:{i}:{tag}".encode()).hexdigest()[:8], 16)
    wallets = [{"chainId": 1, "address": _wallet(i, 0, upper=seed % 4 == 1)}]
    tokens: dict[str, list[str]] = {"1": [USDC, USDT] if seed % 2 else [USDC]}
    if seed % 3 == 0:
        wallets.append({"chainId": "137", "address": _wallet(i, 1)})
        tokens["137"] = [WETH]
    return {"userId": f"u{i}{tag}", "wallets": wallets, "tokens": tokens}


def item(i: int) -> dict[str, Any]:
    """Item ``i`` as the core service hands it to ``Queue.add``: name, data, opts."""
    opts: dict[str, Any] = {"jobId": job_id(i)}
    if i % 3:
        opts["priority"] = 1 if i % 3 == 1 else 10  # the seed's high and low
    if malformed(i):
        kind = (i // 50) % 3
        data = _user(i)
        if kind == 0:
            data["wallets"] = [{"chainId": 1, "address": f"0xnot-an-address-{i}"}]
        elif kind == 1:
            data["wallets"] = [{"chainId": UNKNOWN_CHAIN, "address": _wallet(i, 0)}]
        else:
            data["tokens"] = {"1": [USDC, NOT_A_TOKEN]}
        return {"name": "portfolio-sync", "data": data, "opts": opts}
    if i % 100 == 13:
        return {"name": "bulk-user-sync",
                "data": {"users": [_user(i, "a"), _user(i, "b")]}, "opts": opts}
    if i % 10 == 7:
        return {"name": "chain-sync", "opts": opts, "data": {
            "userId": f"u{i}", "chainId": 137, "wallets": [_wallet(i, 0), _wallet(i, 1)],
            "tokens": [WETH]}}
    return {"name": "portfolio-sync", "data": _user(i), "opts": opts}


def _rows(data: dict[str, Any], chain: int | None = None) -> Iterator[Row]:
    """The balance rows a valid user sync writes (computed from its data, not by syncd)."""
    user = str(data["userId"])
    if chain is not None:  # chain-sync: bare addresses, one chain's token list
        wallets = [(chain, str(w).lower()) for w in data["wallets"]]
        tokens = {chain: [str(t).lower() for t in data.get("tokens", [])]}
    else:
        wallets = [(int(w["chainId"]), str(w["address"]).lower()) for w in data["wallets"]]
        tokens = {int(c): [str(t).lower() for t in ts]
                  for c, ts in (data.get("tokens") or {}).items()}
    for cid, wallet in wallets:
        yield (user, cid, wallet, NATIVE), (balance(wallet, NATIVE), NATIVE_DECIMALS)
        for token in tokens.get(cid, []):
            yield (user, cid, wallet, token), (balance(wallet, token), TOKENS[cid][token][2])


def expected_jobs(produced: int) -> tuple[dict[str, list[Row]], set[str]]:
    """Every job items ``0..produced-1`` make that must complete (→ its balance
    rows; bulk children included), and the ids of those that must be dead-lettered."""
    valid: dict[str, list[Row]] = {}
    bad: set[str] = set()
    for i in range(produced):
        job = item(i)
        if malformed(i):
            bad.add(job_id(i))
        elif job["name"] == "bulk-user-sync":
            valid[job_id(i)] = []
            for n, user in enumerate(job["data"]["users"]):
                valid[f"{job_id(i)}-u{n}"] = list(_rows(user))
        elif job["name"] == "chain-sync":
            valid[job_id(i)] = list(_rows(job["data"], chain=job["data"]["chainId"]))
        else:
            valid[job_id(i)] = list(_rows(job["data"]))
    return valid, bad


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@attrs.define(eq=False)
class _Producer:
    """BullMQ's asyncio ``Queue`` on an event loop of its own, for synchronous callers.

    One loop and one queue for the whole run: a loop, a queue and a
    connection per chunk (twenty a second) would cost more than the adds.
    """

    queue: str
    _loop: asyncio.AbstractEventLoop | None = None
    _bull: Queue | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = attrs.Factory(threading.Lock)

    def add(self, env: syncd.WorkloadEnv, jobs: list[dict[str, Any]]) -> None:
        with self._lock:
            if self._loop is None:
                # A plain loop, not the policy's: importing the plugin (its
                # worker) installs trio-asyncio's policy in this process, and
                # its loops cannot run in a thread of their own.
                loop = asyncio.SelectorEventLoop()
                self._thread = threading.Thread(target=loop.run_forever,
                                                name="bullmq-producer", daemon=True)
                self._thread.start()
                self._loop = loop
                self._bull = self._run(self._open(env))
        assert self._bull is not None
        self._run(self._bull.addBulk(jobs))

    async def _open(self, env: syncd.WorkloadEnv) -> Queue:
        if syncd.is_cluster(env.redis):
            # The port speaks to one node: the master of the queue's slot.
            node = env.redis.get_node_from_key(f"{BULL}:{self.queue}:wait")
            pool = env.redis.get_redis_connection(node).connection_pool
        else:
            pool = env.redis.connection_pool
        kwargs = pool.connection_kwargs
        connection = {k: kwargs[k] for k in ("host", "port", "db", "username", "password")
                      if kwargs.get(k) is not None}
        return Queue(self.queue, {"connection": connection, "prefix": BULL})

    def _run(self, coroutine: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(120)

    def close(self) -> None:
        with self._lock:
            loop, bull, thread = self._loop, self._bull, self._thread
            self._loop = self._bull = self._thread = None
        if loop is None:
            return
        try:
            if bull is not None:
                asyncio.run_coroutine_threadsafe(bull.close(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(10)
            if not loop.is_running():
                loop.close()


@attrs.define(eq=False)
class _Responder:
    """The JSON-RPC responder as a process of its own, on a port chosen up front
    (the daemons' config names it before the process starts)."""

    port: int = attrs.Factory(_free_port)
    proc: subprocess.Popen[bytes] | None = None

    def url(self, chain: int) -> str:
        return f"http://127.0.0.1:{self.port}/{chain}"

    def start(self) -> None:
        self.stop()
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd_portfolio.responder", "--port", str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.proc = proc
        # Also if the harness never calls teardown (it keeps a failed run's
        # data): an orphan responder would hold its port forever.
        atexit.register(self.stop)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else b""
        proc.stdout.close()
        if not line.startswith(b"listening"):
            self.stop()
            raise RuntimeError(f"JSON-RPC responder did not start on port {self.port} "
                               f"(exit {proc.poll()}; is the port taken?)")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        syncd.stop_process(proc)


def portfolio_workload(prefix: str) -> syncd.Workload:
    queue = f"{prefix}-portfolio"
    tables = {"jobs_table": f"{prefix}_portfolio_jobs",
              "balances_table": f"{prefix}_portfolio_balances",
              "tokens_table": f"{prefix}_portfolio_tokens"}
    dead = syncd.slot_key(queue, "dead")
    responder = _Responder()
    producer = _Producer(queue)
    options: dict[str, Any] = {
        "queue": queue,
        "prefix": BULL,
        "dead_letter": dead,
        **tables,
        "chains": {cid: {"rpc_url": responder.url(cid), "timeout": "5s"} for cid in TOKENS},
        # A replica SIGKILLed or frozen holding jobs loses them after the
        # lock (renewed every half lock), and the stalled check, run this
        # often by every replica, gives them back: within the run, not after
        # BullMQ's 30 s defaults. A stalled job then waits its backoff.
        "lock_duration": "2s",
        "stalled_interval": "1s",
        "backoff": "200ms",
        "attempts": 5,
        "timeout": "20s",
        # The tally reads BullMQ's finished sets: nothing may be trimmed.
        "keep_completed": 10_000_000,
        "keep_failed": 10_000_000,
    }

    def setup(env: syncd.WorkloadEnv) -> None:
        _drop(env, tables)
        responder.start()

    def teardown(env: syncd.WorkloadEnv) -> None:
        producer.close()
        responder.stop()
        _drop(env, tables)

    def produce(env: syncd.WorkloadEnv, start: int, count: int) -> None:
        end = start + count
        for chunk in range(start, end, CHUNK):
            producer.add(env, [item(i) for i in range(chunk, min(chunk + CHUNK, end))])

    def pending(env: syncd.WorkloadEnv) -> int:
        base = f"{BULL}:{queue}"
        with env.redis.pipeline(transaction=False) as pipe:
            for name in WAITING_LISTS:
                pipe.llen(f"{base}:{name}")
            for name in WAITING_SETS:
                pipe.zcard(f"{base}:{name}")
            return sum(pipe.execute())

    def tally(env: syncd.WorkloadEnv, produced: int) -> syncd.Tally:
        valid, bad = expected_jobs(produced)
        states, balances = _read_sql(env, tables)
        base = f"{BULL}:{queue}"
        bull_completed = {_text(m) for m in env.redis.zrange(f"{base}:completed", 0, -1)}
        bull_failed = {_text(m) for m in env.redis.zrange(f"{base}:failed", 0, -1)}
        letters = _dead_letter_ids(env, dead)

        def complete(jid: str) -> bool:
            return (states.get(jid) == "completed" and jid in bull_completed
                    and all(balances.get(key) == value for key, value in valid[jid]))

        good = {jid for jid in valid if complete(jid)}
        # Effects that should not be there: a completed job nobody produced
        # (or one that had to fail), and balance rows of no expected job.
        expected_keys = {key for rows in valid.values() for key, _ in rows}
        stray_users = {key[0] for key in balances if key not in expected_keys}
        stray_jobs = {jid for jid, state in states.items()
                      if state == "completed" and jid not in valid}
        duplicates = sum(n - 1 for n in letters.values() if n > 1)
        for jid in states.keys() | bull_completed | bull_failed | letters.keys():
            completed = states.get(jid) == "completed" or jid in bull_completed
            failed = states.get(jid) == "failed" or jid in bull_failed or jid in letters
            duplicates += completed and failed
        return syncd.Tally(
            produced=produced,
            expected=len(valid),
            in_sql=len(good) + len(stray_jobs) + len(stray_users),
            duplicates=duplicates,
            lost=sum(1 for jid in [*valid, *bad] if jid not in good and jid not in letters),
            expected_dead=len(bad),
            dead_lettered=int(env.redis.llen(dead)),
        )

    return syncd.Workload(
        plugin="portfolio", options=options, unit="jobs", setup=setup, produce=produce,
        pending=pending, tally=tally, teardown=teardown, dialects=("postgresql",),
        # Jobs, not counters: at the default 2,000/s the backlog cannot drain
        # within the run on two cores; 300/s does, with 3 replicas and faults.
        max_rate=MAX_RATE,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _drop(env: syncd.WorkloadEnv, tables: dict[str, str]) -> None:
    with env.connection() as conn:
        cur = conn.cursor()
        for table in tables.values():
            cur.execute(f'DROP TABLE IF EXISTS "{table}"')
        conn.commit()


def _read_sql(env: syncd.WorkloadEnv, tables: dict[str, str]) -> tuple[
        dict[str, str], dict[tuple[str, int, str, str], tuple[int, int]]]:
    """Each job's state in the jobs table, and every balance row."""
    with env.connection() as conn:
        cur = conn.cursor()
        cur.execute(f'SELECT id, state FROM "{tables["jobs_table"]}"')
        states = {str(jid): str(state) for jid, state in cur.fetchall()}
        cur.execute("SELECT user_id, chain_id, wallet, token, balance, decimals"
                    f' FROM "{tables["balances_table"]}"')
        balances = {}
        for user, chain, wallet, token, amount, decimals in cur.fetchall():
            exact = int(amount) if isinstance(amount, Decimal | int) else int(str(amount))
            balances[(str(user), int(chain), str(wallet), str(token))] = (exact, int(decimals))
        conn.rollback()
    return states, balances


def _dead_letter_ids(env: syncd.WorkloadEnv, key: str) -> Counter[str]:
    """How many dead letters each job id has."""
    ids: Counter[str] = Counter()
    for raw in env.redis.lrange(key, 0, -1):
        try:
            doc = json.loads(syncd.DeadLetter.decode(key, raw).payload_bytes)
        except (ValueError, KeyError):
            ids["<unreadable>"] += 1
            continue
        ids[str(doc.get("id") if isinstance(doc, dict) else doc)] += 1
    return ids
