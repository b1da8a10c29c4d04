"""Moves a database from the layout before hash tags to the layout that runs unchanged on
one Redis and on a Redis Cluster (README: Keys on a Redis Cluster): every key of a user under
the tag `{<username>}`, the users' indexes under `{users}`, each queue under its own tag,
the stats under `{stats}`, each scheduled task's state and lock under the task's name.

| before | after |
|---|---|
| `user:<name>`, `sessions:<name>`, `verify:<name>`, `reset:<name>` | `user:{<name>}`, ... |
| `session:<name>:<random>` | `session:{<name>}:<random>` |
| `file:<id>` | `file:{<user>}:<id>` (the user from the record's `user` field) |
| `files:<name>`, `usage:<name>`, `notes:<name>`, `notebook:<name>` | tagged the same way |
| `users`, `users:by-name`, `users:by-email` | `{users}`, `{users}:by-name`, `{users}:by-email` |
| `invites` | `{invites}` (`invite:<email>` and `email:<email>` stay) |
| `mail:queue`/`sending`/`retry`/`dead`, `s3:queue`/`doing`/`retry`/`dead` | `{mail}:…`, `{s3}:…` |
| `stats:total`, `stats:<minute>` | `{stats}:total`, `{stats}:<minute>` (`stats:u:…` stay) |
| `task:<name>`, `lock:<name>` | `task:{<name>}`, `lock:{<name>}` |
| `beat:alerts`, `beat:alerts:<node>` | `beat:{mail}:alerts`, `beat:{mail}:alerts:<node>` |

Each key is RENAMEd (its TTL goes with it). The members of sets, sorted sets and strings
that name keys (session ids, file ids, usernames) are unchanged, so nothing inside a value
needs rewriting. Where the new key exists already (written by the new code between its
deploy and this run), a queue, set or sorted set is merged into it, `stats:total` added to
it, and the new state of stats minutes, scheduled tasks and beat alerts kept (the old one
fills only the fields it lacks); any other key (a user's, say) is left where it is and
`check` names it, for a person to look at.

It runs on one Redis (`lorebase migrate` works on one; a Cluster starts from the new layout).
It also builds the admin's search index for users that lack it (what 0001 did, for a
database older than both). PAUSE: the old and the new code must not write while keys move.
Running it again changes nothing: no key of the old layout is left to move, and every user
is indexed already.
"""

from __future__ import annotations

import re
from typing import Any

from lorebase.identity import keys, users

PAUSE = True

_NAME = r"[a-z0-9_.-]{3,32}"
_ID = r"[0-9a-f]{23}"
# old key → how to build the new one (None: computed by `new_name`)
_PER_USER = re.compile(rf"^(user|sessions|verify|reset|files|usage|notes|notebook):({_NAME})$")
_SESSION = re.compile(rf"^session:({_NAME}):([^{{}}:]+)$")
_FILE = re.compile(rf"^file:({_ID})$")
_FIXED = {"users": "{users}", "users:by-name": "{users}:by-name", "users:by-email": "{users}:by-email",
          "invites": "{invites}", "stats:total": "{stats}:total", "beat:alerts": "beat:{mail}:alerts",
          **{f"mail:{part}": f"{{mail}}:{part}" for part in ("queue", "sending", "retry", "dead")},
          **{f"s3:{part}": f"{{s3}}:{part}" for part in ("queue", "doing", "retry", "dead")}}
_MINUTE = re.compile(r"^stats:(\d+)$")
_TASK = re.compile(r"^(task|lock):([a-z_]+)$")
_ALERTS = re.compile(r"^beat:alerts:([^{}]+)$")
_PATTERNS = ["user:*", "sessions:*", "verify:*", "reset:*", "files:*", "usage:*", "notes:*", "notebook:*",
             "session:*", "file:*", "users*", "invites", "mail:*", "s3:*", "stats:*", "task:*", "lock:*",
             "beat:alerts*"]


def new_name(db: Any, key: str) -> str | None:
    """The key's name in the new layout, or None if it has none to move to (already there,
    or not one of the keys this migration moves)."""
    if key in _FIXED:
        return _FIXED[key]
    if m := _PER_USER.match(key):
        return f"{m.group(1)}:{{{m.group(2)}}}"
    if m := _SESSION.match(key):
        return f"session:{{{m.group(1)}}}:{m.group(2)}"
    if m := _FILE.match(key):
        user = db.hget(key, "user") if db.type(key) == "hash" else None
        return f"file:{{{user}}}:{m.group(1)}" if user and re.fullmatch(_NAME, user) else None
    if m := _MINUTE.match(key):
        return f"{{stats}}:{m.group(1)}"
    if m := _TASK.match(key):
        return f"{m.group(1)}:{{{m.group(2)}}}"
    if m := _ALERTS.match(key):
        return f"beat:{{mail}}:alerts:{m.group(1)}"
    return None


def old_keys(db: Any) -> list[str]:
    """Every key of the old layout, by SCAN."""
    found: set[str] = set()
    for pattern in _PATTERNS:
        found.update(k for k in db.scan_iter(match=pattern, count=1000) if "{" not in k)
    return sorted(k for k in found if new_name(db, k) is not None)


def _merge(db: Any, old: str, new: str) -> bool:
    """Adds `old` into an existing `new` of the same type where that has one meaning (a queue's
    list, a set, a sorted set, the stats total); True if it did (and `old` is gone)."""
    kind, there = db.type(old), db.type(new)
    if kind != there:
        return False
    if kind == "list":  # the old jobs are the older ones: they go to the end taken first
        while db.lmove(old, new, "LEFT", "RIGHT") is not None:
            pass
    elif kind == "set":
        db.sunionstore(new, [new, old])
    elif kind == "zset":
        db.zunionstore(new, [new, old], aggregate="MAX")
    elif kind == "hash" and new == "{stats}:total":
        for field, value in db.hgetall(old).items():
            if "." in value:
                db.hincrbyfloat(new, field, float(value))
            else:
                db.hincrby(new, field, int(value))
    elif new.startswith(("{stats}:", "task:", "lock:", "beat:")):  # the new code's state is the newer
        if kind == "hash":
            for field, value in db.hgetall(old).items():
                db.hsetnx(new, field, value)
    else:
        return False
    db.delete(old)
    return True


def migrate(db: Any) -> None:
    for key in old_keys(db):
        new = new_name(db, key)
        if new is None or not db.exists(key):
            continue
        if not db.renamenx(key, new):
            _merge(db, key, new)
    # a database older than the search index (0001) gets it here: today's consistency check
    # reads today's layout, so 0001 can no longer be applied on its own to an old layout
    index = db.register_script(users.INDEX)
    for name in db.sscan_iter(keys.USERS, count=1000):
        username, email = db.hmget(keys.user(name), "username", "email")
        if username == name:
            index(keys=users.index_keys(name), args=[name, email or "", "1"])


def check(db: Any) -> list[str]:
    return [f"{key}: still in the old layout (its new name {new_name(db, key)} is taken)" for key in old_keys(db)]
