"""A setting a library would reject later stops ``syncd serve`` at once: one
line on stderr naming the key, exit status 2 (README, "Configuration").

Before, an unsupported Redis URL scheme exited 1 with a redis-py traceback,
and an ``http.listen`` port already in use with a ~100-line exception group.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from syncd.testing import PG_URL, REDIS_URL


def serve(tmp_path: Path, **config: Any) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "syncd.yaml"
    path.write_text(yaml.safe_dump({
        "redis": {"url": REDIS_URL},
        "databases": {"default": PG_URL},
        "http": {"listen": "127.0.0.1:0"},
        "plugins": {},
        **config,
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    env["SYNCD_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return subprocess.run([sys.executable, "-m", "syncd", "serve", "--config", str(path)],
                          env=env, capture_output=True, text=True, timeout=60)


def assert_config_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"syncd: config error: {message}"), lines[0]


@pytest.fixture(name="busy_port")
def _busy_port() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.slow
class TestOneLine:
    """Each wrong value: exit 2, one line, the key named."""

    def test_listen_port_in_use(self, tmp_path: Path, busy_port: int) -> None:
        result = serve(tmp_path, http={"listen": f"127.0.0.1:{busy_port}"})
        assert_config_error(result, f"http.listen: cannot listen on 127.0.0.1:{busy_port}: ")

    @pytest.mark.parametrize(("config", "message"), [
        ({"redis": {"url": "http://127.0.0.1:6379/0"}},
         "redis.url: Redis URL must specify one of the following schemes"),
        ({"redis": {"url": "redis://127.0.0.1:6379/zero"}},
         "redis.url: the database must be a number, got 'zero'"),
        ({"redis": {"url": "redis://127.0.0.1:6379/0?socket_timeout=soon"}},
         "redis.url: Invalid value for 'socket_timeout'"),
        ({"redis": {"url": "redis+cluster://:pw@127.0.0.1:7000,127.0.0.1"}},
         "redis.url: each cluster node is host:port, got '127.0.0.1' (e.g. redis+cluster://"),
        ({"databases": {"default": "postgresql://postgres@127.0.0.1:654321/test"}},
         "databases.default: invalid port in PostgreSQL URL: '654321'"),
        ({"databases": {"default": "postgresql://postgres@127.0.0.1/test?sslmode=maybe"}},
         "databases.default: PostgreSQL URL option 'sslmode' must be one of"),
        ({"databases": {"default": "mysql://root@127.0.0.1/test?read_timeout=0"}},
         "databases.default: MySQL URL option 'read_timeout' must be more than 0"),
        ({"databases": {"default": "sqlite:////nonexistent-syncd-dir/x.db"}},
         "databases.default: no such directory for the SQLite file: /nonexistent-syncd-dir"),
        ({"lock_timeout": "0s"}, "lock_timeout: must be more than 0s"),
        ({"shutdown_grace": float("nan")}, "shutdown_grace: expected a finite duration"),
        ({"restart_backoff_max": 0}, "restart_backoff_max: must be more than 0s"),
    ], ids=["redis-scheme", "redis-db", "redis-option", "redis-cluster-node", "pg-port",
            "pg-sslmode", "mysql-timeout", "sqlite-folder", "lock-timeout",
            "nan-grace", "zero-backoff"])
    def test_rejected_at_start(self, tmp_path: Path, config: dict[str, Any],
                               message: str) -> None:
        assert_config_error(serve(tmp_path, **config), message)
