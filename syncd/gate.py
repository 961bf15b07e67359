"""The pause gate: how pause and resume reach a plugin between batches."""

from __future__ import annotations

import attrs
import trio


@attrs.define
class PauseGate:
    """Open by default; ``wait()`` blocks while paused.

    Plugins call ``await gate.wait()`` at each batch boundary, so a pause
    never interrupts a batch in flight, and takes effect as soon as that
    batch is done. Resume wakes every waiter at once.
    """

    _open: trio.Event = attrs.field(factory=trio.Event)
    paused: bool = False

    def __attrs_post_init__(self) -> None:
        self._open.set()

    def pause(self) -> None:
        if not self.paused:
            self.paused = True
            self._open = trio.Event()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self._open.set()

    async def wait(self) -> None:
        """Return at once when open; otherwise wait for resume."""
        while self.paused:
            await self._open.wait()
        await trio.lowlevel.checkpoint()
