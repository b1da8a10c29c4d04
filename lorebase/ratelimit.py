"""Rate limits kept in Redis, so every worker and every node counts together.

A fixed window per (limit, subject): the first hit creates `rate:<name>:<subject>` with
the window as its TTL; past `limit` hits the caller gets 429 `rate` with Retry-After.
"""

from __future__ import annotations

from typing import Any

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


async def hit(db: Any, name: str, subject: str, limit: int, window: int) -> tuple[bool, int]:
    """Count one hit; (still within the limit?, seconds until the window ends)."""
    count, ttl = await db.script(_HIT, [key(name, subject)], [window])
    return int(count) <= limit, max(int(ttl), 1)


async def check(db: Any, name: str, subject: str, limit: int, window: int) -> None:
    """Count one hit and raise 429 `rate` past the limit."""
    ok, retry = await hit(db, name, subject, limit, window)
    if not ok:
        raise ApiError(429, "rate", headers={"retry-after": str(retry)})


async def over(db: Any, name: str, subject: str, limit: int) -> int:
    """Without counting: seconds to wait if `subject` is already at the limit, else 0."""
    count, ttl = await db.pipeline([("GET", key(name, subject)), ("TTL", key(name, subject))])
    if count is not None and int(count) >= limit:
        return max(int(ttl), 1)
    return 0
