"""Sessions: an opaque random id in a signed cookie, the session itself in Redis, bound to
the state of the user that opened it.

Cookie value: `<id>.<signature>`, the signature an HMAC-SHA256 of the id under
COOKIE_SECRET. A bad signature is a forgery (403 tampered); a good one whose session is
gone has expired (403 session): the signature tells the two apart without keeping dead
sessions (seed: Identity & security). The id is `<username>:<random>` (256 bits).

Redis: `session:{<username>}:<random>` (keys.session, from the id alone) string
`<csrf> <created (unix ms)> <gen> <ip> <agent>`, expiring
SESSION_IDLE seconds after its last use (a string, not a hash, so that one GETEX reads and
renews it; so its last use is now - (SESSION_IDLE - its TTL), and nothing is written per
request to know it); ip and agent (a short description of the browser) are the login's;
`sessions:{<user>}` set of the user's session ids (every key of a user shares its hash slot,
so each step below is one script or MULTI even on a Redis Cluster), so all can be ended. The user sees each
session by its handle, a hash of the id that cannot be turned back into it.

The binding: every user has a generation `gen` (random, new at signup and at every event
that must end all sessions: reset, password change, disable, destroy, an admin's revoke).
A session is created by one script that checks, at that moment, that the user exists, is
not disabled and still has the generation read before its password was verified; it records
that generation. Ending all sessions is one script too: new generation, every session in the
set deleted. The gatekeeper reads the session and its user together and refuses a session
whose generation is not its user's (a re-registered username has another one) or whose user
is disabled or gone. So a login racing a destroy, disable, reset or password change either
lands before it (and is ended by it) or after it (and is refused).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any

from ..db import Client
from . import keys
from .records import Session, User

FAR_FUTURE = "Fri, 31 Dec 9999 23:59:59 GMT"


def new_token() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def new_gen() -> str:
    return secrets.token_hex(8)


# KEYS: user, session, sessions. ARGV: the generation read before the password was checked,
# csrf, created (ms), idle (s), the session id, a new hash for the password or '', the
# client's ip, the short description of its agent
_CREATE = """
local u = redis.call('HMGET', KEYS[1], 'username', 'gen', 'disabled')
if not u[1] or (u[2] or '') ~= ARGV[1] or u[3] == '1' then return 0 end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'hash', ARGV[6]) end
redis.call('HSET', KEYS[1], 'last', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[1] .. ' ' .. ARGV[7] .. ' ' .. ARGV[8],
           'EX', ARGV[4])
redis.call('SADD', KEYS[3], ARGV[5])
return 1
"""

# KEYS: user, sessions, the session to keep (or the user's key again), then keys to delete with it (the user's
# reset token). ARGV: the new generation, the id of the session to keep (or ''), the prefix
# of the user's session keys (keys.session_prefix), then field/value pairs to set on the user
# in the same step. -1 if the user is gone. The session keys named by the set are built
# here, from the prefix and the id's random part: they share the user's hash slot.
_END_ALL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local n = 0
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if sid ~= ARGV[2] then
    local at = string.find(sid, ':', 1, true)
    if at then redis.call('DEL', ARGV[3] .. string.sub(sid, at + 1)) end
    redis.call('SREM', KEYS[2], sid)
    n = n + 1
  end
end
redis.call('HSET', KEYS[1], 'gen', ARGV[1], unpack(ARGV, 4))
if ARGV[2] ~= '' then
  local kept = redis.call('GET', KEYS[3])
  if kept then
    local csrf, created, rest = string.match(kept, '^(%S+) (%S+) ?%S*(.*)$')
    redis.call('SET', KEYS[3], csrf .. ' ' .. created .. ' ' .. ARGV[1] .. rest, 'KEEPTTL')
  end
end
for i = 4, #KEYS do redis.call('DEL', KEYS[i]) end
return n
"""


# The first lines of a script that writes new data for a user on behalf of a session: it
# writes only while that session is live and of its user's generation, so a request that
# passed the gatekeeper just before a destroy, disable or reset cannot land data after it
# (a destroyed user's notebook refilled, then read by whoever signs up as that name).
# KEYS[1] the session, KEYS[2] its user (see `guard_keys`); the script's own keys follow.
GUARD = """
local s = redis.call('GET', KEYS[1])
local g = s and string.match(s, '^%S+ %S+ (%S*)')
if not g or g ~= (redis.call('HGET', KEYS[2], 'gen') or '') then return 'ended' end
"""


def guard_keys(session: Session) -> list[str]:
    return [keys.session(session["id"]), keys.user(session["user"])]


def live_probe(session: Session) -> tuple[Any, ...]:
    """The command to put in a write's MULTI instead of GUARD, where a Lua script costs too
    much (Redis 7 spends ~4 µs more on EVALSHA than on a MULTI of the same writes): it reads,
    atomically with the write, whether the session still exists. That is enough: every end
    of a user's sessions deletes them in the same step as it changes the user (`end_all`),
    so a session that exists is one of its user's generation. See `was_live`."""
    return ("EXISTS", keys.session(session["id"]))


