"""Crash points for reliability tests: die like ``kill -9`` at a named moment.

Tests start ``syncd serve`` with ``SYNCD_CRASH_AT=<plugin>:<point>`` (and
optionally ``SYNCD_CRASH_AFTER=<n>`` to skip the first n hits); when the
plugin reaches ``crash_point("<point>")`` the process sends itself SIGKILL,
so nothing after that line runs, no finally block, no flush. The call costs
one dict lookup when the variable is unset, which is always in production.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "SYNCD_CRASH_AT"
_hits: dict[str, int] = {}


def crash_point(plugin: str, point: str) -> None:
    """Die here if the environment asks for it (see module docstring)."""
    target = os.environ.get(CRASH_ENV)
    if not target or target != f"{plugin}:{point}":
        return
    _hits[target] = _hits.get(target, 0) + 1
    if _hits[target] > int(os.environ.get("SYNCD_CRASH_AFTER", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
