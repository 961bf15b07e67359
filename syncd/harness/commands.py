"""The bodies of ``syncd bench`` and ``syncd chaos``: run, print the table, write the files.

`syncd.cli` only parses options; everything here returns an exit status so
it can be driven (and tested) without click.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from syncd.harness.bench import BenchOptions, run_bench
from syncd.harness.chaos import ChaosOptions, run_chaos
from syncd.harness.report import (
    BENCH_HEADERS,
    CHAOS_HEADERS,
    bench_table,
    chaos_table,
    format_table,
    round_line,
    timestamp,
    write_bench,
    write_chaos,
)

Echo = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def bench_main(options: BenchOptions, out: Path | None, *, echo: Echo = print,
               progress: Echo = _stderr) -> int:
    """Run the benchmark; 0 if every syncd run counted exactly, 1 if not, 2 if it could not run."""
    # The daemon runs in this process: its per-item warnings (every malformed
    # item the workload makes on purpose) would bury the progress lines.
    logger = logging.getLogger("syncd")
    level = logger.level
    logger.setLevel(logging.ERROR)
    stamp = timestamp()
    try:
        rows = trio.run(lambda: run_bench(options, progress=progress))
    except (LookupError, ValueError) as exc:
        progress(f"syncd bench: {exc}")
        return 2
    finally:
        logger.setLevel(level)  # callers in the same process (tests) keep their logs
    if not rows:
        return 0
    echo(format_table(BENCH_HEADERS, bench_table(rows)))
    for line in filter(None, map(round_line, rows)):
        echo(f"ratios per round: {line[2:]}")
    if out is not None:
        for path in write_bench(rows, out, options.meta(), stamp=stamp):
            echo(f"wrote {path}")
    return 0 if all(row.tally_ok for row in rows) else 1


def chaos_main(options: ChaosOptions, out: Path | None, *, echo: Echo = print,
               progress: Echo = _stderr) -> int:
    """Run chaos; 0 if nothing was lost or doubled anywhere, 1 if something was,
    2 if it could not run."""
    stamp = timestamp()
    progress(f"[chaos] seed {options.seed} (replay with --seed {options.seed})")
    try:
        rows = trio.run(lambda: run_chaos(options, progress=progress))
    except (LookupError, ValueError) as exc:
        progress(f"syncd chaos: {exc}")
        return 2
    if not rows:
        return 0
    echo(format_table(CHAOS_HEADERS, chaos_table(rows)))
    if out is not None:
        for path in write_chaos(rows, out, options.meta(), stamp=stamp):
            echo(f"wrote {path}")
    return 0 if all(row.ok for row in rows) else 1
