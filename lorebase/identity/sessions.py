"""Sessions: an opaque random id in a signed cookie, the session itself in Redis.

Cookie value: `<id>.<signature>`, the signature an HMAC-SHA256 of the id under
COOKIE_SECRET. A bad signature is a forgery (403 tampered); a good one whose session is
gone has expired (403 session): the signature tells the two apart without keeping dead
sessions (seed: Identity & security).

Redis: `session:<id>` hash {user, csrf, created (unix ms)}, expiring SESSION_IDLE seconds after its
last use; `sessions:<user>` set of the user's session ids, so all can be revoked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any

FAR_FUTURE = "Fri, 31 Dec 9999 23:59:59 GMT"


def new_token() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


class Sessions:
    def __init__(self, config: Any):
        self.key = config.COOKIE_SECRET.encode()
        self.name = config.COOKIE_NAME
        self.idle = int(config.SESSION_IDLE)
        self.max = int(config.SESSION_MAX)
        self.per_user = int(config.SESSIONS_PER_USER)
        self.secure = "; Secure" if config.secure_cookies else ""

    # -- the cookie ---------------------------------------------------------------------

    def sign(self, sid: str) -> str:
        mac = hmac.new(self.key, sid.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def unsign(self, value: str) -> str | None:
        """The session id if the signature is ours, else None (a forgery)."""
        sid, dot, signature = value.rpartition(".")
        if not dot or not sid or len(value) > 200:
            return None
        if not hmac.compare_digest(signature.encode(), self.sign(sid).encode()):
            return None
        return sid

    def set_cookie(self, sid: str) -> str:
        # Expires far away: the server decides when a session ends (seed: Identity & security)
        return (f"{self.name}={sid}.{self.sign(sid)}; Path=/; HttpOnly; SameSite=Lax; "
                f"Expires={FAR_FUTURE}{self.secure}")

    def clear_cookie(self) -> str:
        return (f"{self.name}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0; "
                f"Expires=Thu, 01 Jan 1970 00:00:00 GMT{self.secure}")

    # -- the session --------------------------------------------------------------------

    async def create(self, db: Any, user: str) -> tuple[str, str]:
        sid, csrf = new_token(), new_token()
        await db.multi([
            ("HSET", f"session:{sid}", "user", user, "csrf", csrf, "created", int(time.time() * 1000)),
            ("EXPIRE", f"session:{sid}", self.idle),
            ("SADD", f"sessions:{user}", sid),
        ])
        return sid, csrf

    async def load(self, db: Any, sid: str) -> dict[str, Any] | None:
        """The live session, renewed, or None; one round trip."""
        key = f"session:{sid}"
        (user, csrf, created), _ = await db.pipeline([("HMGET", key, "user", "csrf", "created"),
                                                      ("EXPIRE", key, self.idle, "XX")])
        if user is None or csrf is None:
            return None
        if time.time() * 1000 - int(created or 0) > self.max * 1000:
            await self.delete(db, sid, user)
            return None
        return {"id": sid, "user": user, "csrf": csrf}

    async def delete(self, db: Any, sid: str, user: str) -> None:
        await db.multi([("DEL", f"session:{sid}"), ("SREM", f"sessions:{user}", sid)])

    async def revoke_all(self, db: Any, user: str, keep: str | None = None) -> int:
        """Ends every session of `user` (but `keep`); how many were ended."""
        ids = [sid for sid in await db.call("SMEMBERS", f"sessions:{user}") if sid != keep]
        if not ids:
            return 0
        await db.multi([("DEL", *[f"session:{sid}" for sid in ids]), ("SREM", f"sessions:{user}", *ids)])
        return len(ids)

    async def prune(self, db: Any, user: str) -> None:
        """Keeps a user to SESSIONS_PER_USER live sessions, run after each login: past it, the
        oldest end, and ids of sessions that expired on their own leave the set. Bounded work
        (one SCARD until the set outgrows the cap), however many times a user logs in."""
        key = f"sessions:{user}"
        if await db.call("SCARD", key) <= self.per_user:
            return
        ids = await db.call("SMEMBERS", key)
        created = await db.pipeline([("HGET", f"session:{sid}", "created") for sid in ids])
        dead = [sid for sid, when in zip(ids, created, strict=True) if when is None]
        live = sorted((int(when), sid) for sid, when in zip(ids, created, strict=True) if when is not None)
        oldest = [sid for _, sid in live[:max(0, len(live) - self.per_user)]]
        commands: list[tuple[Any, ...]] = []
        if oldest:
            commands.append(("DEL", *[f"session:{sid}" for sid in oldest]))
        if dead or oldest:
            commands.append(("SREM", key, *dead, *oldest))
            await db.multi(commands)
