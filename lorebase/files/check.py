"""`lorebase files check [--repair]`: compares the file metadata in Redis, the local disk and
S3, prints every disagreement, and with --repair fixes what it can: a missing local copy is
fetched back from S3, a missing S3 copy is queued for upload, a dangling id is dropped. A file
whose upload is still queued (or waiting to be retried) is not missing from S3, only pending.

The server may write while this runs: each repair in Redis is one script that re-checks its
problem first (an id is dropped only while it still has no record, a record listed only while
it still exists), and a file deleted or uploaded since the scan is not reported."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ..tasks.queue import names
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


def _pending_puts(db: Any) -> set[str]:
    """Ids whose S3 upload is still on its way: queued, running or waiting for a retry."""
    queue = names(S3_QUEUE)
    raws = [*db.lrange(queue["queue"], 0, -1), *db.lrange(queue["doing"], 0, -1), *db.zrange(queue["retry"], 0, -1)]
    pending = set()
    for raw in raws:
        try:
            job = json.loads(raw)
        except ValueError:
            continue
        if isinstance(job, dict) and job.get("op") == "put":
            pending.add(str(job.get("id")))
    return pending


def check(config: Any, db: Any, repair: bool = False, verify: bool = False,
          out: TextIO = sys.stdout, progress: TextIO = sys.stderr) -> int:
    """Prints one line per problem; returns how many problems are left: all those found, or
    with `repair` those it could not fix."""
    data = Path(config.DATA_DIR)
    records = sorted(k for k in db.scan_iter(match=keys.file("*"), count=1000) if ID.match(k.split(":", 1)[1]))
    s3 = s3mod.client(config) if config.S3_BUCKET else None
    pending = _pending_puts(db) if s3 is not None else set()
    waiting = 0
    problems = fixed = 0
    seen: set[str] = set()
    for n, key in enumerate(records, 1):
        meta = db.hgetall(key)
        file_id = key.split(":", 1)[1]
        seen.add(file_id)
        if not meta:  # deleted since the scan
            _progress(n, len(records), progress)
            continue
        user = meta.get("user", "")
        local = data / "files" / file_id[-2:] / file_id
        if db.zscore(keys.files(user), file_id) is None:  # every score is 0: test presence, not truth
            problems += 1
            print(f"{file_id}: not in files:{user}" + (" (added)" if repair else ""), file=out)
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
        for path in files_dir.glob("*/*"):
            if (path.name not in seen and ID.match(path.name) and not db.exists(keys.file(path.name))
                    and time.time() - path.stat().st_mtime >= ORPHAN_AGE):
                problems += 1
                print(f"{path.name}: on disk but not in Redis (orphan)", file=out)
    for user_key in db.scan_iter(match=keys.files("*"), count=1000):
        for file_id in db.zrange(user_key, 0, -1):
            if file_id not in seen and not db.exists(keys.file(file_id)):  # not one uploaded since
                problems += 1
                print(f"{file_id}: listed in {user_key} but has no metadata" + (" (dropped)" if repair else ""),
                      file=out)
                if repair:
                    db.eval(_DROP, 2, keys.file(file_id), user_key, file_id)
                    fixed += 1
    summary = f"{len(records)} files checked, {problems} problem{'s' if problems != 1 else ''}"
    if repair:
        summary += f", {fixed} repaired"
    if waiting:
        summary += f" ({waiting} S3 upload{'s' if waiting != 1 else ''} pending)"
    print(summary, file=out)
    return problems - fixed
