"""``syncd chaos``: break syncd while it works, then count every item.

For each plugin x database, producers write items at a steady rate while
the harness, at random moments, does what production does to a daemon:

- SIGKILLs the ``syncd serve`` subprocess and starts it again (same
  ``instance``, so it finds its own batches left in flight);
- kills syncd's database connections from the server side
  (``pg_terminate_backend`` / MariaDB ``KILL``);
- kills syncd's Redis connections (``CLIENT KILL``);
- pauses the plugin over HTTP and resumes it.

With ``--replicas N`` (N > 1), N daemons run side by side against the same
Redis and database, each its own ``instance``, as on N hosts; every fault
picks a replica at random, and one more joins them: a replica is frozen
with SIGSTOP for up to twice the lease ttl and thawed with SIGCONT (its
lease, if it held one, passes to another meanwhile, and what it does on
waking is fenced; a queue replica's batch is reclaimed once its heartbeat
runs out). The lease ttl and the servers' idle-in-transaction timeout are
short in the replicas' config, so that takeovers happen during the run.

Only syncd's own connections are killed: they are recognised by the local
port of each TCP socket the syncd process holds (read from ``/proc``), which
the servers report as the client's port. The harness's own connections live
in this process, so they can never match.

Then producers stop, syncd drains (interval plugins are flushed over HTTP),
stops on SIGTERM (it must exit 0), and the workload's tally counts what
arrived: nothing may be lost, nothing applied twice, every malformed item
dead-lettered.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import attrs
import httpx
import pluggy
import trio

from syncd.harness.env import (
    REDIS_URL,
    Subject,
    Target,
    clear_keys,
    open_env,
    runs,
)
from syncd.harness.report import ChaosRow
from syncd.manager import discover, get_plugin_manager
from syncd.redis import is_cluster
from syncd.supervisor import unwrap
from syncd.workload import Workload, WorkloadEnv

Progress = Callable[[str], None]

#: Seconds between producer ticks; each tick produces what the rate owes.
TICK = 0.05
#: Seconds between status lines.
STATUS_EVERY = 2.0
#: Longest a fresh ``syncd serve`` may take to answer /health/live.
START_TIMEOUT = 60.0
#: Shutdown grace written into syncd's config; SIGTERM waits this plus a margin.
GRACE = 20.0
#: With replicas: the exclusive plugins' lease, and how long a frozen replica's
#: open transaction may hold its locks before the server ends it.
REPLICA_LEASE_TTL = 2.0
REPLICA_IDLE_TRANSACTION_TIMEOUT = 3.0


@attrs.frozen
class ChaosOptions:
    """What ``syncd chaos`` was asked for.

    Attributes:
        plugins: Plugin names (empty: every installed plugin with a workload).
        databases: ``pg``, ``mysql`` or URLs (empty: both defaults).
        kills: SIGKILL + restart cycles per plugin x database.
        rate: Items produced per second while faults are injected.
        duration_cap: Stop injecting faults after this many seconds even if
            fewer kills were done.
        drain_timeout: Longest syncd may take to drain once producers stop.
        seed: Seed of the random schedule (recorded, so a run can be replayed).
        life: Range of seconds a syncd process lives before its SIGKILL.
        redis_url: The Redis everything runs on.
        replicas: Daemons running side by side (each fault picks one).
    """

    plugins: tuple[str, ...] = ()
    databases: tuple[str, ...] = ()
    kills: int = 20
    rate: float = 2000.0
    duration_cap: float = 300.0
    drain_timeout: float = 120.0
    seed: int = attrs.Factory(lambda: random.randrange(1 << 31))
    life: tuple[float, float] = (0.5, 2.0)
    redis_url: str = REDIS_URL
    replicas: int = attrs.field(default=1, validator=attrs.validators.ge(1))

    def meta(self) -> dict[str, Any]:
        from syncd.redis import is_cluster_url

        return {"kills": self.kills, "rate": self.rate, "seed": self.seed,
                "duration_cap": self.duration_cap, "replicas": self.replicas,
                "redis": "cluster" if is_cluster_url(self.redis_url) else "single"}


async def run_chaos(
    options: ChaosOptions,
    *,
    pm: pluggy.PluginManager | None = None,
    progress: Progress = lambda line: None,
    environ: Mapping[str, str] | None = None,
) -> list[ChaosRow]:
    """Run chaos on every requested plugin x database, one after the other.

    ``environ`` is the subprocess's environment (default: ours, minus the
    ``SYNCD_*`` variables that would change its config or its plugins).
    """
    pm = pm or get_plugin_manager()
    specs = {name: found.spec for name, found in discover(pm).items()}
    rows = []
    for subject, target in runs(pm, options.plugins, options.databases,
                                stem="chaos", progress=progress,
                                redis_url=options.redis_url):
        rng = random.Random(f"{options.seed}:{subject.label}:{target.name}")
        run = ChaosRun(subject, target, options, rng, progress, _child_env(environ),
                       replica_options(specs[subject.plugin].config, options.replicas))
        rows.append(await run.run())
    return rows


def replica_options(config_class: type, replicas: int) -> dict[str, Any]:
    """Plugin options for a run with replicas: a queue plugin's ``heartbeat_ttl``
    (if its config has one) as short as the lease, so that the batches of a
    replica killed or frozen for long are reclaimed by another during the run."""
    if replicas > 1 and attrs.has(config_class) and (
            "heartbeat_ttl" in attrs.fields_dict(config_class)):
        return {"heartbeat_ttl": f"{REPLICA_LEASE_TTL:g}s"}
    return {}


def _child_env(environ: Mapping[str, str] | None) -> dict[str, str]:
    base = dict(os.environ if environ is None else environ)
    # The child's config is the file we write: no overrides, no crash points,
    # and it must load plugins from their entry points.
    return {k: v for k, v in base.items()
            if not k.startswith("SYNCD_") or k.startswith("SYNCD_TEST_")}


def free_port() -> int:
    """A loopback port nobody listens on now (kept for every restart of one run)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the syncd subprocess -----------------------------------------------------------


