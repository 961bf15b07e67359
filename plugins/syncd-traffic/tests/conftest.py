"""Fixtures for the traffic plugin's tests: a workload on each real database."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from syncd_traffic.workload import TrafficWorkload

import syncd
from syncd.testing import connector, dialect_of, redis_client_for

sys.path.insert(0, str(Path(__file__).parent))

from traffic_support import NODES


@pytest.fixture(name="db_url", params=["mysql", "pg", "sqlite"])
def _db_url(request: pytest.FixtureRequest, mysql_url: str, pg_url: str, sqlite_url: str) -> str:
    return {"mysql": mysql_url, "pg": pg_url, "sqlite": sqlite_url}[request.param]


@pytest.fixture(name="env")
def _env(db_url: str, prefix: str, redis_url: str) -> Iterator[syncd.WorkloadEnv]:
    client = redis_client_for(redis_url)
    env = syncd.WorkloadEnv(client, db_url, dialect_of(db_url), connector(db_url), prefix)
    yield env
    TrafficWorkload(prefix, NODES).teardown(env)
    client.close()


@pytest.fixture(name="workload")
def _workload(env: syncd.WorkloadEnv) -> TrafficWorkload:
    workload = TrafficWorkload(env.prefix, NODES)
    workload.setup(env)
    return workload
