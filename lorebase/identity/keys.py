"""Every Redis key of identity, named in one place.

A session id carries its user (`<username>:<random>`), so the gatekeeper names the user's
key without reading the session first, and both land in one hash slot once the keys are
tagged for Redis Cluster. One-time tokens carry their user the same way
(`<username>.<random>`), so each user has at most one live token of each kind.

The admin's search reads two lexicographic indexes (sorted sets, every score 0):
`users:by-name` of usernames and `users:by-email` of `<email>\\0<username>` (the NUL sorts
before every character an address may hold, so one address's entries sort together and a
prefix range over the set is a prefix range over the addresses).
"""

from __future__ import annotations

import re

USERNAME = re.compile(r"[a-z0-9_.-]{3,32}")
USERS = "users"
USERS_BY_NAME = "users:by-name"
USERS_BY_EMAIL = "users:by-email"


def user(name: str) -> str:
    return f"user:{name}"


def email(address: str) -> str:
    return f"email:{address}"


def by_email(address: str, name: str) -> str:
    """The member of `users:by-email` for a user and its address."""
    return f"{address}\0{name}"


def session(sid: str) -> str:
    return f"session:{sid}"


def sessions(name: str) -> str:
    return f"sessions:{name}"


def token(kind: str, name: str) -> str:
    return f"{kind}:{name}"


def session_owner(sid: str) -> str | None:
    """The username a session id was made for, or None if it is not one of ours."""
    name, colon, rest = sid.partition(":")
    return name if colon and rest and USERNAME.fullmatch(name) else None


# invites (identity/invites.py): an admin's invite of an email, and the set of them by expiry
INVITES = "invites"


def invite(address: str) -> str:
    return f"invite:{address}"