@attrs.define
class SyncdProcess:
    """``syncd serve`` as a child process that can be killed and restarted.

    Attributes:
        config: Path of its YAML config.
        port: Its control plane's loopback port.
        log: Where its stdout and stderr go (appended across restarts).
        env: Its environment.
    """

    config: Path
    port: int
    log: Path
    env: dict[str, str]
    process: trio.Process | None = None
    starts: int = 0
    _log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running and self.process else None

    async def start(self, *, wait: bool = True) -> None:
        if self._log_file is None:
            self._log_file = self.log.open("ab")
        self.starts += 1
        self._log_file.write(f"\n=== start #{self.starts} at {time.time():.3f} ===\n".encode())
        self._log_file.flush()
        self.process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "syncd", "serve", "--config", str(self.config)],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            env=self.env,
        )
        if wait:
            await self.wait_live()

    async def wait_live(self) -> None:
        """Until the control plane answers (the daemon has recovered and runs)."""
        with trio.move_on_after(START_TIMEOUT):
            while True:
                if not self.running:
                    code = self.process.returncode if self.process else None
                    raise ChaosError(f"syncd serve exited with {code} while starting "
                                     f"(see {self.log})")
                try:
                    await http(self.url, "GET", "/health/live", timeout=1.0)
                    return
                except (httpx.HTTPError, OSError):
                    await trio.sleep(0.05)
        raise ChaosError(f"syncd serve did not answer within {START_TIMEOUT:.0f} s "
                         f"(see {self.log})")

    async def kill(self) -> None:
        """SIGKILL: no flush, no finally, exactly like a power cut of the process."""
        if self.running and self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    def freeze(self) -> None:
        """SIGSTOP: every thread stops where it is, as in a long GC pause or a VM
        migration; its connections stay open and its locks held."""
        if self.running and self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: it carries on from where it stopped, unaware of the time gone."""
        if self.running and self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    @property
    def frozen(self) -> bool:
        """Whether the process is stopped now (by `freeze` or by a stop point)."""
        pid = self.pid
        return pid is not None and process_state(pid) in ("T", "t")

    async def terminate(self, timeout: float) -> int | None:
        """SIGTERM and wait for the graceful exit; None (and SIGKILL) if it hangs."""
        if self.process is None:
            return None
        if self.running:
            self.process.send_signal(signal.SIGTERM)
            self.thaw()  # a stopped process acts on SIGTERM only once it runs
        with trio.move_on_after(timeout):
            return await self.process.wait()
        await self.kill()
        return None

    def close(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` in ``/proc`` (``R``, ``S``, ``T`` for stopped...)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


#: Log messages that tell what the replicas did about each other, by event.
EVENTS = {
    "lease_acquired": ("lease acquired",),
    "fenced": ("lease lost; standing by", "commit fenced"),
    "reclaimed": ("finished the batch of a dead consumer",),
}


def count_events(logs: Iterable[Path]) -> dict[str, int]:
    """How often each of `EVENTS` happened, from the replicas' logs (every
    start of each is in its one file)."""
    counts = dict.fromkeys(EVENTS, 0)
    for log in logs:
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            for event, words in EVENTS.items():
                if all(word in line for word in words):
                    counts[event] += 1
    return counts


class ChaosError(Exception):
    """The run could not be carried out (as opposed to syncd losing data)."""


async def http(base: str, method: str, path: str, *, timeout: float = 5.0) -> Any:
    """One request to the control plane, in a thread (sync httpx, no event-loop ties)."""

    def call() -> Any:
        response = httpx.request(method, base + path, timeout=timeout)
        response.raise_for_status()
        return response.json()

    return await trio.to_thread.run_sync(call)


# -- finding syncd's connections ------------------------------------------------------


def tcp_connections(pid: int) -> list[tuple[int, int]]:
    """``(local port, remote port)`` of every established TCP socket ``pid`` holds."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return []  # it just died: nothing to kill
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "01" or fields[9] not in inodes:  # 01: ESTABLISHED
                continue
            local = int(fields[1].rsplit(":", 1)[1], 16)
            remote = int(fields[2].rsplit(":", 1)[1], 16)
            found.append((local, remote))
    return found


