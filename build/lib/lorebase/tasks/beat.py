"""Beat: the health of this machine and of its Redis, sampled every BEAT_EVERY seconds by the
tasks process of every node (machine stats are per machine: no cluster lock), kept in Redis,
and one alert when a threshold is crossed.

A sample, the `json` field of an entry of `beat:<node>` (the node: its hostname; the entry's
id: the sample's `t`), the stream trimmed to a day (XADD MINID ~):
  {t (unix ms), cpu (% of all cores since the last sample), memory (% of RAM used),
   memory_used, memory_total (bytes), load1, load5, load15, disk (% used of the disk holding
   DATA_DIR), disk_free (bytes), rss: {<process>: bytes} (the master and its children: master,
   worker0..., tasks, redis-server), redis: {used_memory, maxmemory (bytes), memory (% of
   maxmemory used; null when maxmemory is 0), clients, ops (per second), last_save (unix s),
   unsaved (changes since it), save_ok (the last RDB save: 1/0), aof (1: on), aof_ok (the last
   AOF write and rewrite: 1/0)}}; on a Redis Cluster, over its primaries (`merged`: sums, the
   fullest primary's memory %, the oldest save, a flag only if every primary has it)
The machine fields are missing from a sample whose psutil call failed (notified once).

`beat:<node>:minute`, trimmed to a week: one entry per minute that had samples, `json`
{t (the minute's start, unix ms), n (samples), avg: {...}, max: {...}}, avg and max of every
number of those samples, nested as in a sample. It is computed from `beat:<node>` once the
minute is over, so a restarted tasks process loses no minute.

Alert rule: a check is over its threshold (`>`) for BEAT_SAMPLES consecutive samples before
it alerts, and under it as long before it is back: a one-sample CPU spike pages no one, and
a value hovering at the threshold does not flap. The crossing is kept in Redis (HSETNX, and
HDEL when back), so one crossing gives one `beat alert` (and one mail to each ADMINS address,
queued in the same Lua step) and one `beat ok`, whichever process or node notices, however
often the tasks process restarts. Machine checks (cpu, memory, disk) are kept per node in
`beat:{mail}:alerts:<node>`; the checks of the Redis every node shares (redis_memory, redis_save,
redis_aof) once for all in `beat:{mail}:alerts`.

Every Redis call is inside the loop's retry (queue.Outage): an outage costs samples, never
the loop. Memory is bounded: one sample at a time, a few counters per check, and minutes are
aggregated from Redis in batches of at most BATCH samples.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import psutil

from .. import mail
from ..db import Client, RedisError
from ..notify import notify
from .queue import REDIS_ERRORS, Outage

MINUTE_MS = 60_000
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
BATCH = 2000  # samples read at once to aggregate minutes
MACHINE = {"cpu": "BEAT_CPU", "memory": "BEAT_MEMORY", "disk": "BEAT_DISK"}
SHARED = ("redis_memory", "redis_save", "redis_aof")  # checks of the Redis all nodes share

# KEYS: the alerts hash, the mail queue. ARGV: the check, what is recorded, mails to queue.
# 1 if this call recorded the crossing (and queued the mails), 0 if it was recorded already.
_CROSS = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
for i = 3, #ARGV do redis.call('LPUSH', KEYS[2], ARGV[i]) end
return 1
"""


NODES = "beat:nodes"  # set: every node that ever sampled (the admin's charts list them)


def node_name() -> str:
    return socket.gethostname()


def samples_key(node: str) -> str:
    return f"beat:{node}"


def minutes_key(node: str) -> str:
    return f"beat:{node}:minute"


def alerts_key(node: str | None) -> str:
    """The crossed thresholds of `node`, or (None) of the shared Redis: hash check → JSON
    {value, threshold, node, since (unix ms)}. Under the outbox's hash tag `{mail}`: a
    crossing is recorded and its mails queued in one step (`_CROSS`), on a Redis Cluster too."""
    return "beat:{mail}:alerts" if node is None else f"beat:{{mail}}:alerts:{node}"


# -- sampling (blocking: run on a thread) -----------------------------------------------


