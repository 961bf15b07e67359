"""`syncd` as an operator runs it: a real process, real signals, real entry points."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from syncd.testing import MYSQL_URL, PG_URL, REDIS_URL, wait_for_sync

TESTS = Path(__file__).parent


@pytest.fixture(name="env")
def _env(tmp_path: Path) -> dict[str, str]:
    """Environment in which the probe plugin is *installed*: a dist-info with an
    entry point in the ``syncd`` group, found by importlib.metadata like any
    third-party package."""
    site = tmp_path / "site"
    dist = site / "syncd_probe-0.3.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: syncd-probe\nVersion: 0.3.1\n")
    (dist / "entry_points.txt").write_text("[syncd]\nprobe = probe_plugin\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(TESTS), env.get("PYTHONPATH", "")])
    return env


def write_config(tmp_path: Path, prefix: str, **overrides: object) -> Path:
    config = {
        "redis": {"url": REDIS_URL},
        "databases": {"default": PG_URL},
        "http": {"enabled": False},
        "shutdown_grace": "5s",
        "plugins": {"probe": {"key": f"{prefix}:p", "tick": "20ms"}},
    }
    config.update(overrides)
    path = tmp_path / "syncd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def syncd(*args: str, env: dict[str, str], cwd: Path | None = None,
          timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncd", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(name="serve")
def _serve(env: dict[str, str], tmp_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[str]] = []

    def start(config: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "serve", "--config", str(config)],
            env={**env, **(extra_env or {})}, cwd=tmp_path, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class TestDiscovery:
    """A plugin installed as a package is found through its entry point."""

    def test_plugins_lists_the_installed_probe(self, env: dict[str, str], tmp_path: Path,
                                               prefix: str) -> None:
        config = write_config(tmp_path, prefix)
        result = syncd("plugins", "--json", "--config", str(config), env=env)
        assert result.returncode == 0, result.stderr
        rows = {row["name"]: row for row in json.loads(result.stdout)}
        assert rows["probe"]["package"] == "syncd-probe"
        assert rows["probe"]["version"] == "0.3.1"
        assert rows["probe"]["enabled"] is True

    def test_autoload_can_be_disabled(self, env: dict[str, str], tmp_path: Path) -> None:
        env = {**env, "SYNCD_DISABLE_PLUGIN_AUTOLOAD": "1"}
        result = syncd("plugins", "--json", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == []

    def test_misspelled_hook_fails_loudly(self, env: dict[str, str], tmp_path: Path) -> None:
        site = tmp_path / "typo"
        dist = site / "syncd_typo-1.0.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: syncd-typo\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text("[syncd]\ntypo = typo_plugin\n")
        (site / "typo_plugin.py").write_text(
            "import syncd\n@syncd.hookimpl\ndef syncd_plugn():\n    return None\n")
        env = {**env, "PYTHONPATH": f"{site}{os.pathsep}{env['PYTHONPATH']}"}
        result = syncd("plugins", env=env, cwd=tmp_path)
        assert result.returncode != 0
        assert "syncd_plugn" in result.stderr


class TestServe:
    """serve runs the plugin; SIGTERM flushes and exits 0; a second signal exits now."""

    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
    def test_graceful_shutdown(self, serve: object, tmp_path: Path, prefix: str,
                               redis_client: redis.Redis, signum: int) -> None:
        proc = serve(write_config(tmp_path, prefix))  # type: ignore[operator]
        wait_for_sync(lambda: int(redis_client.get(f"{prefix}:p:batches") or 0) >= 5)
        assert redis_client.get(f"{prefix}:p:flushes") is None
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 0, stderr
        assert int(redis_client.get(f"{prefix}:p:flushes")) == 1
        assert "final flush done" in stderr
        assert "plugin=probe" in stderr

    def test_second_signal_exits_at_once(self, serve: object, tmp_path: Path, prefix: str,
                                         redis_client: redis.Redis) -> None:
        config = write_config(tmp_path, prefix, shutdown_grace="60s",
                              plugins={"probe": {"key": f"{prefix}:p", "flush_delay": "60s"}})
        proc = serve(config)  # type: ignore[operator]
        wait_for_sync(lambda: int(redis_client.get(f"{prefix}:p:batches") or 0) >= 2)
        proc.send_signal(signal.SIGTERM)
        # The first signal was heard: the final flush has begun (it takes 60 s).
        # (Two signals sent before the daemon reads either arrive as one.)
        wait_for_sync(lambda: redis_client.get(f"{prefix}:p:flushes_begun"))
        assert proc.poll() is None  # still flushing
        proc.send_signal(signal.SIGTERM)
        # Well before the 60 s flush and grace: it did not wait for them.
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode != 0
        assert "second signal" in stderr

    def test_embedded_default_uses_sqlite(self, serve: object, env: dict[str, str],
                                          tmp_path: Path) -> None:
        # No config file at all: Redis on localhost, SQLite in the working
        # directory, every installed plugin with its defaults. Only the port
        # is moved, so the test never collides with a real daemon on 8080.
        env = {**env, "SYNCD_DISABLE_PLUGIN_AUTOLOAD": "1"}
        log = tmp_path / "serve.log"
        with log.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "syncd", "serve"], env={**env, "SYNCD_HTTP__LISTEN":
                                                                "127.0.0.1:0"},
                cwd=tmp_path, text=True, stderr=err, stdout=subprocess.DEVNULL)
        try:
            # Ready, so its signal handler is in place (the SQLite file comes earlier).
            wait_for_sync(lambda: "syncd ready" in log.read_text(), describe=log.read_text)
            assert (tmp_path / "syncd.sqlite3").exists()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, log.read_text()


class TestCommands:
    """check, flush, --version and config errors, as the operator sees them."""

    def test_version(self, env: dict[str, str]) -> None:
        result = syncd("--version", env=env)
        assert result.returncode == 0
        assert result.stdout.startswith("syncd, version ")

    def test_help(self, env: dict[str, str]) -> None:
        result = syncd("--help", env=env)
        assert result.returncode == 0
        for command in ("serve", "check", "plugins", "flush"):
            assert command in result.stdout

    def test_check_ok(self, env: dict[str, str], tmp_path: Path, prefix: str) -> None:
        config = write_config(tmp_path, prefix, databases={
            "default": PG_URL, "mysql": MYSQL_URL,
            "lite": f"sqlite:///{tmp_path / 'x.db'}",
        })
        result = syncd("check", "--show", "--config", str(config), env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ok    redis" in result.stdout
        assert "ok    database:mysql" in result.stdout
        assert "ok    database:lite" in result.stdout

    def test_check_unreachable(self, env: dict[str, str], tmp_path: Path, prefix: str) -> None:
        config = write_config(tmp_path, prefix, redis={"url": "redis://:pw1234@127.0.0.1:1/0"})
        result = syncd("check", "--config", str(config), env=env)
        assert result.returncode == 3
        assert "FAIL  redis" in result.stdout
        assert "pw1234" not in result.stdout + result.stderr

    def test_config_error_exits_2_with_one_line(self, env: dict[str, str], tmp_path: Path,
                                                prefix: str) -> None:
        config = write_config(tmp_path, prefix, plugins={"probe": {"tick": "whenever"}})
        for command in ("serve", "check"):
            result = syncd(command, "--config", str(config), env=env)
            assert result.returncode == 2
            assert result.stderr.strip().splitlines() == [
                "syncd: config error: plugins.probe.tick: expected a duration like 500ms, "
                "30s or 5m, got 'whenever'"
            ]

    def test_env_override_error_names_the_key(self, env: dict[str, str], tmp_path: Path,
                                              prefix: str) -> None:
        config = write_config(tmp_path, prefix)
        result = syncd("serve", "--config", str(config),
                       env={**env, "SYNCD_SHUTDOWN_GRACE": "forever"})
        assert result.returncode == 2
        assert "shutdown_grace: expected a duration" in result.stderr

    def test_flush_once(self, env: dict[str, str], tmp_path: Path, prefix: str,
                        redis_client: redis.Redis) -> None:
        result = syncd("flush", "probe", "--config", str(write_config(tmp_path, prefix)),
                       env=env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.strip().splitlines()[-1])["detail"] == {"flushes": 1}

    def test_flush_unknown_plugin(self, env: dict[str, str], tmp_path: Path,
                                  prefix: str) -> None:
        result = syncd("flush", "nope", "--config", str(write_config(tmp_path, prefix)),
                       env=env)
        assert result.returncode == 2
        assert "plugins.nope: no such plugin is installed" in result.stderr
