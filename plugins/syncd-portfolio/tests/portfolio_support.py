"""Real peers for the portfolio tests: ganache, a compiled token, npm bullmq."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import httpx

from syncd.testing import REDIS_URL

HERE = Path(__file__).parent
NODE_DIR = HERE / "node"
TRANSFER = "0xa9059cbb"  # transfer(address,uint256)


def node(*args: str, stdin: Any = None, timeout: float = 60, redis_url: str = REDIS_URL,
         prefix: str = "bull") -> Any:
    """Run ``node peer.js ARGS`` and parse what it prints (JSON)."""
    proc = subprocess.run(
        ["node", str(NODE_DIR / "peer.js"), *args],
        input=None if stdin is None else (stdin if isinstance(stdin, str) else json.dumps(stdin)),
        capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, "REDIS_URL": redis_url, "BULL_PREFIX": prefix},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"node peer.js {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout) if proc.stdout.strip() else None


class Producer:
    """npm bullmq, as the seed's core service uses it (on a cluster: ioredis'
    Cluster and a hash-tagged prefix, as BullMQ advises)."""

    def __init__(self, redis_url: str = REDIS_URL, prefix: str = "bull") -> None:
        self.redis_url = redis_url
        self.prefix = prefix

    def _node(self, *args: str, stdin: Any = None) -> Any:
        return node(*args, stdin=stdin, redis_url=self.redis_url, prefix=self.prefix)

    def add(self, queue: str, jobs: list[dict[str, Any]]) -> list[str]:
        return self._node("add", queue, stdin=jobs)

    def counts(self, queue: str) -> dict[str, int]:
        return self._node("counts", queue)

    def workers(self, queue: str) -> list[str]:
        return self._node("workers", queue)


def _word(value: int) -> str:
    return f"{value:064x}"


def _encode_string(text: str) -> str:
    data = text.encode()
    padded = data.hex().ljust((len(data) + 31) // 32 * 64, "0")
    return _word(len(data)) + padded


def constructor_args(name: str, symbol: str, decimals: int, supply: int) -> str:
    """ABI encoding of ``(string, string, uint8, uint256)``."""
    first = _encode_string(name)
    second = _encode_string(symbol)
    head = _word(4 * 32) + _word(4 * 32 + len(first) // 2) + _word(decimals) + _word(supply)
    return head + first + second


class Ganache:
    """A ganache node on an ephemeral port, and the calls the tests make to it."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["node", str(NODE_DIR / "ganache.js")], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.close()
            raise RuntimeError("ganache did not start (run node tests/node/ganache.js to see why)")
        info = json.loads(line)
        self.url = f"http://127.0.0.1:{info['port']}"
        self.accounts: list[str] = info["accounts"]
        self.client = httpx.Client(timeout=30)
        self._id = 0

    def close(self) -> None:
        if hasattr(self, "client"):
            self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def rpc(self, method: str, params: list[Any]) -> Any:
        self._id += 1
        answer = self.client.post(self.url, json={
            "jsonrpc": "2.0", "id": self._id, "method": method, "params": params}).json()
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    def block(self) -> int:
        return int(self.rpc("eth_blockNumber", []), 16)

    def send(self, sender: str, to: str | None, data: str = "0x", value: int = 0) -> dict[
            str, Any]:
        tx: dict[str, Any] = {"from": sender, "data": data, "gas": hex(3_000_000)}
        if to is not None:
            tx["to"] = to
        if value:
            tx["value"] = hex(value)
        txhash = self.rpc("eth_sendTransaction", [tx])
        receipt = self.rpc("eth_getTransactionReceipt", [txhash])
        assert receipt is not None and int(receipt["status"], 16) == 1, receipt
        return receipt

    def deploy_token(self, bytecode: str, name: str, symbol: str, decimals: int,
                     supply: int) -> str:
        data = "0x" + bytecode + constructor_args(name, symbol, decimals, supply)
        return self.send(self.accounts[0], None, data)["contractAddress"].lower()

    def transfer(self, token: str, to: str, amount: int, sender: str | None = None) -> None:
        data = TRANSFER + to.lower().removeprefix("0x").rjust(64, "0") + _word(amount)
        self.send(sender or self.accounts[0], token, data)

    def native_balance(self, wallet: str) -> int:
        return int(self.rpc("eth_getBalance", [wallet, "latest"]), 16)

    def token_balance(self, token: str, wallet: str) -> int:
        data = "0x70a08231" + wallet.lower().removeprefix("0x").rjust(64, "0")
        return int(self.rpc("eth_call", [{"to": token, "data": data}, "latest"]), 16)


