"""The file store: bytes on the local disk under server-generated names, metadata in Redis.

Redis: `file:{<user>}:<id>` hash {id, user, name, size, type, sha256, created, s3};
`files:{<user>}` sorted set of the user's file ids (all scores 0; ids sort by time, so
ZRANGE BYLEX pages them); `usage:{<user>}` the bytes the user stores, checked against QUOTA.
All three share the user's hash slot with its session (keys.py), so a file's arrival and
removal change them at once (Lua, behind the session's guard).

The S3 job goes to `{s3}:queue`, another slot, in a second step: after the record, in both
directions. An upload's put job follows its record, so the mirror never sees a job for a
record not yet written; a stop between the two leaves a record never mirrored (`s3` unset,
no job), which `lorebase files check --repair` finds and queues. A removal's trash job
follows the record's deletion, so no S3 object is trashed while its record lives; a stop
between them leaves an S3 object without a record, which the check finds (listing the
bucket) and sends to the trash. The mirror copes with a put job whose record is gone (the
local bytes are gone too: "gone") and `mirrored` marks only a record that still exists.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import time
import unicodedata
from pathlib import Path
from typing import Any

from ..db import Client
from ..errors import DomainError, Invalid, NoSuchFile, QuotaExceeded, SessionEnded
from ..identity.keys import user as user_key
from ..identity.records import Session
from ..identity.sessions import GUARD, guard_keys
from . import keys
from .keys import S3_QUEUE

ID = re.compile(r"^[0-9a-f]{23}\Z")
_BIDI = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069]")
SAFE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf", "text/plain",
              "application/zip", "audio/mpeg", "video/mp4", "application/json"}

_MIRRORED = "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 's3', 1) end"

# KEYS: the session and user of sessions.GUARD, then usage, file, files (one hash slot)
_ADD = GUARD + """
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return 'quota' end
redis.call('INCRBY', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[4], unpack(ARGV, 4))
redis.call('ZADD', KEYS[5], 0, ARGV[3])
return 'ok'
"""

# KEYS: file, files, usage, the owner's user key (one hash slot). ARGV: user, id, '1' to
# remove only while the owner does not exist (the check's orphans)
_REMOVE = """
local f = redis.call('HMGET', KEYS[1], 'user', 'size')
if not f[1] or f[1] ~= ARGV[1] then return 0 end
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
local left = redis.call('DECRBY', KEYS[3], f[2])
if left <= 0 then redis.call('DEL', KEYS[3]) end
return 1
"""


# a listed id without a record leaves the list (only if it still has none)
_DANGLING = "if redis.call('EXISTS', KEYS[1]) == 0 then return redis.call('ZREM', KEYS[2], ARGV[1]) end return 0"


def new_id() -> str:
    """23 hex characters: 11 of milliseconds and 3 of the microseconds within it, then 9
    random. Ids sort by time, even two made within one millisecond one after the other (a
    list must not swap a note and the one written right after it), and nobody picks them.
    The random part comes from `random` (seeded afresh in every worker, a new interpreter), not `secrets`:
    an id is not a secret (every read checks its owner) and os.urandom was 8 % of a worker's
    time on POST /notes."""
    micros = time.time_ns() // 1000
    return f"{micros // 1000:011x}{micros % 1000:03x}{random.getrandbits(36):09x}"


def check_id(value: str, path: str = "id") -> str:
    if not isinstance(value, str) or not ID.match(value):
        raise NoSuchFile() if path == "url" else Invalid(path)
    return value


def clean_name(raw: str) -> str:
    """The client's filename as safe metadata: no directories, control or bidi characters."""
    name = raw.replace("\\", "/").split("/")[-1]
    name = unicodedata.normalize("NFC", name)
    name = _BIDI.sub("", "".join(c for c in name if unicodedata.category(c)[0] != "C"))
    name = " ".join(name.split()).strip(". ")
    if len(name) > 200:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 200 - len(ext) - 1] + dot + ext) if dot and len(ext) <= 16 else name[:200]
    return name or "file"


def serve_type(declared: str) -> str:
    return declared if declared in SAFE_TYPES else "application/octet-stream"


def s3_key(user: str, file_id: str) -> str:
    return f"files/{user}/{file_id}"


