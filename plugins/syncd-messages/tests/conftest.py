"""Fixtures for the messages plugin's tests: its workloads on each real database."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from messages_support import Messages, open_messages


@pytest.fixture(name="messages", params=["pg", "mysql", "sqlite"])
def _messages(request: pytest.FixtureRequest, prefix: str, pg_url: str, mysql_url: str,
              sqlite_url: str) -> Iterator[Messages]:
    """Every writer (database, a real directory, a webhook receiver process) on each database."""
    url = {"pg": pg_url, "mysql": mysql_url, "sqlite": sqlite_url}[request.param]
    with open_messages(prefix, url, variant=1) as messages:
        yield messages


@pytest.fixture(name="pg_messages")
def _pg_messages(prefix: str, pg_url: str) -> Iterator[Messages]:
    with open_messages(prefix, pg_url, variant=1) as messages:
        yield messages
