"""The pause gate holds waiters between batches and frees them on resume."""

from __future__ import annotations

import trio
import trio.testing

from syncd.gate import PauseGate


async def test_open_gate_does_not_block() -> None:
    gate = PauseGate()
    with trio.fail_after(10):
        await gate.wait()


async def test_pause_blocks_until_resume() -> None:
    gate = PauseGate()
    gate.pause()
    passed = trio.Event()

    async def waiter() -> None:
        await gate.wait()
        passed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()  # the waiter is as far as it gets
        assert not passed.is_set()
        gate.pause()  # pausing twice keeps the same waiters parked
        gate.resume()
        with trio.fail_after(10):
            await passed.wait()
    assert not gate.paused
