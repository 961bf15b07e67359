"""syncd-votes: a Redis vote queue into a SQL table, exactly once.

The user's application LPUSHes ``{"vote": "a", "voter_id": "...",
"timestamp": "..."}`` onto the list ``votes``; this plugin stores each vote
as a row of the table ``votes`` (the seed's schema) and sends anything it
cannot store to ``votes:dead`` with the reason. See README.md.
"""

from __future__ import annotations

from typing import Any

import syncd
from syncd_votes.config import VotesConfig
from syncd_votes.worker import VotesWorker

NAME = "votes"


@syncd.hookimpl
def syncd_plugin() -> syncd.PluginSpec:
    return syncd.PluginSpec(
        name=NAME,
        config=VotesConfig,
        create=VotesWorker,
        description="Redis vote queue → SQL table, exactly once, with a dead-letter list",
    )


@syncd.hookimpl
def syncd_workload(plugin: str, prefix: str) -> syncd.Workload | None:
    if plugin != NAME:
        return None
    from syncd_votes.workload import votes_workload

    return votes_workload(prefix)


@syncd.hookimpl
def syncd_dead_letter_lists(plugin: str, config: Any) -> list[str] | None:
    return [config.dead_letter] if plugin == NAME else None


@syncd.hookimpl
def syncd_dead_letter_restore(
    plugin: str, config: Any, letter: syncd.DeadLetter,
) -> list[syncd.Restore] | None:
    """A vote goes back onto its queue, at the end taken next, byte for byte."""
    if plugin != NAME:
        return None
    return [syncd.Restore.rpush(letter.source or config.queue, letter.payload_bytes)]
