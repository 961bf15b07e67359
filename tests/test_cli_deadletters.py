"""``syncd dead-letters`` as an operator runs it: a real process, no daemon, real Redis.

The mailbox test plugin is *installed* for the subprocess (a dist-info with
an entry point), and its dead letters are pushed straight into its list.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import yaml

from syncd.deadletter import DeadLetter
from syncd.testing import PG_URL, REDIS_URL

TESTS = Path(__file__).parent

pytestmark = pytest.mark.slow


@pytest.fixture(name="env")
def _env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    dist = site / "syncd_mailbox-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: syncd-mailbox\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[syncd]\nmailbox = mailbox_plugin\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(TESTS), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(name="config")
def _config(tmp_path: Path, prefix: str) -> Path:
    path = tmp_path / "syncd.yaml"
    path.write_text(yaml.safe_dump({
        "redis": {"url": REDIS_URL},
        "databases": {"default": PG_URL},
        "plugins": {"mailbox": {"queue": f"{prefix}:q", "dead_letter": f"{prefix}:dead"}},
    }))
    return path


def run(env: dict[str, str], config: Path, *args: str,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncd", "dead-letters", *args, "-c", str(config)],
        env=env, capture_output=True, text=True, timeout=60, input=stdin)


def quarantine(client: redis.Redis, prefix: str, *payloads: bytes) -> list[DeadLetter]:
    letters = [DeadLetter(f"{prefix}:dead", p, f"{p!r} is bad", "mailbox", at=1000.0 + i,
                          source=f"{prefix}:q") for i, p in enumerate(payloads)]
    client.rpush(f"{prefix}:dead", *(letter.encode() for letter in letters))
    return letters


class TestList:
    """Listing is readable and never lets a payload drive the terminal."""

    def test_list_escapes_control_characters(
        self, env: dict[str, str], config: Path, redis_client: redis.Redis, prefix: str,
    ) -> None:
        quarantine(redis_client, prefix, b"bad\x1b[2J\x1b[31mred", b"badforever")
        result = run(env, config, "list", "mailbox")
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout
        assert "bad\\x1b[2J\\x1b[31mred" in result.stdout
        assert result.stdout.startswith(f"mailbox: 2 dead letter(s) in {prefix}:dead, oldest ")
        assert "cannot requeue: it will never be good" in result.stdout

    def test_json_and_reasons(
        self, env: dict[str, str], config: Path, redis_client: redis.Redis, prefix: str,
    ) -> None:
        letters = quarantine(redis_client, prefix, b"bad1", b"bad2", b"\xff\xfe")
        answer = json.loads(run(env, config, "list", "mailbox", "--json", "--limit", "2").stdout)
        assert answer["total"] == answer["waiting"] == 3
        assert [i["id"] for i in answer["items"]] == [letters[2].id, letters[1].id]
        assert answer["items"][0]["payload_b64"] == "//4="
        reasons = run(env, config, "list", "mailbox", "--reasons")
        # b'bad1' is bad, b'bad2' is bad, b'\xff\xfe' is bad: one reason.
        assert reasons.stdout.splitlines()[1].split() == ["3", "b…", "is", "bad"]


class TestActions:
    """Requeue and purge act on exactly the selection and say what happened."""

    def test_requeue_by_id_and_report_what_was_not_found(
        self, env: dict[str, str], config: Path, redis_client: redis.Redis, prefix: str,
    ) -> None:
        letters = quarantine(redis_client, prefix, b"bad1", b"badforever")
        result = run(env, config, "requeue", "mailbox", "--id", letters[0].id,
                     "--id", letters[1].id, "--id", "nope")
        assert result.returncode == 1
        assert result.stdout.splitlines() == [
            "requeued 1, 1 refused, 1 not found",
            f"  {letters[1].id}: it will never be good",
            "  nope: no such dead letter",
        ]
        assert redis_client.lrange(f"{prefix}:q", 0, -1) == [b"fixed1"]
        assert redis_client.llen(f"{prefix}:dead") == 1

    def test_purge_asks_unless_told_yes(
        self, env: dict[str, str], config: Path, redis_client: redis.Redis, prefix: str,
    ) -> None:
        quarantine(redis_client, prefix, b"bad1", b"bad2", b"bad3")
        refused = run(env, config, "purge", "mailbox", "--oldest", "2", stdin="n\n")
        assert refused.returncode == 1 and "Aborted" in refused.stderr
        assert redis_client.llen(f"{prefix}:dead") == 3
        done = run(env, config, "purge", "mailbox", "--oldest", "2", "--yes")
        assert done.returncode == 0 and done.stdout.strip() == "purged 2"
        (left,) = redis_client.lrange(f"{prefix}:dead", 0, -1)
        assert json.loads(left)["payload"] == "bad3"

    def test_selection_and_config_mistakes(
        self, env: dict[str, str], config: Path, tmp_path: Path,
    ) -> None:
        unclear = run(env, config, "requeue", "mailbox", "--all", "--oldest", "3")
        assert unclear.returncode == 2 and "exactly one" in unclear.stderr
        unknown = run(env, config, "list", "nosuch")
        assert unknown.returncode == 2 and "no such plugin" in unknown.stderr
        away = tmp_path / "away.yaml"
        away.write_text(yaml.safe_dump({"redis": {"url": "redis://127.0.0.1:1/0"},
                                        "plugins": {"mailbox": {}}}))
        gone = run(env, away, "list", "mailbox")
        assert gone.returncode == 3 and "redis" in gone.stderr
