"""``scripts/serve`` starts a Redis that keeps its data; the tests' one keeps none.

The set-up only starts Redis when none answers on its port, so this runs its
``ensure_redis`` against a free port and a throwaway directory (the
machine's own Redis is never touched), looks at what it started, and shuts
that server down.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

SETUP = Path(__file__).parents[1] / "scripts" / "lib" / "setup.sh"

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="needs redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(name="started")
def _started(tmp_path: Path) -> Iterator[object]:
    ports: list[int] = []

    def ensure_redis(persist: bool) -> redis.Redis:
        port = free_port()
        ports.append(port)
        script = (f"set -euo pipefail; . {SETUP}; REDIS_PORT={port}; "
                  f"REDIS_PERSIST={int(persist)}; ensure_redis")
        result = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, timeout=60,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                 "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
                 "SYNCD_REDIS_DIR": str(tmp_path / "redis-data")})
        assert result.returncode == 0, result.stderr
        assert f"started on 127.0.0.1:{port}" in result.stderr
        return redis.Redis(port=port, decode_responses=True)

    yield ensure_redis
    for port in ports:
        # No retries: SHUTDOWN drops the connection, and a retry would only
        # wait for a server that is gone.
        client = redis.Redis(port=port, retry=Retry(NoBackoff(), 0))
        try:
            client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # it is gone: what SHUTDOWN does to the connection
        finally:
            client.close()


class TestSetupRedis:
    """AOF and a named data directory for serve; nothing on disk for tests."""

    def test_serve_keeps_its_data(self, started: object, tmp_path: Path) -> None:
        client = started(True)  # type: ignore[operator]
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("dir") == {"dir": str(tmp_path / "redis-data")}
        client.set("kept", "1")
        client.close()

    def test_tests_keep_nothing(self, started: object) -> None:
        client = started(False)  # type: ignore[operator]
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("save") == {"save": ""}
        client.close()
