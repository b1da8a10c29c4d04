"""Where backups live, and what counts as one (issue 17: anyone holding the S3 keys, which
every API node and the file server hold, could plant a backup that became "latest").

A backup is two objects under backups/<env>/ in S3_BUCKET (or DATA_DIR/backups/<env>/
without S3), each sealed with BACKUP_KEY (sealed.py: AES-256-GCM in 1 MiB chunks, a key per
object from HKDF and a random salt), and bound to its kind and its name:

  <name>.rdb.gz.sealed   the gzipped RDB snapshot; <name> is its UTC time, 20261201T230000Z
  <name>.json.sealed     the manifest {"name", "created" (unix s), "size" and "sha256" (of the
                         sealed snapshot object), "keys", "files": {file id: sha256}}

The manifest is written last: a snapshot without one is unfinished. A backup renamed (a valid
one copied under a newer name), changed, cut short, or sealed with another key does not
verify. Anything else under the prefix (a stray README.json, an object of an older format, a
name in the future beyond SKEW, a backup that does not verify) is not a backup: `catalog`
leaves it out of the list, `latest` and the retention, which never counts, steers on or
deletes it; it is reported for a person to look at.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

from .. import sealed
from ..config import kept_secret

SNAPSHOT, MANIFEST = ".rdb.gz.sealed", ".json.sealed"
PURPOSE = b"lorebase backup v1"
SKEW = 300  # seconds a backup's name may be ahead of this node's clock (another node's clock)
NAME = re.compile(r"\d{8}T\d{6}Z")


class BackupError(Exception):
    """A backup or restore that cannot go on; the message says why, for a person."""


def now_name(at: float | None = None) -> str:
    return datetime.fromtimestamp(at if at is not None else time.time(), UTC).strftime("%Y%m%dT%H%M%SZ")


def name_time(name: str) -> float:
    return datetime.strptime(name, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(sealed.CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_name(name: str) -> bool:
    if not NAME.fullmatch(name):
        return False
    try:
        name_time(name)
    except ValueError:  # 20261399T...: the shape, not a time
        return False
    return True


def in_future(name: str, now: float | None = None) -> bool:
    return name_time(name) > (time.time() if now is None else now) + SKEW


def split(obj: str) -> tuple[str, str] | None:
    """An object's (name, "snapshot" | "manifest"), or None: not a backup's object."""
    for suffix, kind in ((MANIFEST, "manifest"), (SNAPSHOT, "snapshot")):
        if obj.endswith(suffix) and is_name(obj[: -len(suffix)]):
            return obj[: -len(suffix)], kind
    return None


def _bound(kind: str, name: str) -> bytes:
    return f"{kind}\0{name}".encode()


class Store:
    """Backups in one place. Subclasses move bytes (objects named relative to the prefix);
    sealing and opening happen here, the same for both."""

    where: str

    def __init__(self, key: str):
        self.key = key

    def objects(self) -> list[str]:
        raise NotImplementedError

    def reader(self, obj: str) -> BinaryIO:
        """The object as a stream (read as it is opened: a huge planted object costs one chunk)."""
        raise NotImplementedError

    def write(self, obj: str, data: bytes) -> None:
        raise NotImplementedError

    def upload(self, path: Path, obj: str) -> None:
        raise NotImplementedError

    def download(self, obj: str, path: Path) -> None:
        raise NotImplementedError

    def remove(self, objs: list[str]) -> None:
        raise NotImplementedError

    def names(self) -> list[str]:
        """The names that have a manifest, newest first: what the objects are called, nothing
        read or verified (see catalog)."""
        found = (split(obj) for obj in self.objects())
        return sorted((f[0] for f in found if f and f[1] == "manifest"), reverse=True)

    def partial(self) -> list[str]:
        """The names of snapshots without a manifest (unfinished)."""
        found = [f for f in map(split, self.objects()) if f]
        done = {name for name, kind in found if kind == "manifest"}
        return [name for name, kind in found if kind == "snapshot" and name not in done]

    def put(self, name: str, packed: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        """Seals the snapshot file `packed` and the manifest (given without size and sha256,
        which are the sealed snapshot's), stores both, manifest last; the whole manifest."""
        closed = packed.with_name(packed.name + ".sealed")
        with open(packed, "rb") as src, open(closed, "wb") as dst:
            sealed.seal_stream(self.key, PURPOSE, _bound("snapshot", name), src, dst)
        manifest = {**manifest, "name": name, "size": closed.stat().st_size, "sha256": sha256_of(closed)}
        self.upload(closed, name + SNAPSHOT)
        self.write(name + MANIFEST, sealed.seal(self.key, PURPOSE, _bound("manifest", name),
                                                json.dumps(manifest).encode()))
        return manifest

    def manifest(self, name: str) -> dict[str, Any]:
        """Backup `name`'s manifest, verified: BackupError if it does not."""
        refused = (f"backup {name} does not verify (sealed with another BACKUP_KEY, changed, or not made under this "
                   "name); nothing was changed")
        try:
            opened = io.BytesIO()
            with closing(self.reader(name + MANIFEST)) as src:
                sealed.open_stream(self.key, PURPOSE, _bound("manifest", name), src, opened)
            data = json.loads(opened.getvalue())
        except (sealed.Unsealed, ValueError):
            raise BackupError(refused) from None
        if not isinstance(data, dict) or data.get("name") != name or not isinstance(data.get("files"), dict) \
                or not all(isinstance(data.get(k), int) for k in ("created", "size", "keys")):
            raise BackupError(refused)
        return data

    def fetch(self, name: str, into: Path) -> None:
        """The sealed snapshot object, as it is stored, into `into`."""
        self.download(name + SNAPSHOT, into)

    def open_snapshot(self, name: str, closed: Path, into: Path) -> None:
        """The sealed snapshot `closed` opened into `into` (the .rdb.gz), or BackupError."""
        try:
            with open(closed, "rb") as src, open(into, "wb") as dst:
                sealed.open_stream(self.key, PURPOSE, _bound("snapshot", name), src, dst)
        except sealed.Unsealed:
            into.unlink(missing_ok=True)
            raise BackupError(f"backup {name}'s snapshot does not verify; nothing was changed") from None

    def delete(self, name: str) -> None:
        self.remove([name + MANIFEST, name + SNAPSHOT])


class Local(Store):
    """DATA_DIR/backups/<env>/: for a box without S3 (not a backup against losing the box)."""

    def __init__(self, root: Path, key: str):
        super().__init__(key)
        self.root = root
        self.where = str(root)

    def objects(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [p.name for p in self.root.iterdir() if p.is_file() and not p.name.endswith(".tmp")]

    def reader(self, obj: str) -> BinaryIO:
        return open(self.root / obj, "rb")  # closed by the caller

    def write(self, obj: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / f"{obj}.tmp").write_bytes(data)
        os.replace(self.root / f"{obj}.tmp", self.root / obj)

    def upload(self, path: Path, obj: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, self.root / f"{obj}.tmp")
        os.replace(self.root / f"{obj}.tmp", self.root / obj)

    def download(self, obj: str, path: Path) -> None:
        shutil.copyfile(self.root / obj, path)

    def remove(self, objs: list[str]) -> None:
        for obj in objs:
            (self.root / obj).unlink(missing_ok=True)


class S3(Store):
    """s3://S3_BUCKET/backups/<env>/."""

    def __init__(self, client: Any, bucket: str, prefix: str, key: str):
        super().__init__(key)
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.where = f"s3://{bucket}/{prefix}"

    def objects(self) -> list[str]:
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            keys += [item["Key"][len(self.prefix):] for item in page.get("Contents", [])]
        return keys

    def reader(self, obj: str) -> BinaryIO:
        return cast(BinaryIO, self.client.get_object(Bucket=self.bucket, Key=self.prefix + obj)["Body"])

    def write(self, obj: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + obj, Body=data,
                               ContentType="application/octet-stream")

    def upload(self, path: Path, obj: str) -> None:
        self.client.upload_file(str(path), self.bucket, self.prefix + obj)

    def download(self, obj: str, path: Path) -> None:
        self.client.download_file(self.bucket, self.prefix + obj, str(path))

    def remove(self, objs: list[str]) -> None:
        self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": self.prefix + o} for o in objs]})


def store(config: Any) -> Store:
    """The environment's backups. Without BACKUP_KEY (dev, or prod without S3: config refuses
    prod with S3 without it), a random key kept in DATA_DIR/backup_key, made on first use."""
    key = str(config.BACKUP_KEY) or kept_secret(Path(config.DATA_DIR), "backup_key")
    if config.S3_BUCKET:
        from ..files import s3

        return S3(s3.client(config), config.S3_BUCKET, f"backups/{config.ENV}/", key)
    return Local(Path(config.DATA_DIR) / "backups" / config.ENV, key)


def catalog(where: Store, now: float | None = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The backups that verify and are not named in the future: their manifests, newest
    first; and every other object under the prefix → why it is not one (unfinished snapshots
    are left out of both: the retention removes them)."""
    now = time.time() if now is None else now
    ignored: dict[str, str] = {}
    candidates: list[str] = []
    for obj in where.objects():
        found = split(obj)
        if found is None:
            ignored[obj] = "not a backup"
        elif found[1] == "manifest":
            if in_future(found[0], now):
                ignored[obj] = "named for a time in the future"
            else:
                candidates.append(found[0])

    def verified(name: str) -> dict[str, Any] | None:
        try:
            return where.manifest(name)
        except BackupError:
            return None

    with ThreadPoolExecutor(max_workers=8) as pool:  # one GET per manifest with S3
        manifests = list(pool.map(verified, candidates))
    backups = []
    for name, manifest in zip(candidates, manifests, strict=True):
        if manifest is None:
            ignored[name + MANIFEST] = "does not verify with this BACKUP_KEY"
        else:
            backups.append(manifest)
    return sorted(backups, key=lambda m: str(m["name"]), reverse=True), ignored


def latest(where: Store, now: float | None = None) -> str:
    """The newest backup that verifies and is not named in the future."""
    for name in where.names():
        if in_future(name, now):
            continue
        try:
            where.manifest(name)
        except BackupError:
            continue
        return name
    raise BackupError(f"no backup in {where.where} verifies with this BACKUP_KEY (see `lorebase backup list`); "
                      "nothing was changed")
