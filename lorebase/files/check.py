"""The file store's part of `lorebase check`, and `lorebase files check [--repair]` (the
store's part alone, the same findings in its own lines): compares the file metadata in Redis,
the local disk and S3, reports every disagreement as a finding through the CheckContext, and
with --repair fixes what it can: a missing local copy is fetched back from S3, a missing S3
copy is queued for upload, a dangling id is dropped. A file whose upload is still queued (or
waiting to be retried) is not missing from S3, only pending.

The server may write while this runs: each repair in Redis is one script that re-checks its
problem first (an id is dropped only while it still has no record, a record listed only while
it still exists), and a file deleted or uploaded since the scan is not reported.

A record and its S3 job are written in two steps (store.py), so the check also sweeps what a
stop between them leaves: a record never mirrored (not in S3, no job pending) gets its put
job again, and an object in the bucket with no record and no job pending (a removal whose
trash job was never queued: its local copy waits in trash/) gets its trash job.

The disk is the one holding the bytes, through Blobs (blobs.py): this node's, or the file
server's at FILES_URL (listed, hashed and fetched back there), so the check runs on any node.

`lorebase check` also compares each user's `usage:` with the sizes of their files, and finds
the files and usage of users who do not exist (removed as a destroy removes them)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import DomainError
from ..tasks.queue import doing_lists, names
from . import keys
from . import s3 as s3mod
from .blobs import Stat
from .keys import S3_QUEUE
from .store import ID, s3_key
from .where import blobs

if TYPE_CHECKING:
    from ..extension import CheckContext

# a record listed in its user's set, only while it still exists with that user
_LIST = ("if redis.call('HGET', KEYS[1], 'user') == ARGV[1] then return redis.call('ZADD', KEYS[2], 0, ARGV[2]) end "
         "return 0")
# a listed id dropped, only while it still has no record
_DROP = "if redis.call('EXISTS', KEYS[1]) == 0 then return redis.call('ZREM', KEYS[2], ARGV[1]) end return 0"
ORPHAN_AGE = 60  # seconds: a younger file on disk may be an upload about to be recorded

# KEYS: usage, files, then each listed file's record. ARGV: the user, '1' to repair, then the
# listed ids. false if it agrees, or if the list changed since it was read (the next run looks).
_USAGE = """
if redis.call('ZCARD', KEYS[2]) ~= #KEYS - 2 then return false end
local sum = 0
for i = 3, #KEYS do
  if not redis.call('ZSCORE', KEYS[2], ARGV[i]) then return false end
  local f = redis.call('HMGET', KEYS[i], 'user', 'size')
  if f[1] == ARGV[1] then sum = sum + tonumber(f[2] or '0') end
end
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used == sum then return false end
if ARGV[2] == '1' then
  if sum > 0 then redis.call('SET', KEYS[1], sum) else redis.call('DEL', KEYS[1]) end
end
return {tostring(used), tostring(sum)}
"""


def _pending(db: Any, op: str | None = "put") -> set[str]:
    """Ids whose S3 job (of `op`; None: any) is still on its way: queued, running or waiting
    for a retry."""
    queue = names(S3_QUEUE)
    raws = [raw for key in (queue["queue"], *doing_lists(db, queue)) for raw in db.lrange(key, 0, -1)]
    raws += db.zrange(queue["retry"], 0, -1)
    pending = set()
    for raw in raws:
        try:
            job = json.loads(raw)
        except ValueError:
            continue
        if isinstance(job, dict) and (op is None or job.get("op") == op):
            pending.add(str(job.get("id")))
    return pending


def _records(db: Any) -> dict[str, str]:
    """Every file record's key by id (`file:{<user>}:<id>`), by SCAN."""
    out = {}
    for key in db.scan_iter(match=keys.file("*", "*"), count=1000):
        named = keys.file_id(key)
        if named and ID.match(named[1]):
            out[named[1]] = key
    return out


def _old(stat: Stat) -> bool:
    return time.time() - stat.mtime_ns / 1e9 >= ORPHAN_AGE


def _trash_leftovers(trashed: dict[str, Stat], pending: set[str]) -> set[str]:
    """Ids of copies in trash/ older than ORPHAN_AGE whose trash job is not pending."""
    return {i for i, stat in trashed.items() if i not in pending and _old(stat)}


def _s3_objects(s3: Any, bucket: str) -> list[tuple[str, str]]:
    """(user, id) of every object under `files/` in the bucket."""
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="files/"):
        for item in page.get("Contents", []):
            _, user, file_id = [*item["Key"].split("/", 2), "", ""][:3]
            if user and ID.match(file_id):
                found.append((user, file_id))
    return found


def store(ctx: CheckContext, verify: bool = False) -> int:
    """Records, `files:` sets, the disk and S3 agree (`verify`: the bytes on disk hash to the
    recorded SHA-256 too); how many files wait for their upload (not a problem)."""
    with asyncio.Runner() as runner:  # one loop for the blobs' connections
        held = blobs(ctx.config)
        try:
            return _store(ctx, held, runner.run, verify)
        finally:
            runner.run(held.close())


