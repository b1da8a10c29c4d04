"""The admin's operations routes (after the admin gatekeeper): the notify stream searched and
tailed, the stats and beat series for charts, the backups with the last result of each task,
and "back up now".

The owners of the data read it: notify.Merged (the `audit` and `log` streams), stats.series (`{stats}:<minute>`),
beat.series and beat.latest (`beat:<node>`, `beat:<node>:minute`), schedule.results and
schedule.request_run (`task:{<name>}`, `lock:{<name>}`), backup.store (the snapshots). No key is
named here.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any

import msgspec

from .. import notify as notifymod
from .. import stats
from ..chain import Route
from ..http import ApiError, Reply, Request, reply
from ..notify import notify
from ..schema import Schema, Text
from ..tasks import SCHEDULED, backup, beat, schedule
from .account import Empty

PAGE = 100  # events a page holds by default
PAGE_MAX = 500  # the most a `limit` may ask for
SCAN_MAX = 5000  # entries of the stream one request looks at, at most
READ = 500  # entries read from Redis at once
STREAM_ID = r"^[0-9]{1,20}-[0-9]{1,20}\Z"
MS = r"^[0-9]{1,15}\Z"
RANGES = {"hour": (60, 1), "day": (1440, 5)}  # minutes covered, minutes per point


class LogsQuery(Schema):
    type: Annotated[str, Text(1, 100)] = ""
    q: Annotated[str, Text(1, 200)] = ""
    since: Annotated[str, Text(1, 15, pattern=MS)] = ""
    until: Annotated[str, Text(1, 15, pattern=MS)] = ""
    before: Annotated[str, Text(3, 41, pattern=STREAM_ID)] = ""
    after: Annotated[str, Text(3, 41, pattern=STREAM_ID)] = ""
    limit: Annotated[str, Text(1, 3, pattern=r"^[0-9]{1,3}\Z")] = ""
    stream: Annotated[str, Text(3, 5, pattern=r"^(audit|log)\Z")] = ""


class RangeQuery(Schema):
    range: Annotated[str, Text(3, 4, pattern=r"^(hour|day)\Z")] = "hour"


class LogsOut(msgspec.Struct):
    events: list[dict[str, Any]]
    next: str | None


class BackupRow(msgspec.Struct):
    name: str
    created: int
    size: int
    sha256: str
    keys: int
    files: int


class TaskResult(msgspec.Struct):
    at: int | None
    ok: bool | None = None
    outcome: str | None = None
    error: str | None = None
    took: int | None = None
    node: str | None = None
    running: bool | None = None
    requested: bool | None = None


class BackupsOut(msgspec.Struct):
    backups: list[BackupRow]
    tasks: dict[str, TaskResult]


class Started(msgspec.Struct):
    started: bool


Series = dict[str, list[tuple[int, float]]]


# -- logs ---------------------------------------------------------------------------------

ID_MAX = 2**64 - 1  # each part of a Redis stream id
STREAMS = {"": notifymod.STREAMS, "audit": (notifymod.AUDIT,), "log": (notifymod.STREAM,)}


def _id(value: str, field: str) -> tuple[int, int]:
    """A stream id the schema let through, each part within Redis's range (else 400 `field`)."""
    ms, seq = notifymod.id_key(value)
    if ms > ID_MAX or seq > ID_MAX:
        raise ApiError(400, "validation", field)
    return ms, seq


def _matcher(query: LogsQuery) -> Any:
    """The (id, stream, line) → event (or None) test of the query's `type` and `q`."""
    text = query.q.lower()

    def match(entry_id: str, stream: str, line: str) -> dict[str, Any] | None:
        if text and text not in line.lower():
            return None
        try:
            event = json.loads(line)
        except ValueError:
            return None
        if not isinstance(event, dict) or (query.type and event.get("ev") != query.type):
            return None
        event["id"] = entry_id
        event["stream"] = stream
        return event

    return match


async def logs(req: Request) -> Reply:
    query = req.payload(LogsQuery)
    limit = int(query.limit) if query.limit else PAGE
    if not 1 <= limit <= PAGE_MAX:
        raise ApiError(400, "validation", "limit")
    since, until = (int(query.since) if query.since else None), (int(query.until) if query.until else None)
    if since is not None and until is not None and since > until:
        raise ApiError(400, "validation", "until")
    if query.before and query.after:
        raise ApiError(400, "validation", "after")
    streams = STREAMS[query.stream]
    match = _matcher(query)
    if query.after:
        after = _id(query.after, "after")
        if after == (ID_MAX, ID_MAX):  # nothing can come after the last id there is
            return reply(200, {"events": [], "next": query.after})
        low = f"({query.after}"
        if since is not None and after[0] < since:
            low = str(since)
        high = "+" if until is None else str(until)
        merged = notifymod.Merged(req.app.db, streams, low, high, False, READ)
        return await _page(merged, limit, match, query.after, tail=True)
    # newest first: from min(before (excluded), until) down to since
    high = "+" if until is None else str(until)
    if query.before:
        before = _id(query.before, "before")
        if before == (0, 0):  # nothing is older than the first id there is
            return reply(200, {"events": [], "next": None})
        if until is None or before[0] <= until:
            high = f"({query.before}"
    low = "-" if since is None else str(since)
    merged = notifymod.Merged(req.app.db, streams, high, low, True, READ)
    return await _page(merged, limit, match, None, tail=False)


