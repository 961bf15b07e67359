"""syncd-messages: Redis message queues to SQL, daily JSONL files and a webhook.

The user's application LPUSHes messages (JSON objects or raw text) onto one
list per queue type (``whatsapp:in``, ``whatsapp:out``); this plugin hands
every message to each configured writer (``database``, ``file``,
``webhook``) exactly once, each writer at its own pace. See README.md.
"""

from __future__ import annotations

from typing import Any

import syncd
from syncd_messages.config import MessagesConfig
from syncd_messages.keys import dead_key
from syncd_messages.worker import MessagesWorker

NAME = "messages"


@syncd.hookimpl
def syncd_plugin() -> syncd.PluginSpec:
    return syncd.PluginSpec(
        name=NAME,
        config=MessagesConfig,
        create=MessagesWorker,
        description="Redis message queues → SQL, JSONL files and a signed webhook, per writer",
    )


@syncd.hookimpl
def syncd_workload(plugin: str, prefix: str) -> list[syncd.Workload] | None:
    if plugin != NAME:
        return None
    from syncd_messages.workload import messages_workloads

    return messages_workloads(prefix)


@syncd.hookimpl
def syncd_dead_letter_lists(plugin: str, config: MessagesConfig) -> list[str] | None:
    """One dead-letter list per queue, in the queue's Cluster slot."""
    if plugin != NAME:
        return None
    return [dead_key(source) for source in config.queues.values()]


@syncd.hookimpl
def syncd_dead_letter_restore(
    plugin: str, config: Any, letter: syncd.DeadLetter
) -> list[syncd.Restore] | None:
    """Back where it was refused: the queue's list for an item no writer could
    take, or the one writer's list for a message that writer refused, so a
    requeue gives it to that writer alone and never again to the others.

    At the end the application pushes to (LPUSH): a requeue walks the dead
    letters oldest first, so they are taken again in their original order.
    """
    if plugin != NAME:
        return None
    if not letter.source:
        raise syncd.NotRequeueable("the dead letter does not say where it came from")
    return [syncd.Restore.lpush(letter.source, letter.payload_bytes)]
