"""Pure logic: job validation, ABI coding, the circuit breaker, the config, the store's guard."""

from __future__ import annotations

import pytest
import syncd_portfolio
import trio
import trio.testing
from syncd_portfolio import abi, jobs
from syncd_portfolio.breaker import CircuitBreaker, CircuitOpen
from syncd_portfolio.config import PortfolioConfig
from syncd_portfolio.protocol import Protocol, backoff_ms, error_of

import syncd
from syncd.config import structure
from syncd.errors import ConfigError
from syncd.manager import get_plugin_manager

A = "0x" + "ab" * 20


class TestJobs:
    """The seed's job shapes validate; anything else says what is wrong."""

    def test_portfolio_sync(self) -> None:
        parsed = jobs.parse("portfolio-sync", {
            "userId": "u1", "wallets": [{"chainId": 1, "address": A.upper().replace("0X", "0x")},
                                        {"chainId": "137", "address": A}],
            "tokens": {"1": [A], 137: []}})
        assert isinstance(parsed, jobs.UserSync)
        assert parsed.wallets == (jobs.Wallet(1, A), jobs.Wallet(137, A))
        assert parsed.tokens == {1: (A,), 137: ()}
        assert parsed.chains() == [1, 137]

    def test_chain_sync_and_token_metadata_and_bulk(self) -> None:
        chain = jobs.parse("chain-sync", {"userId": 7, "chainId": 1, "wallets": [A],
                                          "tokens": [A]})
        assert chain == jobs.UserSync("7", (jobs.Wallet(1, A),), {1: (A,)})
        meta = jobs.parse("token-metadata", {"chainId": 1, "tokens": [A, A]})
        assert meta == jobs.TokenMetadata(1, (A,))
        bulk = jobs.parse("bulk-user-sync", {"users": [{"userId": "a", "wallets": []}]})
        assert isinstance(bulk, jobs.BulkSync)

    @pytest.mark.parametrize(("name", "data", "reason"), [
        ("nope", {}, "unknown job name 'nope'"),
        ("portfolio-sync", [], "data must be an object"),
        ("portfolio-sync", {"wallets": []}, "data.userId"),
        ("portfolio-sync", {"userId": "u", "wallets": [{"chainId": 1, "address": "0x12"}]},
         "data.wallets[0].address: '0x12' is not an address"),
        ("portfolio-sync", {"userId": "u", "wallets": [{"chainId": 0, "address": A}]},
         "data.wallets[0].chainId"),
        ("portfolio-sync", {"userId": "u", "wallets": [], "tokens": {"x": []}},
         "data.tokens key"),
        ("chain-sync", {"userId": "u", "chainId": 1, "wallets": [{"chainId": 2, "address": A}]},
         "the job is for chain 1"),
        ("bulk-user-sync", {"users": [{"userId": "u", "wallets": "no"}]},
         "data.users[0].wallets must be a list"),
        ("token-metadata", {"chainId": True, "tokens": []}, "data.chainId"),
    ])
    def test_bad_input(self, name: str, data: object, reason: str) -> None:
        with pytest.raises(jobs.BadJob, match=reason.replace("[", r"\[").replace("]", r"\]")):
            jobs.parse(name, data)

    def test_limits(self) -> None:
        with pytest.raises(jobs.BadJob, match="more than the 1 allowed"):
            jobs.parse("portfolio-sync", {"userId": "u", "wallets": [
                {"chainId": 1, "address": A}, {"chainId": 2, "address": A}]}, max_wallets=1)

    def test_priorities(self) -> None:
        assert [jobs.priority(p) for p in ("high", "medium", "low", 3)] == [1, 5, 10, 3]
        with pytest.raises(jobs.BadJob):
            jobs.priority("urgent")


class TestAbi:
    """The four calls, as the ABI spec encodes them."""

    def test_balance_of(self) -> None:
        assert abi.balance_of(A) == "0x70a08231" + "0" * 24 + "ab" * 20

    def test_decode(self) -> None:
        assert abi.decode_uint("0x" + "00" * 31 + "12") == 18
        text = b"USD Coin".hex()
        encoded = "0x" + f"{32:064x}" + f"{8:064x}" + text.ljust(64, "0")
        assert abi.decode_string(encoded) == "USD Coin"
        assert abi.decode_string("0x" + b"MKR".hex().ljust(64, "0")) == "MKR"  # bytes32

    @pytest.mark.parametrize("bad", ["0x", "0x12", "nothex", "0x" + "00" * 64 + "zz"])
    def test_garbage(self, bad: str) -> None:
        with pytest.raises(abi.AbiError):
            abi.decode_string(bad) if len(bad) > 6 else abi.decode_uint(bad)


