"""`lorebase check [--repair]`: the consistency check of the whole database (seed: Master
tasks, "consistency checks"), an orchestrator over the checks their owners register
(Extension.checks): the built-in parts' first (identity/check.py: users and their indexes,
destroys that died half-way, sessions, tokens and invites; files/check.py: the file store, as
`lorebase files check` sees it, and `usage:`), then each application's, in APPS order; last
the jobs of every durable queue (the built-ins' and the applications'). It knows no owner's
keys: each check reports findings through the CheckContext (`Check` here), which prints them,
counts them and makes the report.

It runs while the server serves, on redis-py (the CLI, and a thread of the tasks process).
A scan only proposes candidates: every problem is confirmed by one Lua script at the moment it
is reported, and the same script repairs it (with --repair), so a write in flight is neither
reported nor damaged. Every key comes from its owner's builder (identity/keys.py,
files/keys.py, tasks/queue.names, mail.QUEUE..., and each app's own).

Two kinds of finding: a problem (counted in the exit code, notified by the scheduled run) and
a tidy-up, harmless by design and only pruned by --repair: ids of sessions that expired on
their own left in `sessions:{<user>}`, and what an application marks as such (the notes
example: notes naming a file the user deleted since, which its read filters out).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from .extension import Extension
from .files import keys as fkeys
from .identity import keys
from .tasks.queue import doing_lists, durable

NOTIFY_MAX = 20  # `check problem` events a scheduled run sends at most

# KEYS: a user, then keys of that user. ARGV: '1' to repair. How many of those keys exist
# while the user does not (deleted with --repair); 0 if the user exists.
_ORPHANS = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n = 0
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    n = n + 1
    if ARGV[1] == '1' then redis.call('DEL', KEYS[i]) end
  end
end
return n
"""

# KEYS: a queue's list or sorted set, its dead list. ARGV: the job as read, 'zset' or 'list',
# '1' to repair. 1 if it is still there (moved to dead with --repair).
_BAD_JOB = """
local there
if ARGV[2] == 'zset' then there = redis.call('ZSCORE', KEYS[1], ARGV[1])
else there = redis.call('LPOS', KEYS[1], ARGV[1]) end
if not there then return 0 end
if ARGV[3] == '1' then
  if ARGV[2] == 'zset' then redis.call('ZREM', KEYS[1], ARGV[1]) else redis.call('LREM', KEYS[1], 1, ARGV[1]) end
  redis.call('LPUSH', KEYS[2], ARGV[1])
end
return 1
"""


@dataclass
class Finding:
    key: str
    what: str
    done: str = ""  # with --repair: what was done ("" : nothing could be)
    tidy: bool = False  # harmless by design: pruned by --repair, not a problem

    def line(self, repair: bool) -> str:
        if not repair:
            return f"{self.key}: {self.what}" + (" (tidy-up)" if self.tidy else "")
        return f"{self.key}: {self.what} ({self.done or 'not repaired: needs a person'})"


@dataclass
class Report:
    findings: list[Finding]
    repair: bool
    counts: dict[str, int]  # what was looked at
    dead: dict[str, int]  # jobs in each dead list (not problems: where failed jobs wait)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if not f.tidy]

    @property
    def left(self) -> int:
        """Problems not repaired (all of them without --repair)."""
        return sum(1 for f in self.problems if not (self.repair and f.done))

    def summary(self) -> str:
        looked = ", ".join(f"{n} {what}" for what, n in self.counts.items())
        problems = len(self.problems)
        text = f"checked {looked}: {problems} problem{'s' if problems != 1 else ''}"
        tidy = len(self.findings) - problems
        if self.repair:
            text += f", {problems - self.left} repaired"
        if tidy:
            text += f"; {tidy} tidy-up{'s' if tidy != 1 else ''}" + (" done" if self.repair else "")
        dead = ", ".join(f"{key} {n}" for key, n in self.dead.items() if n)
        if dead:
            text += f" (dead jobs: {dead})"
        return text


class Progress:
    """A bar on a terminal, nothing otherwise."""

    def __init__(self, out: TextIO | None):
        self.out = out if out is not None and out.isatty() else None

    def show(self, phase: str, done: int, total: int) -> None:
        if self.out is None or (done % 100 and done != total):
            return
        filled = 30 * done // max(total, 1)
        self.out.write(f"\r{phase:<9} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}\x1b[K")
        if done == total:
            self.out.write("\n")
        self.out.flush()


def tails(db: Any, builder: Callable[[str], str]) -> list[str]:
    """The names of every key `builder` makes (`user:{<name>}` → name), by SCAN."""
    prefix, _, suffix = builder("\0").partition("\0")
    return sorted({k[len(prefix):len(k) - len(suffix)] for k in db.scan_iter(match=builder("*"), count=1000)
                   if k.startswith(prefix) and k.endswith(suffix) and len(k) > len(prefix) + len(suffix)})


def file_owners(db: Any) -> dict[str, str]:
    """The user of every file record (`file:{<user>}:<id>`), by one SCAN."""
    owners = {}
    for key in db.scan_iter(match=fkeys.file("*", "*"), count=1000):
        named = fkeys.file_id(key)
        if named:
            owners[named[1]] = named[0]
    return owners


