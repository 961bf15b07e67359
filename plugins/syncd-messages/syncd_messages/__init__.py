"""syncd-messages: Redis message queues to SQL, daily JSONL files and a webhook.

The user's application LPUSHes messages (JSON objects or raw text) onto one
list per queue type (``whatsapp:in``, ``whatsapp:out``); this plugin hands
every message to each configured writer (``database``, ``file``,
``webhook``) exactly once, each writer at its own pace. See README.md.
"""

from __future__ import annotations

import syncd
from syncd_messages.config import MessagesConfig
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
