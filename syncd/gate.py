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
    #: Set while paused, for `wait_paused`.
    _closed: trio.Event = attrs.field(factory=trio.Event)
    paused: bool = False

    def __attrs_post_init__(self) -> None:
        self._open.set()

    def pause(self) -> None:
        if not self.paused:
            self.paused = True
            self._open = trio.Event()
            self._closed.set()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self._closed = trio.Event()
            self._open.set()

    async def wait_paused(self) -> None:
        """Return once paused (at once if paused now): for whoever must act on a
        pause rather than only wait it out, such as a lease holder handing over."""
        while not self.paused:
            await self._closed.wait()

    async def wait(self) -> None:
        """Return at once when open; otherwise wait for resume."""
        while self.paused:
            await self._open.wait()
        await trio.lowlevel.checkpoint()