class TestBreaker:
    """Closed → open after N failures → half-open after the cool-down → closed."""

    async def test_cycle(self, autojump_clock: trio.testing.MockClock) -> None:
        changes: list[str] = []
        breaker = CircuitBreaker("rpc", failures=2, cooldown=10,
                                 on_change=lambda name, state: changes.append(state))

        async def call(ok: bool) -> None:
            async with breaker.guard():
                if not ok:
                    raise OSError("down")

        for _ in range(2):
            with pytest.raises(OSError):
                await call(False)
        assert breaker.state == "open"
        with pytest.raises(CircuitOpen, match="next trial in"):
            await call(True)
        await trio.sleep(10)
        with pytest.raises(OSError):  # the trial fails: open again, for a full cool-down
            await call(False)
        assert breaker.state == "open"
        await trio.sleep(9)
        with pytest.raises(CircuitOpen):
            await call(True)
        await trio.sleep(1)
        await call(True)
        assert breaker.state == "closed"
        assert changes == ["open", "half_open", "open", "half_open", "closed"]

    async def test_one_trial_at_a_time(self, autojump_clock: trio.testing.MockClock) -> None:
        breaker = CircuitBreaker("rpc", failures=1, cooldown=1)
        breaker.failure()
        await trio.sleep(1)
        breaker.allow()  # the trial
        with pytest.raises(CircuitOpen, match="trial call is running"):
            breaker.allow()

    async def test_cancel_is_no_failure(self) -> None:
        breaker = CircuitBreaker("rpc", failures=1)
        with trio.move_on_after(0):
            async with breaker.guard():
                await trio.sleep(1)
        assert breaker.state == "closed"


@pytest.fixture(name="autojump_clock")
def _autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class TestConfig:
    """Chain ids written 1 or "1" are the same chain; mistakes name their key."""

    def test_chain_keys(self) -> None:
        cfg = structure(PortfolioConfig, {"chains": {1: {"rpc_url": "http://a"},
                                                     "137": {"rpc_url": "http://b"}}}, "p")
        assert sorted(cfg.chains) == [1, 137]
        assert cfg.dead_letter_key == "{portfolio-sync}:dead"

    @pytest.mark.parametrize(("section", "key"), [
        ({"chains": {"one": {"rpc_url": "http://a"}}}, "p"),
        ({"chains": {1: {"rpc_url": "ftp://a"}}}, "p.chains.1.rpc_url"),
        ({"queue": "a:b"}, "p.queue"),
        ({"concurrency": 0}, "p.concurrency"),
        ({"timeout": "soon"}, "p.timeout"),
    ])
    def test_errors(self, section: dict[str, object], key: str) -> None:
        with pytest.raises(ConfigError) as caught:
            structure(PortfolioConfig, section, "p")
        assert caught.value.key == key


class TestProviderHook:
    """Another package adds a provider through the plugin's own hookspec."""

    def test_hookspec_registered_and_called(self) -> None:
        class Solana:
            @syncd.hookimpl
            def portfolio_provider(self, chain_id: int, config: object,
                                   client: object) -> object:
                return ("solana", chain_id) if getattr(config, "provider", "") == "sol" else None

        # The provider package may be registered before or after the portfolio plugin.
        for order in ([Solana(), syncd_portfolio], [syncd_portfolio, Solana()]):
            pm = get_plugin_manager(order, autoload=False)
            answer = pm.hook.portfolio_provider(
                chain_id=5, config=type("C", (), {"provider": "sol"})(), client=None)
            assert answer == ("solana", 5)

    def test_unknown_hook_still_refused(self) -> None:
        class Typo:
            @syncd.hookimpl
            def portfolio_providr(self) -> None: ...

        with pytest.raises(ConfigError):
            get_plugin_manager([Typo(), syncd_portfolio], autoload=False)


class TestProtocol:
    """BullMQ's backoff strategies and script error codes, as its Node workers read them."""

    def test_backoff(self) -> None:
        exponential = {"type": "exponential", "delay": 5000}
        assert [backoff_ms(exponential, n) for n in (1, 2, 3)] == [5000, 10000, 20000]
        assert backoff_ms({"type": "fixed", "delay": 300}, 3) == 300
        assert backoff_ms(250, 2) == 250
        assert backoff_ms(None, 1) == 0

    def test_errors(self) -> None:
        assert error_of(-2) == "lock is missing"
        assert error_of(-99) == "BullMQ error code -99"
        assert error_of(0) is None and error_of([b"data"]) is None
        assert error_of(ValueError("NOSCRIPT")) == "NOSCRIPT"

    def test_parse_active(self) -> None:
        protocol = Protocol("q", "bull", 30000)
        raw = [[b"name", b"portfolio-sync", b"data", b'{"userId": "u"}', b"opts",
                b'{"attempts": 3}', b"timestamp", b"1", b"atm", b"1", b"stc", b"2"],
               b"7", 0, 0]
        job, until = protocol.parse_active(raw, "tok")
        assert job is not None and until == 0
        assert (job.id, job.name, job.data, job.attemptsMade, job.stalledCounter, job.token) == (
            "7", "portfolio-sync", {"userId": "u"}, 1, 2, "tok")
        assert protocol.parse_active([0, 0, 0, 1234], "tok") == (None, 1234)
        assert protocol.parse_active(None, "tok") == (None, 0)

    def test_unknown_script_is_loaded_and_run(self, prefix: str) -> None:
        """A NOSCRIPT reply (first use, or Redis restarted) loads the script and runs it."""
        import hashlib
        import uuid

        import redis

        from syncd.testing import REDIS_URL

        protocol = Protocol(f"{prefix}_q", "bull", 30000)
        # A variant of the script no server has seen yet.
        source = protocol._source["moveToActive"] + f"\n-- {uuid.uuid4().hex}\n"
        protocol._source["moveToActive"] = source
        protocol._sha["moveToActive"] = hashlib.sha1(source.encode()).hexdigest()
        client = redis.Redis.from_url(REDIS_URL)
        try:
            [answer] = protocol.run(client, [protocol.move_to_active("tok")])
            assert protocol.parse_active(answer, "tok") == (None, 0)  # empty queue, no error
            assert client.script_exists(protocol._sha["moveToActive"]) == [True]
        finally:
            client.close()
