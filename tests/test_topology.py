"""lorebase's own Redis client (lorebase/db.py) against a real Redis Cluster (three
primaries, three replicas) and a real Sentinel-managed primary: routing, redirections during
a live slot migration, and recovery after a primary is killed, without a new client. The
numbers each failover test measures are printed and written to test-artifacts/failover.json.
The same through lorebase's HTTP API: tests/test_beyond.py."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from lorebase import db

from .lore import ROOT, wait_for
from .topology import Cluster, Sentinels

ARTIFACT = ROOT / "test-artifacts" / "failover.json"


def record(name: str, **numbers: Any) -> None:
    """Keep a measurement for the README (merged into test-artifacts/failover.json)."""
    ARTIFACT.parent.mkdir(exist_ok=True)
    known = json.loads(ARTIFACT.read_text()) if ARTIFACT.exists() else {}
    known[name] = numbers
    ARTIFACT.write_text(json.dumps(known, indent=2) + "\n")
    print(name, numbers)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    made = Cluster(tmp_path_factory.mktemp("cluster")).start()
    yield made
    made.stop()


def test_urls_of_the_three_shapes() -> None:
    assert db.parse_url("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26380/lore?db=2") == {
        "kind": "sentinel", "password": "pw", "username": None, "db": 2, "master": "lore",
        "sentinel_password": None, "nodes": [("10.0.0.1", 26379), ("10.0.0.2", 26380)]}
    assert db.parse_url("redis+cluster://u:p%40ss@[::1]:7000,h:7001")["nodes"] == [("::1", 7000), ("h", 7001)]
    assert db.parse_url("redis+cluster://u:p%40ss@h:7000")["password"] == "p@ss"
    assert db.parse_url("unix:///run/r.sock?db=3") == {"kind": "single", "password": None, "username": None,
                                                       "db": 3, "path": "/run/r.sock"}
    for bad in ("redis+sentinel://h:1", "redis+cluster://h:1/2", "redis+cluster://h", "rediss://h:1", "redis+cluster://h:x"):
        with pytest.raises(ValueError):
            db.parse_url(bad)


def test_slot_is_redis_own(cluster: Cluster) -> None:
    """The client's slot of a key (tags included) is the one Redis computes."""
    node = cluster.node(cluster.ports[0])
    for key in ("user:{alice}", "session:{bob.x}:abc", "x{}y", "{}{a}", "plain", "é{ü}", "a{b", "mail:queue"):
        assert db.slot(key) == node.cluster("keyslot", key), key


def test_cluster_commands_pipelines_transactions_scripts(cluster: Cluster) -> None:
    async def run() -> None:
        client = db.open_client(cluster.url, 2.0)
        try:
            keys = [f"t:{i}" for i in range(300)]  # spread over every primary
            assert await client.pipeline([("SET", k, i) for i, k in enumerate(keys)]) == ["OK"] * 300
            assert await client.pipeline([("GET", k) for k in keys]) == [str(i) for i in range(300)]
            assert await client.call("GET", "t:7") == "7"
            assert await client.multi([("SET", "{u}:a", 1), ("INCR", "{u}:a"), ("GET", "{u}:a")]) == ["OK", 2, "2"]
            lua = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
            assert [await client.script(lua, [k], [5]) for k in keys[:20]] == [i + 5 for i in range(20)]
            assert await client.call("PING") == "PONG"
            with pytest.raises(db.RedisError, match="CROSSSLOT"):
                await client.multi([("SET", "x1", 1), ("SET", "x2", 1)])
            with pytest.raises(db.RedisError, match="WRONGTYPE"):
                await client.pipeline([("SET", "t:1", 1), ("LPUSH", "t:2", 1)])
            owners = {cluster.owner(k) for k in keys}
            assert len(owners) == 3 and set(client.nodes) == {f"127.0.0.1:{p}" for p in owners}  # type: ignore[attr-defined]
        finally:
            await client.close()
    asyncio.run(run())


