"""`RemoteBlobs`: the Blobs of a file server (`lorebase serve --role files`, fileserver.py)
reached at FILES_URL over HTTP, every request carrying FILES_SECRET in `X-Files-Secret`.

One httpx client per process, a small pool of kept-alive connections to the file server
(KEEP idle, POOL at most),
FILES_TIMEOUT seconds for each connect, read and write (not for a whole transfer: a large
file streams as long as bytes keep moving). Nothing is ever held whole in memory: an upload
streams from this node's temp file, a download relays the file server's chunks as they
arrive. A file server that does not answer is 503 `unavailable`; its next answer is served
again (the pool opens new connections), so no restart of this node is needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from ..http import ApiError
from .blobs import CHUNK, Blobs, Stat, StorageFull, Unavailable

HEADER = "x-files-secret"
KEEP = 16  # idle connections to the file server a worker keeps open
POOL = 256  # connections a worker may hold at once (a slow client's download holds one throughout)


class RemoteBlobs(Blobs):
    def __init__(self, config: Any):
        self.base = str(config.FILES_URL).rstrip("/")
        self.tmp = Path(config.DATA_DIR) / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.s3 = bool(config.S3_BUCKET)
        timeout = float(config.FILES_TIMEOUT)
        self.http = httpx.AsyncClient(
            headers={HEADER: str(config.FILES_SECRET)}, timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=POOL, max_keepalive_connections=KEEP, keepalive_expiry=10),
            trust_env=False, follow_redirects=False)

    def temp(self) -> Path:
        import secrets

        return self.tmp / f"upload-{secrets.token_hex(12)}"

    def url(self, file_id: str, verb: str = "") -> str:
        return f"{self.base}/blobs/{file_id}" + (f"/{verb}" if verb else "")

    async def _call(self, method: str, url: str, **kw: Any) -> httpx.Response:
        """One request with a short body; a kept-alive connection the server closed meanwhile
        (its restart) is retried once on a new one."""
        for attempt in (1, 2):
            try:
                r = await self.http.request(method, url, **kw)
            except httpx.RemoteProtocolError as error:
                if attempt == 1 and "content" not in kw:
                    continue
                raise Unavailable(str(error)) from None
            except httpx.TransportError as error:
                raise Unavailable(f"{type(error).__name__}: {error}") from None
            return _checked(r)
        raise AssertionError("unreachable")

    async def put(self, tmp: Path, file_id: str) -> None:
        async def body() -> AsyncIterator[bytes]:
            with open(tmp, "rb") as f:
                while chunk := await asyncio.to_thread(f.read, CHUNK):
                    yield chunk
        try:
            size = tmp.stat().st_size
            r = await self.http.put(self.url(file_id), content=body(), headers={"content-length": str(size)})
        except httpx.TransportError as error:
            raise Unavailable(f"{type(error).__name__}: {error}") from None
        finally:
            tmp.unlink(missing_ok=True)
        _checked(r)

    async def stat(self, file_id: str) -> Stat | None:
        r = await self._call("HEAD", self.url(file_id))
        if r.status_code == 404:
            return None
        return Stat(int(r.headers["x-size"]), int(r.headers["x-mtime-ns"]))

    async def read(self, file_id: str, start: int, length: int) -> AsyncIterator[bytes]:
        if length <= 0:
            return
        try:
            async with self.http.stream("GET", self.url(file_id),
                                        headers={"range": f"bytes={start}-{start + length - 1}"}) as r:
                if r.status_code not in (200, 206):
                    return  # deleted meanwhile: the stream ends short, as a local read would
                async for chunk in r.aiter_raw(CHUNK):
                    yield chunk
        except httpx.TransportError as error:
            # headers are sent: the client's stream is cut (never left hanging)
            from ..notify import notify

            notify("files stream cut", file=file_id, error=f"{type(error).__name__}: {error}"[:300])
            raise Unavailable(f"{type(error).__name__}: {error}") from None

    async def delete(self, file_id: str) -> None:
        await self._call("DELETE", self.url(file_id))

    async def trash(self, file_id: str) -> bool:
        return (await self._call("POST", self.url(file_id, "trash"))).status_code == 204

    async def untrash(self, file_id: str) -> bool:
        return (await self._call("POST", self.url(file_id, "untrash"))).status_code == 204

    async def listing(self, where: str = "files") -> dict[str, Stat]:
        found = {}
        try:
            async with self.http.stream("GET", f"{self.base}/blobs", params={"in": where}) as r:
                _checked(r)
                async for line in r.aiter_lines():
                    file_id, size, mtime = line.split()
                    found[file_id] = Stat(int(size), int(mtime))
        except httpx.TransportError as error:
            raise Unavailable(f"{type(error).__name__}: {error}") from None
        return found

    async def digest(self, file_id: str) -> str | None:
        r = await self._call("GET", self.url(file_id, "sha256"))
        return None if r.status_code == 404 else r.text.strip()

    async def fetch_back(self, meta: dict[str, str]) -> None:
        r = await self._call("POST", self.url(meta["id"], "fetch"),
                             json={"user": meta["user"], "sha256": meta.get("sha256", "")})
        if r.status_code != 204:
            raise ApiError(503, "s3")

    async def close(self) -> None:
        await self.http.aclose()


def _checked(r: httpx.Response) -> httpx.Response:
    """The file server's reply as it is, or the error it stands for."""
    if r.status_code in (200, 204, 206, 404):
        return r
    if r.status_code == 507:
        raise StorageFull("the file server's disk refused the bytes")
    if r.status_code == 503 and r.headers.get("x-error") == "s3":
        raise ApiError(503, "s3")
    # 403 (FILES_SECRET differs between the nodes) or anything else: not the client's fault
    raise Unavailable(f"file server replied {r.status_code}")
