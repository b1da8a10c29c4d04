"""Users in Redis: the records, their indexes, and the verbs that change them.

`user:{<username>}` hash {username, email, hash, created (unix s), verified, admin, disabled,
gen, last (unix ms of the last login), destroying (unix ms: a destroy began; set with
disabled in the step that ends the sessions, so a destroy that died half-way is
recognisable and `lorebase check --repair` finishes it)}; `email:<email>` string → username (the email
index); `{users}` set of all usernames; `{users}:by-name` and `{users}:by-email`, the sorted
sets the admin's search reads (see keys.py and `search`). Every change that must end the
user's sessions goes through `Sessions.end_all` in the same step (see sessions.py).

The record, `email:<email>` and the `{users}` indexes sit in three hash slots (keys.py), so
no step writes them together: a signup, a release and a destroy are ordered steps, each
one slot, each safe to stop after. The order everywhere: an index entry is written before
the record it points at and deleted after it, so a stop half-way leaves at worst an entry
pointing at nothing, which is harmless because every lookup through an index reads the
record and believes only it (`email:x` → name counts only while `user:{name}`'s email is x;
the search lists only users whose record exists) and `lorebase check --repair` sweeps it.

`email:<email>` is also the lock that makes an address unique; how a signup holds it:
1. claim: SET the entry to the new name if it is free, else read who it names (the holder);
2. a holder whose record holds the address keeps it (Taken: email), unless it never verified
   it within VERIFY_TTL: then the address is taken from it in the holder's own slot (one
   script: only while it is still unverified, so a verification racing it either lands
   first and keeps the address, or finds its email changed and is refused); an entry whose
   record does not hold the address is dangling (or a signup still running: see 5);
   either way the entry is compare-and-set from the holder to the new name (lost: Taken email);
3. the `{users}` indexes;
4. the record, only if the username is free (else its claims are given back: Taken username);
5. the last step looks again: the entry must still name it, and a holder whose entry it
   took as dangling must not have written a record holding the address since (a signup
   racing for the same address, between its steps 1 and 4); else it gives the address
   back and removes itself (Taken: email). Of two signups racing for one address at most one
   passes step 5: whichever's compare-and-set came last sees the other's record, or is
   seen; so two records never both end holding one address, nor one without its entry.
An email change (`change_email`, when its link is used) holds the new address the same way,
the record's write being the one that sets `email` (and uses the token up); until then the
old address stays the account's, its entry untouched; after step 5 the `{users}` entries
move and the old entry goes (`drop_email`). A step 5 that fails puts the record's email and
the token back. Of two changes racing for one address, the second waits while the first's
token is still live (it is between its steps 1 and 4), then sees the address kept.
A destroy deletes the record (with its sessions and tokens, one slot) first, then the
entry (only while it still names the user, and put back if a signup of the same name took
the address meanwhile), then the `{users}` entries (put back the same way).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from typing import Any, cast

from ..db import Client
from ..errors import Invalid, Taken
from . import keys, tokens
from .records import Profile, User
from .sessions import Sessions, new_gen

USERNAME = keys.USERNAME
# the local part: RFC 5322's unquoted characters only (no comma, quote, bracket, space or
# control character that could turn a To header into two addresses); lower-cased already
EMAIL = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,}")

# KEYS: email. ARGV: the name. '' if the entry was free and now names it, else whom it names.
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1])
return ''
"""

# KEYS: email. ARGV: the name it must still hold, the name it moves to ('': deleted).
_SWAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2]) end
return 1
"""

# KEYS: the holder's user. ARGV: the address, created before which a holder that never
# verified it loses it. 1 if it was taken from the holder.
_TAKE_FROM = """
local h = redis.call('HMGET', KEYS[1], 'email', 'verified', 'created')
if h[1] ~= ARGV[1] or h[2] == '1' or tonumber(h[3] or '0') >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'email', '')
return 1
"""

# KEYS: user. ARGV: field/value pairs of the new user. 0 if the name is taken.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS: {users}, {users}:by-name, {users}:by-email. ARGV: the name, its address ('': none).
_INDEX_ADD = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
if ARGV[2] ~= '' then redis.call('ZADD', KEYS[3], 0, ARGV[2] .. '\\0' .. ARGV[1]) end
"""

