"""Users in Redis.

`user:<username>` hash {username, email, hash, created, verified, admin, disabled};
`email:<email>` string → username (the email index); `users` set of all usernames.
A user and its indexes are written and removed together (Lua / MULTI), so a crash
never leaves half a user.
"""

from __future__ import annotations

import re
import time
from typing import Any

from ..http import ApiError

USERNAME = re.compile(r"^[a-z0-9_.-]{3,32}$")
# the local part: RFC 5322's unquoted characters only (no comma, quote, bracket, space or
# control character that could turn a To header into two addresses); lower-cased already
EMAIL = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,}$")

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'username' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'email' end
redis.call('HSET', KEYS[1], unpack(ARGV))
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[2])
return 'ok'
"""


def normal_username(raw: str, path: str = "username") -> str:
    name = raw.strip().lower()
    if not USERNAME.match(name):
        raise ApiError(400, "validation", path)
    return name


def normal_email(raw: str, path: str = "email") -> str:
    email = raw.strip().lower()
    if len(email) > 254 or not EMAIL.match(email):
        raise ApiError(400, "validation", path)
    return email


async def create(db: Any, username: str, email: str, password_hash: str) -> None:
    """Stores a new user and its indexes at once; 409 username/email when taken."""
    fields = ["username", username, "email", email, "hash", password_hash, "created", int(time.time()),
              "verified", 0, "admin", 0, "disabled", 0]
    result = await db.script(_CREATE, [f"user:{username}", f"email:{email}", "users"], fields)
    if result != "ok":
        raise ApiError(409, result)


async def get(db: Any, username: str) -> dict[str, str] | None:
    user = await db.call("HGETALL", f"user:{username}")
    return dict(zip(user[::2], user[1::2], strict=True)) if user else None


async def find(db: Any, login: str) -> dict[str, str] | None:
    """By username or email (already trimmed and lower-cased)."""
    if "@" in login:
        login = await db.call("GET", f"email:{login}") or ""
        if not login:
            return None
    if not USERNAME.match(login):
        return None
    return await get(db, login)


def public(user: dict[str, str], admins: list[str]) -> dict[str, Any]:
    """What a reply may say of a user: never the hash."""
    return {"username": user["username"], "email": user["email"], "created": int(user.get("created", 0)),
            "verified": user.get("verified") == "1", "admin": is_admin(user, admins),
            "disabled": user.get("disabled") == "1"}


def is_admin(user: dict[str, str], admins: list[str]) -> bool:
    """The admin flag, or an email of ADMINS once verified: anyone may sign up with any
    address, so the address grants nothing until its owner proved it is theirs."""
    return user.get("admin") == "1" or (user.get("verified") == "1" and user.get("email", "") in admins)


async def delete(db: Any, user: dict[str, str]) -> None:
    """The user, its indexes and its sessions, at once."""
    name = user["username"]
    sids = await db.call("SMEMBERS", f"sessions:{name}")
    commands: list[tuple[Any, ...]] = [("DEL", f"user:{name}", f"sessions:{name}"), ("SREM", "users", name)]
    if await db.call("GET", f"email:{user['email']}") == name:
        commands.append(("DEL", f"email:{user['email']}"))
    if sids:
        commands.append(("DEL", *[f"session:{sid}" for sid in sids]))
    await db.multi(commands)
