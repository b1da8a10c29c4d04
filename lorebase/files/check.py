"""`lorebase files check [--repair]`: compares the file metadata in Redis, the local disk and
S3, prints every disagreement, and with --repair fixes what it can: a missing local copy is
fetched back from S3, a missing S3 copy is queued for upload, a dangling id is dropped. A file
whose upload is still queued (or waiting to be retried) is not missing from S3, only pending.

The server may write while this runs: each repair in Redis is one script that re-checks its
problem first (an id is dropped only while it still has no record, a record listed only while
it still exists), and a file deleted or uploaded since the scan is not reported.

A record and its S3 job are written in two steps (store.py), so the check also sweeps what a
stop between them leaves: a record never mirrored (not in S3, no job pending) gets its put
job again, and an object in the bucket with no record and no job pending (a removal whose
trash job was never queued: its local copy waits in trash/) gets its trash job.

The disk is the one holding the bytes, through Blobs (blobs.py): this node's, or the file
server's at FILES_URL (listed, hashed and fetched back there), so the check runs on any node."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any, TextIO

from ..errors import DomainError
from ..tasks.queue import doing_lists, names
from . import keys
from . import s3 as s3mod
from .blobs import Stat
from .keys import S3_QUEUE
from .store import ID, s3_key
from .where import blobs

# a record listed in its user's set, only while it still exists with that user
_LIST = ("if redis.call('HGET', KEYS[1], 'user') == ARGV[1] then return redis.call('ZADD', KEYS[2], 0, ARGV[2]) end "
         "return 0")
# a listed id dropped, only while it still has no record
_DROP = "if redis.call('EXISTS', KEYS[1]) == 0 then return redis.call('ZREM', KEYS[2], ARGV[1]) end return 0"
ORPHAN_AGE = 60  # seconds: a younger file on disk may be an upload about to be recorded


def _progress(done: int, total: int, out: TextIO) -> None:
    if not out.isatty() and done != total:
        return
    width = 30
    filled = width * done // max(total, 1)
    out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done == total:
        out.write("\n")
    out.flush()


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


def check(config: Any, db: Any, repair: bool = False, verify: bool = False,
          out: TextIO = sys.stdout, progress: TextIO = sys.stderr) -> int:
    """Prints one line per problem; returns how many problems are left: all those found, or
    with `repair` those it could not fix. Raises blobs.Unavailable if the file server does
    not answer."""
    with asyncio.Runner() as runner:  # one loop for the blobs' connections
        store = blobs(config)
        try:
            return _check(config, db, store, runner.run, repair, verify, out, progress)
        finally:
            runner.run(store.close())


def _check(config: Any, db: Any, store: Any, run: Any, repair: bool, verify: bool, out: TextIO,
           progress: TextIO) -> int:
    records = sorted(_records(db).values())
    on_disk_now: dict[str, Stat] = run(store.listing())  # after the records: each one's bytes came first
    s3 = s3mod.client(config) if config.S3_BUCKET else None
    pending = _pending(db) if s3 is not None else set()
    waiting = 0
    problems = fixed = 0
    seen: set[str] = set()
    for n, key in enumerate(records, 1):
        meta = db.hgetall(key)
        user, file_id = keys.file_id(key) or ("", "")
        seen.add(file_id)
        if not meta:  # deleted since the scan
            _progress(n, len(records), progress)
            continue
        if db.zscore(keys.files(user), file_id) is None:  # every score is 0: test presence, not truth
            problems += 1
            print(f"{file_id}: not in {keys.files(user)}" + (" (added)" if repair else ""), file=out)
            if repair:
                db.eval(_LIST, 2, key, keys.files(user), user, file_id)
                fixed += 1
        held = on_disk_now.get(file_id)
        on_disk = held is not None
        if held is not None and held.size != int(meta.get("size", -1)):
            problems += 1
            print(f"{file_id}: local size {held.size} != recorded {meta.get('size')}", file=out)
        elif on_disk and verify and run(store.digest(file_id)) != meta.get("sha256"):
            problems += 1
            print(f"{file_id}: local SHA-256 differs from the recorded one", file=out)
        in_s3 = None
        if s3 is not None:
            in_s3 = s3mod._exists(s3, config.S3_BUCKET, s3_key(user, file_id))
            if not in_s3 and file_id in pending:
                waiting += 1  # not a problem: the tasks process will upload it
            elif not in_s3:
                problems += 1
                print(f"{file_id}: not in S3" + (" (upload queued)" if repair and on_disk else ""), file=out)
                if repair and on_disk:
                    db.lpush(S3_QUEUE, json.dumps({"op": "put", "id": file_id, "user": user}))
                    fixed += 1
        if not on_disk and not db.exists(key):  # deleted meanwhile: not a problem
            _progress(n, len(records), progress)
            continue
        if not on_disk:
            problems += 1
            if repair and in_s3 and s3 is not None:
                try:
                    run(store.fetch_back({"id": file_id, "user": user, "sha256": meta.get("sha256", "")}))
                    print(f"{file_id}: missing on disk (fetched back from S3)", file=out)
                    fixed += 1
                except DomainError as error:
                    print(f"{file_id}: missing on disk (fetching it back from S3 failed: {error.code})", file=out)
            else:
                print(f"{file_id}: missing on disk" + (" and in S3" if s3 is not None and not in_s3 else ""), file=out)
        _progress(n, len(records), progress)
    unknown = [i for i in on_disk_now if i not in seen]
    now_known = set(_records(db)) if unknown else set()  # a second scan: uploads since the first
    for file_id in unknown:
        if file_id not in now_known and _old(on_disk_now[file_id]):
            problems += 1
            print(f"{file_id}: on disk but not in Redis (orphan)", file=out)
    prefix, _, suffix = keys.files("\0").partition("\0")
    for list_key in db.scan_iter(match=keys.files("*"), count=1000):
        user = list_key[len(prefix):len(list_key) - len(suffix)]
        for file_id in db.zrange(list_key, 0, -1):
            if file_id not in seen and not db.exists(keys.file(user, file_id)):  # not one uploaded since
                problems += 1
                print(f"{file_id}: listed in {list_key} but has no metadata" + (" (dropped)" if repair else ""),
                      file=out)
                if repair:
                    db.eval(_DROP, 2, keys.file(user, file_id), list_key, file_id)
                    fixed += 1
    # a removal moves the local copy into trash/ before its record goes, and its trash job
    # deletes it: a copy left there, old and with no job pending, is the sign of a trash job
    # lost between the two steps (store.py); only then is the bucket listed for objects
    # without a record (so a check with nothing of the kind costs S3 nothing)
    leftovers = _trash_leftovers(run(store.listing("trash")), _pending(db, "trash")) if s3 is not None else set()
    if s3 is not None and leftovers:
        queued = _pending(db, None)
        candidates = [(user, file_id) for user, file_id in _s3_objects(s3, config.S3_BUCKET)
                      if file_id in leftovers and file_id not in queued and not db.exists(keys.file(user, file_id))]
        queued = _pending(db, None) if candidates else queued  # read once more: jobs queued since the first read
        for user, file_id in candidates:
            if file_id in queued:
                continue
            problems += 1
            print(f"{file_id}: in S3 but has no record" + (" (trash queued)" if repair else ""), file=out)
            if repair:
                db.lpush(S3_QUEUE, json.dumps({"op": "trash", "id": file_id, "user": user}))
                fixed += 1
    summary = f"{len(records)} files checked, {problems} problem{'s' if problems != 1 else ''}"
    if repair:
        summary += f", {fixed} repaired"
    if waiting:
        summary += f" ({waiting} S3 upload{'s' if waiting != 1 else ''} pending)"
    print(summary, file=out)
    return problems - fixed
