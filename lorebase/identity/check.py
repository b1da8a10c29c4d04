"""Identity's part of `lorebase check` (lorebase/check.py runs it through the CheckContext):
users and their indexes (`{users}`, `email:`, the search's `{users}:by-name` / `by-email`),
destroys that died half-way, sessions, one-time tokens and invites of users who do not exist.

The user's record, `email:<email>` and the `{users}` indexes sit in three hash slots
(keys.py), so no script here spans them: a finding is confirmed by reading the record, then
repaired by a script on the index that acts only while the index still says what was read
(compare-and-set), then the record is read again and an entry a new write made right (a
signup of that name between the two steps) is put back. The write paths keep to the same
order (users.py), so a repair never leaves a user without its entries, and an entry removed
under a signup still running makes that signup's last step refuse it (409 email) rather than
leave two holders of one address.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from . import keys, tokens, users

if TYPE_CHECKING:
    from ..extension import CheckContext

DESTROY_GRACE = 15 * 60  # seconds: a younger `destroying` mark may be a destroy still running

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

# KEYS: the key. A session key whose id is not `<username>:<random>`: never one of ours.
_DEL = "return redis.call('DEL', KEYS[1])"


def shown_session(sid: str) -> str:
    """A session key as printed and notified: the id is a bearer secret, so only its start."""
    name, _, rest = sid.partition(":")
    return keys.session(f"{name}:{rest[:6]}…")


def address(ctx: CheckContext, name: str) -> str | None:
    """The address `name`'s record holds (None: no such user, or none)."""
    username, email = ctx.db.hmget(keys.user(name), "username", "email")
    return email or None if username == name else None


def reindex(ctx: CheckContext, name: str) -> None:
    """Puts back the `{users}` entries of `name` if its record exists (see the docstring)."""
    username, email = ctx.db.hmget(keys.user(name), "username", "email")
    if username == name:
        ctx.db.sadd(keys.USERS, name)
        ctx.run(users.INDEX, users.index_keys(name), [name, email or "", "1"])


def accounts(ctx: CheckContext) -> None:
    """The users, a destroy that died half-way, then the indexes of the users left."""
    live = user_records(ctx)
    destroys(ctx, live)
    live = [name for name in live if ctx.exists(name)]
    emails(ctx, live)
    index(ctx, live)


def user_records(ctx: CheckContext) -> list[str]:
    """Every `user:` record and `{users}` member agree; the users that exist."""
    db = ctx.db
    names = sorted(set(ctx.tails(keys.user)) | set(db.smembers(keys.USERS)))
    for name in ctx.each("users", names):
        username = db.hget(keys.user(name), "username")
        listed = bool(db.sismember(keys.USERS, name))
        if username is None and ctx.run(_STRAY, [keys.user(name)], [ctx.flag]):
            if ctx.repair:
                db.srem(keys.USERS, name)
                reindex(ctx, name)
            ctx.found(keys.user(name), "a hash without username or password hash: not a user", "deleted")
        elif username is None and listed and not ctx.exists(name):
            if ctx.repair:
                db.srem(keys.USERS, name)
                reindex(ctx, name)  # signed up again between the two steps
            ctx.found(keys.USERS, f"{name} has no {keys.user(name)}", "removed from the set")
        elif username is not None and username != name:
            ctx.found(keys.user(name), f"its username field is {username!r}")
        elif username == name and not listed:
            if ctx.repair:
                db.sadd(keys.USERS, name)
            ctx.found(keys.user(name), f"not in {keys.USERS}", "added")
    live = [name for name in names if ctx.exists(name)]
    ctx.count("users", len(live))
    return live


def destroys(ctx: CheckContext, live: list[str]) -> None:
    """A destroy that died between its steps: disabled, marked `destroying`, part of its data
    left. Finished with --repair (the route's own steps), once the mark is old enough that no
    destroy can still be running."""
    now = time.time() * 1000
    for name in live:
        disabled, mark = ctx.db.hmget(keys.user(name), "disabled", "destroying")
        if disabled != "1" or not (mark or "").isdigit() or now - int(mark) < DESTROY_GRACE * 1000:
            continue
        done = ""
        if ctx.repair and ctx.finish_destroy(name, mark):
            done = "destroy finished: the apps' data, files (to the S3 trash) and the user removed"
        ctx.found(keys.user(name), f"a destroy that stopped half-way {int((now - int(mark)) / 60000)} min ago", done)


def emails(ctx: CheckContext, live: list[str]) -> None:
    """Every `email:` entry names a user holding that address, and every address has one."""
    db = ctx.db
    addresses = ctx.tails(keys.email)
    ctx.count("emails", len(addresses))
    for email in ctx.each("emails", addresses):
        holder = db.get(keys.email(email))
        if holder is None or address(ctx, holder) == email:
            continue
        gone = not ctx.exists(holder)
        if not ctx.run(_EMAIL_DROP, [keys.email(email)], [holder, ctx.flag]):
            continue  # changed since it was read
        if ctx.repair and address(ctx, holder) == email:
            db.set(keys.email(email), holder, nx=True)  # its signup ended between the steps
            continue
        ctx.found(keys.email(email), f"points at {holder}, " +
                  ("who does not exist" if gone else "whose email is another address"), "deleted")
    for name in ctx.each("emails", live):
        held = address(ctx, name)
        if not held:
            continue
        holder = db.get(keys.email(held))
        if holder == name:
            continue
        if holder and address(ctx, holder) == held:
            ctx.found(keys.user(name), f"its email {held} is also the email of {holder}")
            continue
        if ctx.repair and not ctx.run(_EMAIL_SET, [keys.email(held)], [holder or "", name]):
            continue  # changed since it was read
        if holder:
            ctx.found(keys.user(name), f"{keys.email(held)} points at {holder}, not at it", f"pointed at {name}")
        else:
            ctx.found(keys.user(name), f"its email {held} has no {keys.email(held)}", "index added")