class Check:
    """The CheckContext (extension.py) every check reports through: prints each finding as it
    comes (`line`: how, the orchestrator's style by default), counts, and makes the report."""

    def __init__(self, config: Any, db: Any, repair: bool, out: TextIO | None, progress: TextIO | None,
                 line: Callable[[Finding], str] | None = None):
        self.config = config
        self.db = db
        self.repair = repair
        self.flag = "1" if repair else "0"
        self.out = out
        self.line = line or (lambda finding: finding.line(repair))
        self.bar = Progress(progress)
        self.findings: list[Finding] = []
        self.counts: dict[str, int] = {}
        self.dead: dict[str, int] = {}
        self.scripts: dict[str, Any] = {}
        self.owners: dict[str, str] | None = None  # file id → its user (Check.file_owner)

    def run(self, lua: str, keys_: list[str], args: list[Any]) -> Any:
        if lua not in self.scripts:
            self.scripts[lua] = self.db.register_script(lua)
        return self.scripts[lua](keys=keys_, args=args)

    def found(self, key: str, what: str, done: str = "", tidy: bool = False) -> None:
        finding = Finding(key, what, done if self.repair else "", tidy)
        self.findings.append(finding)
        if self.out is not None:
            print(self.line(finding), file=self.out, flush=True)

    def each(self, phase: str, items: list[str]) -> Iterator[str]:
        for n, item in enumerate(items, 1):
            yield item
            self.bar.show(phase, n, len(items))

    def exists(self, username: str) -> bool:
        return bool(self.db.exists(keys.user(username)))

    def count(self, what: str, amount: int) -> None:
        self.counts[what] = self.counts.get(what, 0) + amount

    def tails(self, builder: Callable[[str], str]) -> list[str]:
        return tails(self.db, builder)

    def drop_orphans(self, username: str, keys_: list[str]) -> int:
        return int(self.run(_ORPHANS, [keys.user(username), *keys_], [self.flag]))

    def finish_destroy(self, username: str, mark: str) -> bool:
        return finish_destroys(self.config, [(username, mark)]) > 0

    def remove_orphan_files(self, username: str) -> int:
        return finish_orphan_files(self.config, username)

    def file_owner(self, file_id: str) -> str | None:
        """The user whose file this is, per one scan of every record made when first asked,
        and still now (one deleted since the scan is nobody's: gone, not another user's)."""
        if self.owners is None:
            self.owners = file_owners(self.db)
        owner = self.owners.get(file_id)
        return owner if owner is not None and self.db.exists(fkeys.file(owner, file_id)) else None

    def jobs(self, queues: list[str]) -> None:
        """Every job waiting in a durable queue (the built-ins' and `queues`, the applications'
        keys) is a JSON object; the dead lists are only counted (where failed jobs wait)."""
        total = 0
        for queue in durable(queues).values():
            for key in (queue["queue"], *doing_lists(self.db, queue), queue["retry"]):
                kind = "zset" if key == queue["retry"] else "list"
                raws = self.db.zrange(key, 0, -1) if kind == "zset" else self.db.lrange(key, 0, -1)
                total += len(raws)
                for raw in raws:
                    try:
                        parsed = json.loads(raw)
                    except ValueError:
                        parsed = None
                    if isinstance(parsed, dict):
                        continue
                    if self.run(_BAD_JOB, [key, queue["dead"]], [raw, kind, self.flag]):
                        self.found(key, f"a job that is not a JSON object ({len(raw)} bytes)",
                                   f"moved to {queue['dead']}")
            self.dead[queue["dead"]] = int(self.db.llen(queue["dead"]))
        self.count("jobs", total)

    def all(self, extensions: Sequence[Extension]) -> Report:
        """Every extension's checks, in order, then the queued jobs."""
        for ext in extensions:
            for owned in ext.checks:
                owned(self)
        self.jobs([queue.key for ext in extensions for queue in ext.queues])
        return self.report()

    def report(self) -> Report:
        return Report(self.findings, self.repair, self.counts, self.dead)


def check(config: Any, db: Any, repair: bool = False, out: TextIO = sys.stdout,
          progress: TextIO | None = sys.stderr) -> Report:
    """Prints one line per finding and the summary; the report. Raises redis-py's
    ConnectionError / TimeoutError when Redis is unreachable, botocore's errors when S3
    refuses, blobs.Unavailable when the file server does not answer."""
    from .builtins import extensions

    report = Check(config, db, repair, out, progress).all(extensions(config))
    print(report.summary(), file=out, flush=True)
    return report


# -- the cascades, on the async client (the code the routes run) ---------------------------


def _with_app(config: Any, work: Callable[[Any], Any]) -> Any:
    from . import db as dbmod
    from .app import create_app

    async def go() -> Any:
        app = create_app(config)
        app.db = dbmod.connect(config, timeout=30)
        try:
            return await work(app)
        finally:
            await app.db.close()

    return asyncio.run(go())


def finish_destroys(config: Any, marked: list[tuple[str, str]]) -> int:
    """Destroy's steps 2 and 3 for each (username, destroying mark): the route's own
    `App.erase_user` (every app's destroy hook, then the user if it still carries the mark).
    How many users were deleted."""
    async def work(app: Any) -> int:
        return sum([await app.erase_user(name, mark) for name, mark in marked])
    return int(_with_app(config, work))


def finish_orphan_files(config: Any, name: str) -> int:
    """The files of a user who does not exist, removed as a destroy removes them (the S3 trash
    job with each), each only while the name is still free."""
    async def work(app: Any) -> int:
        return int(await app.store.remove_all(app.db, name, orphan=True))
    return int(_with_app(config, work))
