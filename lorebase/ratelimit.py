"""Rate limits kept in Redis, so every worker and every node counts together.

A fixed window per (limit, subject): the first hit creates `rate:<name>:<subject>` with
the window as its TTL; past `limit` hits the caller gets 429 `rate` with Retry-After.
"""

from __future__ import annotations

import asyncio

from .db import Client
from .http import ApiError

_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {n, ttl}
"""


def key(name: str, subject: str) -> str:
    return f"rate:{name}:{subject}"


async def hit(db: Client, name: str, subject: str, limit: int, window: int) -> tuple[bool, int]:
    """Count one hit; (still within the limit?, seconds until the window ends)."""
    count, ttl = await db.script(_HIT, [key(name, subject)], [window])
    return int(count) <= limit, max(int(ttl), 1)


async def check(db: Client, name: str, subject: str, limit: int, window: int) -> None:
    """Count one hit and raise 429 `rate` past the limit."""
    ok, retry = await hit(db, name, subject, limit, window)
    if not ok:
        raise ApiError(429, "rate", headers={"retry-after": str(retry)})


# KEYS: one counter. Undone only while it exists (a window that ended stays gone).
_TAKE_BACK = "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DECR', KEYS[1]) end"


async def clear(db: Client, *keys: str) -> None:
    """Forget counters (an account's failures after a good login)."""
    await db.call("DEL", *keys)


async def take_back(db: Client, *keys: str) -> None:
    """Undo one hit on each counter (one whose window ended meanwhile stays gone). One step
    per counter, not one for all: the counters of an IP and of an account sit in different
    hash slots on a Redis Cluster, and counters are approximate by nature (a stop between the
    steps leaves one hit counted, as if the request had failed)."""
    await asyncio.gather(*(db.script(_TAKE_BACK, [key], []) for key in keys))
