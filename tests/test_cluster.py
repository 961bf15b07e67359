"""Redis Cluster: the ``redis+cluster://`` URL, the handle on it, scanning every master."""

from __future__ import annotations

import pytest
import trio
from redis.crc import key_slot

from syncd.redact import mask_url, scrub
from syncd.redis import RedisHandle, parse_cluster_url, scan_masters
from syncd.testing import REDIS_URL, LocalCluster, redis_client_for


class TestClusterURL:
    """The URL lists startup nodes and credentials, nothing else."""

    def test_parsed(self) -> None:
        parsed = parse_cluster_url("redis+cluster://app:p%40ss@10.0.0.1:7000,[::1]:7001")
        assert parsed.nodes == (("10.0.0.1", 7000), ("::1", 7001))
        assert (parsed.username, parsed.password) == ("app", "p@ss")

    @pytest.mark.parametrize(("url", "message"), [
        ("redis+cluster://10.0.0.1", "each cluster node is host:port, got '10.0.0.1'"),
        ("redis+cluster://a:1,b:x", "each cluster node is host:port, got 'b:x'"),
        ("redis+cluster://a:1/2", "only database 0"),
        ("redis+cluster://a:1?socket_timeout=3", "takes no options"),
    ])
    def test_refused_with_one_line(self, url: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            parse_cluster_url(url)

    def test_password_masked(self) -> None:
        url = "redis+cluster://:s3cr3t-pw@10.0.0.1:7000,10.0.0.2:7000"
        assert mask_url(url) == "redis+cluster://:***@10.0.0.1:7000,10.0.0.2:7000"
        assert "s3cr3t-pw" not in scrub(f"failed: {url} (password s3cr3t-pw)", url)


class TestHandle:
    """RedisHandle on a real cluster: scripts route by slot, scans see every master."""

    async def test_scan_masters_finds_keys_on_every_master(
            self, redis_cluster: LocalCluster, redis_cluster_url: str, prefix: str) -> None:
        handle = RedisHandle.from_url(redis_cluster_url, pool_size=4)
        try:
            assert handle.cluster
            await handle.ping()
            keys = [f"{prefix}:k{i}" for i in range(200)]
            await handle.run(lambda client: [client.set(key, 1) for key in keys])
            found = await handle.run(
                lambda client: {k.decode() for k in scan_masters(client, match=f"{prefix}:*")})
            assert found == set(keys)
            masters = {handle.client.get_node_from_key(key).name for key in keys}
            assert len(masters) == 3  # the keys really are spread out
        finally:
            handle.close()

    async def test_node_for_is_the_slots_master_until_the_slot_moves(
            self, redis_cluster: LocalCluster, redis_cluster_url: str, prefix: str) -> None:
        """For a single-Redis library keeping its keys under one tag: the
        slot's master as a plain Redis; after a failover its commands say
        Redis is away, and a new ``node_for`` finds the promoted replica."""
        from syncd.errors import RedisUnavailable

        if not redis_cluster.running:
            pytest.skip("needs the cluster this session started")
        handle = RedisHandle.from_url(redis_cluster_url, pool_size=4)
        key = f"{{{prefix}}}:wait"
        try:
            pinned = await handle.node_for(key)
            assert not pinned.cluster
            port = redis_cluster.owner(key_slot(key.encode()))
            assert pinned.url == f"redis://127.0.0.1:{port}/0"
            await pinned.run(lambda client: client.rpush(key, b"a", b"b"))
            await pinned.run(lambda client: client.rpush(f"{{{prefix}}}:active", b"c"))
            await trio.to_thread.run_sync(redis_cluster.fail_over, port)
            with pytest.raises(RedisUnavailable):
                await pinned.run(lambda client: client.lrange(key, 0, -1))
            again = await handle.node_for(key)
            assert again.url == f"redis://127.0.0.1:{redis_cluster.owner(key_slot(key.encode()))}/0"
            assert again.url != pinned.url
            assert await again.run(lambda client: client.lrange(key, 0, -1)) == [b"a", b"b"]
        finally:
            handle.close()

    async def test_node_for_on_a_single_redis_is_the_handle_itself(self) -> None:
        handle = RedisHandle.from_url(REDIS_URL, pool_size=2)
        try:
            assert await handle.node_for("anything") is handle
        finally:
            handle.close()

    def test_plain_client_for_a_cluster_url(self, redis_cluster_url: str, prefix: str) -> None:
        client = redis_client_for(redis_cluster_url)
        try:
            client.set(f"{prefix}:a", 1)
            assert client.keyslot(f"{prefix}:a") == key_slot(f"{prefix}:a".encode())
        finally:
            client.close()

    async def test_a_cluster_not_up_yet_is_unavailable_not_a_crash(self) -> None:
        """Built without connecting (as a single-node handle is); the first
        command says Redis is away, and the supervisor retries."""
        from syncd.errors import RedisUnavailable

        handle = RedisHandle.from_url("redis+cluster://127.0.0.1:1", pool_size=2,
                                      socket_timeout=1.0)
        assert handle.cluster
        with pytest.raises(RedisUnavailable, match=r"redis\+cluster://127\.0\.0\.1:1"):
            await handle.ping()
        handle.close()
