"""`lorebase check [--repair]`: the consistency check of the whole database (seed: Master
tasks, "consistency checks"). Users and their indexes (the search's too), sessions and tokens of missing users,
destroys that died half-way, then each application's own checks (Extension.checks: the notes
example's, with its config), `usage:`, the file store (`files.check`, called as it is), and the
jobs of the durable queues.

It runs while the server serves, on redis-py (the CLI, and a thread of the tasks process).
A scan only proposes candidates: every problem is confirmed by one Lua script at the moment it
is reported, and the same script repairs it (with --repair), so a write in flight is neither
reported nor damaged: an `email:` entry is deleted only if, right then, its user still does
not exist or still does not hold that address. Every key comes from its owner's builder
(identity/keys.py, files/keys.py, tasks/queue.names, mail.QUEUE..., and each app's own).

Two kinds of finding: a problem (counted in the exit code, notified by the scheduled run) and
a tidy-up, harmless by design and only pruned by --repair: ids of sessions that expired on
their own left in `sessions:{<user>}`, and what an application marks as such (the notes
example: notes naming a file the user deleted since, which its read filters out).
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

from .extension import load_apps
from .files import check as files_check
from .files import keys as fkeys
from .identity import keys, tokens, users
from .tasks.queue import doing_lists, durable

DESTROY_GRACE = 15 * 60  # seconds: a younger `destroying` mark may be a destroy still running
NOTIFY_MAX = 20  # `check problem` events a scheduled run sends at most

# The user's record, `email:<email>` and the `{users}` indexes sit in three hash slots
# (identity/keys.py), so no script here spans them: a finding is confirmed by reading the
# record, then repaired by a script on the index that acts only while the index still says
# what was read (compare-and-set), then the record is read again and an entry a new write
# made right (a signup of that name between the two steps) is put back. The write paths
# keep to the same order (identity/users.py), so a repair never leaves a user without its
# entries, and an entry removed under a signup still running makes that signup's last step
# refuse it (409 email) rather than leave two holders of one address.

# KEYS: user. ARGV: '1' to repair. 1 if it is a hash without username or password hash (deleted).
_STRAY = """
local u = redis.call('HMGET', KEYS[1], 'username', 'hash')
if u[1] or u[2] or redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == '1' then redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: email. ARGV: the name it must still hold, '1' to repair (delete it).
_EMAIL_DROP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '1' then redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: email. ARGV: the name it held when read ('': none), the name it is set to.
_EMAIL_SET = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""

