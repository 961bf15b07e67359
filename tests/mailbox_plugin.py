"""A throwaway queue plugin for the dead-letter and status-page tests (never shipped).

It takes items from its queue one at a time: ``bad...`` items are
quarantined with their source, anything else is counted as delivered
(``{queue}:delivered``). It says how its dead letters go back, reports a
fixed lag, and has a panel of its own with a button onto one of its routes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

import syncd

NAME = "mailbox"


@attrs.frozen
class MailboxConfig:
    """Attributes:
    queue: The list it consumes (RPOP).
    dead_letter: Where bad items go.
    """

    queue: str = "mailbox"
    dead_letter: str = "mailbox:dead"


@attrs.define(eq=False)
class MailboxWorker:
    ctx: syncd.PluginContext
    interval: float | None = None
    pokes: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        config = self.ctx.config
        while True:
            await self.ctx.gate.wait()
            item = await self.ctx.redis.run(lambda r: r.rpop(config.queue))
            if item is None:
                await trio.sleep(0.02)
                continue
            if item.startswith(b"bad"):
                letter = syncd.DeadLetter(config.dead_letter, item,
                                          f"an item of {len(item)} bytes is bad", NAME,
                                          source=config.queue)
                await syncd_push(self.ctx.redis, letter)
                self.ctx.report(syncd.SyncResult(dead_lettered=1), None)
            else:
                await self.ctx.redis.run(lambda r: r.incr(f"{config.queue}:delivered"))
                self.ctx.report(syncd.SyncResult(items=1, batches=1), 0.001)

    async def flush(self) -> syncd.SyncResult:
        return syncd.SyncResult()

    async def lag(self) -> float:
        return 1.5


async def syncd_push(redis: syncd.RedisHandle, letter: syncd.DeadLetter) -> None:
    await redis.run(lambda r: r.rpush(letter.key, letter.encode()))


@syncd.hookimpl
def syncd_plugin() -> syncd.PluginSpec:
    return syncd.PluginSpec(name=NAME, config=MailboxConfig, create=MailboxWorker,
                            uses_database=False)


@syncd.hookimpl
def syncd_dead_letter_restore(plugin: str, config: Any,
                              letter: syncd.DeadLetter) -> list[syncd.Restore] | None:
    if plugin != NAME:
        return None
    if letter.payload_bytes.startswith(b"badforever"):
        raise syncd.NotRequeueable("it will never be good")
    # Requeued, an item is fixed (the operator fixed "the cause").
    fixed = letter.payload_bytes.replace(b"bad", b"fixed", 1)
    return [syncd.Restore.rpush(letter.source or config.queue, fixed)]


@syncd.hookimpl
def syncd_http_routes(plugin: str, worker: Any) -> list[syncd.Route] | None:
    if plugin != NAME:
        return None

    async def poke() -> dict[str, Any]:
        worker.pokes += 1
        return {"pokes": worker.pokes}

    return [syncd.Route("/mailbox/poke", poke, methods=("POST",))]


@syncd.hookimpl
def syncd_status_panel(plugin: str, worker: Any) -> Callable[[], Awaitable[syncd.Panel]] | None:
    if plugin != NAME:
        return None

    async def build() -> syncd.Panel:
        return syncd.Panel(
            title="Mailbox",
            note="<b>not bold</b>",
            tables=[syncd.Table(
                title="Pokes", columns=["what", "count"], rows=[["pokes", worker.pokes]],
                actions=[[syncd.Action("poke", "/mailbox/poke", confirm="Poke the mailbox?")]],
            )],
        )

    return build
