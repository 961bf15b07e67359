"""A deterministic EVM JSON-RPC responder for ``syncd chaos`` and ``syncd bench``: real HTTP.

The portfolio workload cannot run a blockchain node per chaos run (ganache
takes seconds to start and its balances are whatever its transactions made),
and the tally must know, without asking syncd, what every balance row should
hold. So this answers exactly the calls `syncd_portfolio.provider.EvmProvider`
makes, with values that are a pure function of their inputs:

- ``eth_getBalance(wallet, block)``: ``balance(wallet, NATIVE)``;
- ``eth_call`` of ``balanceOf(wallet)`` on a known token: ``balance(wallet, token)``;
  ``decimals()``, ``symbol()``, ``name()`` from `TOKENS`; any other address
  answers ``0x`` (no code there: the provider calls it "not an ERC-20");
- ``eth_blockNumber``: a number that grows with the wall clock (so a later
  read is at a later block, as on a chain, and balances never regress);
- ``eth_chainId``: the chain of the URL's path (``/1``, ``/137``);

each alone or in a JSON-RPC batch. It runs as a process of its own
(``python -m syncd_portfolio.responder --port P``), so the daemons under
test never share its GIL, and the harness's SIGKILLs of syncd cost it only
a connection.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from syncd_portfolio import abi
from syncd_portfolio.provider import NATIVE

#: The ERC-20 contracts the responder knows, per chain: address → (name, symbol, decimals).
TOKENS: dict[int, dict[str, tuple[str, str, int]]] = {
    1: {
        "0x" + "a0b8" * 10: ("USD Coin", "USDC", 6),
        "0x" + "dac1" * 10: ("Tether USD", "USDT", 6),
    },
    137: {
        "0x" + "7ceb" * 10: ("Wrapped Ether", "WETH", 18),
    },
}
#: Blocks are numbered from this wall-clock second, four a second.
EPOCH = 1_700_000_000


def balance(wallet: str, token: str) -> int:
    """What ``wallet`` holds of ``token`` (`NATIVE` or a contract), in its smallest unit.

    Up to 10^27: past 2^64, so an int64 anywhere on the way would show.
    """
    digest = hashlib.sha256(f"{wallet.lower()}:{token.lower()}".encode()).digest()
    return int.from_bytes(digest[:16], "big") % 10**27


def block_number() -> int:
    return int((time.time() - EPOCH) * 4)


def _word(value: int) -> str:
    return f"{value:064x}"


def _string(text: str) -> str:
    data = text.encode()
    return "0x" + _word(32) + _word(len(data)) + data.hex().ljust(
        (len(data) + 31) // 32 * 64, "0")


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def answer(chain: int, method: str, params: list[Any]) -> Any:
    """The result of one call on ``chain``.

    Raises:
        RpcError: unknown method, or parameters of the wrong shape.
    """
    tokens = TOKENS.get(chain, {})
    try:
        if method == "eth_chainId":
            return hex(chain)
        if method == "eth_blockNumber":
            return hex(block_number())
        if method == "eth_getBalance":
            return hex(balance(str(params[0]), NATIVE))
        if method == "eth_call":
            to = str(params[0]["to"]).lower()
            data = str(params[0].get("data") or params[0].get("input") or "")
            if to not in tokens:
                return "0x"  # no contract there
            name, symbol, decimals = tokens[to]
            selector = data[:10]
            if selector == abi.BALANCE_OF:
                return "0x" + _word(balance("0x" + data[-40:], to))
            if selector == abi.DECIMALS:
                return "0x" + _word(decimals)
            if selector == abi.SYMBOL:
                return _string(symbol)
            if selector == abi.NAME:
                return _string(name)
            raise RpcError(-32000, "execution reverted")
    except (IndexError, KeyError, TypeError, AttributeError):
        raise RpcError(-32602, f"invalid params for {method}") from None
    raise RpcError(-32601, f"the method {method} does not exist/is not available")


def _one(chain: int, call: Any) -> dict[str, Any]:
    if not isinstance(call, dict) or not isinstance(call.get("method"), str):
        return {"jsonrpc": "2.0", "id": None,
                "error": {"code": -32600, "message": "invalid request"}}
    reply: dict[str, Any] = {"jsonrpc": "2.0", "id": call.get("id")}
    try:
        reply["result"] = answer(chain, call["method"], list(call.get("params") or []))
    except RpcError as exc:
        reply["error"] = {"code": exc.code, "message": str(exc)}
    return reply


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive: syncd's httpx client reuses its connections, as with a real node.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle on, the body waits for
    # the client's delayed ACK, 40 ms a request (measured: 100 snapshots/s).
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        try:
            chain = int(self.path.strip("/") or 1)
        except ValueError:
            chain = 0
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            request = json.loads(body)
        except ValueError:
            reply: Any = {"jsonrpc": "2.0", "id": None,
                          "error": {"code": -32700, "message": "parse error"}}
        else:
            reply = ([_one(chain, c) for c in request] if isinstance(request, list)
                     else _one(chain, request))
        data = json.dumps(reply, separators=(",", ":")).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # thousands of requests a second: no access log


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a replica starting (up to 100
    # connections at once, three replicas) overflowed it, and the resets
    # opened the daemons' circuit breakers (a chaos run dead-lettered a job).
    request_queue_size = 1024

    # A SIGKILLed daemon's connections reset; that is its business, not an error to print.
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    server = _Server(("127.0.0.1", args.port), _Handler)
    # The parent waits for this line: a port someone else holds makes the
    # bind above fail (and this process exit) instead of a silent stranger.
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
