"""`lorebase check [--repair]`: the consistency check of the whole database (seed: Master
tasks, "consistency checks"). Users and their indexes (the search's too), sessions and tokens of missing users,
destroys that died half-way, notes, `usage:`, the file store (`files.check`, called as it is),
and the jobs of the durable queues.

It runs while the server serves, on redis-py (the CLI, and a thread of the tasks process).
A scan only proposes candidates: every problem is confirmed by one Lua script at the moment it
is reported, and the same script repairs it (with --repair), so a write in flight is neither
reported nor damaged: an `email:` entry is deleted only if, right then, its user still does
not exist or still does not hold that address. Every key comes from its owner's builder
(identity/keys.py, files/keys.py, notes_key / notebook_key, tasks/queue.names, mail.QUEUE...).

Two kinds of finding: a problem (counted in the exit code, notified by the scheduled run) and
a tidy-up, harmless by design and only pruned by --repair: ids of sessions that expired on
their own left in `sessions:<user>`, and notes naming a file the user deleted since (the read
filters them out; see apps/notes.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import msgspec

from .apps.notes import _SWAP, NO_FILES, notebook_key, notes_key
from .files import check as files_check
from .files import keys as fkeys
from .identity import keys, tokens, users
from .tasks.queue import durable

DESTROY_GRACE = 15 * 60  # seconds: a younger `destroying` mark may be a destroy still running
NOTIFY_MAX = 20  # `check problem` events a scheduled run sends at most

# KEYS: user, users. ARGV: the name, '1' to repair.
_USER = """
local listed = redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1
if redis.call('EXISTS', KEYS[1]) == 0 then
  if not listed then return 'ok' end
  if ARGV[2] == '1' then redis.call('SREM', KEYS[2], ARGV[1]) end
  return 'dangling'
end
local u = redis.call('HMGET', KEYS[1], 'username', 'hash')
if u[1] ~= ARGV[1] then
  if not u[1] and not u[2] then
    if ARGV[2] == '1' then redis.call('DEL', KEYS[1]); redis.call('SREM', KEYS[2], ARGV[1]) end
    return 'stray'
  end
  return 'name ' .. (u[1] or '')
end
if listed then return 'ok' end
if ARGV[2] == '1' then redis.call('SADD', KEYS[2], ARGV[1]) end
return 'unlisted'
"""

# KEYS: email, the user it names. ARGV: the address, the user it named when read, '1' to repair.
_EMAIL_ENTRY = """
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 'ok' end
local e = redis.call('HGET', KEYS[2], 'email')
if e == ARGV[1] then return 'ok' end
if ARGV[3] == '1' then redis.call('DEL', KEYS[1]) end
if redis.call('EXISTS', KEYS[2]) == 0 then return 'nobody' end
return 'other'
"""

# KEYS: user, email, the user the entry named when read (or the user again). ARGV: the name, its
# address, the entry's user when read (or ''), '1' to repair.
_EMAIL_INDEX = """
if redis.call('HGET', KEYS[1], 'email') ~= ARGV[2] then return 'ok' end
local h = redis.call('GET', KEYS[2])
if h == ARGV[1] or (h or '') ~= ARGV[3] then return 'ok' end
if h and redis.call('HGET', KEYS[3], 'email') == ARGV[2] then return 'shared ' .. h end
if ARGV[4] == '1' then redis.call('SET', KEYS[2], ARGV[1]) end
if h then return 'other ' .. h end
return 'missing'
"""

# KEYS: users:by-name or users:by-email, the user an entry of it names. ARGV: the entry, the
# name, 'name' or 'email' (which index), the address the entry is for, '1' to repair. 1 if the
# entry is still there and its user does not exist or (by email) holds another address.
_STALE_ENTRY = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local u = redis.call('HMGET', KEYS[2], 'username', 'email')
if u[1] == ARGV[2] and (ARGV[3] == 'name' or u[2] == ARGV[4]) then return 0 end
if ARGV[5] == '1' then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 1
"""

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

