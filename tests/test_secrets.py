"""Secrets in URLs never leave the process: not in health answers, plugin
status, logs, ``syncd check --show`` or CLI errors.

redis-py and libpq take a password in the query string as well as in the
user-info (``redis://host/0?password=…``, ``postgresql://…?sslpassword=…``).
Each URL here points at a real server or at a port nobody listens on, and
carries secrets in every place a URL can.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from syncd.redact import mask_url, scrub
from syncd.testing import unique_prefix, wait_for_sync

TESTS = Path(__file__).parent
SECRETS = ["RSECRET-1111", "RUSER-2222", "PGSECRET-3333", "SSLSECRET-4444", "DOWNSECRET-5555",
           "REALREDIS-6666"]

URLS = {
    "redis_down": "redis://:RUSER-2222@127.0.0.1:1/0?password=RSECRET-1111",
    "redis_real": "redis://127.0.0.1:6379/0?password=REALREDIS-6666",
    "pg_real": ("postgresql://postgres:PGSECRET-3333@127.0.0.1:5432/test"
                "?sslpassword=SSLSECRET-4444&application_name=syncd"),
    "pg_down": "postgresql://postgres@127.0.0.1:1/test?password=DOWNSECRET-5555",
}


def assert_no_secret(text: str) -> None:
    leaked = [secret for secret in SECRETS if secret in text]
    assert not leaked, f"{leaked} in:\n{text}"


@pytest.fixture(name="env")
def _env(tmp_path: Path) -> dict[str, str]:
    """The probe plugin installed through an entry point (as in test_cli)."""
    site = tmp_path / "site"
    dist = site / "syncd_probe-0.3.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: syncd-probe\nVersion: 0.3.1\n")
    (dist / "entry_points.txt").write_text("[syncd]\nprobe = probe_plugin\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(TESTS), env.get("PYTHONPATH", "")])
    return env


def write_config(tmp_path: Path, redis_url: str, port: int = 0) -> Path:
    path = tmp_path / "syncd.yaml"
    path.write_text(yaml.safe_dump({
        "redis": {"url": redis_url},
        "databases": {"default": URLS["pg_real"], "down": URLS["pg_down"]},
        "http": {"listen": f"127.0.0.1:{port}"},
        "shutdown_grace": "2s",
        "restart_backoff_max": "1s",
        "plugins": {"probe": {"key": f"{unique_prefix()}:p", "tick": "50ms"}},
    }))
    return path


def syncd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncd", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(name="served")
def _served(env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    started: list[tuple[subprocess.Popen[str], Path]] = []

    def serve(redis_url: str) -> tuple[str, subprocess.Popen[str]]:
        port = free_port()
        log = tmp_path / f"serve-{port}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "syncd", "serve", "--config",
                 str(write_config(tmp_path, redis_url, port))],
                env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        started.append((proc, log))
        return f"http://127.0.0.1:{port}", proc

    yield serve
    for proc, log in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert_no_secret(log.read_text())  # every log line, start to stop


def get_json(url: str, timeout: float = 30) -> Any:
    """The response once the daemon listens (it may still be starting)."""
    return wait_for_sync(lambda: httpx.get(url, timeout=5), timeout,
                         ignore=(httpx.TransportError,))


class TestMasking:
    """What `mask_url` and `scrub` hide, and what they keep."""

    @pytest.mark.parametrize(("url", "masked"), [
        ("redis://:pw12@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://h:6379/8?password=pw12", "redis://h:6379/8?password=***"),
        ("postgresql://u:pw12@h/db?sslpassword=x1y2&application_name=a",
         "postgresql://u:***@h/db?sslpassword=***&application_name=a"),
        ("rediss://h/0?Auth_Token=t0k3n&db=2", "rediss://h/0?Auth_Token=***&db=2"),
        ("sqlite:///relative.db", "sqlite:///relative.db"),
        ("mysql://root@127.0.0.1:3306/test", "mysql://root@127.0.0.1:3306/test"),
    ])
    def test_mask_url(self, url: str, masked: str) -> None:
        assert mask_url(url) == masked

    def test_scrub_finds_the_secret_alone(self) -> None:
        url = "redis://h/0?password=p%40ss-word"
        assert scrub("bad value 'p@ss-word' and p%40ss-word", url) == "bad value '***' and ***"


@pytest.mark.slow
class TestEverywhere:
    """A real daemon, real servers, unreachable ports: the secrets stay in."""

    def test_endpoints_and_logs(self, served: Any) -> None:
        for redis_url in (URLS["redis_down"], URLS["redis_real"]):
            base, _ = served(redis_url)
            ready = get_json(f"{base}/health/ready")
            assert ready.status_code == 503  # database "down" is down
            assert_no_secret(ready.text)
            reasons = " ".join(ready.json()["reasons"])
            assert "/test?password=***" in reasons  # the URLs are shown, masked
            if redis_url == URLS["redis_down"]:
                assert "0?password=***" in reasons
                plugin = wait_for_sync(lambda base=base: (p := httpx.get(
                    f"{base}/plugins/probe", timeout=5).json())["last_error"] and p)
                assert "0?password=***" in plugin["last_error"]["message"]
            for path in ("/plugins", "/plugins/probe", "/health", "/metrics", "/"):
                assert_no_secret(httpx.get(f"{base}{path}", timeout=5).text)

    def test_check_show(self, env: dict[str, str], tmp_path: Path) -> None:
        result = syncd("check", "--show", "--config",
                       str(write_config(tmp_path, URLS["redis_down"])), env=env)
        assert result.returncode == 3
        assert_no_secret(result.stdout + result.stderr)
        assert "password=***" in result.stdout and "sslpassword=***" in result.stdout
        assert "FAIL  database:down" in result.stdout

    def test_cli_errors(self, env: dict[str, str], tmp_path: Path) -> None:
        config = str(write_config(tmp_path, URLS["redis_down"]))
        result = syncd("flush", "probe", "--config", config, env=env)
        assert result.returncode != 0
        assert_no_secret(result.stdout + result.stderr)
        # A URL the config refuses is never echoed either.
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({"databases": {
            "x": "sqlite:///x.db?password=PGSECRET-3333",
            "y": "postgresql://u@h/db?nonsense=SSLSECRET-4444"}}))
        result = syncd("check", "--config", str(bad), env=env)
        assert result.returncode == 2
        assert_no_secret(result.stdout + result.stderr)
