"""Backups of Redis and their restore (seed: "uploading redis dumps to S3 periodically",
"Making structural changes to a production database").

A backup is a consistent snapshot taken over the replication stream (`redis-cli --rdb`: the
same path for the embedded Redis and an external one), gzipped, sealed with BACKUP_KEY, and a
sealed manifest, in S3_BUCKET or under DATA_DIR/backups/ without S3 (vault.py: the objects,
what counts as a backup). A snapshot without a manifest is unfinished, never restored, and
removed by the retention.

Restore verifies the manifest and the snapshot (sealed with this BACKUP_KEY under this name,
its SHA-256 the manifest's), refuses a name in the future, and loads the snapshot into a
scratch redis-server (a temp dir, a unix socket) before it touches anything: a forged,
corrupted or truncated backup is refused with nothing changed. Then the target (the embedded
Redis, or REDIS_URL) is emptied and every key copied in with DUMP/RESTORE, its TTL kept.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from ..db import address, connect_sync, parse_url, servers, with_user
from ..pause import flush_keeping_pause
from .vault import BackupError as BackupError
from .vault import Store, in_future, is_name, latest, name_time, now_name, sha256_of
from .vault import catalog as catalog
from .vault import store as store

CHUNK = 1 << 20


# -- taking one ---------------------------------------------------------------------------


def redis_url(config: Any) -> str:
    """The URL backups and restores connect with: the environment's Redis as the
    BACKUP_REDIS_USER ACL user (the API's own user can neither copy nor wipe the database),
    or with REDIS_URL's own credentials when none is set."""
    url = address(config)
    if config.BACKUP_REDIS_USER and config.REDIS_URL:  # the embedded Redis has no ACL users
        return with_user(url, str(config.BACKUP_REDIS_USER), str(config.BACKUP_REDIS_PASSWORD))
    return url


def cli_args(url: str) -> tuple[list[str], dict[str, str]]:
    """redis-cli's arguments for a Redis URL (the password in REDISCLI_AUTH, never in argv)."""
    opts = parse_url(url)
    args = ["-s", opts["path"]] if "path" in opts else ["-h", opts["host"], "-p", str(opts["port"])]
    env = dict(os.environ)
    if opts["password"]:
        env["REDISCLI_AUTH"] = opts["password"]
    if opts["username"]:
        args += ["--user", opts["username"]]
    return args, env


def snapshot(url: str, into: Path, timeout: float = 3600) -> None:
    """A consistent RDB of the Redis at `url`, over its replication stream. Behind Sentinel:
    of the primary the sentinels name. A Cluster: each primary's RDB, merged into one (a
    backup is one database whatever the topology, so it restores into any of them; the
    parts are consistent each, not with each other: no cluster-wide instant exists)."""
    parts = servers(url)
    if len(parts) == 1:
        _snapshot_one(parts[0], into, timeout)
        return
    with tempfile.TemporaryDirectory(prefix="lorebase-parts-") as tmp, scratch(None) as whole:
        for index, part in enumerate(parts):
            rdb = Path(tmp) / f"{index}.rdb"
            _snapshot_one(part, rdb, timeout)
            with scratch(rdb) as source:
                copy_all(source, whole, empty=False)
            rdb.unlink()
        whole.save()
        shutil.copyfile(Path(whole.connection_pool.connection_kwargs["path"]).parent / "dump.rdb", into)


def _snapshot_one(url: str, into: Path, timeout: float) -> None:
    args, env = cli_args(url)
    done = subprocess.run(["redis-cli", *args, "--rdb", str(into)], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0 or not into.exists() or into.stat().st_size == 0:
        raise BackupError(f"redis-cli --rdb failed: {(done.stderr or done.stdout).strip()[-300:]}")


def compress(rdb: Path, into: Path) -> None:
    """gzip `rdb` into `into`."""
    with open(rdb, "rb") as src, gzip.open(into, "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst, CHUNK)


def file_hashes(db: redis.Redis) -> dict[str, str]:
    """Every stored file's id → SHA-256, read from the snapshot's scratch copy."""
    from ..files import keys
    from ..files.store import ID

    out: dict[str, str] = {}
    for key in db.scan_iter(match=keys.file("*", "*"), count=1000):
        named = keys.file_id(key.decode())
        file_id = named[1] if named else ""
        if ID.match(file_id):
            digest = db.hget(key, "sha256")
            out[file_id] = digest.decode() if isinstance(digest, bytes) else str(digest or "")
    return out


def take(config: Any, url: str, where: Store | None = None) -> dict[str, Any]:
    """One backup now, then the retention; its manifest."""
    where = where or store(config)
    name = now_name()
    with tempfile.TemporaryDirectory(prefix="lorebase-backup-") as tmp:
        rdb, packed = Path(tmp) / "dump.rdb", Path(tmp) / f"{name}.rdb.gz"
        snapshot(url, rdb)
        with scratch(rdb) as db:  # read the manifest from the snapshot itself: the same moment
            keys = int(db.dbsize())
            files = file_hashes(db)
        compress(rdb, packed)
        manifest = where.put(name, packed, {"name": name, "created": int(name_time(name)), "keys": keys,
                                            "files": files})
    retain(config, where, name)
    return manifest


def retain(config: Any, where: Store, taken: str) -> None:
    """The retention, over the backups that verify only (vault.catalog): an object that is not
    one, planted or stray, is never counted, so it cannot push a real backup out, and is never
    deleted (a backup under an older BACKUP_KEY is one). Unfinished snapshots older than an
    hour are removed."""
    found, _ = catalog(where)
    now = time.time()
    for old in expired([m["name"] for m in found], int(config.BACKUP_KEEP), int(config.BACKUP_DAILY), now):
        where.delete(old)
    for unfinished in where.partial():
        if unfinished != taken and now - name_time(unfinished) > 3600:
            where.delete(unfinished)


def expired(names: list[str], keep: int, daily: int, now: float) -> list[str]:
    """Which backups the retention deletes: all but the newest `keep`, and the newest of each
    UTC day for the last `daily` days."""
    newest_first = sorted(names, reverse=True)
    kept = set(newest_first[:keep])
    days: set[str] = set()
    for name in newest_first:
        day = name[:8]
        if day not in days and now - name_time(name) < daily * 86400:
            days.add(day)
            kept.add(name)
    return [n for n in newest_first if n not in kept]


# -- restoring one --------------------------------------------------------------------------


@contextmanager
def scratch(rdb: Path | None, wait: float = 60) -> Iterator[redis.Redis]:
    """A throwaway redis-server serving `rdb` (None: empty) on a unix socket; refuses a
    snapshot it cannot load."""
    with tempfile.TemporaryDirectory(prefix="lorebase-scratch-") as tmp:
        sock = Path(tmp) / "redis.sock"
        if rdb is not None:
            shutil.copyfile(rdb, Path(tmp) / "dump.rdb")
        proc = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", str(sock), "--dir", tmp,
                                 "--dbfilename", "dump.rdb", "--appendonly", "no", "--save", "",
                                 "--logfile", str(Path(tmp) / "redis.log")],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            db = connect_sync(f"unix://{sock}", 30, decode=False)
            deadline = time.monotonic() + wait
            while True:
                if proc.poll() is not None:
                    log = (Path(tmp) / "redis.log").read_text(errors="replace")[-400:]
                    raise BackupError(f"the snapshot does not load into Redis: {log.strip()}")
                try:
                    if sock.exists() and db.ping():
                        break
                except redis.BusyLoadingError:
                    pass
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise BackupError("the scratch Redis did not start")
                time.sleep(0.05)
            yield db
        finally:
            proc.kill()
            proc.wait()


def resolve(where: Store, name: str) -> str:
    """`latest` (the newest backup that verifies, not named in the future) or a name there is a
    manifest for, not in the future (verified when fetched)."""
    if name == "latest":
        return latest(where)
    if is_name(name) and in_future(name):
        raise BackupError(f"backup {name} is named for a time in the future: refused; nothing was changed")
    if name not in where.names():
        raise BackupError(f"no backup {name} in {where.where} (see `lorebase backup list`); nothing was changed")
    return name


def fetch_checked(where: Store, name: str, into: Path) -> dict[str, Any]:
    """The backup's manifest, its snapshot in `into` as an RDB, both verified."""
    manifest = where.manifest(name)
    closed, packed = into.with_suffix(".sealed"), into.with_suffix(".rdb.gz")
    where.fetch(name, closed)
    if sha256_of(closed) != manifest.get("sha256"):
        raise BackupError(f"backup {name} is corrupted: its SHA-256 does not match its manifest; nothing was changed")
    where.open_snapshot(name, closed, packed)
    closed.unlink()
    try:
        with gzip.open(packed, "rb") as src, open(into, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
    except (OSError, EOFError) as error:
        raise BackupError(f"backup {name} does not decompress ({error}); nothing was changed") from None
    return manifest


def copy_all(source: redis.Redis, target: redis.Redis, batch: int = 500, empty: bool = True) -> int:
    """Empties `target` (unless empty=False; a write pause set on it is kept) and copies every
    key of `source` into it, TTLs kept; how many."""
    if empty:
        flush_keeping_pause(target)
    count = 0
    keys: list[bytes] = []

    def flush() -> None:
        pipe = source.pipeline(transaction=False)
        for key in keys:
            pipe.pttl(key)
            pipe.dump(key)
        replies = pipe.execute()
        out = target.pipeline(transaction=False)
        for key, ttl, blob in zip(keys, replies[::2], replies[1::2], strict=True):
            if blob is None or ttl == -2:
                continue  # expired meanwhile
            out.restore(key, max(int(ttl), 0), blob, replace=True)
        out.execute()
        keys.clear()

    for key in source.scan_iter(count=1000):
        keys.append(key)
        count += 1
        if len(keys) >= batch:
            flush()
    if keys:
        flush()
    return count


Ready = Callable[[redis.Redis, dict[str, Any]], None]


def restore(where: Store, name: str, url: str, ready: Ready | None = None) -> dict[str, Any]:
    """Replaces the database at `url` with backup `name` (already resolved); what it restored.
    `ready(source, manifest)`: called once the backup is verified (`source`: a scratch Redis
    serving it), before the target is touched; what it raises stops the restore."""
    from ..identity.keys import USERS

    with tempfile.TemporaryDirectory(prefix="lorebase-restore-") as tmp:
        rdb = Path(tmp) / "dump.rdb"
        manifest = fetch_checked(where, name, rdb)
        with scratch(rdb) as source:
            if int(source.dbsize()) != int(manifest["keys"]):
                raise BackupError(f"backup {name} holds {source.dbsize()} keys, its manifest says "
                                  f"{manifest['keys']}; nothing was changed")
            if ready is not None:
                ready(source, manifest)
            target = connect_sync(url, 60, decode=False)
            try:
                count = copy_all(source, target)
                users = int(target.scard(USERS))
            except redis.exceptions.NoPermissionError as error:
                raise BackupError(f"the Redis user may not replace the database ({error}): restores connect as "
                                  "BACKUP_REDIS_USER (README: Backups and restore)") from None
            except redis.RedisError as error:
                raise BackupError(f"the target Redis failed during the restore ({error}): run it again") from None
            finally:
                target.close()
    return {"name": name, "keys": count, "users": users, "files": len(manifest["files"])}