def machine(data_dir: str, master: int) -> dict[str, Any]:
    """CPU, memory, load, disk, and the RSS of the master `master` and its children."""
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(data_dir)
    load = psutil.getloadavg()
    return {"cpu": psutil.cpu_percent(None), "memory": memory.percent,
            "memory_used": memory.total - memory.available, "memory_total": memory.total,
            "load1": round(load[0], 2), "load5": round(load[1], 2), "load15": round(load[2], 2),
            "disk": disk.percent, "disk_free": disk.free, "rss": processes(master)}


def processes(master: int) -> dict[str, int]:
    """RSS in bytes of the master and each of its children, by role (`lorebase: worker0 dev`
    → worker0; the embedded Redis → redis-server). A process that just exited is left out."""
    try:
        parent = psutil.Process(master)
        family = [parent, *parent.children()]
    except psutil.Error:  # the master is gone: this process dies with it
        family = [psutil.Process()]
    out: dict[str, int] = {}
    for proc in family:
        try:
            with proc.oneshot():
                title = " ".join(proc.cmdline())
                role = title.split()[1] if title.startswith("lorebase: ") and len(title.split()) > 1 else proc.name()
                out[role] = int(proc.memory_info().rss)
        except psutil.Error:
            continue
    return out


def merged(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The `redis` part of a sample over the primaries of a Cluster (one part elsewhere):
    memory, clients, ops and unsaved changes added up; `memory` the fullest primary's (the
    one that refuses writes first); the oldest save; a flag 1 only if it is on every one."""
    if len(parts) == 1:
        return parts[0]
    out = {name: sum(p[name] for p in parts) for name in ("used_memory", "maxmemory", "clients", "ops", "unsaved")}
    full = [p["memory"] for p in parts if p["memory"] is not None]
    out["memory"] = max(full) if full else None
    out["last_save"] = min(p["last_save"] for p in parts)
    for flag in ("save_ok", "aof", "aof_ok"):
        out[flag] = min(p[flag] for p in parts)
    return out


def redis_stats(info: str) -> dict[str, Any]:
    """The sample's `redis` part, from INFO's text."""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line and not line.startswith("#"))
    fields = {k: v.strip() for k, v in fields.items()}

    def number(name: str) -> int:
        try:
            return int(float(fields.get(name, "0")))
        except ValueError:
            return 0

    used, maxmemory = number("used_memory"), number("maxmemory")
    aof = fields.get("aof_enabled") == "1"
    return {"used_memory": used, "maxmemory": maxmemory,
            "memory": round(used / maxmemory * 100, 1) if maxmemory else None,
            "clients": number("connected_clients"), "ops": number("instantaneous_ops_per_sec"),
            "last_save": number("rdb_last_save_time"), "unsaved": number("rdb_changes_since_last_save"),
            "save_ok": int(fields.get("rdb_last_bgsave_status", "ok") == "ok"), "aof": int(aof),
            "aof_ok": int(not aof or (fields.get("aof_last_write_status", "ok") == "ok"
                                      and fields.get("aof_last_bgrewrite_status", "ok") == "ok"))}


# -- aggregates --------------------------------------------------------------------------


def _reduce(parts: list[dict[str, Any]], how: Callable[[list[float]], float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for part in parts for k in part):
        present = [part[key] for part in parts if key in part]
        nested = [v for v in present if isinstance(v, dict)]
        if nested:
            reduced = _reduce(nested, how)
            if reduced:
                out[key] = reduced
            continue
        numbers = [v for v in present if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if numbers:
            out[key] = how(numbers)
    return out


def aggregate(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Samples in time order → one {t (the minute's start), n, avg, max} per minute they fall in."""
    minutes = []
    for start, group in itertools.groupby(samples, key=lambda s: int(s["t"]) - int(s["t"]) % MINUTE_MS):
        parts = [{k: v for k, v in s.items() if k != "t"} for s in group]
        minutes.append({"t": start, "n": len(parts), "avg": _reduce(parts, lambda v: round(sum(v) / len(v), 2)),
                        "max": _reduce(parts, max)})
    return minutes