# KEYS: {users}:by-name or {users}:by-email. ARGV: the entry, '1' to repair. 1 if it is there.
_ENTRY_DROP = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if ARGV[2] == '1' then redis.call('ZREM', KEYS[1], ARGV[1]) end
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
        self.owners: dict[str, str] | None = None  # file id → its user (Check.file_owner)
        self.extensions = load_apps(config)  # the applications' checks run after identity's

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

    def count(self, what: str, amount: int) -> None:
        self.counts[what] = self.counts.get(what, 0) + amount

    def tails(self, builder: Callable[[str], str]) -> list[str]:
        return tails(self.db, builder)

    def drop_orphans(self, username: str, keys_: list[str]) -> int:
        return int(self.run(_ORPHANS, [keys.user(username), *keys_], [self.flag]))

    def address(self, name: str) -> str | None:
        """The address `name`'s record holds (None: no such user, or none)."""
        username, email = self.db.hmget(keys.user(name), "username", "email")
        return email or None if username == name else None

    def reindex(self, name: str) -> None:
        """Puts back the `{users}` entries of `name` if its record exists (see the scripts)."""
        username, email = self.db.hmget(keys.user(name), "username", "email")
        if username == name:
            self.db.sadd(keys.USERS, name)
            self.run(users.INDEX, users.index_keys(name), [name, email or "", "1"])

    # -- users and their indexes --------------------------------------------------------

    def users(self) -> list[str]:
        names_ = sorted(set(tails(self.db, keys.user)) | set(self.db.smembers(keys.USERS)))
        for name in self.each("users", names_):
            username = self.db.hget(keys.user(name), "username")
            listed = bool(self.db.sismember(keys.USERS, name))
            if username is None and self.run(_STRAY, [keys.user(name)], [self.flag]):
                if self.repair:
                    self.db.srem(keys.USERS, name)
                    self.reindex(name)
                self.found(keys.user(name), "a hash without username or password hash: not a user", "deleted")
            elif username is None and listed and not self.exists(name):
                if self.repair:
                    self.db.srem(keys.USERS, name)
                    self.reindex(name)  # signed up again between the two steps
                self.found(keys.USERS, f"{name} has no {keys.user(name)}", "removed from the set")
            elif username is not None and username != name:
                self.found(keys.user(name), f"its username field is {username!r}")
            elif username == name and not listed:
                if self.repair:
                    self.db.sadd(keys.USERS, name)
                self.found(keys.user(name), f"not in {keys.USERS}", "added")
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
                done = "destroy finished: the apps' data, files (to the S3 trash) and the user removed"
            self.found(keys.user(name), f"a destroy that stopped half-way {int((now - int(mark)) / 60000)} min ago",
                       done)

    def emails(self, live: list[str]) -> None:
        addresses = tails(self.db, keys.email)
        self.counts["emails"] = len(addresses)
        for address in self.each("emails", addresses):
            holder = self.db.get(keys.email(address))
            if holder is None or self.address(holder) == address:
                continue
            gone = not self.exists(holder)
            if not self.run(_EMAIL_DROP, [keys.email(address)], [holder, self.flag]):
                continue  # changed since it was read
            if self.repair and self.address(holder) == address:
                self.db.set(keys.email(address), holder, nx=True)  # its signup ended between the steps
                continue
            self.found(keys.email(address), f"points at {holder}, " +
                       ("who does not exist" if gone else "whose email is another address"), "deleted")
        for name in self.each("emails", live):
            held = self.address(name)
            if not held:
                continue
            address = held
            holder = self.db.get(keys.email(address))
            if holder == name:
                continue
            if holder and self.address(holder) == address:
                self.found(keys.user(name), f"its email {address} is also the email of {holder}")
                continue
            if self.repair and not self.run(_EMAIL_SET, [keys.email(address)], [holder or "", name]):
                continue  # changed since it was read
            if holder:
                self.found(keys.user(name), f"{keys.email(address)} points at {holder}, not at it",
                           f"pointed at {name}")
            else:
                self.found(keys.user(name), f"its email {address} has no {keys.email(address)}", "index added")

    def index(self, live: list[str]) -> None:
        """The search indexes hold each user's name and address, and nothing else."""
        for name in self.each("index", live):
            username, address = self.db.hmget(keys.user(name), "username", "email")
            if username != name:
                continue
            for missing in self.run(users.INDEX, users.index_keys(name), [name, address or "", self.flag]):
                where = keys.USERS_BY_NAME if missing == "name" else keys.USERS_BY_EMAIL
                self.found(keys.user(name), f"its {'username' if missing == 'name' else 'email'} is not in {where}",
                           "indexed")
        entries = 0
        for entry, _ in self.db.zscan_iter(keys.USERS_BY_NAME, count=1000):
            entries += 1
            if self.db.hget(keys.user(entry), "username") != entry and self.run(
                    _ENTRY_DROP, [keys.USERS_BY_NAME], [entry, self.flag]):
                if self.repair:
                    self.reindex(entry)
                self.found(keys.USERS_BY_NAME, f"{entry} has no {keys.user(entry)}", "removed")
        for entry, _ in self.db.zscan_iter(keys.USERS_BY_EMAIL, count=1000):
            entries += 1
            address, _, name = entry.partition("\0")
            if self.address(name) != address and self.run(_ENTRY_DROP, [keys.USERS_BY_EMAIL], [entry, self.flag]):
                if self.repair:
                    self.reindex(name)
                self.found(keys.USERS_BY_EMAIL, f"{address} of {name or '?'}, who does not exist or has another email",
                           "removed")
        self.counts["index entries"] = entries

    # -- sessions and tokens -----------------------------------------------------------------

    def sessions(self) -> None:
        found = sorted(self.db.scan_iter(match=keys.session_prefix("*") + "*", count=1000))
        self.counts["sessions"] = len(found)
        for key in self.each("sessions", found):
            sid = keys.session_id(key) or ""
            owner = keys.session_owner(sid)
            if owner is None or keys.session(sid) != key:
                if self.repair:
                    self.run(_DEL, [key], [])
                self.found(shown_session(sid) if owner else "session:…", "not a session id of lorebase's", "deleted")
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

    def invites(self) -> None:
        """Every live invite is listed in `{invites}` (a stop inside a give-back may leave one
        unlisted: it still works, but the admin would not see it); members without a record
        are harmless (the list skips them, and drops them once expired)."""
        addresses = tails(self.db, keys.invite)
        self.counts["invites"] = len(addresses)
        for address in addresses:
            left = self.db.pttl(keys.invite(address))
            if left is None or int(left) <= 0 or self.db.zscore(keys.INVITES, address) is not None:
                continue
            if self.repair:
                self.db.zadd(keys.INVITES, {address: int(time.time() * 1000) + int(left)}, gt=True)
            self.found(keys.invite(address), f"not in {keys.INVITES}", "listed")

    def file_owner(self, file_id: str) -> str | None:
        """The user whose file this is, per one scan of every record made when first asked,
        and still now (one deleted since the scan is nobody's: gone, not another user's)."""
        if self.owners is None:
            self.owners = file_owners(self.db)
        owner = self.owners.get(file_id)
        return owner if owner is not None and self.db.exists(fkeys.file(owner, file_id)) else None

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
            wrong = self.run(_USAGE, [fkeys.usage(name), fkeys.files(name), *(fkeys.file(name, i) for i in ids)],
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
        for queue in durable([q.key for ext in self.extensions for q in ext.queues]).values():
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
        self.invites()
        for ext in self.extensions:
            for app_check in ext.checks:
                app_check(self)
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
