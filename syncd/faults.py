"""Crash and stop points for reliability tests: die or freeze at a named moment.

Tests start ``syncd serve`` with ``SYNCD_CRASH_AT=<plugin>:<point>`` (and
optionally ``SYNCD_CRASH_AFTER=<n>`` to skip the first n hits); when the
plugin reaches ``crash_point("<point>")`` the process sends itself SIGKILL,
so nothing after that line runs, no finally block, no flush.

``SYNCD_STOP_AT=<plugin>:<point>`` (with ``SYNCD_STOP_AFTER=<n>``) makes the
process send itself SIGSTOP there instead: it freezes, every thread with it,
exactly as a long GC pause or a VM migration would freeze it mid-batch, and
carries on from that line when the test sends SIGCONT. That is how the lease
tests freeze a holder between its snapshot and its commit, deterministically.

The call costs one dict lookup per variable when they are unset, which is
always in production.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "SYNCD_CRASH_AT"
STOP_ENV = "SYNCD_STOP_AT"
_hits: dict[tuple[str, str], int] = {}


def crash_point(plugin: str, point: str) -> None:
    """Die (or freeze) here if the environment asks for it (see module docstring)."""
    for env, after, signum in ((CRASH_ENV, "SYNCD_CRASH_AFTER", signal.SIGKILL),
                               (STOP_ENV, "SYNCD_STOP_AFTER", signal.SIGSTOP)):
        target = os.environ.get(env)
        if not target or target != f"{plugin}:{point}":
            continue
        hits = _hits[env, target] = _hits.get((env, target), 0) + 1
        # Once: a process resumed after its stop goes on like any other.
        if hits == int(os.environ.get(after, "0")) + 1:
            os.kill(os.getpid(), signum)
