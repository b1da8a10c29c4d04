"""Users in Redis: the records, their indexes, and the verbs that change them.

`user:<username>` hash {username, email, hash, created (unix s), verified, admin, disabled,
gen, last (unix ms of the last login), destroying (unix ms: a destroy began; set with
disabled in the step that ends the sessions, so a destroy that died half-way is
recognisable and `lorebase check --repair` finishes it)}; `email:<email>` string → username (the email
index); `users` set of all usernames; `users:by-name` and `users:by-email`, the sorted
sets the admin's search reads (see keys.py and `search`). A user and its indexes are written
and removed together (Lua), so a crash never leaves half a user. Every change that must end the user's
sessions goes through `Sessions.end_all` in the same step (see sessions.py).
"""

from __future__ import annotations

import base64
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
# new user's key again), users:by-name, users:by-email. ARGV: created before which a holder
# that never verified loses the address (or 0), then the new user's field/value pairs
# (username second, email fourth).
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'username' end
local holder = redis.call('GET', KEYS[2])
if holder then
  local h = redis.call('HMGET', KEYS[4], 'username', 'verified', 'created', 'email')
  if h[1] ~= holder or h[2] == '1' or h[4] ~= ARGV[5] or tonumber(h[3] or '0') >= tonumber(ARGV[1]) then
    return 'email'
  end
  redis.call('HSET', KEYS[4], 'email', '')
  redis.call('ZREM', KEYS[6], ARGV[5] .. '\\0' .. holder)
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SET', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[5], 0, ARGV[3])
redis.call('ZADD', KEYS[6], 0, ARGV[5] .. '\\0' .. ARGV[3])
if holder then return 'took ' .. holder end
return 'ok'
"""

# KEYS: user, email, users:by-email. ARGV: the address. The address leaves an account that
# never verified it.
_RELEASE = """
local u = redis.call('HMGET', KEYS[1], 'username', 'email', 'verified')
if not u[1] or u[2] ~= ARGV[1] or u[3] == '1' then return 0 end
redis.call('HSET', KEYS[1], 'email', '')
redis.call('ZREM', KEYS[3], ARGV[1] .. '\\0' .. u[1])
if redis.call('GET', KEYS[2]) == u[1] then redis.call('DEL', KEYS[2]) end
return 1
"""

# KEYS: user, email, users, sessions, verify token, reset token, users:by-name,
# users:by-email. ARGV: the `destroying` mark the user must still carry (or '': any user)
_DELETE = """
local u = redis.call('HMGET', KEYS[1], 'username', 'email', 'destroying')
if not u[1] then return 0 end
if ARGV[1] ~= '' and u[3] ~= ARGV[1] then return 0 end
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[4])) do redis.call('DEL', 'session:' .. sid) end
redis.call('DEL', KEYS[1], KEYS[4], KEYS[5], KEYS[6])
redis.call('SREM', KEYS[3], u[1])
redis.call('ZREM', KEYS[7], u[1])
if u[2] and u[2] ~= '' then redis.call('ZREM', KEYS[8], u[2] .. '\\0' .. u[1]) end
if redis.call('GET', KEYS[2]) == u[1] then redis.call('DEL', KEYS[2]) end
return 1
"""


# KEYS: user, users:by-name, users:by-email. ARGV: the name, '1' to write. The index entries
# the user lacks ('name', 'email'), added with '1': the migration that builds the index and
# `lorebase check --repair` run it, atomically with any write to the user.
INDEX = """
local u = redis.call('HMGET', KEYS[1], 'username', 'email')
if u[1] ~= ARGV[1] then return {} end
local out = {}
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  out[#out + 1] = 'name'
  if ARGV[2] == '1' then redis.call('ZADD', KEYS[2], 0, ARGV[1]) end
end
if u[2] and u[2] ~= '' then
  local member = u[2] .. '\\0' .. ARGV[1]
  if not redis.call('ZSCORE', KEYS[3], member) then
    out[#out + 1] = 'email'
    if ARGV[2] == '1' then redis.call('ZADD', KEYS[3], 0, member) end
  end
end
return out
"""


def index_keys(name: str) -> list[str]:
    """The KEYS of `INDEX` for a user."""
    return [keys.user(name), keys.USERS_BY_NAME, keys.USERS_BY_EMAIL]


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
    result = await db.script(_CREATE, [keys.user(username), keys.email(email), keys.USERS, holder_key,
                                       keys.USERS_BY_NAME, keys.USERS_BY_EMAIL], [cutoff, *fields])
    if result == "ok":
        return None
    if result.startswith("took "):
        return str(result[5:])
    raise ApiError(409, result)


PAGE = 50  # users a search page holds
_SCAN = 500  # `users:by-email` entries read at a time past those a name match already gave
_LISTED = ("username", "email", "created", "verified", "admin", "disabled")


class BadCursor(ValueError):
    """A search cursor that `search` did not make."""


def _cursor(phase: str, member: str) -> str:
    return phase + base64.urlsafe_b64encode(member.encode()).decode().rstrip("=")


def _position(cursor: str) -> tuple[str, str]:
    phase, encoded = cursor[:1], cursor[1:]
    try:
        member = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise BadCursor(cursor) from None
    if phase not in ("n", "e") or not member:
        raise BadCursor(cursor)
    return phase, member


async def search(db: Client, q: str, after: str = "", page: int = PAGE) -> tuple[list[dict[str, str]], str | None]:
    """Users whose username or email starts with `q` (lower-cased already), a page at a time,
    and the cursor of the next page (None: the last one). The usernames that match come
    first, in order (`users:by-name`), then the users matched by email only, in address order
    (`users:by-email`, skipping those whose username matched): one sequence, so a cursor (the
    index entry a page ended on) pages it without duplicates or gaps while users come and go.
    A page costs one ZRANGEBYLEX (more only while many email matches are name matches too)
    and one pipeline of HMGETs. BadCursor for a cursor it did not make."""
    phase, last = _position(after) if after else ("n", "")
    start, end = (b"[" + q.encode(), b"[" + q.encode() + b"\xff") if q else (b"-", b"+")
    found: list[tuple[str, str, str]] = []  # (phase, index entry, username)
    if phase == "n":
        low = b"(" + last.encode() if last else start
        names = await db.call("ZRANGEBYLEX", keys.USERS_BY_NAME, low, end, "LIMIT", 0, page + 1)
        found += [("n", name, name) for name in names]
        last = ""
    while q and len(found) <= page:
        low = b"(" + last.encode() if last else start
        entries = await db.call("ZRANGEBYLEX", keys.USERS_BY_EMAIL, low, end, "LIMIT", 0, _SCAN)
        for entry in entries:
            name = entry.partition("\0")[2]
            if not name.startswith(q):
                found.append(("e", entry, name))
        if len(entries) < _SCAN:
            break
        last = entries[-1]
    more = len(found) > page
    found = found[:page]
    rows = await db.pipeline([("HMGET", keys.user(name), *_LISTED) for _, _, name in found])
    listed = [dict(zip(_LISTED, row, strict=True)) for row in rows if row[0] is not None]
    return listed, _cursor(*found[-1][:2]) if more else None


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
    `destroying` mark (unix ms) set, all at once. The mark, which `delete` then requires
    ('' if the user is gone)."""
    mark = str(int(time.time() * 1000))
    ended = await sessions.end_all(db, username, fields={"disabled": 1, "destroying": mark},
                                   also=(tokens.key("reset", username),))
    return mark if ended >= 0 else ""


async def verify(db: Client, token: str, email: str) -> bool:
    """Marks the token's user verified and uses the token up, if both still hold."""
    return await tokens.use(db, "verify", token, email, ("verified", 1))


async def release(db: Client, username: str, email: str) -> bool:
    """Takes `email` from an account that never verified it (its email becomes empty)."""
    return bool(await db.script(_RELEASE, [keys.user(username), keys.email(email), keys.USERS_BY_EMAIL], [email]))


async def delete(db: Client, user: dict[str, str], destroying: str = "") -> bool:
    """The user, its indexes, its sessions and its tokens, at once; with `destroying`, only
    if the user still carries that mark (not re-enabled, not another user of the name)."""
    name = user["username"]
    return bool(await db.script(_DELETE, [keys.user(name), keys.email(user.get("email", "")), keys.USERS,
                                          keys.sessions(name), tokens.key("verify", name),
                                          tokens.key("reset", name), keys.USERS_BY_NAME, keys.USERS_BY_EMAIL],
                                [destroying]))
