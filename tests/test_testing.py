"""The test helpers themselves: `wait_for` waits for a state and says what it saw when it fails."""

from __future__ import annotations

import itertools

import pytest
import trio

from syncd.testing import wait_for, wait_for_sync


class TestWaitFor:
    """Returns the first truthy value; on timeout, names the condition and what it last saw."""

    async def test_returns_what_the_predicate_returned(self, autojump_clock: object) -> None:
        calls = itertools.count()
        assert await wait_for(lambda: next(calls) >= 3 and "done") == "done"

    async def test_async_predicate(self, autojump_clock: object) -> None:
        ticks = itertools.count()

        async def ready() -> list[int]:
            await trio.sleep(0.1)
            return [n] if (n := next(ticks)) >= 2 else []

        assert await wait_for(ready) == [2]

    async def test_timeout_shows_condition_last_value_and_description(
        self, autojump_clock: object
    ) -> None:
        state = {"value": "starting"}
        with pytest.raises(AssertionError) as caught:
            await wait_for(lambda: state["value"] == "failed", timeout=5,
                           describe=lambda: state)
        message = str(caught.value)
        assert "not true within 5s" in message
        assert 'state["value"] == "failed"' in message  # the lambda's source
        assert "last seen: False" in message
        assert "{'value': 'starting'}" in message

    async def test_ignored_exceptions_are_not_yet(self, autojump_clock: object) -> None:
        attempts = itertools.count()

        def flaky() -> bool:
            if next(attempts) < 3:
                raise ConnectionError("not up yet")
            return True

        assert await wait_for(flaky, ignore=(ConnectionError,)) is True
        with pytest.raises(AssertionError, match="last seen: ConnectionError"):
            await wait_for(_raise, timeout=1, ignore=(ConnectionError,))

    async def test_other_exceptions_propagate(self, autojump_clock: object) -> None:
        with pytest.raises(ZeroDivisionError):
            await wait_for(lambda: 1 / 0)


def _raise() -> bool:
    raise ConnectionError("still down")


class TestWaitForSync:
    """The same contract for synchronous tests."""

    def test_returns_and_fails_with_what_it_saw(self) -> None:
        calls = itertools.count()
        assert wait_for_sync(lambda: next(calls) >= 2 and 42, interval=0.001) == 42
        with pytest.raises(AssertionError) as caught:
            wait_for_sync(lambda: [], timeout=0.05, interval=0.01, describe=lambda: "why")
        assert "last seen: []" in str(caught.value)
        assert "describe(): 'why'" in str(caught.value)
