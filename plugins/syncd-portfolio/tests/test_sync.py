"""Jobs from a real npm bullmq producer, run by syncd against a real EVM node."""

from __future__ import annotations

from typing import Any

import httpx
import syncd_portfolio
import trio
from portfolio_support import Ganache, Producer, fund, new_wallet, pg_rows, section, user_job

from syncd.testing import daemon_config, run_daemon, wait_for


def config(prefix: str, ganache: Ganache, pg_url: str, **overrides: Any) -> dict[str, Any]:
    return daemon_config({"portfolio": section(prefix, ganache.url, **overrides)},
                         {"default": pg_url}, http=True, shutdown_grace="5s")


async def counts(producer: Producer, queue: str) -> dict[str, int]:
    return await trio.to_thread.run_sync(producer.counts, queue)


class TestSync:
    """A portfolio-sync job enqueued by Node ends with the chain's balances in SQL."""

    async def test_balances_from_the_chain(self, prefix: str, tables: str, pg_url: str,
                                           ganache: Ganache, tokens: list[str],
                                           producer: Producer) -> None:
        wallets = [new_wallet(), new_wallet()]
        held = {w: fund(ganache, tokens, w, i) for i, w in enumerate(wallets)}
        queue = f"{prefix}_q"
        async with run_daemon(config(prefix, ganache, pg_url),
                              [syncd_portfolio]) as daemon:
            await trio.to_thread.run_sync(producer.add, queue, [
                {"name": "portfolio-sync", "data": user_job("alice", wallets, tokens),
                 "opts": {"priority": 1}}])
            await wait_for(lambda: counts(producer, queue), 1)
            await wait_for(lambda: self.completed(producer, queue), timeout=30)
            async with httpx.AsyncClient(base_url=daemon.http_binds[0]) as http:
                answer = (await http.get("/jobs/1")).json()
                assert answer["state"] == "completed", answer
                assert answer["returnvalue"]["balances"] == 8
        rows = pg_rows(pg_url, f'SELECT wallet, token, balance, decimals, block_number '
                               f'FROM "{prefix}_balances" WHERE user_id = %s', ("alice",))
        found = {(w, t): (int(b), d) for w, t, b, d, _ in rows}
        decimals = dict(zip(tokens, (18, 6, 8), strict=True))
        expected = {(w, t): (amount, 18 if t == "native" else decimals[t])
                    for w, h in held.items() for t, amount in h.items()}
        assert found == expected
        jobs = pg_rows(pg_url, f'SELECT id, name, state, attempts FROM "{prefix}_jobs"')
        assert jobs == [("1", "portfolio-sync", "completed", 1)]
        names = pg_rows(pg_url, f'SELECT address, symbol, decimals FROM "{prefix}_tokens" '
                                'ORDER BY decimals')
        assert names == [(tokens[1], "USDC", 6), (tokens[2], "FARM", 8), (tokens[0], "MOON", 18)]

    @staticmethod
    async def completed(producer: Producer, queue: str, n: int = 1) -> bool:
        return (await counts(producer, queue))["completed"] >= n
