"""Fixtures for the portfolio plugin's tests: ganache, a token contract, npm bullmq."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from portfolio_support import HERE, NODE_DIR, Ganache, Producer, drop_tables, node


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not (NODE_DIR / "node_modules" / "bullmq").is_dir():
        raise pytest.UsageError(
            f"{NODE_DIR}/node_modules is missing: run ./scripts/test (it runs npm ci there)")


@pytest.fixture(name="ganache", scope="session")
def _ganache() -> Iterator[Ganache]:
    """One local EVM node for the whole session (it starts in about a second)."""
    chain = Ganache()
    yield chain
    chain.close()


@pytest.fixture(name="token_code", scope="session")
def _token_code() -> str:
    """Our ERC-20, compiled once per session by npm solc."""
    return node("compile", stdin=(HERE / "Token.sol").read_text())["bytecode"]


@pytest.fixture(name="tokens", scope="session")
def _tokens(ganache: Ganache, token_code: str) -> list[str]:
    """Three deployed tokens with different decimals."""
    return [
        ganache.deploy_token(token_code, "Moon Token", "MOON", 18, 10**30),
        ganache.deploy_token(token_code, "USD Coin", "USDC", 6, 10**18),
        ganache.deploy_token(token_code, "Farm", "FARM", 8, 10**20),
    ]


@pytest.fixture(name="producer")
def _producer() -> Producer:
    return Producer()


@pytest.fixture(name="tables")
def _tables(prefix: str, pg_url: str) -> Iterator[str]:
    """The test's portfolio tables are dropped afterwards."""
    yield prefix
    drop_tables(pg_url, prefix)
