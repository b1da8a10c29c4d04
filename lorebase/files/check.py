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
trash job was never queued: its local copy waits in trash/) gets its trash job."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ..tasks.queue import doing_lists, names
from . import keys
from . import s3 as s3mod
from .keys import S3_QUEUE
from .store import ID, s3_key

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


def _trash_leftovers(data: Path, pending: set[str]) -> set[str]:
    """Ids of local copies in trash/ older than ORPHAN_AGE whose trash job is not pending."""
    trash = data / "trash"
    if not trash.exists():
        return set()
    return {p.name for p in trash.iterdir()
            if ID.match(p.name) and p.name not in pending and time.time() - p.stat().st_mtime >= ORPHAN_AGE}


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
    with `repair` those it could not fix."""
    data = Path(config.DATA_DIR)
    records = sorted(_records(db).values())
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
        local = data / "files" / file_id[-2:] / file_id
        if db.zscore(keys.files(user), file_id) is None:  # every score is 0: test presence, not truth
            problems += 1
            print(f"{file_id}: not in {keys.files(user)}" + (" (added)" if repair else ""), file=out)
            if repair:
                db.eval(_LIST, 2, key, keys.files(user), user, file_id)
                fixed += 1
        on_disk = local.exists()
        if on_disk and local.stat().st_size != int(meta.get("size", -1)):
            problems += 1
            print(f"{file_id}: local size {local.stat().st_size} != recorded {meta.get('size')}", file=out)
        elif on_disk and verify and s3mod.sha256_of(local) != meta.get("sha256"):
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
                local.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(config.S3_BUCKET, s3_key(user, file_id), str(local))
                print(f"{file_id}: missing on disk (fetched back from S3)", file=out)
                fixed += 1
            else:
                print(f"{file_id}: missing on disk" + (" and in S3" if s3 is not None and not in_s3 else ""), file=out)
        _progress(n, len(records), progress)
    files_dir = data / "files"
    if files_dir.exists():
        unknown = [p for p in files_dir.glob("*/*") if p.name not in seen and ID.match(p.name)]
        now_known = set(_records(db)) if unknown else set()  # a second scan: uploads since the first
        for path in unknown:
            if path.name not in now_known and time.time() - path.stat().st_mtime >= ORPHAN_AGE:
                problems += 1
                print(f"{path.name}: on disk but not in Redis (orphan)", file=out)
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
    leftovers = _trash_leftovers(data, _pending(db, "trash")) if s3 is not None else set()
    if s3 is not None and leftovers:
        queued = _pending(db, None)
        for user, file_id in _s3_objects(s3, config.S3_BUCKET):
            if file_id not in leftovers or file_id in queued or db.exists(keys.file(user, file_id)):
                continue
            if file_id in _pending(db, None):  # queued since the first read
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
