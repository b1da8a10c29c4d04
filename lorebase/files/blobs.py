"""The bytes of stored files behind one small interface, `Blobs`, with two implementations:
`LocalBlobs` (this box's disk) and `RemoteBlobs` (a file server, `lorebase serve --role
files`, over HTTP: remote.py). The Store and the routes use only the interface.

Layout of the disk that holds the bytes (this node's, or the file server's):
DATA_DIR/files/<id[-2:]>/<id> a stored file; DATA_DIR/tmp/ uploads in progress (renamed into
place only once complete, so a cut upload leaves nothing in files/); DATA_DIR/trash/<id> a
deleted file kept until the S3 trash has it (only with S3).

Failures are domain errors (lorebase/errors.py says their replies): `StorageFull` (the disk
refused the bytes) and `FileServerDown` (the file server could not be reached in time). A
blob that is not there is None or False, never an error.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FileServerDown
from ..errors import StorageFull as StorageFull
from .keys import ID

Unavailable = FileServerDown  # its name before lorebase/errors.py (cli.py catches it by that name)

CHUNK = 256 * 1024
WHERE = ("files", "trash")


@dataclass(frozen=True)
class Stat:
    size: int
    mtime_ns: int

    @property
    def etag(self) -> str:
        return f'"{self.mtime_ns:x}-{self.size:x}"'


class Blobs:
    """The bytes of files by id. Every id given here is one store.ID matched."""

    keeps_temp = True  # the upload's temp file becomes the stored file (so it is fsynced first)

    def temp(self) -> Path:
        """A fresh path on this node's disk for an upload in progress."""
        raise NotImplementedError

    async def put(self, tmp: Path, file_id: str) -> None:
        """Stores the complete upload at `tmp` (fsynced) as `file_id`; `tmp` is gone afterwards."""
        raise NotImplementedError

    async def stat(self, file_id: str) -> Stat | None:
        raise NotImplementedError

    def read(self, file_id: str, start: int, length: int) -> AsyncIterator[bytes]:
        """`length` bytes from `start`, in chunks; a blob gone meanwhile ends the stream early."""
        raise NotImplementedError

    async def delete(self, file_id: str) -> None:
        """Removes the bytes (and a trashed copy); no error if there are none."""
        raise NotImplementedError

    async def trash(self, file_id: str) -> bool:
        """Moves the bytes to the trash (kept until the S3 trash has them); False: none here."""
        raise NotImplementedError

    async def untrash(self, file_id: str) -> bool:
        """Moves them back (a removal that did not happen); False: none in the trash."""
        raise NotImplementedError

    async def listing(self, where: str = "files") -> dict[str, Stat]:
        """Every blob id in `where` (files or trash) with its size and mtime."""
        raise NotImplementedError

    async def digest(self, file_id: str) -> str | None:
        """The SHA-256 of the bytes, computed where they are; None if there are none."""
        raise NotImplementedError

    async def fetch_back(self, meta: dict[str, str]) -> None:
        """The bytes are missing: bring them back from S3 (503 s3 if it cannot)."""
        raise NotImplementedError

    async def close(self) -> None:
        return None


class LocalBlobs(Blobs):
    """This box's DATA_DIR (see the module docstring)."""

    def __init__(self, config: Any):
        self.config = config
        root = Path(config.DATA_DIR)
        self.files = root / "files"
        self.tmp = root / "tmp"
        self.trashed = root / "trash"
        for d in (self.files, self.tmp, self.trashed):
            d.mkdir(parents=True, exist_ok=True)
        self.s3 = bool(config.S3_BUCKET)

    def path(self, file_id: str) -> Path:
        return self.files / file_id[-2:] / file_id

    def temp(self) -> Path:
        return self.tmp / f"upload-{secrets.token_hex(12)}"

    def place(self, tmp: Path, file_id: str) -> None:
        final = self.path(file_id)
        try:
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            raise StorageFull(str(error)) from None

    async def put(self, tmp: Path, file_id: str) -> None:
        self.place(tmp, file_id)

    async def stat(self, file_id: str) -> Stat | None:
        try:
            st = os.stat(self.path(file_id))
        except FileNotFoundError:
            return None
        return Stat(st.st_size, st.st_mtime_ns)

    async def read(self, file_id: str, start: int, length: int) -> AsyncIterator[bytes]:
        with open(self.path(file_id), "rb") as f:
            f.seek(start)
            left = length
            while left > 0:
                chunk = f.read(min(CHUNK, left)) if left <= CHUNK else await asyncio.to_thread(f.read, CHUNK)
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

    async def delete(self, file_id: str) -> None:
        self.path(file_id).unlink(missing_ok=True)
        (self.trashed / file_id).unlink(missing_ok=True)

    async def trash(self, file_id: str) -> bool:
        try:
            os.replace(self.path(file_id), self.trashed / file_id)
        except FileNotFoundError:
            return False
        return True

    async def untrash(self, file_id: str) -> bool:
        final = self.path(file_id)
        try:
            final.parent.mkdir(exist_ok=True)
            os.replace(self.trashed / file_id, final)
        except FileNotFoundError:
            return False
        return True

    def scan(self, where: str = "files") -> dict[str, Stat]:
        found = {}
        paths = self.files.glob("*/*") if where == "files" else self.trashed.iterdir()
        for p in paths:
            if ID.match(p.name) and (where != "files" or p.parent.name == p.name[-2:]):
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                found[p.name] = Stat(st.st_size, st.st_mtime_ns)
        return found

    async def listing(self, where: str = "files") -> dict[str, Stat]:
        return await asyncio.to_thread(self.scan, where)

    async def digest(self, file_id: str) -> str | None:
        from .s3 import sha256_of

        try:
            return await asyncio.to_thread(sha256_of, self.path(file_id))
        except FileNotFoundError:
            return None

    async def fetch_back(self, meta: dict[str, str]) -> None:
        from .s3 import fetch_back

        await fetch_back(self.config, meta, self.path(meta["id"]))