def was_live(probe: int) -> bool:
    """From the reply of `live_probe`: the session was live when the write landed. If not,
    the write went into an account whose sessions had ended (destroyed, say, after this
    request passed the gatekeeper): the caller takes it back and answers 403 session."""
    return probe == 1


class Sessions:
    def __init__(self, config: Any):
        self.key = config.COOKIE_SECRET.encode()
        self.name = config.cookie_name
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
        # signed by us, so made by `create`: `<username>:<random>`
        return sid if ":" in sid else None

    def set_cookie(self, sid: str) -> str:
        # Expires far away: the server decides when a session ends (seed: Identity & security)
        return (f"{self.name}={sid}.{self.sign(sid)}; Path=/; HttpOnly; SameSite=Lax; "
                f"Expires={FAR_FUTURE}{self.secure}")

    def clear_cookie(self) -> str:
        return (f"{self.name}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0; "
                f"Expires=Thu, 01 Jan 1970 00:00:00 GMT{self.secure}")

    # -- the session --------------------------------------------------------------------

    async def create(self, db: Client, user: User, rehash: str = "", ip: str = "",
                     agent: str = "") -> tuple[str, str] | None:
        """A new session for `user` as it was read before its password was checked, or None
        if the user changed since (gone, disabled, another generation). `rehash`: a new hash
        of the same password, stored only if the session is made. `ip`, `agent`: the
        client's address and User-Agent header, kept for the user's list of sessions."""
        name = user["username"]
        sid, csrf = f"{name}:{new_token()}", new_token()
        made = await db.script(_CREATE, [keys.user(name), keys.session(sid), keys.sessions(name)],
                               [user.get("gen", ""), csrf, int(time.time() * 1000), self.idle, sid, rehash,
                                ip.replace(" ", "") or "-", describe_agent(agent)])
        return (sid, csrf) if made else None

    async def load(self, db: Client, sid: str) -> Session | None:
        """The live session of an id `unsign` returned, renewed, or None; one round trip. A session whose user is gone,
        disabled or of another generation is deleted."""
        name = sid.partition(":")[0]  # `unsign` made sure it is a username
        key = keys.session(sid)
        value, (exists, user_gen, disabled) = await db.pipeline([
            ("GETEX", key, "EX", self.idle), ("HMGET", keys.user(name), "username", "gen", "disabled")])
        if value is None:
            return None
        csrf, _, rest = value.partition(" ")
        created, _, rest = rest.partition(" ")
        gen = rest.partition(" ")[0]
        if (exists is None or disabled == "1" or (gen or "") != (user_gen or "")
                or time.time() * 1000 - int(created or 0) > self.max * 1000):
            await self.delete(db, sid, name)
            return None
        return {"id": sid, "user": name, "csrf": csrf}

    async def of_user(self, db: Client, user: User, ids: list[str]) -> list[dict[str, Any]]:
        """The live ones of `user`'s session ids (`sessions:{<user>}`, read with the user), oldest
        first: when each was made and last used (unix ms), never the id. One pipeline of GET and
        PTTL: every use renews a session to SESSION_IDLE, so it was last used SESSION_IDLE
        minus its time left ago. A session the gatekeeper would refuse (expired, another
        generation, past SESSION_MAX, its user disabled) is not live."""
        if user.get("disabled") == "1":
            return []
        now = int(time.time() * 1000)
        live = [{"created": s["created"], "last": s["last"], "ip": s["ip"], "agent": s["agent"]}
                for s in await self._read(db, ids)
                if s["gen"] == user.get("gen", "") and s["created"] is not None
                and now - s["created"] <= self.max * 1000]
        return sorted(live, key=lambda s: s["created"])

    async def _read(self, db: Client, ids: list[str]) -> list[dict[str, Any]]:
        """The sessions of `ids` that still exist, in one pipeline of GET and PTTL: each one's
        id, fields and last use (unix ms; every use renews a session to SESSION_IDLE, so it was
        last used SESSION_IDLE minus its time left ago). `created` is None if unreadable."""
        replies = await db.pipeline([c for sid in ids for c in (("GET", keys.session(sid)),
                                                                 ("PTTL", keys.session(sid)))])
        now = int(time.time() * 1000)
        found = []
        for sid, value, ttl in zip(ids, replies[::2], replies[1::2], strict=True):
            if value is None or ttl is None or int(ttl) < 0:
                continue  # expired meanwhile (the set is tidied by `prune`)
            _, created, gen, ip, agent = _fields(value)
            made = int(created) if created.isdigit() else None
            found.append({"sid": sid, "created": made, "gen": gen, "ip": ip, "agent": agent,
                          "last": max(made or 0, now - (self.idle * 1000 - int(ttl)))})
        return found

    async def delete(self, db: Client, sid: str, user: str) -> None:
        await db.multi([("DEL", keys.session(sid)), ("SREM", keys.sessions(user), sid)])

    async def end_all(self, db: Client, user: str, keep: str | None = None, fields: dict[str, Any] | None = None,
                      also: tuple[str, ...] = ()) -> int:
        """In one step: a new generation for `user`, `fields` set on it, every session but
        `keep` ended (`keep` moves to the new generation), the keys in `also` deleted. How
        many sessions ended; -1 if the user is gone."""
        pairs = [item for pair in (fields or {}).items() for item in pair]
        return int(await db.script(_END_ALL, [keys.user(user), keys.sessions(user),
                                              keys.session(keep) if keep else keys.user(user), *also],
                                   [new_gen(), keep or "", keys.session_prefix(user), *pairs]))

    async def prune(self, db: Client, user: str) -> None:
        """Keeps a user to SESSIONS_PER_USER live sessions, run after each login: past it, the
        oldest end, and ids of sessions that expired on their own leave the set. Bounded work
        (one SCARD until the set outgrows the cap), however many times a user logs in."""
        key = keys.sessions(user)
        if await db.call("SCARD", key) <= self.per_user:
            return
        ids = await db.call("SMEMBERS", key)
        values = await db.pipeline([("GET", keys.session(sid)) for sid in ids])
        created = [v.split(" ")[1] if v else None for v in values]
        dead = [sid for sid, when in zip(ids, created, strict=True) if when is None]
        live = sorted((int(when), sid) for sid, when in zip(ids, created, strict=True) if when is not None)
        oldest = [sid for _, sid in live[:max(0, len(live) - self.per_user)]]
        commands: list[tuple[Any, ...]] = []
        if oldest:
            commands.append(("DEL", *[keys.session(sid) for sid in oldest]))
        if dead or oldest:
            commands.append(("SREM", key, *dead, *oldest))
            await db.multi(commands)

    # -- the user's own list ------------------------------------------------------------

    async def listing(self, db: Client, user: str, current: str) -> list[dict[str, Any]]:
        """The user's live sessions, most recently used first: handle, created and last use
        (unix ms), ip, agent, and whether it is `current`'s. Two round trips."""
        ids = sorted(await db.call("SMEMBERS", keys.sessions(user)))
        out = [{"handle": handle(s["sid"]), "created": s["created"] or 0, "last": s["last"], "ip": s["ip"],
                "agent": s["agent"], "current": s["sid"] == current} for s in await self._read(db, ids)]
        out.sort(key=lambda s: s["last"], reverse=True)
        return out

    async def end_some(self, db: Client, user: str, current: str, which: str | None) -> int | None:
        """Ends the user's session whose handle is `which`, or (None) every one but `current`,
        in one step. How many ended; None if `which` is no session of this user."""
        ids = await db.call("SMEMBERS", keys.sessions(user))
        if which is None:
            doomed = [sid for sid in ids if sid != current]
        else:
            doomed = [sid for sid in ids if hmac.compare_digest(handle(sid), which)]
            if not doomed:
                return None
        if not doomed:
            return 0
        deleted, _ = await db.multi([("DEL", *[keys.session(sid) for sid in doomed]),
                                     ("SREM", keys.sessions(user), *doomed)])
        return int(deleted)  # 0: it had expired on its own meanwhile