async def _load(client: db.Client, keys: list[str], stop: asyncio.Event, errors: list[str],
                acked: dict[str, int]) -> None:
    """Writes to `keys` by every path (call, pipeline, MULTI, script) until `stop`; each
    acknowledged increment counted per key."""
    lua = "return redis.call('INCR', KEYS[1])"
    turn = 0
    while not stop.is_set():
        turn += 1
        key = keys[turn % len(keys)]
        other = keys[(turn * 7 + 3) % len(keys)]
        try:
            kind = turn % 4
            if kind == 0:
                await client.call("INCR", key)
                acked[key] += 1
            elif kind == 1:
                await client.pipeline([("INCR", key), ("INCR", other)])
                acked[key] += 1
                acked[other] += 1
            elif kind == 2:
                await client.multi([("INCR", key), ("EXPIRE", key, 3600)])
                acked[key] += 1
            else:
                await client.script(lua, [key], [])
                acked[key] += 1
        except (db.RedisError, db.Unavailable) as error:
            errors.append(f"{type(error).__name__}: {error}")
            await asyncio.sleep(0.01)


class Writing:
    """`writers` tasks running `_load` over `keys` on one client of `url` for an `async with`
    block; `errors` and `acked` as they left them once the block and the tasks ended."""

    def __init__(self, url: str, timeout: float, keys: list[str], writers: int):
        self.client = db.open_client(url, timeout)
        self.keys, self.writers = keys, writers
        self.stop = asyncio.Event()
        self.errors: list[str] = []
        self.acked = dict.fromkeys(keys, 0)
        self.tasks: list[asyncio.Future[None]] = []

    async def __aenter__(self) -> Writing:
        self.tasks = [asyncio.ensure_future(_load(self.client, self.keys[i::self.writers], self.stop, self.errors,
                                                  self.acked)) for i in range(self.writers)]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)
        await self.client.close()


def test_slot_migration_under_load_loses_nothing(cluster: Cluster) -> None:
    """`redis-cli --cluster reshard` moves 1,000 slots with their keys while 20 tasks write to
    keys in those slots: every command succeeds (MOVED, ASK and TRYAGAIN followed) and every
    acknowledged increment is there afterwards."""
    source, target = cluster.primaries()[:2]
    moving = [f"m:{i}" for i in range(4000) if cluster.owner(f"m:{i}") == source][:200]

    async def run() -> tuple[list[str], dict[str, int]]:
        async with Writing(cluster.url, 2.0, moving, 20) as load:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(cluster.reshard, source, target, 1000)
            await asyncio.sleep(0.3)
        return load.errors, load.acked

    errors, acked = asyncio.run(run())
    assert not errors, errors[:5]
    moved = sum(1 for k in moving if cluster.owner(k) == target)
    assert moved > 0, "the reshard moved none of the written keys' slots"
    stored = [cluster.client().get(k) for k in moving]
    assert [int(v or 0) for v in stored] == [acked[k] for k in moving]
    record("cluster reshard", slots=1000, keys_written=len(moving), keys_moved=moved,
           increments=sum(acked.values()), errors=len(errors))


def test_cluster_primary_killed_replica_takes_over(cluster: Cluster) -> None:
    """kill -9 one primary under writes: its replica is promoted and the same client writes
    to those slots again, within cluster-node-timeout plus the election (bound: 10 s)."""
    victim = cluster.primaries()[-1]
    keys = [f"k:{i}" for i in range(3000) if cluster.owner(f"k:{i}") == victim][:100]

    async def run() -> dict[str, Any]:
        async with Writing(cluster.url, 1.0, keys, 10) as load:
            await asyncio.sleep(0.5)
            killed = time.monotonic()
            cluster.kill(victim)
            recovered = None
            while time.monotonic() - killed < 20:
                await asyncio.sleep(0.05)
                try:
                    await load.client.call("SET", "{" + keys[0] + "}:probe", 1)  # a key of the victim's slot
                except (db.RedisError, db.Unavailable):
                    continue
                recovered = time.monotonic() - killed
                break
            await asyncio.sleep(0.5)
        return {"recovered_s": recovered, "errors": len(load.errors), "acked": load.acked}

    out = asyncio.run(run())
    assert out["recovered_s"] is not None and out["recovered_s"] < 10, out["recovered_s"]
    wait_for(lambda: victim not in cluster.primaries(), 10, 0.1, "the victim marked failed")
    cluster.wait_ok()
    stored = [cluster.client().get(k) for k in keys]
    lost = sum(max(0, out["acked"][k] - int(v or 0)) for k, v in zip(keys, stored, strict=True))
    record("cluster primary killed", node_timeout_ms=cluster.node_timeout,
           writes_again_after_s=round(out["recovered_s"], 2), failed_commands=out["errors"],
           acked_increments=sum(out["acked"].values()), acked_lost=lost)