def _store(ctx: CheckContext, held: Any, run: Callable[[Any], Any], verify: bool) -> int:
    config, db, repair = ctx.config, ctx.db, ctx.repair
    records = sorted(_records(db).values())
    ctx.count("files", len(records))
    on_disk_now: dict[str, Stat] = run(held.listing())  # after the records: each one's bytes came first
    s3 = s3mod.client(config) if config.S3_BUCKET else None
    pending = _pending(db) if s3 is not None else set()
    waiting = 0
    seen: set[str] = set()
    for key in ctx.each("files", records):
        meta = db.hgetall(key)
        user, file_id = keys.file_id(key) or ("", "")
        seen.add(file_id)
        if not meta:  # deleted since the scan
            continue
        if db.zscore(keys.files(user), file_id) is None:  # every score is 0: test presence, not truth
            if repair:
                ctx.run(_LIST, [key, keys.files(user)], [user, file_id])
            ctx.found(file_id, f"not in {keys.files(user)}", "added")
        stat = on_disk_now.get(file_id)
        on_disk = stat is not None
        if stat is not None and stat.size != int(meta.get("size", -1)):
            ctx.found(file_id, f"local size {stat.size} != recorded {meta.get('size')}")
        elif on_disk and verify and run(held.digest(file_id)) != meta.get("sha256"):
            ctx.found(file_id, "local SHA-256 differs from the recorded one")
        in_s3 = None
        if s3 is not None:
            in_s3 = s3mod._exists(s3, config.S3_BUCKET, s3_key(user, file_id))
            if not in_s3 and file_id in pending:
                waiting += 1  # not a problem: the tasks process will upload it
            elif not in_s3:
                if repair and on_disk:
                    db.lpush(S3_QUEUE, json.dumps({"op": "put", "id": file_id, "user": user}))
                ctx.found(file_id, "not in S3", "upload queued" if on_disk else "")
        if not on_disk and not db.exists(key):  # deleted meanwhile: not a problem
            continue
        if not on_disk and repair and in_s3 and s3 is not None:
            try:
                run(held.fetch_back({"id": file_id, "user": user, "sha256": meta.get("sha256", "")}))
                ctx.found(file_id, "missing on disk", "fetched back from S3")
            except DomainError as error:
                ctx.found(file_id, f"missing on disk (fetching it back from S3 failed: {error.code})")
        elif not on_disk:
            ctx.found(file_id, "missing on disk" + (" and in S3" if s3 is not None and not in_s3 else ""))
    unknown = [i for i in on_disk_now if i not in seen]
    now_known = set(_records(db)) if unknown else set()  # a second scan: uploads since the first
    for file_id in unknown:
        if file_id not in now_known and _old(on_disk_now[file_id]):
            ctx.found(file_id, "on disk but not in Redis (orphan)")
    prefix, _, suffix = keys.files("\0").partition("\0")
    for list_key in db.scan_iter(match=keys.files("*"), count=1000):
        user = list_key[len(prefix):len(list_key) - len(suffix)]
        for file_id in db.zrange(list_key, 0, -1):
            if file_id not in seen and not db.exists(keys.file(user, file_id)):  # not one uploaded since
                if repair:
                    ctx.run(_DROP, [keys.file(user, file_id), list_key], [file_id])
                ctx.found(file_id, f"listed in {list_key} but has no metadata", "dropped")
    # a removal moves the local copy into trash/ before its record goes, and its trash job
    # deletes it: a copy left there, old and with no job pending, is the sign of a trash job
    # lost between the two steps (store.py); only then is the bucket listed for objects
    # without a record (so a check with nothing of the kind costs S3 nothing)
    leftovers = _trash_leftovers(run(held.listing("trash")), _pending(db, "trash")) if s3 is not None else set()
    if s3 is not None and leftovers:
        queued = _pending(db, None)
        candidates = [(user, file_id) for user, file_id in _s3_objects(s3, config.S3_BUCKET)
                      if file_id in leftovers and file_id not in queued and not db.exists(keys.file(user, file_id))]
        queued = _pending(db, None) if candidates else queued  # read once more: jobs queued since the first read
        for user, file_id in candidates:
            if file_id in queued:
                continue
            if repair:
                db.lpush(S3_QUEUE, json.dumps({"op": "trash", "id": file_id, "user": user}))
            ctx.found(file_id, "in S3 but has no record", "trash queued")
    return waiting


def usage(ctx: CheckContext) -> None:
    """`usage:{<user>}` is the sum of the sizes of the user's files; the files and usage of a
    user who does not exist are removed (files as a destroy removes them, to the S3 trash)."""
    db = ctx.db
    listed = ctx.tails(keys.files)
    counted = ctx.tails(keys.usage)
    # a user with neither a file list nor a usage key uses nothing: nothing to compare
    for name in ctx.each("usage", sorted(set(listed) | set(counted))):
        if not ctx.exists(name):
            continue
        ids = db.zrange(keys.files(name), 0, -1)
        wrong = ctx.run(_USAGE, [keys.usage(name), keys.files(name), *(keys.file(name, i) for i in ids)],
                        [name, ctx.flag, *ids])
        if wrong:
            ctx.found(keys.usage(name), f"{wrong[0]} bytes, but the files of {name} hold {wrong[1]}",
                      f"set to {wrong[1]}")
    for name in listed:
        if ctx.exists(name):
            continue
        count = db.zcard(keys.files(name))
        done = ""
        if ctx.repair:
            removed = ctx.remove_orphan_files(name)
            done = f"{removed} removed (to the S3 trash)" if not ctx.exists(name) else ""
        ctx.found(keys.files(name), f"{count} file{'s' if count != 1 else ''} of {name}, who does not exist", done)
    for name in counted:
        if ctx.drop_orphans(name, [keys.usage(name)]):
            ctx.found(keys.usage(name), f"usage of {name}, who does not exist", "deleted")


def _store_check(ctx: CheckContext) -> None:
    store(ctx)


CHECKS = (_store_check, usage)  # in this order (builtins.py registers them)
