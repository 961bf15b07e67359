"""Helpers shared by the traffic plugin's tests (a uniquely named module)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import syncd_traffic
from syncd_traffic.workload import TrafficWorkload

from syncd.testing import daemon_config

#: Node rows per test table: enough for several batches, quick to create.
NODES = 2_000
PLUGINS = [syncd_traffic]

def connector(url: str) -> Callable[[], Any]:
    """A DB-API connection factory for a database URL (our own, not the core's)."""
    parts = urlsplit(url)
    if parts.scheme.startswith("postgres"):
        import psycopg

        return lambda: psycopg.connect(url)
    if parts.scheme in ("mysql", "mariadb"):
        import pymysql

        return lambda: pymysql.connect(
            host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
            user=unquote(parts.username or "root"), password=unquote(parts.password or ""),
            database=parts.path.lstrip("/"), charset="utf8mb4")
    return lambda: sqlite3.connect(url.split(":///", 1)[1])


def dialect(url: str) -> str:
    scheme = urlsplit(url).scheme
    return "postgresql" if scheme.startswith("postgres") else (
        "mysql" if scheme in ("mysql", "mariadb") else "sqlite")


def config_for(workload: TrafficWorkload, db_url: str, **options: Any) -> dict[str, Any]:
    """A daemon config running only the traffic plugin on ``db_url``."""
    section = {**workload.options, "interval": "1h", **options}
    return daemon_config({"traffic": section}, {"default": db_url})

