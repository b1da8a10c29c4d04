"""Builds the admin's search indexes, `users:by-name` and `users:by-email`, for the users of a
database older than them (new users are indexed by signup itself). Each user is indexed by
one Lua step that reads the user and writes its entries at once: a user signing up, deleted
or losing its address meanwhile is never half-indexed, so writes need no pause. Running it
again adds nothing.

It names the keys of its time itself (`user:<name>`, `users`, `users:by-name`,
`users:by-email`: the layout before `0002_cluster_keys.py`), not through the key owners: a
migration is applied to a database of its own time, and the owners now build the layout of
0002 on. On a database that 0002 moved already, it finds no `users` set and does nothing."""

from typing import Any

PAUSE = False

# KEYS: user, users:by-name, users:by-email. ARGV: the name, '1' to write. The missing entries.
INDEX = """
local u = redis.call('HMGET', KEYS[1], 'username', 'email')
if u[1] ~= ARGV[1] then return {} end
local out = {}
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  out[#out + 1] = 'name'
  if ARGV[2] == '1' then redis.call('ZADD', KEYS[2], 0, ARGV[1]) end
end
if u[2] and u[2] ~= '' then
  local member = u[2] .. '\\0' .. ARGV[1]
  if not redis.call('ZSCORE', KEYS[3], member) then
    out[#out + 1] = 'email'
    if ARGV[2] == '1' then redis.call('ZADD', KEYS[3], 0, member) end
  end
end
return out
"""


def _keys(name: str) -> list[str]:
    return [f"user:{name}", "users:by-name", "users:by-email"]


def migrate(db: Any) -> None:
    index = db.register_script(INDEX)
    for name in db.sscan_iter("users", count=1000):
        index(keys=_keys(name), args=[name, "1"])


def check(db: Any) -> list[str]:
    index = db.register_script(INDEX)
    return [f"user:{name}: not indexed ({', '.join(missing)})"
            for name in db.sscan_iter("users", count=1000)
            if (missing := index(keys=_keys(name), args=[name, "0"]))]
