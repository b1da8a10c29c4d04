"""Builds the admin's search indexes, `users:by-name` and `users:by-email`, for the users of a
database older than them (new users are indexed by signup itself). Each user is indexed by
the same Lua step `lorebase check --repair` uses, which reads the user and writes its
entries at once: a user signing up, deleted or losing its address meanwhile is never
half-indexed, so writes need no pause. Running it again adds nothing."""

from typing import Any

from lorebase.identity import keys, users

PAUSE = False


def migrate(db: Any) -> None:
    index = db.register_script(users.INDEX)
    for name in db.sscan_iter(keys.USERS, count=1000):
        index(keys=users.index_keys(name), args=[name, "1"])


def check(db: Any) -> list[str]:
    index = db.register_script(users.INDEX)
    return [f"{keys.user(name)}: not indexed ({', '.join(missing)})"
            for name in db.sscan_iter(keys.USERS, count=1000)
            if (missing := index(keys=users.index_keys(name), args=[name, "0"]))]