def section(prefix: str, rpc_url: str, **overrides: Any) -> dict[str, Any]:
    """A ``plugins.portfolio`` section whose keys and tables are the test's own,
    with short locks so a killed worker's jobs come back within seconds."""
    options: dict[str, Any] = {
        "queue": f"{prefix}_q",
        "jobs_table": f"{prefix}_jobs",
        "balances_table": f"{prefix}_balances",
        "tokens_table": f"{prefix}_tokens",
        "chains": {1337: {"rpc_url": rpc_url, "timeout": "10s"}},
        "backoff": "200ms",
        "lock_duration": "4s",
        "stalled_interval": "2s",
        "timeout": "30s",
    }
    options.update(overrides)
    return options


def drop_tables(pg_url: str, prefix: str) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        for suffix in ("jobs", "balances", "tokens"):
            conn.execute(f'DROP TABLE IF EXISTS "{prefix}_{suffix}"')


def pg_rows(pg_url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


class FlakyRPC:
    """A JSON-RPC endpoint in front of ganache that the test can break.

    ``mode``: ``"up"`` forwards to ganache (after ``delay`` seconds),
    ``"down"`` answers 503, ``"hang"`` accepts the request and never answers.
    Start it with ``url = await nursery.start(flaky.serve)``.
    """

    def __init__(self, upstream: str) -> None:
        import trio

        self.upstream = upstream
        self.mode = "up"
        self.delay = 0.0
        self.requests: list[tuple[float, str]] = []  # (trio time, mode) per request
        self.changed = trio.Event()

    def set(self, mode: str) -> None:
        import trio

        self.mode = mode
        self.changed.set()
        self.changed = trio.Event()

    async def serve(self, *, task_status: Any) -> None:
        import trio

        async with httpx.AsyncClient(timeout=30) as client:
            handler = lambda stream: self._connection(stream, client)  # noqa: E731
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(
                    functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
                port = listeners[0].socket.getsockname()[1]
                task_status.started(f"http://127.0.0.1:{port}")

    async def _connection(self, stream: Any, client: httpx.AsyncClient) -> None:
        import trio

        # A client that goes away mid-request (a job cancelled by its timeout,
        # a daemon SIGKILLed) resets the connection: normal for a server, and
        # no reason to fail the test that killed it.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._exchange(stream, client)

    async def _exchange(self, stream: Any, client: httpx.AsyncClient) -> None:
        import trio

        buffer = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buffer += chunk
                body, buffer = buffer[:length], buffer[length:]
                mode = self.mode
                self.requests.append((trio.current_time(), mode))
                if mode == "hang":
                    await trio.sleep_forever()
                if mode == "down":
                    status, answer = b"503 Service Unavailable", b'{"error":"down"}'
                else:
                    if self.delay:
                        await trio.sleep(self.delay)
                    upstream = await client.post(self.upstream, content=body, headers={
                        "content-type": "application/json"})
                    status, answer = b"200 OK", upstream.content
                await stream.send_all(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(answer)).encode() + b"\r\n\r\n" + answer)


def user_job(user: str, wallets: list[str], tokens: list[str], chain: int = 1337) -> dict[
        str, Any]:
    return {"userId": user, "wallets": [{"chainId": chain, "address": w} for w in wallets],
            "tokens": {str(chain): tokens}}


def new_wallet() -> str:
    return "0x" + secrets.token_hex(20)


def fund(ganache: Ganache, tokens: list[str], wallet: str, seed: int) -> dict[str, int]:
    """Give ``wallet`` some ether and each token; return what it holds."""
    held = {"native": 10**15 * (seed + 1)}
    ganache.send(ganache.accounts[1], wallet, value=held["native"])
    for i, token in enumerate(tokens):
        held[token] = 1000 * (seed + 1) + i
        ganache.transfer(token, wallet, held[token])
    return held
