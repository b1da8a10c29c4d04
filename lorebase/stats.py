"""Stats (seed: Future directions, "stats"): what the server does, counted per minute and
summed over every worker and node in Redis, and `GET /metrics` in the Prometheus format.

The kinds the seed's reference keeps:
- flows: counters (requests by route template, method and status; signups, logins, failed
  logins, bytes uploaded, bytes served), and a latency histogram per route;
- max and min: the slowest and fastest request of each route in the minute;
- uniques: HyperLogLogs (users active in a day, client addresses in a day);
- stocks: levels (users, jobs in each queue), recorded each minute by the `stats` task.

A worker counts in memory, nothing on the request path but a few dict updates, and
writes what it counted once a second in one Lua call: into `{stats}:total` (counters since the
database began: what Prometheus reads) and `{stats}:<minute>` (that minute's flows, max and
min; expires after STATS_KEEP). A worker killed with -9 loses at most its last second.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Iterable
from typing import Any

from .db import Client, RedisError, Unavailable

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


# -- reading: /metrics, and the series the admin charts --------------------------------


def fields(raw: Any) -> dict[str, str]:
    if isinstance(raw, dict):
        return raw
    return dict(zip(raw[::2], raw[1::2], strict=True)) if raw else {}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(total: dict[str, str], stocks: dict[str, float], uniques: dict[str, int]) -> str:
    """The Prometheus text format (version 0.0.4) of the counters and levels."""
    requests: dict[tuple[str, str], dict[str, int]] = {}
    buckets: dict[tuple[str, str], list[int]] = {}
    sums: dict[tuple[str, str], float] = {}
    flows: dict[str, int] = {}
    for field, value in total.items():
        kind, _, rest = field.partition("|")
        if kind == "requests":
            label, status = rest.rsplit("|", 1)
            method, route = label.split(" ", 1)
            requests.setdefault((route, method), {})[status] = int(value)
        elif kind == "latency":
            label, index = rest.rsplit("|", 1)
            method, route = label.split(" ", 1)
            counts = buckets.setdefault((route, method), [0] * (len(BUCKETS_MS) + 1))
            if index.isdigit() and int(index) < len(counts):
                counts[int(index)] += int(value)
        elif kind == "latency_sum":
            method, route = rest.split(" ", 1)
            sums[(route, method)] = float(value)
        elif not rest and kind in FLOWS:
            flows[kind] = int(value)
    out = ["# HELP lorebase_requests_total Requests answered, by route template, method and status.",
           "# TYPE lorebase_requests_total counter"]
    for (route, method), statuses in sorted(requests.items()):
        for status, count in sorted(statuses.items()):
            labels = f'route="{_label(route)}",method="{method}",status="{status}"'
            out.append(f"lorebase_requests_total{{{labels}}} {count}")
    out += ["# HELP lorebase_request_duration_seconds Time from a request's arrival to its reply, by route.",
            "# TYPE lorebase_request_duration_seconds histogram"]
    for (route, method), counts in sorted(buckets.items()):
        labels = f'route="{_label(route)}",method="{method}"'
        running = 0
        for bound, count in zip(BUCKETS_MS, counts, strict=False):
            running += count
            out.append(f'lorebase_request_duration_seconds_bucket{{{labels},le="{bound / 1000:g}"}} {running}')
        running += counts[-1]
        out.append(f'lorebase_request_duration_seconds_bucket{{{labels},le="+Inf"}} {running}')
        out.append(f"lorebase_request_duration_seconds_sum{{{labels}}} {_number(sums.get((route, method), 0) / 1000)}")
        out.append(f"lorebase_request_duration_seconds_count{{{labels}}} {running}")
    for name, text in FLOWS.items():
        out += [f"# HELP lorebase_{name}_total {text}", f"# TYPE lorebase_{name}_total counter",
                f"lorebase_{name}_total {flows.get(name, 0)}"]
    for name, text in UNIQUES.items():
        out += [f"# HELP lorebase_{name} {text} today (UTC), estimated (HyperLogLog).",
                f"# TYPE lorebase_{name} gauge", f"lorebase_{name} {uniques.get(name, 0)}"]
    out += ["# HELP lorebase_users Accounts.", "# TYPE lorebase_users gauge",
            f"lorebase_users {_number(stocks.get('users', 0))}",
            "# HELP lorebase_queue_jobs Jobs in each durable queue, by state.", "# TYPE lorebase_queue_jobs gauge"]
    for name, level in sorted(stocks.items()):
        if name.startswith("queue|"):
            _, queue, state = name.split("|")
            out.append(f'lorebase_queue_jobs{{queue="{queue}",state="{state}"}} {_number(level)}')
    return "\n".join(out) + "\n"


def equal_token(given: str, expected: str) -> bool:
    """A Bearer token against METRICS_TOKEN, in constant time; an empty one never matches."""
    return bool(expected) and hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


async def record_stocks(db: Client, queues: Iterable[dict[str, str]], keep: int) -> str:
    """The levels now, into this minute's hash (`stock|<name>`): the `stats` task, once a minute."""
    levels = await read_stocks(db, queues)
    key = minute_key(int(time.time() // 60))
    fields = [x for name, level in levels.items() for x in (f"stock|{name}", level)]
    await db.pipeline([("HSET", key, *fields), ("EXPIRE", key, keep)])
    return ", ".join(f"{name} {level}" for name, level in levels.items())


def queues(config: Any) -> list[dict[str, str]]:
    """The durable queues whose lengths are levels: the outbox, the S3 mirror when on, and the
    applications' queues."""
    from .extension import app_queues
    from .tasks.queue import durable

    found = durable(app_queues(config))
    builtin = [found["mail"], found["s3"]] if config.S3_BUCKET else [found["mail"]]
    return builtin + [keys for name, keys in found.items() if name not in ("mail", "s3")]


QUEUE_STATES = ("queue", "doing", "retry", "dead")


async def read_stocks(db: Client, queues: Iterable[dict[str, str]]) -> dict[str, int]:
    """The levels: users, and each queue's jobs by state (`queue|<q>|<state>`), `doing` summed
    over its workers' doing lists (tasks/queue.py). Two round trips: the lengths and the
    workers, then the workers' lists."""
    from .identity.keys import USERS
    from .tasks.queue import doing_of

    queues = list(queues)
    names, commands = ["users"], [("SCARD", USERS)]
    for keys in queues:
        queue = keys["queue"].split(":")[0].strip("{}")  # the queue's name, its tag without braces
        for state in QUEUE_STATES:
            names.append(f"queue|{queue}|{state}")
            commands.append(("ZCARD", keys[state]) if state == "retry" else ("LLEN", keys[state]))
    replies = await db.pipeline([*commands, *(("HKEYS", keys["workers"]) for keys in queues)])
    levels = {name: int(level) for name, level in zip(names, replies[:len(commands)], strict=True)}
    lists = [(keys, worker) for keys, workers in zip(queues, replies[len(commands):], strict=True)
             for worker in workers]
    if lists:
        lengths = await db.pipeline([("LLEN", doing_of(keys, worker)) for keys, worker in lists])
        for (keys, _), length in zip(lists, lengths, strict=True):
            levels[f"queue|{keys['queue'].split(':')[0].strip('{}')}|doing"] += int(length)
    return levels


# -- series for the admin's charts ------------------------------------------------------

READ_BATCH = 240  # minutes' hashes read in one pipeline
CHART_FLOWS = ("signups", "logins", "login_failures", "upload_bytes", "served_bytes")


def percentile(counts: list[int], q: float, highest: float) -> float:
    """The q-quantile (0..1) of a histogram over BUCKETS_MS, in ms, interpolated within its
    bucket as Prometheus's histogram_quantile does; the last bucket (beyond 10 s) answers
    `highest`, the slowest request seen."""
    total = sum(counts)
    rank = q * total
    running = 0
    for index, count in enumerate(counts):
        if count and running + count >= rank:
            if index >= len(BUCKETS_MS):
                return round(max(highest, BUCKETS_MS[-1]), 2)
            low = BUCKETS_MS[index - 1] if index else 0.0
            return round(low + (BUCKETS_MS[index] - low) * (rank - running) / count, 2)
        running += count
    return 0.0


async def read_minutes(db: Client, first: int, last: int) -> list[tuple[int, Any]]:
    """The hashes of the minutes `first`..`last` (unix minutes) that exist, as HGETALL sent
    them, in pipelines of READ_BATCH (a day is six round trips)."""
    out: list[tuple[int, Any]] = []
    for start in range(first, last + 1, READ_BATCH):
        minutes = range(start, min(start + READ_BATCH, last + 1))
        replies = await db.pipeline([("HGETALL", minute_key(m)) for m in minutes])
        out += [(m, raw) for m, raw in zip(minutes, replies, strict=True) if raw]
    return out


def chart(minutes: list[tuple[int, Any]], first: int, buckets: int, step: int) -> dict[str, list[list[Any]]]:
    """Per-minute hashes → series {name: [[t (unix s, the bucket's start), value], ...]} over
    `buckets` buckets of `step` minutes from minute `first`. Flows (requests, errors_4xx,
    errors_5xx, signups, logins, ...) are summed over a bucket, with a 0 for a bucket without
    any; latency_p50/latency_p99 (ms, overall and `latency_p50|<METHOD> <route>`) come from the
    bucket's merged histograms, only where it had requests; levels (users, queue|<q>|<state>)
    are the bucket's last."""
    # first each bucket's minutes merged into one dict (a day: 5 minutes into one), the kind
    # of each field name worked out once: the parse below then runs once per bucket and field
    merged: list[dict[str, float]] = [{} for _ in range(buckets)]
    kinds: dict[str, str] = {}
    for minute, hashed in minutes:
        at = (minute - first) // step
        if not 0 <= at < buckets:
            continue
        into = merged[at]
        for field, value in fields(hashed).items():
            kind = kinds.get(field)
            if kind is None:
                kind = kinds[field] = field.partition("|")[0]
            if kind == "latency_max":
                into[field] = max(into.get(field, 0.0), float(value))
            elif kind == "stock":
                into[field] = float(value)  # the bucket's last recording
            elif kind not in ("latency_sum", "latency_min"):
                into[field] = into.get(field, 0) + int(value)
    names = ("requests", "errors_4xx", "errors_5xx", *CHART_FLOWS)
    flows = {name: [0] * buckets for name in names}
    hist: dict[str, list[list[int]]] = {}
    highest: dict[str, list[float]] = {}
    levels: dict[str, dict[int, float]] = {}
    for at, bucket in enumerate(merged):
        for field, number in bucket.items():
            kind, _, rest = field.partition("|")
            if kind == "requests":
                count = int(number)
                flows["requests"][at] += count
                status = rest.rpartition("|")[2]
                if status[:1] in ("4", "5"):
                    flows[f"errors_{status[0]}xx"][at] += count
            elif kind == "latency":
                label, _, index = rest.rpartition("|")
                if index.isdigit() and int(index) <= len(BUCKETS_MS):
                    slot, count = int(index), int(number)
                    for name in ("", label):
                        rows = hist.get(name)
                        if rows is None:
                            rows = hist[name] = [[0] * (len(BUCKETS_MS) + 1) for _ in range(buckets)]
                        rows[at][slot] += count
            elif kind == "latency_max":
                for name in ("", rest):
                    top = highest.get(name)
                    if top is None:
                        top = highest[name] = [0.0] * buckets
                    top[at] = max(top[at], number)
            elif kind == "stock":
                levels.setdefault(rest, {})[at] = number
            elif not rest and kind in flows:
                flows[kind][at] += int(number)
    out: dict[str, list[list[Any]]] = {}
    for name, values in flows.items():
        out[name] = [[(first + i * step) * 60, v] for i, v in enumerate(values)]
    for label, rows in sorted(hist.items()):
        top = highest.get(label, [0.0] * buckets)
        for q, tag in ((0.5, "latency_p50"), (0.99, "latency_p99")):
            name = f"{tag}|{label}" if label else tag
            out[name] = [[(first + i * step) * 60, percentile(row, q, top[i])]
                         for i, row in enumerate(rows) if any(row)]
    for name, by_bucket in sorted(levels.items()):
        out[name] = [[(first + i * step) * 60, _number_value(v)] for i, v in sorted(by_bucket.items())]
    return out


def _number_value(value: float) -> float | int:
    return int(value) if value.is_integer() else value


async def series(db: Client, minutes: int, step: int, now: float | None = None) -> dict[str, list[list[Any]]]:
    """The chart series of the last `minutes` minutes (the current one included), in buckets
    of `step` minutes aligned to multiples of it (unix time)."""
    current = int((time.time() if now is None else now) // 60)
    last_bucket = current - current % step
    buckets = max(1, minutes // step)
    first = last_bucket - (buckets - 1) * step
    found = await read_minutes(db, first, current)
    # a day of busy minutes is ~10^6 fields, about a second of Python: on a thread, so the
    # worker's event loop goes on serving meanwhile (it gets the GIL every few ms)
    return await asyncio.to_thread(chart, found, first, buckets, step)