# KEYS: {users}, {users}:by-name, {users}:by-email. ARGV: the name, an address whose entry
# goes ('': none), '1' if the name goes too.
_INDEX_DROP = """
if ARGV[2] ~= '' then redis.call('ZREM', KEYS[3], ARGV[2] .. '\\0' .. ARGV[1]) end
if ARGV[3] == '1' then
  redis.call('SREM', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
"""

# KEYS: user. ARGV: the address. The address leaves an account that never verified it.
_RELEASE = """
local u = redis.call('HMGET', KEYS[1], 'username', 'email', 'verified')
if not u[1] or u[2] ~= ARGV[1] or u[3] == '1' then return 0 end
redis.call('HSET', KEYS[1], 'email', '')
return 1
"""

# KEYS: user, change token. ARGV: the token's stored value (sha, gen, new address), the new
# address. The token used up and the address set (verified) if the token is live and the
# user of its generation; {old address, old verified, the token's value, its PTTL}, else false.
_CHANGE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return false end
local u = redis.call('HMGET', KEYS[1], 'username', 'email', 'verified', 'gen')
if not u[1] then return false end
local gen = u[4]
if not gen or gen == '' then gen = '-' end
if string.sub(ARGV[1], 66, 65 + #gen + 1) ~= gen .. ' ' then return false end
local ttl = redis.call('PTTL', KEYS[2])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'email', ARGV[2], 'verified', 1)
return {u[2] or '', u[3] or '0', ARGV[1], ttl}
"""

# KEYS: user, change token. ARGV: the new address, the old one, the old verified, the
# token's value, its PTTL. A change taken back (step 5 lost): the old address and the token.
_UNCHANGE = """
if redis.call('HGET', KEYS[1], 'email') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'email', ARGV[2], 'verified', ARGV[3])
if tonumber(ARGV[5]) > 0 then redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5], 'NX') end
return 1
"""

# KEYS: user, sessions, verify token, reset token, change token. ARGV: a field the user must still carry
# with the value next ('' : any user), the prefix of the user's session keys. The address
# the user had ('' if none), or false if it was not deleted. The session keys are built
# from the ids in the set: they share the user's hash slot.
_DELETE = """
local u = redis.call('HMGET', KEYS[1], 'username', 'email')
if not u[1] then return false end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return false end
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local at = string.find(sid, ':', 1, true)
  if at then redis.call('DEL', ARGV[3] .. string.sub(sid, at + 1)) end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