def client_ports(pid: int, server_port: int) -> set[int]:
    """Local ports of ``pid``'s connections to a server on ``server_port``."""
    return {local for local, remote in tcp_connections(pid) if remote == server_port}


def kill_redis_clients(env: WorkloadEnv, pid: int, redis_url: str) -> int:
    """``CLIENT KILL`` every Redis connection of ``pid``; how many were killed.

    On a cluster, on every node (masters and replicas): syncd holds a pool
    per master it talks to.
    """
    if is_cluster(env.redis):
        servers = [(node.port, env.redis.get_redis_connection(node))
                   for node in env.redis.get_nodes()]
    else:
        servers = [(urlsplit(redis_url).port or 6379, env.redis)]
    killed = 0
    for server_port, server in servers:
        ports = client_ports(pid, server_port)
        if not ports:
            continue
        for client in server.client_list():
            port = int(str(client.get("addr", ":0")).rsplit(":", 1)[1])
            if port in ports:
                with contextlib.suppress(Exception):  # it may have gone away by itself
                    killed += int(server.client_kill_filter(_id=client["id"], skipme=True))
    return killed


def kill_db_connections(env: WorkloadEnv, pid: int) -> int:
    """Kill every database connection of ``pid`` from the server side."""
    if env.dialect == "sqlite":
        return 0
    default = 5432 if env.dialect == "postgresql" else 3306
    ports = client_ports(pid, urlsplit(env.database_url).port or default)
    if not ports:
        return 0
    conn = env.connect()
    try:
        cur = conn.cursor()
        if env.dialect == "postgresql":
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE client_port = ANY(%s) AND pid <> pg_backend_pid()", (sorted(ports),))
            killed = sum(1 for (done,) in cur.fetchall() if done)
        else:
            cur.execute("SELECT ID, HOST FROM information_schema.PROCESSLIST "
                        "WHERE ID <> CONNECTION_ID()")
            killed = 0
            for thread_id, host in cur.fetchall():
                if host and ":" in host and int(host.rsplit(":", 1)[1]) in ports:
                    try:
                        cur.execute(f"KILL CONNECTION {int(thread_id)}")
                        killed += 1
                    except Exception:
                        pass  # it ended by itself meanwhile (ER_NO_SUCH_THREAD)
        conn.commit()
        return killed
    finally:
        conn.close()


# -- one run --------------------------------------------------------------------------