def _json(fields: list[Any]) -> Any:
    """A stream entry's `json` field, parsed; None if it has none or it is not JSON."""
    try:
        return json.loads(dict(zip(fields[::2], fields[1::2], strict=True))["json"])
    except (ValueError, KeyError, TypeError):
        return None


def _entries(reply: list[Any]) -> list[dict[str, Any]]:
    """XRANGE's reply → the samples, `t` from the entry's id; an entry that is not JSON skipped."""
    out = []
    for entry_id, fields in reply or []:
        sample = _json(fields)
        if isinstance(sample, dict):
            sample["t"] = int(str(entry_id).split("-")[0])
            out.append(sample)
    return out


# -- the loop -----------------------------------------------------------------------------


def readings(sample: dict[str, Any], limits: dict[str, float]) -> dict[str, tuple[bool, Any, Any]]:
    """Each check this sample can tell → (over, value, threshold). A threshold of 0 is never
    crossed; Redis memory with no maxmemory neither."""
    out: dict[str, tuple[bool, Any, Any]] = {}
    redis = sample.get("redis", {})
    values = {what: sample[what] for what in MACHINE if what in sample}
    values["redis_memory"] = redis.get("memory")
    for what, value in values.items():
        limit = limits[what]
        out[what] = (limit > 0 and value is not None and value > limit, value, limit)
    if redis:
        out["redis_save"] = (redis.get("save_ok") == 0, "err" if redis.get("save_ok") == 0 else "ok", "ok")
        out["redis_aof"] = (redis.get("aof_ok") == 0, "err" if redis.get("aof_ok") == 0 else "ok", "ok")
    return out


class Streaks:
    """How many consecutive samples each check has been over (or under) its threshold, and
    the state last recorded in Redis (None: not known since this process started)."""

    def __init__(self, need: int):
        self.need = max(1, need)
        self.streak: dict[str, tuple[bool, int]] = {}
        self.recorded: dict[str, bool] = {}

    def step(self, what: str, over: bool) -> bool | None:
        """The state to record for `what` now (True crossed, False back), or None."""
        was, count = self.streak.get(what, (over, 0))
        count = min(count + 1, self.need) if was == over else 1
        self.streak[what] = (over, count)
        if count >= self.need and self.recorded.get(what) is not over:
            return over
        return None


