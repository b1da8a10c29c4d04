"""One-time tokens for email verification, email change and password reset.

A token is `<username>.<random>` (256 random bits) and goes only into the mail; Redis keeps
its SHA-256: `verify:{<username>}` / `change:{<username>}` / `reset:{<username>}` (the user's
hash slot) → `<sha256> <gen> <email>`, with a TTL (a change token's email is the new address
asked for, its gen the user's generation then). So a user has at most one live token of
each kind: a new one replaces the last, and ending the user's sessions (reset, password
change, disable, destroy) deletes the reset token in the same step. A token is used up by a
compare-and-delete, so it works once; it is refused if the user's email (or, for a reset or
a change, the user's generation) changed since.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from ..db import Client
from . import keys
from .sessions import new_token

KINDS = ("verify", "change", "reset")

# KEYS: the token's key. ARGV: the SHA-256 of the token. Its record, deleted if it matched.
_TAKE = """
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, 64) ~= ARGV[1] then return false end
redis.call('DEL', KEYS[1])
return v
"""

# KEYS: the token's key, its user. ARGV: the token's SHA-256, the email it must still be for,
# then field/value pairs set on the user as the token is used up.
_USE = """
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, 64) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[2], 'email') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
return 1
"""


def key(kind: str, username: str) -> str:
    return keys.token(kind, username)


def owner(token: str) -> str | None:
    """The username a token was made for (it may be forged: only Redis can tell)."""
    name, dot, rest = token.rpartition(".")
    return name if dot and len(rest) >= 40 and keys.USERNAME.fullmatch(name) else None


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def stored(token: str, email: str, gen: str = "") -> str:
    """What Redis keeps of a token issued for `email` and `gen`."""
    return f"{_sha(token)} {gen or '-'} {email}"


async def issue(db: Client, kind: str, username: str, email: str, ttl: int, gen: str = "") -> str:
    token = f"{username}.{new_token()}"
    await db.call("SET", key(kind, username), stored(token, email, gen), "EX", ttl)
    return token


def _parse(username: str, value: str) -> tuple[str, str, str]:
    _, gen, email = value.split(" ", 2)
    return username, email, "" if gen == "-" else gen


async def peek(db: Client, kind: str, token: str) -> tuple[str, str, str] | None:
    """(username, email, gen) of a live token, without using it up."""
    name = owner(token)
    value = await db.call("GET", key(kind, name)) if name else None
    if not value or not hmac.compare_digest(value[:64], _sha(token)):
        return None
    return _parse(name or "", value)


async def redeem(db: Client, kind: str, token: str) -> tuple[str, str, str] | None:
    """(username, email, gen) the token was issued for, once; None if unknown, used or expired."""
    name = owner(token)
    value = await db.script(_TAKE, [key(kind, name)], [_sha(token)]) if name else None
    return _parse(name or "", value) if value else None


async def use(db: Client, kind: str, token: str, email: str, *fields: Any) -> bool:
    """Uses the token up and sets `fields` on its user, if the token is live and the user's
    email is still `email`: one step."""
    name = owner(token)
    if name is None:
        return False
    pairs = [item for pair in fields for item in pair]
    return bool(await db.script(_USE, [key(kind, name), keys.user(name)], [_sha(token), email, *pairs]))