@attrs.define
class ChaosRun:
    """Chaos for one plugin on one database, with one or more replicas."""

    subject: Subject
    target: Target
    options: ChaosOptions
    rng: random.Random
    progress: Progress
    environ: dict[str, str]
    #: Options of the plugin's own on top of its workload's (see `replica_options`).
    extra_options: dict[str, Any] = attrs.Factory(dict)
    row: ChaosRow = attrs.field(init=False)
    produced: int = 0
    _producing: bool = True
    _produce_error: BaseException | None = None
    _pending: int | None = None

    def __attrs_post_init__(self) -> None:
        faults = {"sigkill": 0, "db_kill": 0, "redis_kill": 0, "pause": 0}
        if self.options.replicas > 1:
            faults["freeze"] = 0
        self.row = ChaosRow(self.subject.label, self.target.name, faults=faults,
                            replicas=self.options.replicas)

    @property
    def workload(self) -> Workload:
        return self.subject.workload

    @property
    def label(self) -> str:
        return f"{self.subject.label}/{self.target.name}"

    @property
    def rate(self) -> float:
        """Items produced per second: ``--rate``, capped at the workload's
        `Workload.max_rate` (a job worker drains far fewer than a counter
        flusher, and a backlog that cannot drain in time fails the run)."""
        cap = self.workload.max_rate
        return self.options.rate if cap is None else min(self.options.rate, cap)

    async def run(self) -> ChaosRow:
        started = time.perf_counter()
        if self.rate < self.options.rate:
            self.progress(f"[chaos] {self.label}: producing {self.rate:g} items/s, "
                          "the most its workload drains under chaos (max_rate)")
        tmp = Path(tempfile.mkdtemp(prefix=f"syncd-chaos-{self.subject.plugin}-"))
        procs = [self._process(tmp, n) for n in range(self.options.replicas)]
        self.row.log = str(procs[0].log) if len(procs) == 1 else str(tmp)
        with open_env(self.target.url, self.subject.prefix, self.options.redis_url) as env:
            try:
                await trio.to_thread.run_sync(self._setup, env)
                await self._chaos(env, procs)
                self.row.tally = await trio.to_thread.run_sync(
                    self.workload.tally, env, self.produced)
            except Exception as exc:
                error = unwrap(exc)
                self.row.error = (str(error) if isinstance(error, ChaosError)
                                  else f"{type(error).__name__}: {error}")
            finally:
                with trio.CancelScope(shield=True):
                    for proc in procs:
                        await proc.kill()
                for proc in procs:
                    proc.close()
            self.row.produced = self.produced
            self.row.seconds = time.perf_counter() - started
            if self.row.ok:
                await trio.to_thread.run_sync(self._teardown, env)
                shutil.rmtree(tmp, ignore_errors=True)
                self.row.log = None
        verdict = "ok" if self.row.ok else "FAILED"
        self.progress(f"[chaos] {self.label}: {verdict} — {self._summary()}"
                      + (f"; tally {self.row.tally}" if self.row.tally else "")
                      + (f"; {self.row.error}" if self.row.error else "")
                      + (f"; data kept under prefix {self.subject.prefix}, log {self.row.log}"
                         if not self.row.ok else ""))
        return self.row

    def _process(self, tmp: Path, n: int) -> SyncdProcess:
        """Replica ``n``: its own instance, control-plane port, config and log."""
        instance = self._instance if self.options.replicas == 1 else f"{self._instance}-{n}"
        port = free_port()
        stem = "syncd" if self.options.replicas == 1 else f"syncd-{n}"
        config = self._write_config(tmp / f"{stem}.yaml", port, instance)
        return SyncdProcess(config, port, tmp / f"{stem}.log",
                            {**self.environ, "SYNCD_INSTANCE": instance})

    @property
    def _instance(self) -> str:
        return f"chaos-{self.subject.prefix}"

    def _write_config(self, path: Path, port: int, instance: str) -> Path:
        config: dict[str, Any] = {
            "redis": {"url": self.options.redis_url},
            "databases": {self.target.name: self.target.url},
            "http": {"enabled": True, "listen": f"127.0.0.1:{port}"},
            "shutdown_grace": f"{GRACE:g}s",
            "restart_backoff_max": "1s",
            "log_level": "info",
            "instance": instance,
            "plugins": {self.subject.plugin: {**dict(self.workload.options),
                                              **self.extra_options,
                                              "database": self.target.name}},
        }
        if self.options.replicas > 1:
            config["lease_ttl"] = f"{REPLICA_LEASE_TTL:g}s"
            config["idle_transaction_timeout"] = f"{REPLICA_IDLE_TRANSACTION_TIMEOUT:g}s"
        path.write_text(json.dumps(config, indent=2, default=str))  # JSON is YAML
        return path

    def _setup(self, env: WorkloadEnv) -> None:
        clear_keys(env.redis, env.prefix)
        if self.workload.teardown is not None:
            self.workload.teardown(env)
        self.workload.setup(env)

    def _teardown(self, env: WorkloadEnv) -> None:
        if self.workload.teardown is not None:
            self.workload.teardown(env)
        clear_keys(env.redis, env.prefix)

    async def _chaos(self, env: WorkloadEnv, procs: list[SyncdProcess]) -> None:
        async with trio.open_nursery() as nursery:
            for proc in procs:
                nursery.start_soon(proc.start)
        interval = await self._interval(procs[0])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._produce, env)
            status = trio.CancelScope()
            nursery.start_soon(self._report_status, env, status)
            try:
                await self._inject_faults(env, procs)
            finally:
                self._producing = False
                status.cancel()
        if self._produce_error is not None:
            raise ChaosError(f"producer failed: {self._produce_error!r}")
        for proc in procs:
            self._check_alive(proc)
            proc.thaw()
            if not proc.running:
                await proc.start()
            await proc.wait_live()
            # Pause and resume come in pairs; this is only a safety net.
            with contextlib.suppress(httpx.HTTPError, OSError):
                await http(proc.url, "POST", f"/plugins/{self.subject.plugin}/resume")
        self.progress(f"[chaos] {self.label}: producers stopped at {self.produced:,}; "
                      f"draining")
        await self._drain(env, procs, interval)
        codes: list[int | None] = []
        async with trio.open_nursery() as nursery:
            for proc in procs:
                nursery.start_soon(self._terminate, proc, codes)
        self.row.events = count_events(proc.log for proc in procs)
        self.row.exit_code = next((code for code in codes if code != 0), 0)
        if any(code != 0 for code in codes):
            raise ChaosError(f"syncd serve exited with {codes} after SIGTERM (want 0)")

    @staticmethod
    async def _terminate(proc: SyncdProcess, codes: list[int | None]) -> None:
        codes.append(await proc.terminate(GRACE + 15))

    async def _interval(self, proc: SyncdProcess) -> float | None:
        """The plugin's flush interval (0.0: none), or None if the daemon won't say."""
        try:
            status = await http(proc.url, "GET", f"/plugins/{self.subject.plugin}")
        except (httpx.HTTPError, OSError):
            return None
        return float(status.get("interval") or 0.0)

    async def _produce(self, env: WorkloadEnv) -> None:
        """Produce at ``rate`` items/s, in small chunks, until told to stop.

        A chunk in a thread always completes (no abandon), so ``produced`` is
        exactly what reached Redis.
        """
        started = trio.current_time()
        try:
            while self._producing:
                owed = int((trio.current_time() - started) * self.rate) - self.produced
                if owed > 0:
                    await trio.to_thread.run_sync(
                        self.workload.produce, env, self.produced, owed)
                    self.produced += owed
                await trio.sleep(TICK)
        except Exception as exc:
            self._produce_error = exc
            self._producing = False

    async def _report_status(self, env: WorkloadEnv, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                await trio.sleep(STATUS_EVERY)
                self._pending = await trio.to_thread.run_sync(self.workload.pending, env)
                self.progress(f"[chaos] {self.label}: {self._summary()}, "
                              f"pending {self._pending:,}")

    def _summary(self) -> str:
        f = self.row.faults
        freezes = f", freezes {f['freeze']}" if "freeze" in f else ""
        replicas = f"{self.options.replicas} replicas, " if self.options.replicas > 1 else ""
        return (f"{replicas}kills {f['sigkill']}/{self.options.kills}{freezes}, "
                f"db kills {f['db_kill']}, redis kills {f['redis_kill']}, "
                f"pauses {f['pause']}, produced {self.produced:,}")

    async def _inject_faults(self, env: WorkloadEnv, procs: list[SyncdProcess]) -> None:
        """Until ``kills`` SIGKILLs are done: let the replicas live a random while,
        poking them with the milder faults, then kill one and start it again."""
        deadline = trio.current_time() + self.options.duration_cap
        faults = self.row.faults
        while faults["sigkill"] < self.options.kills and trio.current_time() < deadline:
            if self._produce_error is not None:
                return
            end = trio.current_time() + self.rng.uniform(*self.options.life)
            while (left := end - trio.current_time()) > 0:
                await trio.sleep(min(left, self.rng.uniform(0.05, 0.5)))
                if trio.current_time() < end:
                    await self._mild_fault(env, self.rng.choice(procs))
            proc = self.rng.choice(procs)
            self._check_alive(proc)
            await proc.kill()
            faults["sigkill"] += 1
            # Sometimes stay down a moment, so a backlog builds up.
            if self.rng.random() < 0.3:
                await trio.sleep(self.rng.uniform(0.1, 1.0))
            # Sometimes kill it again before it is even up (during recovery).
            # With replicas, never wait for it: the others carry on meanwhile.
            wait = self.rng.random() >= 0.15
            await proc.start(wait=wait and len(procs) == 1)

    def _check_alive(self, proc: SyncdProcess) -> None:
        """syncd must never exit by itself: a daemon that dies is a bug, even if
        the restart hides it."""
        if proc.process is not None and proc.process.returncode is not None:
            self.row.crashes.append(proc.process.returncode)
            self.progress(f"[chaos] {self.label}: syncd serve exited by itself with "
                          f"{proc.process.returncode} (see {proc.log})")

    async def _mild_fault(self, env: WorkloadEnv, proc: SyncdProcess) -> None:
        pid = proc.pid
        if pid is None:
            return
        kinds = ["db_kill", "redis_kill", "pause", "none"]
        if "freeze" in self.row.faults:
            kinds.append("freeze")
        kind = self.rng.choice(kinds)
        faults = self.row.faults
        if kind == "db_kill":
            if await trio.to_thread.run_sync(kill_db_connections, env, pid):
                faults["db_kill"] += 1
        elif kind == "redis_kill":
            if await trio.to_thread.run_sync(kill_redis_clients, env, pid,
                                             self.options.redis_url):
                faults["redis_kill"] += 1
        elif kind == "pause":
            base, name = proc.url, self.subject.plugin
            try:
                await http(base, "POST", f"/plugins/{name}/pause")
                await trio.sleep(self.rng.uniform(0.05, 0.6))
                await http(base, "POST", f"/plugins/{name}/resume")
                faults["pause"] += 1
            except (httpx.HTTPError, OSError):
                pass  # not up yet, or killed meanwhile: a restart starts unpaused
        elif kind == "freeze":
            # As long as a GC pause or a VM migration may last: often past the
            # lease, so that another replica takes over and this one, thawed,
            # is fenced (or, for a queue, its batch is reclaimed).
            proc.freeze()
            try:
                await trio.sleep(self.rng.uniform(0.2, 2 * REPLICA_LEASE_TTL))
            finally:
                proc.thaw()
            faults["freeze"] += 1

    async def _drain(
        self, env: WorkloadEnv, procs: list[SyncdProcess], interval: float | None,
    ) -> None:
        """Until nothing is pending; flush interval plugins as their timer would
        (on every replica: those on standby answer 409 and are left alone)."""
        started = trio.current_time()
        name = self.subject.plugin
        with trio.move_on_after(self.options.drain_timeout) as scope:
            while True:
                if interval is None or interval > 0:
                    for proc in procs:
                        # Failing while starting, or on a backend hiccup: try again.
                        with contextlib.suppress(httpx.HTTPError, OSError):
                            await http(proc.url, "POST", f"/plugins/{name}/flush",
                                       timeout=max(30.0, self.options.drain_timeout))
                self._pending = await trio.to_thread.run_sync(self.workload.pending, env)
                if self._pending == 0:
                    break
                await trio.sleep(0.1)
        self.row.drain_seconds = trio.current_time() - started
        if scope.cancelled_caught:
            errors = "".join([await self._last_error(proc) for proc in procs])
            raise ChaosError(f"syncd did not drain within {self.options.drain_timeout:.0f} s "
                             f"({self._pending} pending){errors}")

    async def _last_error(self, proc: SyncdProcess) -> str:
        """The plugin's last error as the daemon reports it, for the failure message."""
        try:
            status = await http(proc.url, "GET", f"/plugins/{self.subject.plugin}")
        except (httpx.HTTPError, OSError):
            return ""
        error = status.get("last_error") or {}
        if not error:
            return f"; plugin state {status.get('state')}"
        message = str(error.get("message", ""))[:300]
        return f"; plugin state {status.get('state')}, last error {error.get('type')}: {message}"