async def _page(merged: notifymod.Merged, limit: int, match: Any, cursor: str | None, tail: bool) -> Reply:
    """Up to `limit` matching events, looking at no more than SCAN_MAX entries. A search's
    `next` is the last id looked at while more are left (null once none is); the tail's the
    newest looked at, or `after` itself when nothing came. An entry of the other stream with
    the same id as the last one looked at is looked at too, so going on from `next` skips nothing."""
    events: list[dict[str, Any]] = []
    scanned = 0
    while True:
        entry = await merged.next()
        if entry is None:
            return reply(200, {"events": events, "next": cursor if tail else None})
        scanned += 1
        cursor = entry[0]
        event = match(*entry)
        if event is not None:
            events.append(event)
        if len(events) == limit or scanned >= SCAN_MAX:
            while (twin := await merged.peek()) is not None and twin[0] == cursor:
                await merged.next()
                event = match(*twin)
                if event is not None:
                    events.append(event)
            if not tail and await merged.peek() is None:
                return reply(200, {"events": events, "next": None})
            return reply(200, {"events": events, "next": cursor})


# -- stats and beat ---------------------------------------------------------------------------


async def stats_series(req: Request) -> Reply:
    minutes, step = RANGES[req.payload(RangeQuery).range]
    return reply(200, await stats.series(req.app.db, minutes, step))


async def beat_series(req: Request) -> Reply:
    minutes, step = RANGES[req.payload(RangeQuery).range]
    step_ms = step * beat.MINUTE_MS
    now = int(time.time() * 1000)
    last_bucket = now - now % step_ms
    since = last_bucket - (minutes // step - 1) * step_ms
    return reply(200, await beat.series(req.app.db, since, now + 1, step_ms))


# -- backups --------------------------------------------------------------------------------


def _list_backups(config: Any) -> list[dict[str, Any]]:
    """What `lorebase backup list` shows, newest first (blocking: S3 or the disk)."""
    manifests, _ = backup.catalog(backup.store(config))  # what verifies: a stray or planted object is no backup
    return [{"name": m["name"], "created": int(m["created"]), "size": int(m["size"]), "sha256": str(m["sha256"]),
             "keys": int(m["keys"]), "files": len(m.get("files") or {})} for m in manifests]


async def backups(req: Request) -> Reply:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        found = await asyncio.to_thread(_list_backups, req.app.config)
    except (BotoCoreError, ClientError) as error:  # S3 down or refusing
        notify("admin backups failed", error=f"{type(error).__name__}: {error}"[:300])
        raise ApiError(503, "s3") from None
    tasks = await schedule.results(req.app.db, [*SCHEDULED, *(s.name for e in req.app.extensions for s in e.schedule)])
    tasks.update(await beat.latest(req.app.db))
    return reply(200, {"backups": found, "tasks": tasks})


async def backup_now(req: Request) -> Reply:
    if not await schedule.request_run(req.app.db, "backup"):
        raise ApiError(409, "busy")
    notify("admin backup", by=req.session and req.session["user"])
    return reply(202, {"started": True})


def routes() -> list[Route]:
    return [
        Route("GET", "/admin/logs", logs, section="admin", query=LogsQuery, ok=LogsOut,
              summary="Search the notify streams `audit` and `log` (newest first, paged by stream id), "
                      "or tail them (after)"),
        Route("GET", "/admin/stats", stats_series, section="admin", query=RangeQuery, ok=Series,
              summary="Stats series for charts: the last hour (per minute) or day (per 5 minutes)"),
        Route("GET", "/admin/beat", beat_series, section="admin", query=RangeQuery, ok=Series,
              summary="Beat series per node for charts: the last hour (per minute) or day (per 5 minutes)"),
        Route("GET", "/admin/backups", backups, section="admin", ok=BackupsOut, replies={503: ["s3"]},
              summary="The backups, newest first, and the last result of each task"),
        Route("POST", "/admin/backups", backup_now, section="admin", body=Empty, ok=Started,
              replies={202: [], 409: ["busy"]},
              summary="Start a backup now (the tasks process runs it within a second)"),
    ]
