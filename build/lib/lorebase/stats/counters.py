"""Counting, in each worker (see the package's docstring for the kinds): a worker counts in
memory, nothing on the request path but a few dict updates (the chain updates a route's Tally
itself, inline), and writes what it counted once a second in one Lua call: into
`{stats}:total` (counters since the database began: what Prometheus reads) and
`{stats}:<minute>` (that minute's flows, max and min; expires after STATS_KEEP), and the
day's uniques into HyperLogLogs. A worker killed with -9 loses at most its last second.

The stats keys are built here, and read by the other modules of the package.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..db import Client, RedisError, Unavailable

# the total and every minute's hash share the hash tag `{stats}`: a flush adds to both in one
# script, on a Redis Cluster too (the day's HyperLogLogs are written one key at a time)
TOTAL = "{stats}:total"
PENDING_MAX = 300_000  # ops and members held while Redis refuses flushes
UNIQUE_TTL = 8 * 86400  # a day's uniques stay a week after it
# latency histogram bounds, in milliseconds; the last bucket is everything slower
BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000)
BUCKETS_S = tuple(b / 1000 for b in BUCKETS_MS)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
FLOWS = {  # the named counters a route may bump, with their help text
    "signups": "Accounts created.",
    "logins": "Successful logins.",
    "login_failures": "Refused logins (wrong password, unknown or disabled account).",
    "upload_bytes": "Bytes of files uploaded and stored.",
    "served_bytes": "Bytes of reply bodies sent (files included).",
}
UNIQUES = {"active_users": "Users who made a request with a session", "client_ips": "Client addresses seen"}


def minute_key(minute: int) -> str:
    """A minute's hash; `minute` in unix minutes (unix seconds // 60)."""
    return f"{{stats}}:{minute}"


def unique_key(name: str, day: int) -> str:
    """A day's HyperLogLog; `day` in unix days."""
    return f"stats:u:{name}:{day}"


def fields(raw: Any) -> dict[str, str]:
    """A hash as HGETALL sent it (a dict, or RESP2's flat list) as a dict."""
    if isinstance(raw, dict):
        return raw
    return dict(zip(raw[::2], raw[1::2], strict=True)) if raw else {}


# KEYS: total, minute. ARGV: the minute's TTL, then triples (op, field, value): i adds an
# integer to both, f a float to both, x keeps the larger in the minute, n the smaller.
_FLUSH = """
local i = 2
while i <= #ARGV do
  local op, f, v = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if op == 'i' then
    redis.call('HINCRBY', KEYS[1], f, v); redis.call('HINCRBY', KEYS[2], f, v)
  elseif op == 'f' then
    redis.call('HINCRBYFLOAT', KEYS[1], f, v); redis.call('HINCRBYFLOAT', KEYS[2], f, v)
  else
    local cur = tonumber(redis.call('HGET', KEYS[2], f))
    if cur == nil or (op == 'x' and tonumber(v) > cur) or (op == 'n' and tonumber(v) < cur) then
      redis.call('HSET', KEYS[2], f, v)
    end
  end
  i = i + 3
end
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
"""


class Tally:
    """One route's (and method's) counts since the last flush, in seconds. The chain updates
    its fields itself, inline, for every request (see Chain.handle)."""

    __slots__ = ("buckets", "high", "label", "low", "sent", "statuses", "sum")

    def __init__(self, label: str):
        self.label = label  # "<METHOD> <route template>"
        self.reset()

    def reset(self) -> None:
        self.statuses: dict[int, int] = {}
        self.buckets = [0] * (len(BUCKETS_S) + 1)
        self.sum = 0.0
        self.high = 0.0
        self.low = float("inf")
        self.sent = 0


