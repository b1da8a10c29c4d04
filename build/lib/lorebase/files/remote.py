"""`RemoteBlobs`: the Blobs of a file server (`lorebase serve --role files`, fileserver.py)
reached at FILES_URL over HTTP, every request carrying FILES_SECRET in `X-Files-Secret`.

One client per process (client.py: h11 over asyncio), KEEP kept-alive connections to the
file server and POOL at most, FILES_TIMEOUT seconds for each connect, read and write (not
for a whole transfer: a large file streams as long as bytes keep moving). Nothing is ever
held whole in memory: an upload streams from this node's temp file, a download relays the
file server's chunks as they arrive. A file server that does not answer is 503
`unavailable`; its next answer is served again (new connections), so no restart of this
node is needed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import FileServerDown, S3Down, StorageFull
from .blobs import CHUNK, Blobs, Stat
from .client import PeerError, Pool, Response

HEADER = "x-files-secret"
KEEP = 16  # idle connections to the file server a worker keeps open
POOL = 256  # connections a worker may hold at once (a slow client's download holds one throughout)


class RemoteBlobs(Blobs):
    keeps_temp = False  # the temp file is only streamed on: the file server fsyncs its copy

    def __init__(self, config: Any):
        url = urlsplit(str(config.FILES_URL))
        port = url.port or (443 if url.scheme == "https" else 80)
        self.tmp = Path(config.DATA_DIR) / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.http = Pool(str(url.hostname), port, float(config.FILES_TIMEOUT), KEEP, POOL,
                         {HEADER: str(config.FILES_SECRET)}, tls=url.scheme == "https")

    def temp(self) -> Path:
        return self.tmp / f"upload-{secrets.token_hex(12)}"

    async def _call(self, method: str, target: str, body: bytes = b"",
                    headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """One exchange with a short reply: its status and body, or the error it stands for."""
        try:
            r = await self.http.request(method, target, headers, body)
            data = await r.read()
        except PeerError as error:
            raise FileServerDown(str(error)) from None
        _checked(r)
        return r.status, data

    async def put(self, tmp: Path, file_id: str) -> None:
        async def body() -> AsyncIterator[bytes]:
            with open(tmp, "rb") as f:
                while chunk := await asyncio.to_thread(f.read, CHUNK):
                    yield chunk
        try:
            size = tmp.stat().st_size
            r = await self.http.request("PUT", f"/blobs/{file_id}", {"content-length": str(size)}, body())
            await r.read()
        except PeerError as error:
            raise FileServerDown(str(error)) from None
        finally:
            tmp.unlink(missing_ok=True)
        _checked(r)

    async def stat(self, file_id: str) -> Stat | None:
        try:
            r = await self.http.request("HEAD", f"/blobs/{file_id}")
            await r.read()
        except PeerError as error:
            raise FileServerDown(str(error)) from None
        if _checked(r).status == 404:
            return None
        return Stat(int(r.headers["x-size"]), int(r.headers["x-mtime-ns"]))

    async def read(self, file_id: str, start: int, length: int) -> AsyncIterator[bytes]:
        if length <= 0:
            return
        try:
            r = await self.http.request("GET", f"/blobs/{file_id}", {"range": f"bytes={start}-{start + length - 1}"})
            try:
                if r.status not in (200, 206):
                    return  # deleted meanwhile: the stream ends short, as a local read would
                async for chunk in r.stream():
                    yield chunk
            finally:
                r.close()
        except PeerError as error:
            # headers are sent: the client's stream is cut (never left hanging)
            from ..notify import notify

            notify("files stream cut", file=file_id, error=str(error)[:300])
            raise FileServerDown(str(error)) from None

    async def delete(self, file_id: str) -> None:
        await self._call("DELETE", f"/blobs/{file_id}")

    async def trash(self, file_id: str) -> bool:
        return (await self._call("POST", f"/blobs/{file_id}/trash"))[0] == 204

    async def untrash(self, file_id: str) -> bool:
        return (await self._call("POST", f"/blobs/{file_id}/untrash"))[0] == 204

    async def listing(self, where: str = "files") -> dict[str, Stat]:
        found = {}
        try:
            r = await self.http.request("GET", f"/blobs?in={where}")
            _checked(r)
            rest = b""
            async for chunk in r.stream():
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    file_id, size, mtime = line.decode().split()
                    found[file_id] = Stat(int(size), int(mtime))
        except PeerError as error:
            raise FileServerDown(str(error)) from None
        return found

    async def digest(self, file_id: str) -> str | None:
        status, data = await self._call("GET", f"/blobs/{file_id}/sha256")
        return None if status == 404 else data.decode().strip()

    async def fetch_back(self, meta: dict[str, str]) -> None:
        body = json.dumps({"user": meta["user"], "sha256": meta.get("sha256", "")}).encode()
        status, _ = await self._call("POST", f"/blobs/{meta['id']}/fetch", body, {"content-type": "application/json"})
        if status != 204:
            raise S3Down("the file server could not fetch it back")

    async def close(self) -> None:
        self.http.close()


def _checked(r: Response) -> Response:
    """The file server's reply as it is, or the error it stands for."""
    if r.status in (200, 204, 206, 404):
        return r
    r.close()
    if r.status == 507:
        raise StorageFull("the file server's disk refused the bytes")
    if r.status == 503 and r.headers.get("x-error") == "s3":
        raise S3Down("the file server could not reach S3")
    # 403 (FILES_SECRET differs between the nodes) or anything else: not the client's fault
    raise FileServerDown(f"file server replied {r.status}")
