"""Beat (master tasks issue): samples of the machine and Redis kept in Redis, per-minute
aggregates, one alert and one mail per crossed threshold, one `beat ok` when it is back, and
a Redis outage that costs samples, never the loop.

Real processes only: lorebase on an external redis-server (so a test can change its
maxmemory, stop and start it), mail to a real SMTP server, Redis read as redis-cli would."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from lorebase import mail as outbox
from lorebase.tasks.beat import alerts_key, minutes_key, samples_key
from lorebase.tasks.queue import durable

from .lore import Lorebase, MailSink, RedisServer, wait_for
from .support import doing, tasks_pid

NODE = socket.gethostname()  # beat's node name: the hostname, the same for the test and the server
SAMPLE_FIELDS = {"t", "cpu", "memory", "memory_used", "memory_total", "load1", "load5", "load15", "disk",
                 "disk_free", "rss", "redis"}
REDIS_FIELDS = {"used_memory", "maxmemory", "memory", "clients", "ops", "last_save", "unsaved", "save_ok",
                "aof", "aof_ok"}
MINUTE_MS = 60_000
ADMIN = "beat_admin@example.com"


@contextmanager
def beating(base: Path, shared: RedisServer | None = None, **overrides: Any) -> Iterator[tuple[Lorebase, RedisServer]]:
    """lorebase sampling every 0.2 s on an external Redis of its own (stopped after); the machine
    thresholds off unless given, so that a loaded test box cannot add alerts of its own."""
    shared = shared or RedisServer(base / "redis").start()
    settings = {"REDIS_URL": shared.url, "MAIL_URL": "console://", "BEAT_EVERY": "0.2", "BEAT_CPU": "0",
                "BEAT_MEMORY": "0", "BEAT_DISK": "0", **overrides}
    try:
        with Lorebase(base / "data", **settings).running() as lore:
            yield lore, shared
    finally:
        shared.stop()


def samples(db: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(fields["json"]) for _, fields in db.xrange(samples_key(NODE))]


def minutes(db: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(fields["json"]) for _, fields in db.xrange(minutes_key(NODE))]


def wait_samples(db: redis.Redis, more: int, timeout: float = 20.0) -> None:
    """Until `more` samples newer than now are in the stream."""
    since = int(time.time() * 1000)
    wait_for(lambda: sum(s["t"] > since for s in samples(db)) >= more, timeout, 0.05, f"{more} samples")


def test_samples_are_kept_with_their_fields_and_a_past_minute_is_aggregated(tmp_path):
    """Three samples of a minute three minutes ago are in the stream before lorebase starts (as
    a tasks process that died then would have left them): beat aggregates that minute (avg and
    max of every number, nested as in a sample) and not the minute it is sampling in; its own
    samples carry every documented field."""
    shared = RedisServer(tmp_path / "redis").start()
    now = int(time.time() * 1000)
    past = now - now % MINUTE_MS - 3 * MINUTE_MS
    db = shared.client()
    for i, (cpu, rss) in enumerate([(10, 100), (20, 200), (60, 300)]):
        t = past + (i + 1) * 1000
        db.xadd(samples_key(NODE), {"json": json.dumps({"t": t, "cpu": cpu, "rss": {"master": rss},
                                                     "redis": {"clients": i, "memory": None}})}, id=f"{t}-0")
    with beating(tmp_path, shared) as (lore, _):
        wait_samples(db, 3)
        [(entry_id, _)] = db.xrevrange(samples_key(NODE), count=1)
        latest = samples(db)[-1]
        assert entry_id.split("-")[0] == str(latest["t"]), "the entry's id is not the sample's time"
        assert set(latest) == SAMPLE_FIELDS, latest
        assert set(latest["redis"]) == REDIS_FIELDS, latest["redis"]
        assert 0 <= latest["cpu"] <= 100 and 0 < latest["memory"] < 100 and 0 < latest["disk"] < 100
        assert latest["memory_total"] > latest["memory_used"] > 0 and latest["disk_free"] > 0
        assert {"master", "worker0", "worker1", "tasks"} <= set(latest["rss"]), latest["rss"]
        assert all(rss > 1_000_000 for rss in latest["rss"].values()), latest["rss"]
        assert latest["redis"]["maxmemory"] == 0 and latest["redis"]["memory"] is None
        assert latest["redis"]["clients"] >= 1 and latest["redis"]["save_ok"] == 1

        [minute] = wait_for(lambda: [m for m in minutes(db) if m["t"] == past], 10, 0.05, "the minute")
        assert minute == {"t": past, "n": 3, "avg": {"cpu": 30, "rss": {"master": 200}, "redis": {"clients": 1}},
                          "max": {"cpu": 60, "rss": {"master": 300}, "redis": {"clients": 2}}}
        sampling = samples(db)[-1]["t"]
        assert all(m["t"] < sampling - sampling % MINUTE_MS for m in minutes(db)), "an unfinished minute"
    assert not lore.events("beat redis error")


def over(db: redis.Redis, until: float, limit: float) -> list[bool]:
    """For each sample up to `until` (a notify's `t`), whether Redis memory was over `limit`."""
    return [(s["redis"]["memory"] or 0) > limit for s in samples(db) if s["t"] <= until * 1000]


def test_a_crossed_threshold_alerts_once_mails_once_and_recovers_once(tmp_path):
    """Redis's maxmemory set so that its used memory is about 40 % of it (threshold 20 %, far
    from the 100 % where Redis would refuse writes): one
    `beat alert` on the third sample over it (BEAT_SAMPLES), one mail to the admin, the crossing
    in `alerts_key(None)`; still one after more samples and after the tasks process is killed and
    restarted; maxmemory raised: one `beat ok` on the third sample under it, the crossing gone,
    no more mail."""
    sink = MailSink().start()
    try:
        with beating(tmp_path, BEAT_REDIS_MEMORY="20", BEAT_SAMPLES="3", ADMINS=ADMIN, MAIL_URL=sink.url) as (
                lore, shared):
            db = shared.client()
            wait_samples(db, 3)
            assert not lore.events("beat alert")
            used = int(db.info("memory")["used_memory"])
            db.config_set("maxmemory", int(used / 0.4))
            alert = wait_for(lambda: lore.events("beat alert"), 10, 0.05, "beat alert")[0]
            assert alert["what"] == "redis_memory" and alert["node"] == NODE and alert["threshold"] == 20
            assert 20 < alert["value"] < 100
            assert over(db, alert["t"], 20)[-4:] == [False, True, True, True]
            mail = sink.wait_for(ADMIN, "redis_memory")
            assert NODE in str(mail["Subject"]) and "redis_memory" in sink.text(mail)
            crossing = json.loads(db.hget(alerts_key(None), "redis_memory") or "{}")
            assert crossing["threshold"] == 20 and crossing["node"] == NODE

            wait_samples(db, 10)
            before = tasks_pid(lore)
            os.kill(before, signal.SIGKILL)
            wait_for(lambda: lore.events("tasks exit"), 10, 0.05, "the tasks process's exit")
            wait_for(lambda: tasks_pid(lore) != before, 10, 0.05, "a new tasks process")
            wait_samples(db, 10)
            wait_for(lambda: db.llen(outbox.QUEUE) == 0 and doing(db, durable()["mail"]) == 0, 10, 0.05, "the outbox")
            assert len(lore.events("beat alert")) == 1, lore.events("beat alert")
            assert len(sink.to(ADMIN)) == 1

            assert not lore.events("beat ok")
            db.config_set("maxmemory", used * 20)
            ok = wait_for(lambda: lore.events("beat ok"), 10, 0.05, "beat ok")[0]
            assert ok["what"] == "redis_memory" and ok["value"] < 20
            assert over(db, ok["t"], 20)[-4:] == [True, False, False, False]
            assert db.hget(alerts_key(None), "redis_memory") is None
            wait_samples(db, 10)
            assert len(lore.events("beat ok")) == 1 and len(lore.events("beat alert")) == 1
            assert len(sink.to(ADMIN)) == 1
    finally:
        sink.stop()


def test_beat_survives_redis_stopped_and_started_again(tmp_path):
    """The external Redis is killed while beat samples: one `beat redis error`; started again
    (empty: it keeps no data), samples resume from the same tasks process, one `beat redis back`."""
    with beating(tmp_path) as (lore, shared):
        db = shared.client()
        wait_samples(db, 3)
        before = tasks_pid(lore)
        shared.stop()
        wait_for(lambda: lore.events("beat redis error"), 10, 0.05, "beat redis error")
        shared.start()
        wait_for(lambda: len(samples(shared.client())) >= 10, 30, 0.05, "samples in the new Redis")
        assert len(lore.events("beat redis error")) == 1
        assert len(lore.events("beat redis back")) == 1
        assert tasks_pid(lore) == before, "the tasks process was restarted"


def test_beat_every_0_samples_nothing(tmp_path):
    """BEAT_EVERY=0: no sample is ever written (the queues of the tasks process still run)."""
    with beating(tmp_path, BEAT_EVERY="0") as (lore, shared):
        # a mail through the outbox proves the tasks process has been running meanwhile
        shared.client().lpush(outbox.QUEUE, json.dumps({"to": "x@example.com", "subject": "s", "text": "t",
                                                        "t": 0, "tries": 0}))
        wait_for(lambda: lore.events("mail done"), 10, 0.05, "the mail")
        assert not shared.client().exists(samples_key(NODE))


def test_on_a_cluster_the_redis_part_is_over_every_primary(tmp_path: Path) -> None:
    """With REDIS_URL a Redis Cluster of three primaries, a sample's `redis` part counts the
    clients of all three and its memory % is the fullest primary's: one primary given a
    small maxmemory is what the sample shows."""
    from .topology import Cluster

    cluster = Cluster(tmp_path / "cluster", replicas=0).start()
    try:
        primaries = cluster.primaries()
        for port in primaries:
            cluster.node(port).config_set("maxmemory", "1gb")
        cluster.node(primaries[1]).config_set("maxmemory", "20mb")

        def fullest() -> float:
            return float(cluster.node(primaries[1]).info("memory")["used_memory"]) / (20 * 1024 * 1024) * 100
        before = fullest()
        with Lorebase(tmp_path / "data", REDIS_URL=cluster.url, MAIL_URL="console://", BEAT_EVERY="0.2",
                      BEAT_CPU="0", BEAT_MEMORY="0", BEAT_DISK="0").running() as lore:
            db = lore.redis()
            wait_samples(db, 2)
            redis_part = samples(db)[-1]["redis"]
            clients = sum(cluster.node(p).info("clients")["connected_clients"] for p in primaries)
            assert redis_part["maxmemory"] == 2 * 1024 ** 3 + 20 * 1024 ** 2
            assert before - 1 <= redis_part["memory"] <= fullest() + 1, (redis_part, before)  # the others: < 1 %
            assert redis_part["clients"] >= len(primaries) and redis_part["clients"] <= clients + 10, redis_part
    finally:
        cluster.stop()