def index(ctx: CheckContext, live: list[str]) -> None:
    """The search indexes hold each user's name and address, and nothing else."""
    db = ctx.db
    for name in ctx.each("index", live):
        username, held = db.hmget(keys.user(name), "username", "email")
        if username != name:
            continue
        for missing in ctx.run(users.INDEX, users.index_keys(name), [name, held or "", ctx.flag]):
            where = keys.USERS_BY_NAME if missing == "name" else keys.USERS_BY_EMAIL
            ctx.found(keys.user(name), f"its {'username' if missing == 'name' else 'email'} is not in {where}",
                      "indexed")
    entries = 0
    for entry, _ in db.zscan_iter(keys.USERS_BY_NAME, count=1000):
        entries += 1
        if db.hget(keys.user(entry), "username") != entry and ctx.run(
                _ENTRY_DROP, [keys.USERS_BY_NAME], [entry, ctx.flag]):
            if ctx.repair:
                reindex(ctx, entry)
            ctx.found(keys.USERS_BY_NAME, f"{entry} has no {keys.user(entry)}", "removed")
    for entry, _ in db.zscan_iter(keys.USERS_BY_EMAIL, count=1000):
        entries += 1
        held, _, name = entry.partition("\0")
        if address(ctx, name) != held and ctx.run(_ENTRY_DROP, [keys.USERS_BY_EMAIL], [entry, ctx.flag]):
            if ctx.repair:
                reindex(ctx, name)
            ctx.found(keys.USERS_BY_EMAIL, f"{held} of {name or '?'}, who does not exist or has another email",
                      "removed")
    ctx.count("index entries", entries)


def sessions(ctx: CheckContext) -> None:
    """Sessions of users who do not exist, and ids of sessions that expired on their own (a
    tidy-up) in `sessions:{<user>}`."""
    db = ctx.db
    found = sorted(db.scan_iter(match=keys.session_prefix("*") + "*", count=1000))
    ctx.count("sessions", len(found))
    for key in ctx.each("sessions", found):
        sid = keys.session_id(key) or ""
        owner = keys.session_owner(sid)
        if owner is None or keys.session(sid) != key:
            if ctx.repair:
                ctx.run(_DEL, [key], [])
            ctx.found(shown_session(sid) if owner else "session:…", "not a session id of lorebase's", "deleted")
        elif ctx.run(_SESSION, [keys.session(sid), keys.user(owner), keys.sessions(owner)], [sid, ctx.flag]):
            ctx.found(shown_session(sid), f"a session of {owner}, who does not exist", "deleted")
    for name in ctx.each("sessions", ctx.tails(keys.sessions)):
        members = sorted(db.smembers(keys.sessions(name)))
        if not ctx.exists(name):
            if ctx.drop_orphans(name, [keys.sessions(name), *(keys.session(sid) for sid in members)]):
                ctx.found(keys.sessions(name), f"sessions of {name}, who does not exist", "deleted")
            continue
        expired = 0
        for sid in members:
            if not db.exists(keys.session(sid)):
                expired += ctx.run(_EXPIRED, [keys.sessions(name), keys.session(sid)], [sid, ctx.flag])
        if expired:
            ctx.found(keys.sessions(name), f"{expired} id{'s' if expired != 1 else ''} of sessions that expired",
                      "pruned", tidy=True)


def one_time_tokens(ctx: CheckContext) -> None:
    """Verification and reset tokens of users who do not exist."""
    for kind in tokens.KINDS:
        def builder(name: str, kind: str = kind) -> str:
            return tokens.key(kind, name)

        for name in ctx.tails(builder):
            if ctx.drop_orphans(name, [tokens.key(kind, name)]):
                ctx.found(tokens.key(kind, name), f"a {kind} token of {name}, who does not exist", "deleted")


def invites(ctx: CheckContext) -> None:
    """Every live invite is listed in `{invites}` (a stop inside a give-back may leave one
    unlisted: it still works, but the admin would not see it); members without a record are
    harmless (the list skips them, and drops them once expired)."""
    addresses = ctx.tails(keys.invite)
    ctx.count("invites", len(addresses))
    for held in addresses:
        left = ctx.db.pttl(keys.invite(held))
        if left is None or int(left) <= 0 or ctx.db.zscore(keys.INVITES, held) is not None:
            continue
        if ctx.repair:
            ctx.db.zadd(keys.INVITES, {held: int(time.time() * 1000) + int(left)}, gt=True)
        ctx.found(keys.invite(held), f"not in {keys.INVITES}", "listed")


CHECKS = (accounts, sessions, one_time_tokens, invites)  # in this order (builtins.py registers them)