class Beat:
    def __init__(self, db: Client, config: Any, node: str | None = None):
        self.db = db
        self.config = config
        self.every = float(config.BEAT_EVERY)
        self.node = node or node_name()
        self.master = os.getppid()
        self.limits = {what: float(getattr(config, key)) for what, key in MACHINE.items()}
        self.limits["redis_memory"] = float(config.BEAT_REDIS_MEMORY)
        self.streaks = Streaks(int(config.BEAT_SAMPLES))
        self.aggregated: int | None = None  # the start of the newest minute aggregated (unix ms)
        self.psutil_failed = False
        self.listed = False  # this node is in NODES

    async def run(self, stopping: asyncio.Event) -> None:
        outage = Outage("beat")
        await asyncio.to_thread(psutil.cpu_percent, None)  # the start of the first sample's CPU
        due = time.monotonic()
        while not stopping.is_set():
            due = max(due + self.every, time.monotonic())
            try:
                await asyncio.wait_for(stopping.wait(), due - time.monotonic())
                return
            except TimeoutError:
                pass
            sample = await self.sample_machine()
            try:
                await self.step(sample)
                outage.ok()
            except REDIS_ERRORS as error:
                await outage.failed(error, stopping)

    async def sample_machine(self) -> dict[str, Any]:
        try:
            sample = await asyncio.to_thread(machine, str(self.config.DATA_DIR), self.master)
        except Exception as error:  # noqa: BLE001 - a failing psutil costs the machine fields, not the loop
            if not self.psutil_failed:
                self.psutil_failed = True
                notify("beat psutil error", error=f"{type(error).__name__}: {error}"[:300])
            return {}
        if self.psutil_failed:
            self.psutil_failed = False
            notify("beat psutil back")
        return sample

    async def step(self, machine: dict[str, Any]) -> None:
        """One sample: Redis's INFO added, stored, past minutes aggregated, thresholds checked."""
        infos = await self.db.each("INFO", "memory", "clients", "stats", "persistence")
        now = int(time.time() * 1000)
        sample = {"t": now, **machine, "redis": merged([redis_stats(str(info)) for info in infos])}
        add = ("XADD", samples_key(self.node), "MINID", "~", now - DAY_MS)
        try:  # the id is the sample's time, so that minutes are cut by this node's clock, not Redis's
            await self.db.call(*add, f"{now}-*", "json", json.dumps(sample))
        except RedisError as error:
            if "equal or smaller" not in str(error):
                raise
            await self.db.call(*add, "*", "json", json.dumps(sample))  # this clock went back
        if not self.listed:
            await self.db.call("SADD", NODES, self.node)
            self.listed = True
        await self.aggregate(now)
        await self.check(sample)

    async def aggregate(self, now: int) -> None:
        """Aggregates the minutes after the newest aggregated one, up to the current one (excluded)."""
        current = now - now % MINUTE_MS
        if self.aggregated is None:
            self.aggregated = await self._newest_aggregated(current)
        if self.aggregated + MINUTE_MS >= current:
            return
        reply = await self.db.call("XRANGE", samples_key(self.node), self.aggregated + MINUTE_MS, current - 1,
                                   "COUNT", BATCH)
        minutes = aggregate(_entries(reply))
        full = len(reply or []) == BATCH
        if full and len(minutes) > 1:
            minutes = minutes[:-1]  # the batch may end inside its last minute: that one next time
        if minutes:
            await self.db.pipeline([("XADD", minutes_key(self.node), "MINID", "~", now - WEEK_MS, "*",
                                     "json", json.dumps(minute)) for minute in minutes])
        self.aggregated = minutes[-1]["t"] if full and minutes else current - MINUTE_MS

    async def _newest_aggregated(self, current: int) -> int:
        reply = await self.db.call("XREVRANGE", minutes_key(self.node), "+", "-", "COUNT", 1)
        for _, fields in reply or []:
            minute = _json(fields)  # its own `t`: the entry's id is when it was written
            if isinstance(minute, dict) and isinstance(minute.get("t"), int):
                return int(minute["t"])
        oldest = _entries(await self.db.call("XRANGE", samples_key(self.node), "-", "+", "COUNT", 1))
        if oldest:
            first = int(oldest[0]["t"])
            return first - first % MINUTE_MS - MINUTE_MS
        return current - MINUTE_MS

    async def check(self, sample: dict[str, Any]) -> None:
        changes = []
        for what, (over, value, threshold) in readings(sample, self.limits).items():
            state = self.streaks.step(what, over)
            if state is not None:
                changes.append((what, state, value, threshold))
        for what, state, value, threshold in changes:
            key = alerts_key(None if what in SHARED else self.node)
            if state:
                await self.cross(key, what, value, threshold, int(sample["t"]))
            elif await self.db.call("HDEL", key, what):
                notify("beat ok", node=self.node, what=what, value=value, threshold=threshold)
            self.streaks.recorded[what] = state

    async def cross(self, key: str, what: str, value: Any, threshold: Any, now: int) -> None:
        """Records the crossing; the first to record it notifies and mails the admins."""
        state = f"{value} over {threshold}" if isinstance(value, (int, float)) else f"{value} (not {threshold})"
        subject = f"lorebase ({self.config.ENV}): {what} {state} on {self.node}"
        text = (f"Beat of lorebase ({self.config.ENV}) on {self.node}: {what} is {state}, for "
                f"{self.streaks.need} samples in a row.\n\nYou get one mail per crossing; "
                f"`beat ok` is notified when it is back under the threshold.\n")
        mails = [mail.message(self.config.COOKIE_SECRET, admin, subject, text) for admin in self.config.ADMINS]
        recorded = json.dumps({"value": value, "threshold": threshold, "node": self.node, "since": now})
        if await self.db.script(_CROSS, [key, mail.QUEUE], [what, recorded, *mails]):
            notify("beat alert", node=self.node, what=what, value=value, threshold=threshold)


# -- reading: the admin's charts and its task list --------------------------------------