@pytest.mark.parametrize("min_replicas", [0, 1])
def test_sentinel_primary_killed(tmp_path: Path, min_replicas: int) -> None:
    """kill -9 the primary under a stream of writes: the sentinels promote the replica and
    the same client writes again within down-after + failover (bound: 10 s). How many
    acknowledged writes the kill lost, with and without min-replicas-to-write 1."""
    group = Sentinels(tmp_path, replicas=2, min_replicas=min_replicas, max_lag=1).start()  # one left in sync
    try:
        out = asyncio.run(_sentinel_stream(group, lambda: group.kill(group.primary())))
        assert out["recovered_s"] is not None and out["recovered_s"] < 10, out
        assert group.primary() != group.data_ports[0]
        record(f"sentinel primary killed (min-replicas-to-write {min_replicas})", down_after_ms=group.down_after,
               writes_again_after_s=round(out["recovered_s"], 2), failed_writes=out["errors"],
               acked_writes=out["acked"], acked_lost=out["lost"])
    finally:
        group.stop()


def test_sentinel_failover_moves_the_client(tmp_path: Path) -> None:
    """SENTINEL FAILOVER (the old primary stays up, demoted a moment later): the client
    leaves it on +switch-master or its first READONLY, writes to the new primary, and no
    acknowledged write is lost."""
    group = Sentinels(tmp_path).start()
    try:
        out = asyncio.run(_sentinel_stream(group, lambda: group.sentinel(group.sentinel_ports[0]).execute_command(
            "SENTINEL", "FAILOVER", group.name)))
        assert out["recovered_s"] is not None and out["recovered_s"] < 10, out
        assert out["lost"] == 0, out
        record("sentinel failover (SENTINEL FAILOVER)", writes_again_after_s=round(out["recovered_s"], 2),
               failed_writes=out["errors"], acked_writes=out["acked"], acked_lost=out["lost"])
    finally:
        group.stop()


async def _sentinel_stream(group: Sentinels, event: Any) -> dict[str, Any]:
    """RPUSH 1, 2, 3... from 10 tasks through one client; `event` after 0.5 s; until writes
    have gone through again for 1 s. Lost: acknowledged values missing from the list."""
    old = group.primary()
    client = db.open_client(group.url, 1.0)
    stop = asyncio.Event()
    acked: list[int] = []
    errors = [0]
    counter = iter(range(1, 10**9))

    async def writer() -> None:
        while not stop.is_set():
            value = next(counter)
            try:
                await client.call("RPUSH", "stream", value)
                acked.append(value)
            except (db.RedisError, db.Unavailable):
                errors[0] += 1
                await asyncio.sleep(0.01)

    tasks = [asyncio.ensure_future(writer()) for _ in range(10)]
    await asyncio.sleep(0.5)
    began = time.monotonic()
    await asyncio.to_thread(event)
    recovered = None
    while time.monotonic() - began < 20:
        await asyncio.sleep(0.05)
        new = group.primary()
        if new != old:
            mark = str(time.monotonic())
            try:
                await client.call("SET", "probe", mark)
            except (db.RedisError, db.Unavailable):
                continue
            if group.node(new).get("probe") == mark:  # landed on the new primary, not the old one
                recovered = time.monotonic() - began
                break
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*tasks)
    await client.close()
    kept = set(map(int, group.node(group.primary()).lrange("stream", 0, -1)))
    return {"recovered_s": recovered, "errors": errors[0], "acked": len(acked),
            "lost": sum(1 for v in acked if v not in kept)}
