"""Users in Redis: the records, their indexes, and the verbs that change them.

`user:<username>` hash {username, email, hash, created (unix s), verified, admin, disabled,
gen, last (unix ms of the last login), destroying (unix ms: a destroy began; set with
disabled in the step that ends the sessions, so a destroy that died half-way is
recognisable and `lorebase check --repair` finishes it)}; `email:<email>` string → username (the email
index); `users` set of all usernames. A user and its indexes are written and removed
together (Lua), so a crash never leaves half a user. Every change that must end the user's
sessions goes through `Sessions.end_all` in the same step (see sessions.py).
"""

from __future__ import annotations

import re
import time
from typing import Any

from ..db import Client
from ..http import ApiError
from . import keys, tokens
from .sessions import Sessions, new_gen

USERNAME = keys.USERNAME
# the local part: RFC 5322's unquoted characters only (no comma, quote, bracket, space or
# control character that could turn a To header into two addresses); lower-cased already
EMAIL = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,}")

# KEYS: user, email, users, the user holding the email if it may be taken from it (or the
# new user's key again). ARGV: created before which a holder that never verified loses the
# address (or 0), then the new user's field/value pairs (username second, email fourth).
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'username' end
local holder = redis.call('GET', KEYS[2])
if holder then
  local h = redis.call('HMGET', KEYS[4], 'username', 'verified', 'created', 'email')
  if h[1] ~= holder or h[2] == '1' or h[4] ~= ARGV[5] or tonumber(h[3] or '0') >= tonumber(ARGV[1]) then
    return 'email'
  end
  redis.call('HSET', KEYS[4], 'email', '')
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SET', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[3])
if holder then return 'took ' .. holder end
return 'ok'
"""

# KEYS: user, email. ARGV: the address. The address leaves an account that never verified it.
_RELEASE = """
local u = redis.call('HMGET', KEYS[1], 'username', 'email', 'verified')
if not u[1] or u[2] ~= ARGV[1] or u[3] == '1' then return 0 end
redis.call('HSET', KEYS[1], 'email', '')
if redis.call('GET', KEYS[2]) == u[1] then redis.call('DEL', KEYS[2]) end
return 1
"""

# KEYS: user, email, users, sessions, verify token, reset token. ARGV: the `destroying` mark
# the user must still carry (or '': any user)
_DELETE = """
local u = redis.call('HMGET', KEYS[1], 'username', 'email', 'destroying')
if not u[1] then return 0 end
if ARGV[1] ~= '' and u[3] ~= ARGV[1] then return 0 end
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[4])) do redis.call('DEL', 'session:' .. sid) end
redis.call('DEL', KEYS[1], KEYS[4], KEYS[5], KEYS[6])
redis.call('SREM', KEYS[3], u[1])
if redis.call('GET', KEYS[2]) == u[1] then redis.call('DEL', KEYS[2]) end
return 1
"""


def normal_username(raw: str, path: str = "username") -> str:
    name = raw.strip().lower()
    if not USERNAME.fullmatch(name):
        raise ApiError(400, "validation", path)
    return name


def normal_email(raw: str, path: str = "email") -> str:
    email = raw.strip().lower()
    if len(email) > 254 or not EMAIL.fullmatch(email):
        raise ApiError(400, "validation", path)
    return email


async def taken(db: Client, username: str, email: str, verify_ttl: int) -> str | None:
    """'username' or 'email' if a signup with these would be refused (before hashing)."""
    exists, holder = await db.pipeline([("EXISTS", keys.user(username)), ("GET", keys.email(email))])
    if exists:
        return "username"
    if holder and not await _stale_holder(db, holder, verify_ttl):
        return "email"
    return None


async def _stale_holder(db: Client, holder: str, verify_ttl: int) -> bool:
    """The account holding an address never verified it, VERIFY_TTL after it signed up:
    it stops blocking the address's real owner."""
    verified, created = await db.call("HMGET", keys.user(holder), "verified", "created")
    return verified != "1" and int(created or 0) < time.time() - verify_ttl


