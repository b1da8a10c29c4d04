"""One-time tokens for email verification and password reset.

The token (256 random bits) goes only into the mail; Redis keeps its SHA-256:
`verify:<sha256>` / `reset:<sha256>` → `<username> <email>`, with a TTL. Redeeming is a
GETDEL, so a token works once; it is refused if the user's email changed since.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .sessions import new_token

KINDS = ("verify", "reset")


def _key(kind: str, token: str) -> str:
    return f"{kind}:{hashlib.sha256(token.encode()).hexdigest()}"


async def issue(db: Any, kind: str, username: str, email: str, ttl: int) -> str:
    token = new_token()
    await db.call("SET", _key(kind, token), f"{username} {email}", "EX", ttl)
    return token


async def redeem(db: Any, kind: str, token: str) -> tuple[str, str] | None:
    """(username, email) the token was issued for, once; None if unknown, used or expired."""
    value = await db.call("GETDEL", _key(kind, token))
    if not value:
        return None
    username, _, email = value.partition(" ")
    return username, email