READ_BATCH = 500  # entries of a stream read at once
CHARTED = {"cpu": ("cpu",), "memory": ("memory",), "disk": ("disk",), "load1": ("load1",),
           "redis_used_memory": ("redis", "used_memory"), "redis_ops": ("redis", "ops"),
           "redis_clients": ("redis", "clients")}


async def nodes(db: Client) -> list[str]:
    return sorted(await db.call("SMEMBERS", NODES) or [])


async def _minutes(db: Client, node: str, since: int, until: int) -> list[dict[str, Any]]:
    """The node's per-minute aggregates with `t` in [since, until), in batches of READ_BATCH,
    then the minutes beat has not aggregated yet (the current one, and the last one for up to
    a sample), aggregated here from the raw samples (at most BATCH of them)."""
    out: list[dict[str, Any]] = []
    start: Any = since  # an entry's id is when it was written: after its minute ended
    while True:
        reply = await db.call("XRANGE", minutes_key(node), start, "+", "COUNT", READ_BATCH)
        for entry_id, entry in reply or []:
            minute = _json(entry)
            if isinstance(minute, dict) and isinstance(minute.get("t"), int) and since <= minute["t"] < until:
                out.append(minute)
            start = f"({entry_id}"
        if len(reply or []) < READ_BATCH:
            break
    out.sort(key=lambda m: m["t"])
    newest = out[-1]["t"] + MINUTE_MS if out else since
    raw = await db.call("XRANGE", samples_key(node), max(newest, since), until - 1, "COUNT", BATCH)
    return out + aggregate(_entries(raw))


def _pick(values: dict[str, Any], path: tuple[str, ...]) -> float | None:
    found: Any = values
    for key in path:
        found = found.get(key) if isinstance(found, dict) else None
    return found if isinstance(found, (int, float)) and not isinstance(found, bool) else None


async def series(db: Client, since: int, until: int, step: int) -> dict[str, list[list[Any]]]:
    """{`<what>|<node>`: [[t (unix s, the bucket's start), value], ...]} for each node, over
    [since, until) (unix ms) in buckets of `step` ms: the average of the minutes' averages
    (weighted by their samples) of cpu, memory, disk (%), load1, redis_used_memory (bytes),
    redis_ops (per s), redis_clients, and cpu_max (the highest sample). Buckets without
    samples have no point."""
    out: dict[str, list[list[Any]]] = {}
    for node in await nodes(db):
        sums: dict[str, dict[int, list[float]]] = {}
        for minute in await _minutes(db, node, since, until):
            at = since + (minute["t"] - since) // step * step
            n = float(minute.get("n") or 1)
            avg, top = minute.get("avg") or {}, minute.get("max") or {}
            for name, path in CHARTED.items():
                value = _pick(avg, path)
                if value is not None:
                    acc = sums.setdefault(name, {}).setdefault(at, [0.0, 0.0])
                    acc[0] += value * n
                    acc[1] += n
            high = _pick(top, ("cpu",))
            if high is not None:
                acc = sums.setdefault("cpu_max", {}).setdefault(at, [0.0, 0.0])
                acc[0], acc[1] = max(acc[0], high), 1.0
        for name, by_bucket in sums.items():
            out[f"{name}|{node}"] = [[at // 1000, round(total / n, 2)] for at, (total, n) in sorted(by_bucket.items())]
    return out


async def latest(db: Client) -> dict[str, dict[str, Any]]:
    """Each node's newest sample as a task result, `beat|<node>`: {at (unix ms), ok (its
    machine fields are there: psutil worked), outcome}."""
    names = await nodes(db)
    replies = await db.pipeline([("XREVRANGE", samples_key(node), "+", "-", "COUNT", 1) for node in names])
    out: dict[str, dict[str, Any]] = {}
    for node, reply in zip(names, replies, strict=True):
        found = _entries(reply)
        if not found:
            continue
        sample = found[0]
        ok = "cpu" in sample
        result: dict[str, Any] = {"at": sample["t"], "ok": ok}
        if ok:
            result["outcome"] = f"cpu {sample['cpu']}%, memory {sample['memory']}%, disk {sample['disk']}%"
        else:
            result["error"] = "psutil failed (machine fields missing)"
        out[f"beat|{node}"] = result
    return out
