"""CI's short chaos: a few SIGKILLs per installed plugin under load, then an exact tally.

The full run is ``syncd chaos`` (20 kills per plugin x database); this one
keeps the same machinery but few kills and a low rate, so that every plugin
that ships a workload is proven on every CI run in about a minute.
Each runs as two replicas side by side (``--replicas 2``: the kills,
freezes and connection kills hit one at random), so leases, fencing and the
reclaim of a dead replica's batches are exercised too. The harness's own
probe plugin runs as one daemon, on both databases, so a failure here can
be told apart: the probe failing means the harness (or the core) is wrong;
only a real plugin failing points at that plugin.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_harness_probe import NAME as PROBE
from test_harness_probe import install_probe

from syncd.cli import main
from syncd.harness import ChaosOptions, run_chaos
from syncd.harness.env import Subject, find_subjects, home_database
from syncd.manager import get_plugin_manager

TESTS = Path(__file__).parent



@pytest.fixture(name="site")
def _site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The probe installed for this process and for the subprocesses it starts."""
    site = install_probe(tmp_path / "site")
    monkeypatch.delenv("SYNCD_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(TESTS))
    return site


def child_environ(site: Path) -> dict[str, str]:
    path = [str(site), str(TESTS), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


def installed_with_workload() -> list[Subject]:
    return [s for s in find_subjects(get_plugin_manager()) if s.plugin != PROBE]


def smoke(kills: int) -> dict[str, object]:
    # The caps are deadlock guards, not speed limits: the tests count the kills,
    # and on a loaded machine each restart of `syncd serve` takes seconds.
    return {"kills": kills, "rate": 400.0, "life": (0.4, 1.2), "duration_cap": 300.0,
            "drain_timeout": 120.0, "seed": 1234}


@pytest.mark.slow
class TestChaosSmoke:
    """Under SIGKILLs, killed connections and pauses, nothing is lost or doubled."""

    async def test_probe_on_both_databases(self, site: Path) -> None:
        lines: list[str] = []
        rows = await run_chaos(
            ChaosOptions(plugins=(PROBE,), **smoke(1)),
            progress=lines.append, environ=child_environ(site))
        assert [(r.plugin, r.database) for r in rows] == [(PROBE, "mysql"), (PROBE, "pg")]
        for row in rows:
            assert row.ok, (row.as_dict(), lines)
            assert row.faults["sigkill"] == 1
            assert row.produced > 0

    async def test_every_installed_plugin(self, site: Path) -> None:
        subjects = installed_with_workload()
        if not subjects:
            pytest.skip("no plugin with a workload is installed yet")
        failures = []
        for subject in subjects:
            # Each on its seed's database, as two replicas, two kills: CI time
            # covers one of each per plugin (`syncd chaos` runs the long ones,
            # and tests/test_replicas_proof.py three replicas at a time).
            database = home_database(subject.workload)
            lines: list[str] = []
            rows = await run_chaos(
                ChaosOptions(plugins=(subject.plugin,), databases=(database,), replicas=2,
                             **smoke(2)),
                progress=lines.append, environ=child_environ(site))
            print(*lines, sep="\n")
            failures += [(row.as_dict(), lines) for row in rows if not row.ok]
            assert all(row.faults["sigkill"] == 2 and row.replicas == 2 for row in rows)
        assert not failures


class TestCommands:
    """``syncd bench`` and ``syncd chaos`` run from the command line and write their files."""

    def test_bench(self, site: Path, tmp_path: Path) -> None:
        out = tmp_path / "results"
        result = CliRunner().invoke(main, [
            "bench", "--plugin", PROBE, "--database", "pg", "-n", "500", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "ratio syncd/baseline" in result.output
        assert {".json", ".md"} <= {p.suffix for p in out.iterdir()}

    def test_chaos(self, site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PYTHONPATH", child_environ(site)["PYTHONPATH"])
        out = tmp_path / "results"
        result = CliRunner().invoke(main, [
            "chaos", "--plugin", PROBE, "--database", "pg", "--kills", "1", "--rate", "200",
            "--seed", "7", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert sorted(p.name.split("-")[0] for p in out.iterdir()) == ["chaos", "chaos"]

    def test_unknown_plugin(self, site: Path) -> None:
        result = CliRunner().invoke(main, ["bench", "--plugin", "nope", "-n", "1"])
        assert result.exit_code == 2
        assert "no such plugin installed: nope" in result.output

    def test_runs_as_a_module(self) -> None:
        import subprocess

        done = subprocess.run([sys.executable, "-m", "syncd", "chaos", "--help"],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0
        assert "--kills" in done.stdout


def test_chaos_redis_cluster_starts_its_own() -> None:
    """``--redis-cluster`` starts a cluster for the run: ``--redis`` beside it is refused."""
    result = CliRunner().invoke(main, ["chaos", "--redis-cluster", "--redis", "redis://x:1/0"])
    assert result.exit_code == 2
    assert "--redis-cluster starts its own cluster: drop --redis" in result.output
