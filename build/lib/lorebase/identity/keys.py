"""Every Redis key of identity, named in one place.

Laid out for Redis Cluster as well as one Redis (README: Keys on a Redis Cluster): every key
of one user carries the hash tag `{<username>}` (usernames are `[a-z0-9_.-]`, safe inside a
tag), so a user's record, sessions, tokens, files and notes share one hash slot and the
scripts over them stay single-slot. A session id carries its user (`<username>:<random>`),
so the gatekeeper names the session's key and the user's without reading anything first:
`session:{<username>}:<random>`. One-time tokens carry their user the same way
(`<username>.<random>`), so each user has at most one live token of each kind.

The users' indexes (`{users}`, `{users}:by-name`, `{users}:by-email`) share the tag
`{users}`. `email:<email>` is looked up before the username is known: it has no tag of ours
(an address may hold `{`, so no tag is ever built from one) and lands in a slot of its own;
writing it and the user is a sequence of steps (users.py says which and why it is safe).

The admin's search reads two lexicographic indexes (sorted sets, every score 0):
`{users}:by-name` of usernames and `{users}:by-email` of `<email>\\0<username>` (the NUL
sorts before every character an address may hold, so one address's entries sort together
and a prefix range over the set is a prefix range over the addresses).
"""

from __future__ import annotations

import re

USERNAME = re.compile(r"[a-z0-9_.-]{3,32}")
USERS = "{users}"
USERS_BY_NAME = "{users}:by-name"
USERS_BY_EMAIL = "{users}:by-email"


def tag(name: str) -> str:
    """The hash tag of a user's keys."""
    return "{" + name + "}"


def user(name: str) -> str:
    return f"user:{tag(name)}"


def email(address: str) -> str:
    return f"email:{address}"


def by_email(address: str, name: str) -> str:
    """The member of `{users}:by-email` for a user and its address."""
    return f"{address}\0{name}"


def session(sid: str) -> str:
    """`session:{<username>}:<random>` for the id `<username>:<random>`."""
    name, _, rest = sid.partition(":")
    return f"{session_prefix(name)}{rest}"


def session_prefix(name: str) -> str:
    """What a session key of `name` starts with (scripts build a key from an id with it)."""
    return f"session:{tag(name)}:"


def session_id(key: str) -> str | None:
    """The session id a key `session` made names (None: not a key of that form)."""
    rest = key.removeprefix("session:")
    if not rest.startswith("{") or "}:" not in rest:
        return None
    name, _, random = rest[1:].partition("}:")
    return f"{name}:{random}"


def sessions(name: str) -> str:
    return f"sessions:{tag(name)}"


def token(kind: str, name: str) -> str:
    return f"{kind}:{tag(name)}"


def session_owner(sid: str) -> str | None:
    """The username a session id was made for, or None if it is not one of ours."""
    name, colon, rest = sid.partition(":")
    return name if colon and rest and USERNAME.fullmatch(name) else None


# invites (identity/invites.py): an admin's invite of an email (in the address's own slot,
# like `email:`), and the set of the invited addresses by expiry (its own tag)
INVITES = "{invites}"


def invite(address: str) -> str:
    return f"invite:{address}"


# the roster of enabled admins (identity/admins.py), its own tag: the last-admin check is one
# script over these three
ADMINS = "{admins}"
ADMINS_TURN = "{admins}:turn"
ADMINS_LEAVING = "{admins}:leaving"
