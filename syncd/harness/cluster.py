"""A real local Redis Cluster for tests and `syncd chaos`: 3 masters, 3 replicas.

Redis' own cluster mode, not an emulation: six ``redis-server
--cluster-enabled yes`` child processes on loopback ports, joined by
``redis-cli --cluster create --cluster-replicas 1``. Each node gets its
client port and its cluster bus port (``cluster-port``) from the kernel's
ephemeral range, so several runs on one machine never collide, and its own
directory under ``workdir`` for ``nodes.conf``. Nothing persists
(``--save '' --appendonly no``).

Every wait is bounded: a node that does not answer, or a cluster that does
not reach ``cluster_state:ok`` with every replica attached, fails the start
with what it last saw, and the processes already started are stopped.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import redis

#: Bound on each start-up wait (a node answering PING, the cluster being ok).
START_TIMEOUT = 30.0


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports the kernel considers free right now (loopback)."""
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _wait(what: str, check: object, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()  # type: ignore[operator]
            if last is True:
                return
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"local Redis Cluster: {what} not within {timeout:.0f} s (last: {last!r})")


@attrs.define
class LocalCluster:
    """Six Redis processes forming one cluster; `start`, use `url`, `stop`.

    Attributes:
        workdir: Where each node keeps its ``nodes.conf`` (one folder per port).
        masters: Master count (each gets one replica).
        node_timeout_ms: ``cluster-node-timeout``: how soon a dead master is
            failed over; short, so failover tests are quick.
    """

    workdir: Path
    masters: int = 3
    node_timeout_ms: int = 2000
    ports: list[int] = attrs.Factory(list)
    _procs: list[subprocess.Popen[bytes]] = attrs.Factory(list)

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a startup node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    @staticmethod
    def available() -> bool:
        """Whether ``redis-server`` and ``redis-cli`` are installed."""
        return bool(shutil.which("redis-server") and shutil.which("redis-cli"))

    def start(self) -> LocalCluster:
        """Start the nodes, create the cluster, wait until it serves every slot."""
        count = self.masters * 2
        ports = _free_ports(count * 2)
        self.ports, bus = ports[:count], ports[count:]
        try:
            for port, bus_port in zip(self.ports, bus, strict=True):
                folder = self.workdir / str(port)
                folder.mkdir(parents=True, exist_ok=True)
                self._procs.append(subprocess.Popen(
                    ["redis-server", "--bind", "127.0.0.1", "--port", str(port),
                     "--cluster-enabled", "yes", "--cluster-port", str(bus_port),
                     "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", str(self.node_timeout_ms),
                     "--save", "", "--appendonly", "no", "--daemonize", "no",
                     # A replica syncs at once, not after the default 5 s wait.
                     "--repl-diskless-sync-delay", "0",
                     "--dir", str(folder), "--logfile", str(folder / "redis.log")],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL))
            for port in self.ports:
                _wait(f"node {port} answering PING", lambda port=port: self.node(port).ping())
            subprocess.run(
                ["redis-cli", "--cluster", "create",
                 *(f"127.0.0.1:{port}" for port in self.ports),
                 "--cluster-replicas", "1", "--cluster-yes"],
                check=True, capture_output=True, timeout=START_TIMEOUT)
            _wait("cluster_state:ok with every replica attached", self.healthy)
        except BaseException:
            self.stop()
            raise
        return self

    def node(self, port: int) -> redis.Redis:
        """A plain client on one node (for CLUSTER commands)."""
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5,
                           socket_connect_timeout=2)

    def healthy(self) -> bool | str:
        """True once every node says ``cluster_state:ok`` and every master has a replica."""
        masters = replicas = 0
        for port in self.ports:
            with self.node(port) as client:
                info = client.cluster("info")
                if info.get("cluster_state") != "ok":
                    return f"node {port}: {info.get('cluster_state')}"
                role = client.info("replication")
                if role["role"] == "master":
                    # The master's own view, through the cluster bus: a
                    # manual failover is refused until it knows its replica.
                    myid = client.execute_command("CLUSTER", "MYID")
                    if not client.execute_command("CLUSTER", "REPLICAS", myid):
                        return f"master {port} does not know its replica yet"
                    masters += 1
                elif role.get("master_link_status") == "up":
                    replicas += 1
        return True if (masters, replicas) == (self.masters, self.masters) else (
            f"{masters} masters, {replicas} replicas with their link up")

    def masters_by_port(self) -> dict[int, str]:
        """Port → node id of each master."""
        out = {}
        for port in self.ports:
            with self.node(port) as client:
                if client.info("replication")["role"] == "master":
                    out[port] = client.execute_command("CLUSTER", "MYID").decode()
        return out

    def owner(self, slot: int) -> int:
        """The port of the master serving ``slot``."""
        with self.node(self.ports[0]) as client:
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise LookupError(f"slot {slot} is not served")

    def migrate_slot(self, slot: int, to_port: int, batch: int = 10,
                     between: object = None) -> None:
        """Move ``slot`` to the master on ``to_port`` as ``redis-cli --cluster
        reshard`` does: IMPORTING/MIGRATING, MIGRATE the keys a few at a time
        (``between()`` is called after each step, so a test can interleave
        work), then SETSLOT NODE on every master. Clients see ASK and TRYAGAIN
        during the move and MOVED after it."""
        masters = self.masters_by_port()
        from_port = self.owner(slot)
        if from_port == to_port:
            return
        source, target = self.node(from_port), self.node(to_port)
        try:
            target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", masters[from_port])
            source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", masters[to_port])
            while keys := source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
                source.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000,
                                       "KEYS", *keys)
                if callable(between):
                    between()
            for port in masters:
                with self.node(port) as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", masters[to_port])
        finally:
            source.close()
            target.close()

    @property
    def running(self) -> bool:
        """Whether this object started the nodes (not so for a given URL)."""
        return bool(self._procs)

    def fail_over(self, master_port: int) -> None:
        """``CLUSTER FAILOVER`` on a replica of the master on ``master_port``;
        return once the replica serves that master's slots and the old master
        follows it (a coordinated failover: no acknowledged write is lost)."""
        with self.node(master_port) as master:
            master_id = master.execute_command("CLUSTER", "MYID").decode()
        replica = self.replica_of(master_port)
        with self.node(replica) as client:
            client.execute_command("CLUSTER", "FAILOVER")

        def switched() -> bool | str:
            with self.node(replica) as client:
                if client.info("replication")["role"] != "master":
                    return "replica not promoted yet"
            with self.node(master_port) as client:
                info = client.info("replication")
                if info["role"] != "slave" or info.get("master_link_status") != "up":
                    return f"old master {master_id}: {info['role']}"
            return self.healthy()

        _wait("the failover", switched)

    def replica_of(self, master_port: int) -> int:
        """The port of a replica that follows the master on ``master_port``."""
        for port in self.ports:
            with self.node(port) as client:
                info = client.info("replication")
                if info["role"] == "slave" and int(info["master_port"]) == master_port:
                    return port
        raise LookupError(f"no replica follows {master_port}")

    @contextlib.contextmanager
    def frozen(self, port: int) -> Iterator[None]:
        """The node on ``port`` stopped (SIGSTOP) inside the block, resumed
        (SIGCONT) after it: it keeps its connections but answers nothing, as
        a node in a long GC-like stall or a VM migration does."""
        proc = self._procs[self.ports.index(port)] if self._procs else None
        if proc is None:
            raise LookupError("only nodes this object started can be frozen")
        proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after a bound) and wait for it."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._procs.clear()
