"""The harness behind ``syncd bench`` and ``syncd chaos`` (DESIGN.md §8).

It drives each installed plugin through the `Workload` its ``syncd_workload``
hook returns: produce items the way the user's application would, run syncd
(in-process for the benchmark, as a ``syncd serve`` subprocess for chaos),
and count what arrived, exactly.

- `bench.run_bench`: syncd vs. the seed's algorithm vs. the database's ceiling.
- `chaos.run_chaos`: SIGKILLs, killed connections and pauses under load, then
  the tally.
- `report`: the records, the terminal table and the files in ``bench/results``.
- `env`: the harness's own clients (never syncd's) and the plugins under test.
"""

from syncd.harness.bench import BenchOptions, run_bench
from syncd.harness.chaos import ChaosOptions, run_chaos
from syncd.harness.report import BenchRow, ChaosRow

__all__ = ["BenchOptions", "BenchRow", "ChaosOptions", "ChaosRow", "run_bench", "run_chaos"]
