"""The roster of enabled admins, so that taking an admin's rights away (disable, delete,
un-flag) can refuse, in one atomic step, to leave no enabled admin (409 lastadmin).

Who is an admin is decided by each user's record (`users.is_admin`: the flag, or a verified
address of ADMINS, never while disabled), and records live in one hash slot per user: no
script may read them all at once on a Redis Cluster. So the decision is taken in a slot of
its own, `{admins}`:

- `{admins}` set: usernames known to be enabled admins. It may miss some (an admin of ADMINS
  is added the first time it acts, or is enabled or granted); it never holds one that is not
  an enabled admin, so a member other than the one whose rights go is a real admin left.
- `{admins}:turn` string: bumped by every removal's first step.
- `{admins}:leaving` hash: username → removals of it in flight (deleted at 0).

A removal (`leave`) is one script that refuses while no member other than the user remains,
else drops it from the set, bumps the turn and marks it leaving; then the record changes;
then `left` unmarks it. Two admins removing each other are serialised by the script: the
second sees no other member and is refused. Adding (`join`) runs after a record became an
enabled admin (grant, enable) or before an admin acts: it reads the turn, reads the record,
and adds the user only if the turn is unchanged and no removal of it is in flight, so a
removal overlapping the read cannot be undone by a stale add. A stop between a removal's
steps leaves the user out of the set (the safe side), and marked leaving, which only keeps
it out of the set (it can still act: its rights are its record's)."""

from __future__ import annotations

from ..db import Client
from . import keys, users
from .records import User

KEYS = [keys.ADMINS, keys.ADMINS_TURN, keys.ADMINS_LEAVING]

# KEYS: roster, turn, leaving. ARGV: the username, '1' to refuse leaving no other member.
# 1 if it may go (it is out of the roster and marked leaving), 0 if it is the last.
_LEAVE = """
if ARGV[2] == '1' and redis.call('SCARD', KEYS[1]) - redis.call('SISMEMBER', KEYS[1], ARGV[1]) < 1 then
  return 0
end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('INCR', KEYS[2])
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
return 1
"""

# KEYS: leaving. ARGV: the username.
_LEFT = "if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end"

# KEYS: roster, turn, leaving. ARGV: the username, the turn read before its record was.
_JOIN = """
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[2] or redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  return 0
end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""

_TRIES = 3  # joins overtaken by another user's removal are tried again this often


async def join(db: Client, name: str, admins: list[str]) -> bool:
    """`name` added to the roster if its record is an enabled admin and no removal overlapped
    the reading of it. Whether it is in the roster now."""
    for _ in range(_TRIES):
        turn, leaving = await db.pipeline([("GET", keys.ADMINS_TURN), ("HEXISTS", keys.ADMINS_LEAVING, name)])
        if leaving:
            return False
        user = await users.get(db, name)
        if user is None or not users.is_admin(user, admins):
            return False
        if await db.script(_JOIN, KEYS, [name, turn or "0"]):
            return True
    return False


async def leave(db: Client, name: str, keep_one: bool = True) -> bool:
    """`name`'s rights are about to go: out of the roster, marked leaving, unless (keep_one)
    no other member would be left. False: refused, nothing changed. Call `left` after."""
    return bool(await db.script(_LEAVE, KEYS, [name, "1" if keep_one else "0"]))


async def left(db: Client, name: str) -> None:
    """The removal `leave` allowed is over (done or given up)."""
    await db.script(_LEFT, [keys.ADMINS_LEAVING], [name])



class Refused(Exception):
    """The flag cannot be taken: `code` is "lastadmin" (no other enabled admin would be left)
    or "configadmin" (the rights come from ADMINS, which the flag does not change)."""

    def __init__(self, code: str):
        super().__init__(code)
        self.code = code


async def grant(db: Client, name: str, admins: list[str]) -> None:
    """The admin flag set on `name` (an existing user), which then joins the roster."""
    await users.set_flag(db, name, "admin", True)
    await join(db, name, admins)


async def take(db: Client, user: User, admins: list[str], acting: str | None = None) -> None:
    """The admin flag taken from `user`, unless that would leave no enabled admin (Refused
    lastadmin) or its rights come from ADMINS anyway (Refused configadmin). `acting`, the admin
    doing it, joins the roster first (an admin of ADMINS is in it only once it acted); from
    the command line, with no one acting, every user of ADMINS joins (a few lookups)."""
    name = user["username"]
    if users.is_admin({**user, "admin": "0"}, admins):
        raise Refused("configadmin")
    if acting:
        await join(db, acting, admins)
    else:
        for email in admins:
            found = await users.find(db, email)
            if found is not None:
                await join(db, found["username"], admins)
    if not await leave(db, name):
        raise Refused("lastadmin")
    try:
        await users.set_flag(db, name, "admin", False)
    finally:
        await left(db, name)
