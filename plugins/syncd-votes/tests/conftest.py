"""Fixtures for the votes plugin's tests: a votes workload on each real database."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.testing import REDIS_URL

sys.path.insert(0, str(Path(__file__).parent))

from votes_support import Votes, open_votes


@pytest.fixture(name="votes", params=["mysql", "pg"])
def _votes(request: pytest.FixtureRequest, prefix: str, mysql_url: str,
           pg_url: str) -> Iterator[Votes]:
    """The votes table and keys under ``prefix``, on MariaDB and on PostgreSQL."""
    url = {"mysql": mysql_url, "pg": pg_url}[request.param]
    with open_votes(prefix, url, REDIS_URL) as votes:
        yield votes


@pytest.fixture(name="mysql_votes")
def _mysql_votes(prefix: str, mysql_url: str) -> Iterator[Votes]:
    with open_votes(prefix, mysql_url, REDIS_URL) as votes:
        yield votes


@pytest.fixture(name="sqlite_votes")
def _sqlite_votes(prefix: str, sqlite_url: str) -> Iterator[Votes]:
    with open_votes(prefix, sqlite_url, REDIS_URL) as votes:
        yield votes
