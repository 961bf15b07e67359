"""What bench and chaos found: records, the terminal table, and the files.

Results are plain attrs records, so the same data makes the table printed
at the end of a run, ``bench/results/<UTC timestamp>.md`` and ``.json``, and
(benchmarks only) a PNG bar chart. Nothing here touches Redis or SQL, which
is what lets the reporting be unit-tested with made-up numbers.
"""

from __future__ import annotations

import json
import platform
import statistics
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from syncd.workload import Tally

#: The three sides of a benchmark, in the order they run and are shown.
SIDES = ("syncd", "baseline", "ceiling")


def timestamp(now: datetime | None = None) -> str:
    """``20250101T120000Z``: sortable, and safe in a file name."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def tally_dict(tally: Tally | None) -> dict[str, Any] | None:
    if tally is None:
        return None
    return {**attrs.asdict(tally), "ok": tally.ok}


# -- benchmark ------------------------------------------------------------------------


@attrs.frozen
class Sample:
    """One timed run of one side.

    Attributes:
        side: ``syncd``, ``baseline`` or ``ceiling``.
        items: Items moved.
        seconds: Wall time from start to done (for syncd: until drained and counted).
        tally: The accounting after a syncd run (None for the other sides).
        startup: Of ``seconds``, how long the daemon took to be ready (syncd only).
    """

    side: str
    items: int
    seconds: float
    tally: Tally | None = None
    startup: float | None = None

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")


@attrs.define
class BenchRow:
    """One plugin on one database, every repeat of every side.

    Attributes:
        plugin: Plugin name.
        database: Database label (``pg``, ``mysql``, ...).
        dialect: ``postgresql``, ``mysql`` or ``sqlite``.
        unit: What an item is (``votes``, ``increments``...).
        items: Items per run.
        samples: Every timed run, in the order they ran.
        errors: What went wrong, per side, one entry per failed round. A side's
            rate is the median of its successful rounds; the table marks it.
    """

    plugin: str
    database: str
    dialect: str
    unit: str
    items: int
    samples: list[Sample] = attrs.Factory(list)
    errors: dict[str, list[str]] = attrs.Factory(dict)

    def fail(self, side: str, error: str) -> None:
        self.errors.setdefault(side, []).append(error)

    def rates(self, side: str) -> list[float]:
        return [s.rate for s in self.samples if s.side == side]

    def rate(self, side: str) -> float | None:
        """The median over repeats: one noisy run does not move it much."""
        rates = self.rates(side)
        return statistics.median(rates) if rates else None

    def ratio(self, side: str) -> float | None:
        """syncd's rate divided by ``side``'s."""
        ours, theirs = self.rate("syncd"), self.rate(side)
        if ours is None or not theirs:
            return None
        return ours / theirs

    def round_ratios(self, side: str) -> list[float]:
        """syncd's rate over ``side``'s round by round (each pair ran minutes
        apart at most, so the machine's drift cancels better than in the
        ratio of medians); empty unless every round of both sides succeeded."""
        ours, theirs = self.rates("syncd"), self.rates(side)
        if "syncd" in self.errors or side in self.errors or len(ours) != len(theirs):
            return []
        return [a / b for a, b in zip(ours, theirs, strict=True) if b]

    @property
    def tally_ok(self) -> bool | None:
        """True if every syncd run counted exactly (None if none completed)."""
        tallies = [s.tally for s in self.samples if s.side == "syncd" and s.tally is not None]
        if not tallies and "syncd" not in self.errors:
            return None
        return bool(tallies) and all(t.ok for t in tallies) and "syncd" not in self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "plugin": self.plugin,
            "database": self.database,
            "dialect": self.dialect,
            "unit": self.unit,
            "items": self.items,
            "rates": {side: self.rate(side) for side in SIDES},
            "ratio_baseline": self.ratio("baseline"),
            "ratio_ceiling": self.ratio("ceiling"),
            "round_ratios": {side: self.round_ratios(side) for side in SIDES if side != "syncd"},
            "tally_ok": self.tally_ok,
            "samples": [
                {"side": s.side, "items": s.items, "seconds": round(s.seconds, 6),
                 "rate": s.rate, "tally": tally_dict(s.tally),
                 "startup": None if s.startup is None else round(s.startup, 6)}
                for s in self.samples
            ],
            "errors": {side: list(errors) for side, errors in self.errors.items()},
        }


BENCH_HEADERS = ("plugin", "database", "items", "syncd items/s", "baseline items/s",
                 "ceiling items/s",
                 "ratio syncd/baseline", "ratio syncd/ceiling", "tally")


def bench_table(rows: Sequence[BenchRow]) -> list[list[str]]:
    return [
        [
            row.plugin,
            row.database,
            f"{row.items:,}",
            _rate(row.rate("syncd"), "syncd" in row.errors),
            _rate(row.rate("baseline"), "baseline" in row.errors),
            _rate(row.rate("ceiling"), "ceiling" in row.errors),
            _ratio(row.ratio("baseline")),
            _ratio(row.ratio("ceiling")),
            {True: "ok", False: "FAIL", None: "-"}[row.tally_ok],
        ]
        for row in rows
    ]


def _rate(rate: float | None, failed: bool = False) -> str:
    """The rate; ``*`` if some rounds of it failed, "error" if all did."""
    if rate is None:
        return "error" if failed else "-"
    return f"{rate:,.0f}*" if failed else f"{rate:,.0f}"


def _ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


# -- chaos ----------------------------------------------------------------------------


@attrs.define
class ChaosRow:
    """One plugin's chaos run.

    Attributes:
        plugin: Plugin name.
        database: Database label.
        produced: Items produced while faults were injected.
        faults: How many of each fault were injected (``sigkill``,
            ``db_kill``, ``redis_kill``, ``pause``; with replicas, ``freeze``).
        tally: The accounting after the drain (None if it never got there).
        exit_code: Exit status of the last ``syncd serve`` after SIGTERM.
        seconds: Wall time of the whole run.
        drain_seconds: From producers stopping to ``pending == 0``.
        crashes: Exit statuses of ``syncd serve`` processes that died by
            themselves (not by our SIGKILL); any is a failure.
        error: Why the run itself failed (e.g. syncd never drained), if it did.
        log: The file holding syncd's output (with replicas, the folder of
            their files), for a post-mortem.
        replicas: Daemons that ran side by side.
        events: What the replicas' logs say they did about each other:
            ``lease_acquired`` (an exclusive plugin's lease taken, the first
            time included), ``fenced`` (a replica that found its commit
            refused and stood down), ``reclaimed`` (a dead queue consumer's
            batch finished by another).
    """

    plugin: str
    database: str
    produced: int = 0
    faults: dict[str, int] = attrs.Factory(dict)
    tally: Tally | None = None
    exit_code: int | None = None
    seconds: float = 0.0
    drain_seconds: float | None = None
    crashes: list[int] = attrs.Factory(list)
    error: str | None = None
    log: str | None = None
    replicas: int = 1
    events: dict[str, int] = attrs.Factory(dict)

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and not self.crashes
            and self.exit_code == 0
            and self.tally is not None
            and self.tally.ok
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "plugin": self.plugin,
            "database": self.database,
            "replicas": self.replicas,
            "events": dict(self.events),
            "produced": self.produced,
            "faults": dict(self.faults),
            "tally": tally_dict(self.tally),
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
            "drain_seconds": None if self.drain_seconds is None else round(self.drain_seconds, 3),
            "crashes": list(self.crashes),
            "error": self.error,
            "log": self.log,
            "ok": self.ok,
        }


CHAOS_HEADERS = ("plugin", "database", "replicas", "kills", "freezes", "db kills",
                 "redis kills", "pauses", "leases", "fenced", "reclaimed", "produced",
                 "expected", "in SQL", "dup", "lost", "dead (exp/act)", "exit", "ok")


def chaos_table(rows: Sequence[ChaosRow]) -> list[list[str]]:
    out = []
    for row in rows:
        t = row.tally
        out.append([
            row.plugin,
            row.database,
            str(row.replicas),
            str(row.faults.get("sigkill", 0)),
            str(row.faults["freeze"]) if "freeze" in row.faults else "-",
            str(row.faults.get("db_kill", 0)),
            str(row.faults.get("redis_kill", 0)),
            str(row.faults.get("pause", 0)),
            *(str(row.events[event]) if event in row.events else "-"
              for event in ("lease_acquired", "fenced", "reclaimed")),
            f"{row.produced:,}",
            "-" if t is None else f"{t.expected:,}",
            "-" if t is None else f"{t.in_sql:,}",
            "-" if t is None else str(t.duplicates),
            "-" if t is None else str(t.lost),
            "-" if t is None else f"{t.expected_dead}/{t.dead_lettered}",
            "-" if row.exit_code is None else str(row.exit_code),
            "ok" if row.ok else "FAIL",
        ])
    return out


# -- rendering ------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A plain aligned table for the terminal: text left, numbers right."""
    rows = [list(map(str, r)) for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                              strict=True))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    align = ["---" if i < 2 else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the numbers were measured on (they only compare within one run)."""
    import os

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def write_bench(
    rows: Sequence[BenchRow], out_dir: Path, meta: Mapping[str, Any], *, stamp: str | None = None,
    chart: bool = True,
) -> list[Path]:
    """Write ``<stamp>.md``, ``<stamp>.json`` and ``<stamp>.png`` into ``out_dir``."""
    stamp = stamp or timestamp()
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"kind": "bench", "timestamp": stamp, **meta, "machine": machine(),
            "results": [r.as_dict() for r in rows]}
    paths = [out_dir / f"{stamp}.json", out_dir / f"{stamp}.md"]
    paths[0].write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    md = [
        f"# syncd bench {stamp}",
        "",
        _meta_line(meta),
        "",
        "Items per second (median over repeats). *syncd*: the daemon drains N pre-loaded "
        "items, timed from start until nothing is pending (the tally, taken afterwards, "
        "must be exact). "
        "*baseline*: the seed's own algorithm on the same N items. *ceiling*: the same rows "
        "written straight to the database. Ratios are syncd's rate over the other.",
        "",
        markdown_table(BENCH_HEADERS, bench_table(rows)),
    ]
    per_round = [line for r in rows if (line := round_line(r))]
    if per_round:
        md += ["", "Ratios round by round (syncd and the other side measured minutes apart "
               "at most; their median drifts least on a loaded machine):", "", *per_round]
    errors = [(r, side, msg) for r in rows for side, msgs in r.errors.items() for msg in msgs]
    if errors:
        md += ["", "## Errors", "", "`*`: the median of the rounds that did not fail.", ""]
        md += [f"- {r.plugin}/{r.database} {side}: {msg}" for r, side, msg in errors]
    if chart and rows:
        png = out_dir / f"{stamp}.png"
        try:
            bench_chart(rows, png, title=f"syncd bench {stamp}")
        except ImportError:
            md += ["", "(no chart: matplotlib is missing; install the `syncd[bench]` extra)"]
        else:
            paths.append(png)
            md += ["", f"![rates]({png.name})"]
    paths[1].write_text("\n".join(md) + "\n", encoding="utf-8")
    return paths


def round_line(row: BenchRow) -> str | None:
    """``- plugin/database: vs baseline r1, r2 (median m); vs ceiling …``, or None
    with fewer than two complete rounds."""
    parts = []
    for side in ("baseline", "ceiling"):
        ratios = row.round_ratios(side)
        if len(ratios) > 1:
            parts.append(f"vs {side} {', '.join(f'{r:.2f}' for r in ratios)} "
                         f"(median {statistics.median(ratios):.2f})")
    return f"- {row.plugin}/{row.database}: {'; '.join(parts)}" if parts else None


def write_chaos(
    rows: Sequence[ChaosRow], out_dir: Path, meta: Mapping[str, Any], *, stamp: str | None = None
) -> list[Path]:
    """Write ``chaos-<stamp>.md`` and ``chaos-<stamp>.json`` into ``out_dir``."""
    stamp = stamp or timestamp()
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"kind": "chaos", "timestamp": stamp, **meta, "machine": machine(),
            "ok": all(r.ok for r in rows), "results": [r.as_dict() for r in rows]}
    paths = [out_dir / f"chaos-{stamp}.json", out_dir / f"chaos-{stamp}.md"]
    paths[0].write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    md = [
        f"# syncd chaos {stamp}",
        "",
        _meta_line(meta),
        "",
        "Producers ran at a steady rate while `syncd serve` was SIGKILLed and restarted, its "
        "database and Redis connections were killed from the server side, and the plugin was "
        "paused and resumed; with replicas, each fault hit one of them at random, and "
        "replicas were also frozen (SIGSTOP) and thawed (SIGCONT). Then syncd drained, "
        "stopped on SIGTERM, and every item was counted.",
        "",
        markdown_table(CHAOS_HEADERS, chaos_table(rows)),
    ]
    failed = [r for r in rows if r.error or r.crashes]
    if failed:
        md += ["", "## Errors", ""]
        md += [f"- {r.plugin}/{r.database}: {r.error or ''}"
               + (f" syncd exited by itself {len(r.crashes)} times ({r.crashes})"
                  if r.crashes else "")
               + f" (log: {r.log})" for r in failed]
    paths[1].write_text("\n".join(md) + "\n", encoding="utf-8")
    return paths


def _meta_line(meta: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in meta.items())


def bench_chart(rows: Sequence[BenchRow], path: Path, *, title: str) -> None:
    """Grouped bars (log scale) of the three rates per plugin x database."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"syncd": "#2b6cb0", "baseline": "#a0aec0", "ceiling": "#2f855a"}
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(rows) + 2), 4.8), dpi=110)
    for j, side in enumerate(SIDES):
        xs = [i + (j - 1) * width for i in range(len(rows))]
        ys = [row.rate(side) or 0.0 for row in rows]
        ax.bar(xs, ys, width, label=side, color=colors[side])
    for i, row in enumerate(rows):
        rate = row.rate("syncd")
        if rate is None:
            continue
        note = "\n".join(
            f"{label} {_ratio(row.ratio(side))}"
            for label, side in (("vs baseline", "baseline"), ("vs ceiling", "ceiling"))
        )
        ax.annotate(note, (i - width, rate), xytext=(0, 4), textcoords="offset points",
                    ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r.plugin}\n{r.database}" for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("items per second (log)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    ax.margins(y=0.25)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