class Store:
    """The file records in Redis and, through `blobs` (blobs.py: this disk or the file
    server), their bytes."""

    def __init__(self, config: Any):
        from .blobs import blobs

        self.blobs = blobs(config)
        self.s3 = bool(config.S3_BUCKET)
        self.quota = int(config.QUOTA)

    def temp(self) -> Path:
        return self.blobs.temp()

    async def add(self, db: Client, session: Session, tmp: Path, meta: dict[str, Any]) -> None:
        """Stores the upload's bytes and records it; QuotaExceeded if it no longer fits,
        SessionEnded if the session that sent it ended meanwhile (its user destroyed, say). Bytes
        stored without a record are removed again (a failed record write included)."""
        user = session["user"]
        file_id = meta["id"]
        await self.blobs.put(tmp, file_id)
        fields: list[Any] = []
        for key, value in meta.items():
            fields += [key, value]
        names = [*guard_keys(session), keys.usage(user), keys.file(user, file_id), keys.files(user)]
        try:
            added = await db.script(_ADD, names, [meta["size"], self.quota, file_id, *fields])
        except BaseException:
            await self._discard(file_id)
            raise
        if added != "ok":
            await self._discard(file_id)
            raise QuotaExceeded() if added == "quota" else SessionEnded()
        if self.s3:  # after the record (see the docstring)
            await db.call("LPUSH", S3_QUEUE, json.dumps({"op": "put", "id": file_id, "user": user}))

    async def _discard(self, file_id: str) -> None:
        """Bytes that got no record; if the file server cannot be told now, the check finds
        them as an orphan."""
        try:
            await self.blobs.delete(file_id)
        except DomainError as error:
            from ..notify import notify

            notify("orphan blob", file=file_id, error=error.code)

    async def get(self, db: Client, user: str, file_id: str) -> dict[str, str] | None:
        """The file's metadata if it is `user`'s; None otherwise (another user's id included)."""
        raw = await db.call("HGETALL", keys.file(user, file_id))
        meta = dict(zip(raw[::2], raw[1::2], strict=True)) if raw else None
        return meta if meta and meta.get("user") == user else None

    async def used(self, db: Client, user: str) -> int:
        return int(await db.call("GET", keys.usage(user)) or 0)

    async def page(self, db: Client, user: str, before: str | None, count: int) -> list[dict[str, Any]]:
        top = f"({before}" if before else "+"
        ids = await db.call("ZRANGE", keys.files(user), top, "-", "BYLEX", "REV", "LIMIT", 0, count)
        if not ids:
            return []
        rows = await db.pipeline([("HMGET", keys.file(user, i), "id", "name", "size", "type", "sha256", "created")
                                  for i in ids])
        return [{"id": r[0], "name": r[1], "size": int(r[2]), "type": r[3], "sha256": r[4], "created": int(r[5])}
                for r in rows if r[0] is not None]

    async def remove(self, db: Client, user: str, file_id: str, orphan: bool = False) -> bool:
        """Forgets the file; its bytes go to the S3 trash (through the queue) or away.
        orphan=True: only while its user does not exist (a leftover of a missing user).
        The bytes move to the trash before the record goes (a download in flight then ends
        short; with the file server down: 503 unavailable, nothing changed)."""
        if self.s3 and await self.get(db, user, file_id) is None:
            return False  # never touch the bytes of an id that is not the user's
        moved = await self.blobs.trash(file_id) if self.s3 else False  # kept until the S3 trash has it
        try:
            removed = await db.script(_REMOVE, [keys.file(user, file_id), keys.files(user), keys.usage(user),
                                                user_key(user)], [user, file_id, "1" if orphan else ""])
        except BaseException:  # Redis failed: the record lives on, so do its bytes
            if moved:
                with contextlib.suppress(DomainError):
                    await self.blobs.untrash(file_id)
            raise
        if not removed:
            if moved:
                await self.blobs.untrash(file_id)
            return False
        if self.s3:  # after the record is gone (see the docstring)
            await db.call("LPUSH", S3_QUEUE, json.dumps({"op": "trash", "id": file_id, "user": user}))
        else:
            await self._discard(file_id)
        return True

    async def owned(self, db: Client, user: str, ids: list[str]) -> list[bool]:
        """Whether each file id is one of `user`'s files (another user's id is as absent as none)."""
        return [bool(n) for n in await db.pipeline([("EXISTS", keys.file(user, i)) for i in ids])]

    async def missing(self, db: Client, user: str, ids: list[str]) -> set[str]:
        """Those of `ids` that are not (or no longer) among the user's files: one round trip."""
        scores = await db.call("ZMSCORE", keys.files(user), *ids)
        return {i for i, score in zip(ids, scores, strict=True) if score is None}

    async def mirrored(self, db: Client, user: str, file_id: str) -> None:
        """Marks the file as held by S3, unless it was deleted meanwhile."""
        await db.script(_MIRRORED, [keys.file(user, file_id)], [])

    async def remove_all(self, db: Client, user: str, orphan: bool = False) -> int:
        """Every file of `user` (orphan=True: only while the user does not exist)."""
        count = 0
        while True:
            ids = await db.call("ZRANGE", keys.files(user), 0, 99)
            if not ids:
                return count
            for file_id in ids:
                if not await self.remove(db, user, file_id, orphan):
                    if orphan and await db.call("EXISTS", user_key(user)):
                        return count  # the name was signed up again meanwhile: its files are live
                    await db.script(_DANGLING, [keys.file(user, file_id), keys.files(user)], [file_id])
                count += 1
