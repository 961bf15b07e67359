"""Chain data providers: the interface, and the built-in EVM JSON-RPC one.

A provider answers for one chain: the current block, native and ERC-20
balances of wallets at that block, and token metadata. The EVM provider
packs its calls into JSON-RPC batch requests (``batch_size`` calls per
HTTP request) over one shared ``httpx.AsyncClient``, which runs on Trio
natively. Other packages add providers through the ``portfolio_provider``
hook (see `syncd_portfolio.hookspecs`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs
import httpx

from syncd_portfolio import abi
from syncd_portfolio.jobs import BadJob

NATIVE = "native"


class ProviderError(Exception):
    """The provider failed this time (network, HTTP status, JSON-RPC error): retry later."""


@attrs.frozen
class TokenInfo:
    address: str
    name: str
    symbol: str
    decimals: int


@attrs.frozen
class Snapshot:
    """Balances read at one block.

    Attributes:
        block: The block number every balance was read at.
        balances: ``(wallet, token)`` → balance in the token's smallest unit;
            ``token`` is `NATIVE` or the contract address.
    """

    block: int
    balances: Mapping[tuple[str, str], int]


@runtime_checkable
class Provider(Protocol):
    """What a job asks of a chain. ``endpoint`` names its circuit breaker."""

    endpoint: str

    async def snapshot(self, wallets: Sequence[str], tokens: Sequence[str]) -> Snapshot:
        """Native and ``tokens`` balances of ``wallets``, all at one block."""
        ...

    async def token_metadata(self, tokens: Sequence[str]) -> dict[str, TokenInfo]:
        """Name, symbol and decimals of each ERC-20 contract."""
        ...


@attrs.define(eq=False)
class EvmProvider:
    """EVM JSON-RPC over HTTP, batched.

    Attributes:
        chain_id: The chain it answers for.
        endpoint: The JSON-RPC URL.
        client: The shared HTTP client.
        batch_size: Calls per batch request.
        timeout: Seconds one HTTP request may take.
    """

    chain_id: int
    endpoint: str
    client: httpx.AsyncClient
    batch_size: int = 100
    timeout: float = 30.0
    _next_id: int = 0

    async def call(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """Run ``(method, params)`` calls as JSON-RPC batches; their results in order."""
        results: list[Any] = []
        for start in range(0, len(calls), self.batch_size):
            results += await self._batch(calls[start:start + self.batch_size])
        return results

    async def _batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        first = self._next_id
        self._next_id += len(calls)
        body = [{"jsonrpc": "2.0", "id": first + i, "method": method, "params": params}
                for i, (method, params) in enumerate(calls)]
        try:
            response = await self.client.post(self.endpoint, json=body, timeout=self.timeout)
            response.raise_for_status()
            answers = response.json()
        except httpx.HTTPStatusError as exc:
            raise ProviderError(
                f"chain {self.chain_id}: HTTP {exc.response.status_code} from the provider"
            ) from None
        except httpx.TimeoutException:
            raise ProviderError(
                f"chain {self.chain_id}: no answer from the provider within "
                f"{self.timeout:g}s") from None
        except (httpx.HTTPError, ValueError) as exc:
            raise ProviderError(f"chain {self.chain_id}: provider request failed: "
                                f"{type(exc).__name__}: {exc}") from None
        if isinstance(answers, dict):  # some servers answer a batch with one error object
            answers = [answers]
        if not isinstance(answers, list):
            raise ProviderError(f"chain {self.chain_id}: the provider's answer is not a batch")
        by_id = {a.get("id"): a for a in answers if isinstance(a, dict)}
        results = []
        for i, (method, _) in enumerate(calls):
            answer = by_id.get(first + i)
            if answer is None:
                raise ProviderError(f"chain {self.chain_id}: no answer to {method}")
            if "error" in answer:
                error = answer["error"] or {}
                message = error.get("message") if isinstance(error, dict) else error
                raise ProviderError(f"chain {self.chain_id}: {method} failed: {message}")
            results.append(answer.get("result"))
        return results

    async def block_number(self) -> int:
        [result] = await self.call([("eth_blockNumber", [])])
        return _quantity(result, "eth_blockNumber")

    async def snapshot(self, wallets: Sequence[str], tokens: Sequence[str]) -> Snapshot:
        # Pin the block first so that every balance of the snapshot is read
        # at the same one, and the block number stored with them is true.
        block = await self.block_number()
        tag = hex(block)
        calls: list[tuple[str, list[Any]]] = []
        keys: list[tuple[str, str]] = []
        for wallet in wallets:
            calls.append(("eth_getBalance", [wallet, tag]))
            keys.append((wallet, NATIVE))
            for token in tokens:
                calls.append(("eth_call", [{"to": token, "data": abi.balance_of(wallet)}, tag]))
                keys.append((wallet, token))
        results = await self.call(calls)
        balances: dict[tuple[str, str], int] = {}
        for (wallet, token), result in zip(keys, results, strict=True):
            if token == NATIVE:
                balances[(wallet, token)] = _quantity(result, "eth_getBalance")
            else:
                balances[(wallet, token)] = self._token_uint(token, result, "balanceOf")
        return Snapshot(block, balances)

    async def token_metadata(self, tokens: Sequence[str]) -> dict[str, TokenInfo]:
        calls: list[tuple[str, list[Any]]] = []
        for token in tokens:
            for selector in (abi.DECIMALS, abi.SYMBOL, abi.NAME):
                calls.append(("eth_call", [{"to": token, "data": selector}, "latest"]))
        results = await self.call(calls)
        found = {}
        for i, token in enumerate(tokens):
            decimals, symbol, name = results[3 * i:3 * i + 3]
            try:
                info = TokenInfo(token, abi.decode_string(name), abi.decode_string(symbol),
                                 self._token_uint(token, decimals, "decimals"))
            except abi.AbiError as exc:
                raise BadJob(f"token {token} on chain {self.chain_id}: {exc}") from None
            found[token] = info
        return found

    def _token_uint(self, token: str, result: Any, what: str) -> int:
        if result in (None, "0x"):
            # No code at that address (or a call that reverted without data):
            # retrying will not make it a token.
            raise BadJob(f"token {token} on chain {self.chain_id} answered nothing to "
                         f"{what}(): not an ERC-20 contract")
        try:
            return abi.decode_uint(result)
        except abi.AbiError as exc:
            raise BadJob(f"token {token} on chain {self.chain_id}: {what}(): {exc}") from None


def _quantity(result: Any, method: str) -> int:
    if not isinstance(result, str) or not result.startswith("0x"):
        raise ProviderError(f"{method} answered {result!r}, not a hex quantity")
    try:
        return int(result, 16)
    except ValueError:
        raise ProviderError(f"{method} answered {result!r}, not a hex quantity") from None
