"""Rate limits kept in Redis, so every worker and every node counts together.

A fixed window per (limit, subject): the first hit creates `rate:<name>:<subject>` with
the window as its TTL; past `limit` hits the caller gets 429 `rate` with Retry-After, and
a `message` that says the wait in words.
A per-address limit's subject is `address(ip)`: an IPv6 /64 counts as one address.
"""

from __future__ import annotations

import asyncio
import ipaddress

from .db import Client
from .http import ApiError

_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {n, ttl}
"""


def address(ip: str) -> str:
    """The subject of a per-address limit for a client address: an IPv6 address counts as its
    /64 (one subscriber's link is given a whole /64, so each address alone would be
    unlimited addresses), an IPv4-mapped one as its IPv4 address."""
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(parsed) >> 64 << 64, 64)))  # any scope id dropped
    return ip


def key(name: str, subject: str) -> str:
    return f"rate:{name}:{subject}"


async def hit(db: Client, name: str, subject: str, limit: int, window: int) -> tuple[bool, int]:
    """Count one hit; (still within the limit?, seconds until the window ends)."""
    count, ttl = await db.script(_HIT, [key(name, subject)], [window])
    return int(count) <= limit, max(int(ttl), 1)


def duration(seconds: int) -> str:
    """A wait in words, rounded up: "45 seconds", "15 minutes", "2 hours"."""
    def unit(n: int, name: str) -> str:
        return f"{n} {name}{'' if n == 1 else 's'}"
    if seconds < 60:
        return unit(seconds, "second")
    if seconds < 3600:
        return unit(-(-seconds // 60), "minute")
    return unit(-(-seconds // 3600), "hour")


def refused(wait: int) -> ApiError:
    """The 429 `rate` of a limit that lets the client try again in `wait` seconds."""
    return ApiError(429, "rate", headers={"retry-after": str(wait)},
                    message=f"Too many attempts: try again in {duration(wait)}.")


async def check(db: Client, name: str, subject: str, limit: int, window: int) -> None:
    """Count one hit and raise 429 `rate` past the limit."""
    ok, retry = await hit(db, name, subject, limit, window)
    if not ok:
        raise refused(retry)


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
