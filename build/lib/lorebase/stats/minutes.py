"""The minutes' hashes (`{stats}:<minute>`) beyond the workers' counts: the levels (users,
jobs in each durable queue) recorded into them once a minute by the `stats` task, and read
back, with the flows, as the series the admin charts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from ..db import Client
from .counters import BUCKETS_MS, fields, minute_key


async def record_stocks(db: Client, queues: Iterable[dict[str, str]], keep: int) -> str:
    """The levels now, into this minute's hash (`stock|<name>`): the `stats` task, once a minute."""
    levels = await read_stocks(db, queues)
    key = minute_key(int(time.time() // 60))
    pairs = [x for name, level in levels.items() for x in (f"stock|{name}", level)]
    await db.pipeline([("HSET", key, *pairs), ("EXPIRE", key, keep)])
    return ", ".join(f"{name} {level}" for name, level in levels.items())


def queues(config: Any) -> list[dict[str, str]]:
    """The durable queues whose lengths are levels: the outbox, the S3 mirror when on, and the
    applications' queues."""
    from ..extension import app_queues
    from ..tasks.queue import durable

    found = durable(app_queues(config))
    builtin = [found["mail"], found["s3"]] if config.S3_BUCKET else [found["mail"]]
    return builtin + [keys for name, keys in found.items() if name not in ("mail", "s3")]


QUEUE_STATES = ("queue", "doing", "retry", "dead")


async def read_stocks(db: Client, queues: Iterable[dict[str, str]]) -> dict[str, int]:
    """The levels: users, and each queue's jobs by state (`queue|<q>|<state>`), `doing` summed
    over its workers' doing lists (tasks/queue.py). Two round trips: the lengths and the
    workers, then the workers' lists."""
    from ..identity.keys import USERS
    from ..tasks.queue import doing_of

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
