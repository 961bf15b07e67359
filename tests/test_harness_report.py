"""The harness's pure logic: tallies, rates, ratios, tables and result files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from syncd.harness.env import Target, dialect_of, home_database, resolve_databases, supports
from syncd.harness.report import (
    BENCH_HEADERS,
    CHAOS_HEADERS,
    BenchRow,
    ChaosRow,
    Sample,
    bench_table,
    chaos_table,
    format_table,
    write_bench,
    write_chaos,
)
from syncd.workload import Tally, Workload


def tally(**changes: int) -> Tally:
    values = dict(produced=100, expected=99, in_sql=99, duplicates=0, lost=0,
                  expected_dead=1, dead_lettered=1)
    values.update(changes)
    return Tally(**values)


def bench_row() -> BenchRow:
    row = BenchRow("votes", "mysql", "mysql", "votes", 1000)
    row.samples += [
        Sample("syncd", 1000, 0.5, tally()),  # 2000/s
        Sample("baseline", 1000, 2.0),  # 500/s
        Sample("ceiling", 1000, 0.25),  # 4000/s
        Sample("syncd", 1000, 0.25, tally()),  # 4000/s
        Sample("baseline", 1000, 1.0),  # 1000/s
        Sample("ceiling", 1000, 0.125),  # 8000/s
    ]
    return row


class TestTally:
    """Exact means exact: any loss, duplicate or stray dead letter fails."""

    def test_exact(self) -> None:
        assert tally().ok

    @pytest.mark.parametrize("change", [
        {"duplicates": 1}, {"lost": 1}, {"in_sql": 98}, {"in_sql": 100},
        {"dead_lettered": 0}, {"dead_lettered": 2},
    ])
    def test_any_difference_fails(self, change: dict[str, int]) -> None:
        assert not tally(**change).ok


class TestBenchRow:
    """Rates are medians over repeats; ratios are syncd's rate over the other side's."""

    def test_median_rates_and_ratios(self) -> None:
        row = bench_row()
        assert row.rate("syncd") == 3000
        assert row.rate("baseline") == 750
        assert row.rate("ceiling") == 6000
        assert row.ratio("baseline") == 4.0
        assert row.ratio("ceiling") == 0.5
        assert row.tally_ok is True

    def test_round_by_round_ratios(self) -> None:
        row = bench_row()
        assert row.round_ratios("baseline") == [4.0, 4.0]
        assert row.round_ratios("ceiling") == [0.5, 0.5]
        row.fail("ceiling", "RuntimeError: boom")
        assert row.round_ratios("ceiling") == []

    def test_wrong_tally_fails_the_row(self) -> None:
        row = bench_row()
        row.samples.append(Sample("syncd", 1000, 0.5, tally(lost=1, in_sql=98)))
        assert row.tally_ok is False
        assert bench_table([row])[0][-1] == "FAIL"

    def test_missing_side_has_no_ratio(self) -> None:
        row = BenchRow("traffic", "pg", "postgresql", "increments", 10)
        row.samples.append(Sample("syncd", 10, 1.0, tally()))
        row.fail("ceiling", "RuntimeError: boom")
        assert row.ratio("baseline") is None
        cells = bench_table([row])[0]
        assert cells[4:8] == ["-", "error", "-", "-"]

    def test_failed_syncd_side_is_not_ok(self) -> None:
        row = BenchRow("traffic", "pg", "postgresql", "increments", 10)
        row.fail("syncd", "TimeoutError: did not drain")
        assert row.tally_ok is False

    def test_a_failed_round_marks_the_rate(self) -> None:
        row = bench_row()
        row.fail("baseline", "UndefinedTable: gone")
        assert row.rate("baseline") == 750
        assert bench_table([row])[0][4] == "750*"
        assert row.as_dict()["errors"] == {"baseline": ["UndefinedTable: gone"]}

    def test_table_cells(self) -> None:
        cells = bench_table([bench_row()])[0]
        assert cells == ["votes", "mysql", "1,000", "3,000", "750", "6,000", "4.00x", "0.50x",
                         "ok"]
        text = format_table(BENCH_HEADERS, [cells])
        assert text.splitlines()[0].startswith("plugin")
        assert "4.00x" in text


class TestChaosRow:
    """A chaos row is ok only with an exact tally and a clean exit."""

    def test_ok(self) -> None:
        row = ChaosRow("votes", "pg", produced=100, tally=tally(), exit_code=0,
                       faults={"sigkill": 20, "db_kill": 3, "redis_kill": 4, "pause": 5})
        assert row.ok
        cells = chaos_table([row])[0]
        assert cells[:8] == ["votes", "pg", "1", "20", "-", "3", "4", "5"]
        assert cells[-1] == "ok"
        assert len(cells) == len(CHAOS_HEADERS)

    @pytest.mark.parametrize("change", [
        {"exit_code": 1}, {"exit_code": None}, {"error": "did not drain"}, {"tally": None},
        {"crashes": [1]},
        {"tally": tally(duplicates=2, in_sql=101)},
    ])
    def test_not_ok(self, change: dict[str, object]) -> None:
        row = ChaosRow("votes", "pg", produced=100, tally=tally(), exit_code=0)
        for key, value in change.items():
            setattr(row, key, value)
        assert not row.ok
        assert chaos_table([row])[0][-1] == "FAIL"


class TestFiles:
    """Every run leaves a Markdown, a JSON and (bench) a PNG behind."""

    def test_bench_files(self, tmp_path: Path) -> None:
        pytest.importorskip("matplotlib", reason="the chart needs the [bench] extra")
        paths = write_bench([bench_row()], tmp_path, {"items": 1000, "repeat": 2},
                            stamp="20250101T000000Z")
        assert [p.name for p in paths] == [
            "20250101T000000Z.json", "20250101T000000Z.md", "20250101T000000Z.png"]
        data = json.loads(paths[0].read_text())
        assert data["results"][0]["ratio_baseline"] == 4.0
        assert data["results"][0]["tally_ok"] is True
        assert len(data["results"][0]["samples"]) == 6
        assert "| votes | mysql |" in paths[1].read_text()
        assert "- votes/mysql: vs baseline 4.00, 4.00 (median 4.00); vs ceiling 0.50, 0.50" \
            in paths[1].read_text()
        assert data["results"][0]["round_ratios"]["ceiling"] == [0.5, 0.5]
        assert paths[2].read_bytes().startswith(b"\x89PNG")

    def test_bench_files_without_matplotlib(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
        paths = write_bench([bench_row()], tmp_path, {}, stamp="20250101T000000Z")
        assert [p.suffix for p in paths] == [".json", ".md"]
        assert "no chart" in paths[1].read_text()

    def test_chaos_files(self, tmp_path: Path) -> None:
        row = ChaosRow("votes", "pg", produced=100, tally=tally(), exit_code=0)
        bad = ChaosRow("traffic", "pg", error="did not drain", log="/tmp/x.log")
        paths = write_chaos([row, bad], tmp_path, {"kills": 20}, stamp="20250101T000000Z")
        assert [p.name for p in paths] == [
            "chaos-20250101T000000Z.json", "chaos-20250101T000000Z.md"]
        data = json.loads(paths[0].read_text())
        assert data["ok"] is False
        assert data["results"][0]["tally"]["ok"] is True
        assert "did not drain" in paths[1].read_text()


class TestDatabases:
    """``--database`` takes the short names or URLs."""

    def test_defaults_are_both(self) -> None:
        assert [t.name for t in resolve_databases([])] == ["mysql", "pg"]

    def test_names_and_urls(self) -> None:
        targets = resolve_databases(["pg", "mysql://u@h:3307/db", "postgresql://x/y"])
        assert targets[0].name == "pg"
        assert targets[1] == Target("mysql", "mysql://u@h:3307/db")
        assert targets[2].name == "pg3"
        assert [t.dialect for t in targets] == ["postgresql", "mysql", "postgresql"]

    def test_unknown_scheme(self) -> None:
        with pytest.raises(ValueError, match="unsupported database URL"):
            dialect_of("oracle://x")

    def test_plugin_dialects(self) -> None:
        def workload(*dialects: str) -> Workload:
            nothing = lambda *args: None  # noqa: E731
            return Workload("x", {}, "items", nothing, nothing, nothing, nothing,
                            dialects=dialects)

        pg, mysql = resolve_databases(["pg", "mysql"])
        assert supports(workload(), pg) and supports(workload(), mysql)
        assert supports(workload("mysql"), mysql) and not supports(workload("mysql"), pg)
        assert home_database(workload("mysql", "postgresql")) == "mysql"
        assert home_database(workload()) == "pg"