def _fields(value: str) -> tuple[str, str, str, str, str]:
    """A session's value as (csrf, created, gen, ip, agent); a session made before ip and agent
    were kept has them empty."""
    csrf, created, gen, ip, agent = [*value.split(" ", 4), "", "", "", ""][:5]
    return csrf, created, gen, "" if ip == "-" else ip, agent


def handle(sid: str) -> str:
    """A session's public name: a hash of its id (which has 256 random bits), so knowing the
    handle neither loads the session nor names its key."""
    return hashlib.sha256(b"lorebase session handle " + sid.encode()).hexdigest()[:32]


_BROWSERS = (("Edg/", "Edge"), ("OPR/", "Opera"), ("Firefox/", "Firefox"), ("Chrome/", "Chrome"),
             ("Safari/", "Safari"), ("curl/", "curl"), ("python-httpx", "httpx"), ("python-requests", "requests"))
_SYSTEMS = (("Android", "Android"), ("iPhone", "iPhone"), ("iPad", "iPad"), ("Windows", "Windows"),
            ("Mac OS X", "macOS"), ("CrOS", "ChromeOS"), ("Linux", "Linux"))


def describe_agent(agent: str) -> str:
    """A short description of a User-Agent header ("Firefox on Linux"), from a fixed list of
    words, so nothing a client sends is stored as it is."""
    browser = next((name for token, name in _BROWSERS if token in agent), "")
    system = next((name for token, name in _SYSTEMS if token in agent), "")
    if browser and system:
        return f"{browser} on {system}"
    return browser or system or ("unknown" if agent else "none")