return u[2] or ''
"""


# KEYS: {users}:by-name, {users}:by-email. ARGV: the name, its address as read from its
# record ('' : none), '1' to write. The index entries the user lacks ('name', 'email'),
# added with '1': the migration that built the index and `lorebase check --repair` run it
# after reading the record (an entry added for a user deleted meanwhile is a dangling
# entry, harmless and swept by the next check).
INDEX = """
local out = {}
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  out[#out + 1] = 'name'
  if ARGV[3] == '1' then redis.call('ZADD', KEYS[1], 0, ARGV[1]) end
end
if ARGV[2] ~= '' then
  local member = ARGV[2] .. '\\0' .. ARGV[1]
  if not redis.call('ZSCORE', KEYS[2], member) then
    out[#out + 1] = 'email'
    if ARGV[3] == '1' then redis.call('ZADD', KEYS[2], 0, member) end
  end
end
return out
"""

_INDEXES = [keys.USERS, keys.USERS_BY_NAME, keys.USERS_BY_EMAIL]
# times 20 ms a signup waits for the record of a holder that claimed the address but has not
# written it yet, before it takes the entry as dangling (safe either way: see step 5)
_PATIENCE = 10


def index_keys(name: str) -> list[str]:
    """The KEYS of `INDEX` (the same for every user: the `{users}` slot)."""
    return [keys.USERS_BY_NAME, keys.USERS_BY_EMAIL]


def normal_username(raw: str, path: str = "username") -> str:
    name = raw.strip().lower()
    if not USERNAME.fullmatch(name):
        raise Invalid(path)
    return name


def normal_email(raw: str, path: str = "email") -> str:
    email = raw.strip().lower()
    if len(email) > 254 or not EMAIL.fullmatch(email):
        raise Invalid(path)
    return email


async def taken(db: Client, username: str, email: str, verify_ttl: int) -> str | None:
    """'username' or 'email' if a signup with these would be refused (before hashing)."""
    exists, holder = await db.pipeline([("EXISTS", keys.user(username)), ("GET", keys.email(email))])
    if exists:
        return "username"
    if holder and await _holding(db, holder, email, verify_ttl) == "keeps":
        return "email"
    return None


async def keeps(db: Client, email: str, verify_ttl: int) -> bool:
    """An account holds `email` and keeps it from anyone else: it verified it, or signed up
    within VERIFY_TTL. One that never verified it in time holds it only until a signup (an
    invited one too) takes it (`create`, step 2)."""
    holder = await db.call("GET", keys.email(email))
    return bool(holder) and await _holding(db, str(holder), email, verify_ttl) == "keeps"


async def _holding(db: Client, holder: str, email: str, verify_ttl: int | None = None) -> str:
    """What the user an `email:` entry names does with the address: 'keeps' it (verified,
    or signed up within VERIFY_TTL), 'stale' (never verified it, VERIFY_TTL after it signed
    up: it stops blocking the address's real owner), 'none' (its record does not hold the
    address) or 'absent' (no record: a dangling entry, or a signup between its steps 1 and 4)."""
    if not USERNAME.fullmatch(holder):
        return "none"
    name, address, verified, created = await db.call("HMGET", keys.user(holder), "username", "email",
                                                     "verified", "created")
    if name is None:
        return "absent"
    if name != holder or address != email:
        return "none"
    if verified == "1" or verify_ttl is None:
        return "keeps"
    # whole seconds, as _TAKE_FROM counts: a holder seen stale here is never refused there
    return "stale" if int(created or 0) < int(time.time()) - verify_ttl else "keeps"


async def _holds(db: Client, name: str, email: str) -> bool:
    """`name`'s record holds `email`."""
    return await _holding(db, name, email) in ("keeps", "stale")


async def create(db: Client, username: str, email: str, password_hash: str, verify_ttl: int) -> str | None:
    """Stores a new user and its indexes, in the steps the module's docstring explains; Taken
    ("username" or "email") when taken. An address held by an account that never verified it within
    VERIFY_TTL is taken from that account; its username is returned (None otherwise)."""
    gen = new_gen()
    fields = ["username", username, "email", email, "hash", password_hash, "created", int(time.time()),
              "verified", 0, "admin", 0, "disabled", 0, "gen", gen]
    entry = keys.email(email)
    holder = await db.script(_CLAIM, [entry], [username])  # 1
    took, dangling = None, None
    if holder:  # 2
        state = await _holding(db, holder, email, verify_ttl)
        for _ in range(_PATIENCE):  # a signup that claimed it may be about to write its record
            if state != "absent" or holder == username:
                break
            await asyncio.sleep(0.02)
            state = await _holding(db, holder, email, verify_ttl)
        if holder == username and state in ("keeps", "stale"):
            raise Taken("username")
        if state == "keeps":
            raise Taken("email")
        if state == "stale":
            if not await db.script(_TAKE_FROM, [keys.user(holder)], [email, int(time.time()) - verify_ttl]):
                raise Taken("email")  # it verified meanwhile
            took = holder
            await db.script(_INDEX_DROP, _INDEXES, [took, email, ""])
        elif holder != username:
            dangling = holder
        if not await db.script(_SWAP, [entry], [holder, username]):
            raise Taken("email")
    await db.script(_INDEX_ADD, _INDEXES, [username, email])  # 3
    if not await db.script(_CREATE, [keys.user(username)], fields):  # 4
        # the name is someone else's: its entries stay, ours go (unless it holds the address)
        if not await _holds(db, username, email):
            await db.script(_INDEX_DROP, _INDEXES, [username, email, ""])
            await db.script(_SWAP, [entry], [username, ""])
        raise Taken("username")
    if (await db.call("GET", entry) != username  # 5
            or (dangling and await _holds(db, dangling, email))):
        await _remove(db, username, email, "gen", gen)
        if dangling and await _holds(db, dangling, email):
            await db.script(_SWAP, [entry], [username, dangling])
        else:
            await db.script(_SWAP, [entry], [username, ""])
        raise Taken("email")
    return took


async def _remove(db: Client, name: str, email: str, field: str = "", value: str = "") -> str | None:
    """The record (only while `field` is `value`), its sessions and tokens, then its `{users}`
    entries; the `email:` entry is the caller's. Entries a signup of the same name wrote
    meanwhile are put back. The address the record had ('': none; None: not removed)."""
    had = await db.script(_DELETE, [keys.user(name), keys.sessions(name), tokens.key("verify", name),
                                    tokens.key("reset", name), tokens.key("change", name)],
                              [field, value, keys.session_prefix(name)])
    if had is None:
        return None
    await db.script(_INDEX_DROP, _INDEXES, [name, had or email, "1"])
    await reindex(db, name)
    return str(had)


async def reindex(db: Client, name: str) -> None:
    """The `{users}` entries of `name` written again if its record exists (after a removal
    that may have raced a new signup of the name)."""
    username, address = await db.call("HMGET", keys.user(name), "username", "email")
    if username == name:
        await db.script(_INDEX_ADD, _INDEXES, [name, address or ""])


PAGE = 50  # users a search page holds
_SCAN = 500  # `{users}:by-email` entries read at a time past those a name match already gave
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


async def search(db: Client, q: str, after: str = "", page: int = PAGE) -> tuple[list[Profile], str | None]:
    """Users whose username or email starts with `q` (lower-cased already), a page at a time,
    and the cursor of the next page (None: the last one). The usernames that match come
    first, in order (`{users}:by-name`), then the users matched by email only, in address order
    (`{users}:by-email`, skipping those whose username matched): one sequence, so a cursor (the
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
    listed = [cast(Profile, dict(zip(_LISTED, row, strict=True))) for row in rows if row[0] is not None]
    return listed, _cursor(*found[-1][:2]) if more else None


async def get(db: Client, username: str) -> User | None:
    user = await db.call("HGETALL", keys.user(username))
    return cast(User, dict(zip(user[::2], user[1::2], strict=True))) if user else None


async def find(db: Client, login: str) -> User | None:
    """By username or email (already trimmed and lower-cased)."""
    if "@" in login:
        address, login = login, await db.call("GET", keys.email(login)) or ""
        if not USERNAME.fullmatch(login):
            return None
        user = await get(db, login)  # believed only if it holds the address (see the docstring)
        return user if user is not None and user.get("email") == address else None
    if not USERNAME.fullmatch(login):
        return None
    return await get(db, login)


def public(user: Profile, admins: list[str]) -> dict[str, Any]:
    """What a reply may say of a user: never the hash."""
    return {"username": user["username"], "email": user["email"], "created": int(user.get("created", 0)),
            "verified": user.get("verified") == "1", "admin": is_admin(user, admins),
            "disabled": user.get("disabled") == "1"}


# `Profile | User`: a User is a Profile, but a copy of one with a field changed
# (`{**user, "admin": "0"}`) is typed as a User only where a User is expected
def is_admin(user: Profile | User, admins: list[str]) -> bool:
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


async def _changing(db: Client, holder: str, email: str) -> bool:
    """`holder` has a live change token for `email`: it may be between its steps 1 and 4."""
    value = await db.call("GET", tokens.key("change", holder))
    return bool(value) and str(value).endswith(" " + email)


async def change_email(db: Client, username: str, stored: str, email: str,
                       verify_ttl: int) -> tuple[str, str | None] | None:
    """The change token whose stored value is `stored` used: the user's address becomes
    `email` (verified), in the steps the module's docstring explains; (the old address, the
    user the new one was taken from or None). None if the token or
    the user's generation no longer holds; Taken("email") if another account holds the
    address (the token then stays usable)."""
    entry = keys.email(email)
    holder = await db.script(_CLAIM, [entry], [username])  # 1
    took, dangling = None, None
    if holder and holder != username:  # 2
        state = await _holding(db, holder, email, verify_ttl)
        for _ in range(_PATIENCE):
            if state != "absent" and not (state == "none" and await _changing(db, holder, email)):
                break
            await asyncio.sleep(0.02)
            state = await _holding(db, holder, email, verify_ttl)
        if state == "keeps":
            raise Taken("email")
        if state == "stale":
            if not await db.script(_TAKE_FROM, [keys.user(holder)], [email, int(time.time()) - verify_ttl]):
                raise Taken("email")
            took = holder
            await db.script(_INDEX_DROP, _INDEXES, [took, email, ""])
        else:
            dangling = holder
        if not await db.script(_SWAP, [entry], [holder, username]):
            raise Taken("email")

    async def give_back() -> None:
        back = dangling if dangling and await _holds(db, dangling, email) else ""
        if not await _holds(db, username, email):
            await db.script(_SWAP, [entry], [username, back])

    token_key = tokens.key("change", username)
    changed = await db.script(_CHANGE, [keys.user(username), token_key], [stored, email])  # 4
    if not changed:
        await give_back()
        return None
    old, old_verified, value, ttl = (str(part) for part in changed)
    if (await db.call("GET", entry) != username  # 5
            or (dangling and await _holds(db, dangling, email))):
        await db.script(_UNCHANGE, [keys.user(username), token_key], [email, old, old_verified, value, ttl])
        await give_back()
        raise Taken("email")
    await db.script(_INDEX_DROP, _INDEXES, [username, old, ""])
    await db.script(_INDEX_ADD, _INDEXES, [username, email])
    if old and old != email:
        await drop_email(db, username, old)
    return old, took


async def release(db: Client, username: str, email: str) -> bool:
    """Takes `email` from an account that never verified it (its email becomes empty): the
    record first, then its entries (a stop between leaves dangling ones)."""
    if not await db.script(_RELEASE, [keys.user(username)], [email]):
        return False
    await drop_email(db, username, email)
    await db.script(_INDEX_DROP, _INDEXES, [username, email, ""])
    return True


async def drop_email(db: Client, name: str, email: str) -> None:
    """`email:<email>` deleted while it names `name`, after `name`'s record let the address
    go; put back if a new record of the name holds the address by then (a destroyed user's
    name and address signed up again between the steps)."""
    await db.script(_SWAP, [keys.email(email)], [name, ""])
    if await _holds(db, name, email):
        await db.call("SET", keys.email(email), name, "NX")


async def delete(db: Client, user: User, destroying: str = "") -> bool:
    """The user, its sessions and its tokens (one step), then its indexes; with `destroying`,
    only if the user still carries that mark (not re-enabled, not another user of the name)."""
    name = user["username"]
    had = await _remove(db, name, user.get("email", ""), "destroying" if destroying else "", destroying)
    if had is None:
        return False
    if had:
        await drop_email(db, name, had)
    return True
