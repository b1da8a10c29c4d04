"""Writes paused: the `maintenance` key. While it exists every worker answers state-changing
requests 503 `maintenance` (app.watch_maintenance looks once a second); reads go on.
`lorebase migrate --apply` (scripts with PAUSE) and `lorebase restore` set it.

A leaf module (it imports nothing of lorebase; callers bring their Redis clients), so that
the app, migrate and backups can all name the key without importing each other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import redis

MAINTENANCE = "maintenance"  # string while writes are paused: who paused them (a migration, a restore)
SETTLE = 1.5  # seconds for every worker to see the pause (they look once a second)
LAPSE = 30.0  # seconds a renewed pause outlives the command holding it, should that command die (PAUSE_TTL)


@contextmanager
def paused(connect: Callable[[], Any], why: str, settle: bool = True, lapse: float = LAPSE) -> Iterator[None]:
    """Writes paused for the whole block: the key set with a `lapse`-second expiry (the
    PAUSE_TTL setting) and renewed six times per lapse by a thread of its own (own
    connection), so a long run stays paused and a killed one lets writes go again within
    `lapse` seconds. Removed at the end, if it is still ours. `settle`: wait until every
    worker has seen it set, and seen it gone."""
    expiry = max(1, int(lapse * 1000))
    client = connect()
    client.set(MAINTENANCE, why, px=expiry)
    done = threading.Event()

    def renew() -> None:
        renewer = connect()
        try:
            while not done.wait(expiry / 6000):
                with suppress(redis.RedisError):  # retried at the next turn; the expiry is the bound
                    renewer.set(MAINTENANCE, why, px=expiry)  # also puts it back after a FLUSHALL
        finally:
            renewer.close()

    thread = threading.Thread(target=renew, name="pause-renewal", daemon=True)
    thread.start()
    try:
        if settle:
            time.sleep(SETTLE)
        yield
    finally:
        done.set()
        thread.join(10)
        try:
            if client.get(MAINTENANCE) in (why, why.encode()):
                client.delete(MAINTENANCE)
                if settle:  # the command ends once writes go again on every worker
                    time.sleep(SETTLE)
        finally:
            client.close()


def flush_keeping_pause(target: Any) -> None:
    """FLUSHALL, the pause kept if one is set: on one Redis in one MULTI, so no worker can
    see a moment without it; on a Cluster (no MULTI across nodes) put back right after."""
    why = target.get(MAINTENANCE)
    if why is None:
        target.flushall()
        return
    ttl = int(target.pttl(MAINTENANCE))
    expiry = ttl if ttl > 0 else None
    if hasattr(target, "get_primaries"):  # redis-py's RedisCluster
        target.flushall()
        target.set(MAINTENANCE, why, px=expiry)
        return
    pipe = target.pipeline(transaction=True)
    pipe.flushall()
    pipe.set(MAINTENANCE, why, px=expiry)
    pipe.execute()