# KEYS: session, its user, the user's sessions. ARGV: the id, '1' to repair.
_SESSION = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if ARGV[2] == '1' then redis.call('DEL', KEYS[1]); redis.call('SREM', KEYS[3], ARGV[1]) end
return 1
"""

# KEYS: sessions, the session. ARGV: the id, '1' to repair. 1: listed but expired.
_EXPIRED = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if ARGV[2] == '1' then redis.call('SREM', KEYS[1], ARGV[1]) end
return 1
"""

# KEYS: notes, notebook. ARGV: a note id, '1' to repair.
_NOTE = """
local listed = redis.call('ZSCORE', KEYS[1], ARGV[1])
local stored = redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1
if listed and not stored then
  if ARGV[2] == '1' then redis.call('ZREM', KEYS[1], ARGV[1]) end
  return 'unstored'
end
if stored and not listed then
  if ARGV[2] == '1' then redis.call('ZADD', KEYS[1], 0, ARGV[1]) end
  return 'unlisted'
end
return 'ok'
"""

# KEYS: usage, files, then each listed file's record. ARGV: the user, '1' to repair, then the
# listed ids. false if it agrees, or if the list changed since it was read (the next run looks).
_USAGE = """
if redis.call('ZCARD', KEYS[2]) ~= #KEYS - 2 then return false end
local sum = 0
for i = 3, #KEYS do
  if not redis.call('ZSCORE', KEYS[2], ARGV[i]) then return false end
  local f = redis.call('HMGET', KEYS[i], 'user', 'size')
  if f[1] == ARGV[1] then sum = sum + tonumber(f[2] or '0') end
end
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used == sum then return false end
if ARGV[2] == '1' then
  if sum > 0 then redis.call('SET', KEYS[1], sum) else redis.call('DEL', KEYS[1]) end
end
return {tostring(used), tostring(sum)}
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

# KEYS: the key. A session key whose id is not `<username>:<random>`: never one of ours.
_DEL = "return redis.call('DEL', KEYS[1])"


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
    """The names of every key `builder` makes (`user:<name>` → name), by SCAN."""
    prefix = builder("")
    return sorted({k[len(prefix):] for k in db.scan_iter(match=builder("*"), count=1000) if k.startswith(prefix)})


def shown_session(sid: str) -> str:
    """A session key as printed and notified: the id is a bearer secret, so only its start."""
    name, _, rest = sid.partition(":")
    return keys.session(f"{name}:{rest[:6]}…")


class Check:
    def __init__(self, config: Any, db: Any, repair: bool, out: TextIO, progress: TextIO | None):
        self.config = config
        self.db = db
        self.repair = repair
        self.flag = "1" if repair else "0"
        self.out = out
        self.bar = Progress(progress)
        self.findings: list[Finding] = []
        self.counts: dict[str, int] = {}
        self.scripts: dict[str, Any] = {}

    def run(self, lua: str, keys_: list[str], args: list[Any]) -> Any:
        if lua not in self.scripts:
            self.scripts[lua] = self.db.register_script(lua)
        return self.scripts[lua](keys=keys_, args=args)

    def found(self, key: str, what: str, done: str = "", tidy: bool = False) -> None:
        finding = Finding(key, what, done if self.repair else "", tidy)
        self.findings.append(finding)
        print(finding.line(self.repair), file=self.out, flush=True)

    def each(self, phase: str, items: list[str]) -> Iterator[str]:
        for n, item in enumerate(items, 1):
            yield item
            self.bar.show(phase, n, len(items))

    def exists(self, name: str) -> bool:
        return bool(self.db.exists(keys.user(name)))

    # -- users and their indexes --------------------------------------------------------

    def users(self) -> list[str]:
        names_ = sorted(set(tails(self.db, keys.user)) | set(self.db.smembers(keys.USERS)))
        for name in self.each("users", names_):
            code = self.run(_USER, [keys.user(name), keys.USERS], [name, self.flag])
            if code == "dangling":
                self.found(keys.USERS, f"{name} has no {keys.user(name)}", "removed from the set")
            elif code == "stray":
                self.found(keys.user(name), "a hash without username or password hash: not a user", "deleted")
            elif code == "unlisted":
                self.found(keys.user(name), f"not in {keys.USERS}", "added")
            elif code.startswith("name "):
                self.found(keys.user(name), f"its username field is {code[5:]!r}")
        live = [name for name in names_ if self.exists(name)]
        self.counts["users"] = len(live)
        return live

    def destroys(self, live: list[str]) -> None:
        """A destroy that died between its steps: disabled, marked `destroying`, part of its
        data left. Finished with --repair (the route's own steps), once the mark is old enough
        that no destroy can still be running."""
        now = time.time() * 1000
        for name in live:
            disabled, mark = self.db.hmget(keys.user(name), "disabled", "destroying")
            if disabled != "1" or not (mark or "").isdigit() or now - int(mark) < DESTROY_GRACE * 1000:
                continue
            done = ""
            if self.repair and finish_destroys(self.config, [(name, mark)]):
                done = "destroy finished: notes, files (to the S3 trash) and the user removed"
            self.found(keys.user(name), f"a destroy that stopped half-way {int((now - int(mark)) / 60000)} min ago",
                       done)

    def emails(self, live: list[str]) -> None:
        addresses = tails(self.db, keys.email)
        self.counts["emails"] = len(addresses)
        for address in self.each("emails", addresses):
            holder = self.db.get(keys.email(address))
            if holder is None:
                continue
            code = self.run(_EMAIL_ENTRY, [keys.email(address), keys.user(holder)], [address, holder, self.flag])
            if code == "nobody":
                self.found(keys.email(address), f"points at {holder}, who does not exist", "deleted")
            elif code == "other":
                self.found(keys.email(address), f"points at {holder}, whose email is another address", "deleted")
        for name in self.each("emails", live):
            address = self.db.hget(keys.user(name), "email")
            if not address:
                continue
            holder = self.db.get(keys.email(address))
            if holder == name:
                continue
            code = self.run(_EMAIL_INDEX, [keys.user(name), keys.email(address), keys.user(holder or name)],
                            [name, address, holder or "", self.flag])
            if code == "missing":
                self.found(keys.user(name), f"its email {address} has no {keys.email(address)}", "index added")
            elif code.startswith("other "):
                self.found(keys.user(name), f"{keys.email(address)} points at {code[6:]}, not at it",
                           f"pointed at {name}")
            elif code.startswith("shared "):
                self.found(keys.user(name), f"its email {address} is also the email of {code[7:]}")

    def index(self, live: list[str]) -> None:
        """The search indexes hold each user's name and address, and nothing else."""
        for name in self.each("index", live):
            for missing in self.run(users.INDEX, users.index_keys(name), [name, self.flag]):
                where = keys.USERS_BY_NAME if missing == "name" else keys.USERS_BY_EMAIL
                self.found(keys.user(name), f"its {'username' if missing == 'name' else 'email'} is not in {where}",
                           "indexed")
        entries = 0
        for entry, _ in self.db.zscan_iter(keys.USERS_BY_NAME, count=1000):
            entries += 1
            if self.db.hget(keys.user(entry), "username") != entry and self.run(
                    _STALE_ENTRY, [keys.USERS_BY_NAME, keys.user(entry)], [entry, entry, "name", "", self.flag]):
                self.found(keys.USERS_BY_NAME, f"{entry} has no {keys.user(entry)}", "removed")
        for entry, _ in self.db.zscan_iter(keys.USERS_BY_EMAIL, count=1000):
            entries += 1
            address, _, name = entry.partition("\0")
            if self.db.hget(keys.user(name), "email") != address and self.run(
                    _STALE_ENTRY, [keys.USERS_BY_EMAIL, keys.user(name)], [entry, name, "email", address, self.flag]):
                self.found(keys.USERS_BY_EMAIL, f"{address} of {name or '?'}, who does not exist or has another email",
                           "removed")
        self.counts["index entries"] = entries

    # -- sessions and tokens -----------------------------------------------------------------

    def sessions(self) -> None:
        ids = tails(self.db, keys.session)
        self.counts["sessions"] = len(ids)
        for sid in self.each("sessions", ids):
            owner = keys.session_owner(sid)
            if owner is None:
                if self.repair:
                    self.run(_DEL, [keys.session(sid)], [])
                self.found(shown_session(sid), "not a session id of lorebase's", "deleted")
            elif self.run(_SESSION, [keys.session(sid), keys.user(owner), keys.sessions(owner)], [sid, self.flag]):
                self.found(shown_session(sid), f"a session of {owner}, who does not exist", "deleted")
        for name in self.each("sessions", tails(self.db, keys.sessions)):
            members = sorted(self.db.smembers(keys.sessions(name)))
            if not self.exists(name):
                gone = self.run(_ORPHANS, [keys.user(name), keys.sessions(name),
                                           *(keys.session(sid) for sid in members)], [self.flag])
                if gone:
                    self.found(keys.sessions(name), f"sessions of {name}, who does not exist", "deleted")
                continue
            expired = 0
            for sid in members:
                if not self.db.exists(keys.session(sid)):
                    expired += self.run(_EXPIRED, [keys.sessions(name), keys.session(sid)], [sid, self.flag])
            if expired:
                self.found(keys.sessions(name), f"{expired} id{'s' if expired != 1 else ''} of sessions that expired",
                           "pruned", tidy=True)

    def tokens(self) -> None:
        for kind in tokens.KINDS:
            def builder(name: str, kind: str = kind) -> str:
                return tokens.key(kind, name)

            for name in tails(self.db, builder):
                if self.run(_ORPHANS, [keys.user(name), tokens.key(kind, name)], [self.flag]):
                    self.found(tokens.key(kind, name), f"a {kind} token of {name}, who does not exist", "deleted")

    # -- notes -------------------------------------------------------------------------------

    def notes(self) -> None:
        from .apps.notes import _decode, _encode

        users_ = sorted(set(tails(self.db, notes_key)) | set(tails(self.db, notebook_key)))
        total = 0
        for name in self.each("notes", users_):
            if not self.exists(name):
                if self.run(_ORPHANS, [keys.user(name), notes_key(name), notebook_key(name)], [self.flag]):
                    self.found(notes_key(name), f"notes of {name}, who does not exist", "deleted")
                continue
            ids = set(self.db.zrange(notes_key(name), 0, -1))
            stored = set(self.db.hkeys(notebook_key(name)))
            total += len(stored)
            for note_id in sorted(ids ^ stored):
                code = self.run(_NOTE, [notes_key(name), notebook_key(name)], [note_id, self.flag])
                if code == "unstored":
                    self.found(notes_key(name), f"note {note_id} is listed but not in {notebook_key(name)}",
                               "dropped from the list")
                elif code == "unlisted":
                    self.found(notebook_key(name), f"note {note_id} is not in {notes_key(name)}", "listed again")
            for note_id, blob in self.db.hscan_iter(notebook_key(name), count=500):
                if blob.endswith(NO_FILES):
                    continue
                try:
                    note = _decode(blob)
                except msgspec.DecodeError:
                    self.found(notebook_key(name), f"note {note_id} is not a note as JSON")
                    continue
                owners = self.db.pipeline(transaction=False)
                for file_id in note.files:
                    owners.hget(fkeys.file(file_id), "user")
                owner_of = dict(zip(note.files, owners.execute(), strict=True))
                gone = [f for f, owner in owner_of.items() if owner is None]
                foreign = [f for f, owner in owner_of.items() if owner is not None and owner != name]
                if not gone and not foreign:
                    continue
                done = ""
                if self.repair:
                    note.files = [f for f in note.files if f not in gone and f not in foreign]
                    # compare-and-set: a note edited since it was read is left for the next run
                    swapped = self.run(_SWAP, [notebook_key(name)], [note_id, blob, _encode(note)])
                    done = "rewritten without them" if swapped else "edited meanwhile: left for the next run"
                if foreign:
                    self.found(notebook_key(name), f"note {note_id} names files of other users: {', '.join(foreign)}",
                               done)
                if gone:
                    self.found(notebook_key(name), f"note {note_id} names files no longer stored: {', '.join(gone)}",
                               done, tidy=True)
        self.counts["notes"] = total

    # -- files and usage -------------------------------------------------------------------

    def files(self, live: list[str]) -> None:
        captured = io.StringIO()
        files_check.check(self.config, self.db, repair=self.repair, out=captured,
                          progress=self.bar.out if self.bar.out is not None else io.StringIO())
        *lines, summary = captured.getvalue().splitlines() or [""]
        self.counts["files"] = int(summary.split(" ", 1)[0]) if summary[:1].isdigit() else 0
        for line in lines:
            key, _, what = line.partition(": ")
            done = ""
            if self.repair and what.endswith(")") and not what.endswith("(orphan)"):
                what, _, done = what[:-1].rpartition(" (")
            finding = Finding(key, what, done)
            self.findings.append(finding)
            print(finding.line(self.repair), file=self.out, flush=True)
        for name in self.each("usage", live):
            ids = self.db.zrange(fkeys.files(name), 0, -1)
            wrong = self.run(_USAGE, [fkeys.usage(name), fkeys.files(name), *(fkeys.file(i) for i in ids)],
                             [name, self.flag, *ids])
            if wrong:
                self.found(fkeys.usage(name), f"{wrong[0]} bytes, but the files of {name} hold {wrong[1]}",
                           f"set to {wrong[1]}")
        orphans = [n for n in tails(self.db, fkeys.files) if not self.exists(n)]
        for name in orphans:
            count = self.db.zcard(fkeys.files(name))
            done = ""
            if self.repair:
                removed = finish_orphan_files(self.config, name)
                done = f"{removed} removed (to the S3 trash)" if not self.exists(name) else ""
            self.found(fkeys.files(name), f"{count} file{'s' if count != 1 else ''} of {name}, who does not exist",
                       done)
        for name in tails(self.db, fkeys.usage):
            if self.run(_ORPHANS, [keys.user(name), fkeys.usage(name)], [self.flag]):
                self.found(fkeys.usage(name), f"usage of {name}, who does not exist", "deleted")

    # -- queues ------------------------------------------------------------------------------

    def jobs(self) -> dict[str, int]:
        dead: dict[str, int] = {}
        total = 0
        for queue in durable().values():
            for part in ("queue", "doing", "retry"):
                key = queue[part]
                kind = "zset" if part == "retry" else "list"
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
            dead[queue["dead"]] = int(self.db.llen(queue["dead"]))
        self.counts["jobs"] = total
        return dead

    def all(self) -> Report:
        live = self.users()
        self.destroys(live)
        live = [name for name in live if self.exists(name)]
        self.emails(live)
        self.index(live)
        self.sessions()
        self.tokens()
        self.notes()
        self.files(live)
        dead = self.jobs()
        return Report(self.findings, self.repair, self.counts, dead)


def check(config: Any, db: Any, repair: bool = False, out: TextIO = sys.stdout,
          progress: TextIO | None = sys.stderr) -> Report:
    """Prints one line per finding and the summary; the report. Raises redis-py's
    ConnectionError / TimeoutError when Redis is unreachable, botocore's errors when S3 refuses."""
    report = Check(config, db, repair, out, progress).all()
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