async def create(db: Client, username: str, email: str, password_hash: str, verify_ttl: int) -> str | None:
    """Stores a new user and its indexes at once; 409 username/email when taken. An address
    held by an account that never verified it within VERIFY_TTL is taken from that account;
    its username is returned (None otherwise)."""
    fields = ["username", username, "email", email, "hash", password_hash, "created", int(time.time()),
              "verified", 0, "admin", 0, "disabled", 0, "gen", new_gen()]
    holder = await db.call("GET", keys.email(email))
    holder_key = keys.user(holder) if holder and USERNAME.fullmatch(holder) else keys.user(username)
    cutoff = int(time.time()) - verify_ttl
    result = await db.script(_CREATE, [keys.user(username), keys.email(email), keys.USERS, holder_key],
                             [cutoff, *fields])
    if result == "ok":
        return None
    if result.startswith("took "):
        return str(result[5:])
    raise ApiError(409, result)


async def names(db: Client) -> list[str]:
    """Every username (the `users` set)."""
    return list(await db.call("SMEMBERS", keys.USERS))


async def get(db: Client, username: str) -> dict[str, str] | None:
    user = await db.call("HGETALL", keys.user(username))
    return dict(zip(user[::2], user[1::2], strict=True)) if user else None


async def find(db: Client, login: str) -> dict[str, str] | None:
    """By username or email (already trimmed and lower-cased)."""
    if "@" in login:
        login = await db.call("GET", keys.email(login)) or ""
        if not login:
            return None
    if not USERNAME.fullmatch(login):
        return None
    return await get(db, login)


def public(user: dict[str, str], admins: list[str]) -> dict[str, Any]:
    """What a reply may say of a user: never the hash."""
    return {"username": user["username"], "email": user["email"], "created": int(user.get("created", 0)),
            "verified": user.get("verified") == "1", "admin": is_admin(user, admins),
            "disabled": user.get("disabled") == "1"}


def is_admin(user: dict[str, str], admins: list[str]) -> bool:
    """The admin flag, or an email of ADMINS once verified: anyone may sign up with any
    address, so the address grants nothing until its owner proved it is theirs. Never for a
    disabled user."""
    if user.get("disabled") == "1":
        return False
    return user.get("admin") == "1" or (user.get("verified") == "1" and bool(user.get("email"))
                                        and user.get("email", "") in admins)


async def set_flag(db: Client, username: str, field: str, value: bool) -> None:
    """admin or disabled = 0 (disabling goes through `disable`, which ends the sessions).
    Enabling an account also takes back a destroy that died half-way (its `destroying`
    mark), so `lorebase check --repair` leaves it alone from then on."""
    commands: list[tuple[Any, ...]] = [("HSET", keys.user(username), field, int(value))]
    if field == "disabled" and not value:
        commands.append(("HDEL", keys.user(username), "destroying"))
    await db.multi(commands)


async def set_password(db: Client, sessions: Sessions, username: str, password_hash: str,
                       keep: str | None = None, verified: bool = False) -> int:
    """The new hash; every session but `keep` ends, and the live reset token with them."""
    fields: dict[str, Any] = {"hash": password_hash}
    if verified:
        fields["verified"] = 1
    return await sessions.end_all(db, username, keep=keep, fields=fields, also=(tokens.key("reset", username),))


async def disable(db: Client, sessions: Sessions, username: str) -> int:
    """Disabled at once: every session and the live reset token end in the same step."""
    return await sessions.end_all(db, username, fields={"disabled": 1}, also=(tokens.key("reset", username),))


async def begin_destroy(db: Client, sessions: Sessions, username: str) -> str:
    """Destroy's first step: disabled, every session and the live reset token ended, and the
    `destroying` mark (unix ms) set, all at once. The mark, which `delete` then requires."""
    mark = str(int(time.time() * 1000))
    await sessions.end_all(db, username, fields={"disabled": 1, "destroying": mark},
                           also=(tokens.key("reset", username),))
    return mark


async def verify(db: Client, token: str, email: str) -> bool:
    """Marks the token's user verified and uses the token up, if both still hold."""
    return await tokens.use(db, "verify", token, email, ("verified", 1))


async def release(db: Client, username: str, email: str) -> bool:
    """Takes `email` from an account that never verified it (its email becomes empty)."""
    return bool(await db.script(_RELEASE, [keys.user(username), keys.email(email)], [email]))


async def delete(db: Client, user: dict[str, str], destroying: str = "") -> bool:
    """The user, its indexes, its sessions and its tokens, at once; with `destroying`, only
    if the user still carries that mark (not re-enabled, not another user of the name)."""
    name = user["username"]
    return bool(await db.script(_DELETE, [keys.user(name), keys.email(user.get("email", "")), keys.USERS,
                                          keys.sessions(name), tokens.key("verify", name),
                                          tokens.key("reset", name)], [destroying]))