class Stats:
    """One per worker. The chain counts into Tallies, `flow` and `seen` count for the routes;
    `run` writes it all to Redis once a second."""

    def __init__(self, config: Any):
        self.enabled = bool(config.STATS)
        self.keep = int(config.STATS_KEEP)
        self.tallies: dict[str, Tally] = {}
        self.flows: dict[str, int] = {}
        self.active: set[str] = set()  # usernames with a session, since the last flush
        self.ips: set[str] = set()
        # a flush Redis refused: sent again with the next (bounded; past it, dropped and counted)
        self.pending: list[Any] = []
        self.pending_uniques: dict[str, set[str]] = {}
        self.lost = 0

    def tally(self, method: str, route: str) -> Tally:
        """The tally of a route template (`-` when no route matched) and method."""
        label = f"{method if method in METHODS else 'OTHER'} {route}"
        found = self.tallies.get(label)
        if found is None:
            found = self.tallies[label] = Tally(label)
        return found

    def unmatched(self, method: str) -> Tally:
        return self.tally(method, "-")

    def flow(self, name: str, amount: int = 1) -> None:
        if self.enabled:
            self.flows[name] = self.flows.get(name, 0) + amount

    def _take(self) -> tuple[list[Any], dict[str, set[str]]]:
        """What was counted since the last flush, as the script's triples; the counts reset."""
        flows, self.flows = self.flows, {}
        self.ips.discard("")
        uniques = {"active_users": self.active, "client_ips": self.ips}
        uniques = {name: members for name, members in uniques.items() if members}
        self.active, self.ips = set(), set()
        ops: list[Any] = []
        for tally in self.tallies.values():
            if not tally.statuses:
                continue
            label = tally.label
            for status, count in tally.statuses.items():
                ops += ["i", f"requests|{label}|{status}", count]
            for index, count in enumerate(tally.buckets):
                if count:
                    ops += ["i", f"latency|{label}|{index}", count]
            ops += ["f", f"latency_sum|{label}", round(tally.sum * 1000, 3),
                    "x", f"latency_max|{label}", round(tally.high * 1000, 3),
                    "n", f"latency_min|{label}", round(tally.low * 1000, 3)]
            if tally.sent:
                flows["served_bytes"] = flows.get("served_bytes", 0) + tally.sent
            tally.reset()
        for name, amount in flows.items():
            ops += ["i", name, amount]
        return ops, uniques

    async def flush(self, db: Client) -> None:
        ops, uniques = self._take()
        if self.pending:
            ops, self.pending = self.pending + ops, []
        for name, members in self.pending_uniques.items():
            uniques[name] = uniques.get(name, set()) | members
        self.pending_uniques = {}
        if not ops and not uniques:
            return
        now = time.time()
        day = int(now // 86400)
        commands: list[tuple[Any, ...]] = []
        for name, members in uniques.items():
            commands += [("PFADD", unique_key(name, day), *members), ("EXPIRE", unique_key(name, day), UNIQUE_TTL)]
        if ops:
            try:
                await db.script(_FLUSH, [TOTAL, minute_key(int(now // 60))], [self.keep, *ops])
            except (RedisError, Unavailable):
                self.pending = self._hold(ops, len(ops))
        if commands:
            try:
                await db.pipeline(commands)
            except (RedisError, Unavailable):
                self.pending_uniques = self._hold(uniques, sum(map(len, uniques.values())))

    def _hold(self, items: Any, size: int) -> Any:
        """What a refused flush keeps for the next one: all of it, or nothing past PENDING_MAX."""
        if size > PENDING_MAX:
            self.lost += 1  # a long outage: this much is dropped rather than held
            return type(items)()
        return items

    async def run(self, db: Client, every: float = 1.0) -> None:
        """Flushes every `every` seconds until cancelled (then once more, bounded)."""
        try:
            while True:
                await asyncio.sleep(every)
                await self.flush(db)
        except asyncio.CancelledError:
            try:
                await asyncio.wait_for(self.flush(db), 1.0)
            except (TimeoutError, RedisError, Unavailable):
                pass
            raise
