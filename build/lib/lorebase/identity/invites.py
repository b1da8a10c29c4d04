"""Invites: an admin invites an email; the mail carries a single-use token; signing up with
it works for that email only, even when WHITELIST would refuse the address, and proves the
mailbox (the account starts verified).

A token is `<the email, base64url>.<random>` (256 random bits): the page of the link can show
the address, and the server finds the invite from the token alone. Redis keeps its SHA-256:
`invite:<email>` → `<sha256> <created ms> <by>`, expiring after INVITE_TTL; `{invites}`, a
sorted set of the invited emails by expiry time, lists them. A new invite to the same email
replaces the last. A token is used up by a compare-and-delete at signup, so it works once;
a signup that then fails (the username was taken meanwhile) puts it back.

The record lives in its address's own hash slot and the set in `{invites}` (keys.py), so
they change in two steps, the set first and the record after it when an invite is made,
the record first and the set after it when one is used or revoked. The record is the
truth: the list shows an address only while its record exists (a member without one,
left by a stop between the steps, is skipped and dropped once its score passes), and a
member is removed on use only while its score is no later than the record used up, so a
new invite made meanwhile keeps its place. A record left unlisted (a stop between a
give-back's steps) is listed again by `lorebase check --repair`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from typing import Any

from ..db import Client
from . import keys
from .sessions import new_token

# KEYS: the invite. ARGV: the token's SHA-256. The record and the ms it had left, deleted if
# it matched.
_TAKE = """
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, 64) ~= ARGV[1] then return false end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
return {v, ttl}
"""

# KEYS: the invite. Its ms left, deleted (false: none).
_DROP = """
local left = redis.call('PTTL', KEYS[1])
if redis.call('DEL', KEYS[1]) == 0 then return false end
return left
"""
_SLACK = 50  # ms: the record's expiry as measured from its PTTL may run this much behind its score

# KEYS: the invites set. ARGV: an email, the latest expiry (unix ms) its member may have to go.
_UNLIST = """
local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if at and tonumber(at) <= tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
"""


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def email_of(token: str) -> str | None:
    """The email a token names (it may be forged: only Redis can tell)."""
    head, dot, rest = token.partition(".")
    if not dot or len(rest) < 40 or len(head) > 400:
        return None
    try:
        return base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


async def issue(db: Client, email: str, by: str, ttl: int) -> str:
    token = base64.urlsafe_b64encode(email.encode()).rstrip(b"=").decode() + "." + new_token()
    now = int(time.time() * 1000)
    await db.call("ZADD", keys.INVITES, now + ttl * 1000, email)  # listed first: see the docstring
    await db.call("SET", keys.invite(email), f"{_sha(token)} {now} {by or '-'}", "EX", ttl)
    return token


async def take(db: Client, token: str, email: str) -> tuple[str, int] | None:
    """Uses the token up if it is the live invite of `email`: (its record, ms it had left)."""
    if email_of(token) != email:
        return None
    taken = await db.script(_TAKE, [keys.invite(email)], [_sha(token)])
    if not taken:
        return None
    await db.script(_UNLIST, [keys.INVITES], [email, int(time.time() * 1000) + int(taken[1]) + _SLACK])
    return str(taken[0]), int(taken[1])


async def give_back(db: Client, email: str, taken: tuple[str, int]) -> None:
    """Puts back an invite `take` used up, for a signup that failed after it."""
    record, left = taken
    if left > 0:
        await db.call("ZADD", keys.INVITES, "GT", int(time.time() * 1000) + left, email)
        await db.call("SET", keys.invite(email), record, "PX", left, "NX")


async def pending(db: Client) -> list[dict[str, Any]]:
    """The live invites, the one expiring last first: email, created and expires (unix ms), by."""
    now = int(time.time() * 1000)
    _, found = await db.multi([("ZREMRANGEBYSCORE", keys.INVITES, "-inf", now),
                               ("ZRANGE", keys.INVITES, "+inf", now, "BYSCORE", "REV", "WITHSCORES")])
    emails, expires = found[::2], found[1::2]
    records = await db.pipeline([("GET", keys.invite(email)) for email in emails]) if emails else []
    out = []
    for email, until, record in zip(emails, expires, records, strict=True):
        if record is None:
            continue  # revoked or expired between the two calls
        _, created, by = record.split(" ", 2)
        out.append({"email": email, "created": int(created), "expires": int(float(until)),
                    "by": "" if by == "-" else by})
    return out


async def revoke(db: Client, email: str) -> bool:
    left = await db.script(_DROP, [keys.invite(email)], [])
    if left is None:
        return False  # a member without a record is skipped by the list, and dropped once expired
    await db.script(_UNLIST, [keys.INVITES], [email, int(time.time() * 1000) + int(left) + _SLACK])
    return True
