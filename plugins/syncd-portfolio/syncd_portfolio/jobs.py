"""The seed's job names and data, validated into records before any work starts.

Bad input (an unknown name, data of the wrong shape, a wallet that is not an
address) raises `BadJob`, which the worker turns into BullMQ's
``UnrecoverableError``: the job fails at once with the reason, no retries.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

PORTFOLIO_SYNC = "portfolio-sync"
BULK_USER_SYNC = "bulk-user-sync"
CHAIN_SYNC = "chain-sync"
TOKEN_METADATA = "token-metadata"
NAMES = (PORTFOLIO_SYNC, BULK_USER_SYNC, CHAIN_SYNC, TOKEN_METADATA)

#: The seed's priorities, as BullMQ priorities (lower runs first).
PRIORITIES = {"high": 1, "medium": 5, "low": 10}

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
USER_ID_MAX = 200


class BadJob(ValueError):
    """The job cannot succeed however often it is retried; the message says why."""


@attrs.frozen
class Wallet:
    chain_id: int
    address: str  # lower-case 0x-hex


@attrs.frozen
class UserSync:
    """``portfolio-sync`` (and each user of ``bulk-user-sync``, and ``chain-sync``).

    Attributes:
        user_id: The seed's ``userId``.
        wallets: Wallets to read, each on its chain.
        tokens: ERC-20 contracts to read per chain, besides the native balance.
    """

    user_id: str
    wallets: tuple[Wallet, ...]
    tokens: Mapping[int, tuple[str, ...]]

    def chains(self) -> list[int]:
        return sorted({w.chain_id for w in self.wallets})


@attrs.frozen
class BulkSync:
    users: tuple[Mapping[str, Any], ...]  # each a valid portfolio-sync data, as given


@attrs.frozen
class TokenMetadata:
    chain_id: int
    tokens: tuple[str, ...]


Parsed = UserSync | BulkSync | TokenMetadata


def address(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise BadJob(f"{where}: {value!r} is not an address (0x and 40 hex digits)")
    return value.lower()


def chain_id(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise BadJob(f"{where}: {value!r} is not a chain id")
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, str) and value.strip().isdigit() and int(value) > 0:
        return int(value)
    raise BadJob(f"{where}: {value!r} is not a chain id (a positive integer)")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BadJob(f"{where} must be an object, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadJob(f"{where} must be a list, got {type(value).__name__}")
    return value


def _user_id(data: Mapping[str, Any], where: str) -> str:
    user = data.get("userId")
    if isinstance(user, int) and not isinstance(user, bool):
        user = str(user)
    if not isinstance(user, str) or not user or len(user) > USER_ID_MAX:
        raise BadJob(f"{where}.userId must be a non-empty string of at most "
                     f"{USER_ID_MAX} characters, got {user!r}")
    return user


def _tokens(value: Any, where: str) -> dict[int, tuple[str, ...]]:
    if value is None:
        return {}
    tokens: dict[int, list[str]] = {}
    for key, contracts in _mapping(value, where).items():
        cid = chain_id(key, f"{where} key")
        found = tokens.setdefault(cid, [])
        for i, contract in enumerate(_list(contracts, f"{where}.{key}")):
            a = address(contract, f"{where}.{key}[{i}]")
            if a not in found:
                found.append(a)
    return {cid: tuple(found) for cid, found in tokens.items()}


def _wallets(value: Any, where: str, max_wallets: int, chain: int | None = None) -> tuple[
        Wallet, ...]:
    items = _list(value, where)
    if len(items) > max_wallets:
        raise BadJob(f"{where}: {len(items)} wallets, more than the {max_wallets} allowed")
    wallets: list[Wallet] = []
    for i, item in enumerate(items):
        w = f"{where}[{i}]"
        if chain is not None and isinstance(item, str):
            wallet = Wallet(chain, address(item, w))  # chain-sync may list bare addresses
        else:
            item = _mapping(item, w)
            cid = chain_id(item.get("chainId", chain), f"{w}.chainId")
            if chain is not None and cid != chain:
                raise BadJob(f"{w}.chainId is {cid}, but the job is for chain {chain}")
            wallet = Wallet(cid, address(item.get("address"), f"{w}.address"))
        if wallet not in wallets:
            wallets.append(wallet)
    return tuple(wallets)


def parse_user(data: Any, where: str, max_wallets: int) -> UserSync:
    data = _mapping(data, where)
    return UserSync(
        _user_id(data, where),
        _wallets(data.get("wallets"), f"{where}.wallets", max_wallets),
        _tokens(data.get("tokens"), f"{where}.tokens"),
    )


def parse(name: str, data: Any, *, max_wallets: int = 100, max_users: int = 10_000) -> Parsed:
    """Validate a job's name and data.

    Raises:
        BadJob: naming the field at fault.
    """
    if name == PORTFOLIO_SYNC:
        return parse_user(data, "data", max_wallets)
    if name == CHAIN_SYNC:
        data = _mapping(data, "data")
        cid = chain_id(data.get("chainId"), "data.chainId")
        if isinstance(data.get("tokens"), list):  # a plain list: this chain's tokens
            tokens = {cid: tuple(dict.fromkeys(address(t, f"data.tokens[{i}]")
                                               for i, t in enumerate(data["tokens"])))}
        else:
            tokens = _tokens(data.get("tokens"), "data.tokens")
        return UserSync(
            _user_id(data, "data"),
            _wallets(data.get("wallets"), "data.wallets", max_wallets, chain=cid),
            {cid: tokens.get(cid, ())},
        )
    if name == BULK_USER_SYNC:
        users = _list(_mapping(data, "data").get("users"), "data.users")
        if len(users) > max_users:
            raise BadJob(f"data.users: {len(users)} users, more than the {max_users} allowed")
        for i, user in enumerate(users):
            parse_user(user, f"data.users[{i}]", max_wallets)
        return BulkSync(tuple(users))
    if name == TOKEN_METADATA:
        data = _mapping(data, "data")
        cid = chain_id(data.get("chainId"), "data.chainId")
        contracts = _list(data.get("tokens"), "data.tokens")
        return TokenMetadata(cid, tuple(dict.fromkeys(
            address(t, f"data.tokens[{i}]") for i, t in enumerate(contracts))))
    raise BadJob(f"unknown job name {name!r} (known: {', '.join(NAMES)})")


def priority(value: Any) -> int:
    """``high|medium|low`` (or a BullMQ priority number) as a BullMQ priority."""
    if isinstance(value, str) and value in PRIORITIES:
        return PRIORITIES[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2_097_152:
        return value
    raise BadJob(f"priority must be one of high, medium, low, got {value!r}")
