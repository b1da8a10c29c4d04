"""File routes (private: after the gatekeeper and CSRF): upload, list, download, delete."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import quote

import msgspec

from ..chain import Route
from ..files.store import ID, check_id, new_id, serve_type
from ..files.upload import receive_upload
from ..http import ApiError, Reply, Request, etag_matches, reply
from ..schema import Schema, Text

PAGE = 50


class FileOut(msgspec.Struct):
    id: str
    name: str
    size: int
    type: str
    sha256: str


class ListQuery(Schema):
    before: Annotated[str, Text(23, 23, pattern=ID.pattern)] = ""


class FileRow(msgspec.Struct):
    id: str
    name: str
    size: int
    type: str
    sha256: str
    created: int


MULTIPART_OVERHEAD = 65536  # the csrf field, part headers and boundaries around the file


class DeleteIn(Schema):
    id: Annotated[str, Text(1, 64)]


async def upload(req: Request) -> Reply:
    app = req.app
    assert req.session is not None
    user = req.session["user"]
    store = app.store
    room = store.quota - await store.used(app.db, user)
    if room <= 0:
        raise ApiError(409, "quota")
    expected = req.session["csrf"] if req.session.get("csrf_in_body") else None
    tmp = store.temp()
    got = await receive_upload(req, tmp, app.config.FILE_LIMIT, room, expected,
                               body_limit=app.config.FILE_LIMIT + MULTIPART_OVERHEAD, sync=store.blobs.keeps_temp)
    meta = {"id": new_id(), "user": user, "name": got.name, "size": got.size, "type": got.type,
            "sha256": got.digest.hexdigest(), "created": int(time.time()), "s3": 0}
    await store.add(app.db, req.session, tmp, meta)
    app.stats.flow("upload_bytes", got.size)
    return reply(200, {k: meta[k] for k in ("id", "name", "size", "type", "sha256")})


async def list_files(req: Request) -> Reply:
    assert req.session is not None
    rows = await req.app.store.page(req.app.db, req.session["user"], req.payload(ListQuery).before or None, PAGE)
    return reply(200, rows)


def _disposition(name: str) -> str:
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _range(header: str, size: int) -> tuple[int, int] | None:
    """bytes=a-b | a- | -n → (start, end inclusive); None when unsatisfiable; one range only."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        raise ValueError
    first, _, last = spec.strip().partition("-")
    if first == "":
        n = int(last)
        if n <= 0:
            return None
        return max(size - n, 0), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


async def download(req: Request) -> Reply:
    app = req.app
    assert req.session is not None
    file_id = check_id(req.params["id"], "url")
    meta = await app.store.get(app.db, req.session["user"], file_id)
    if meta is None:
        raise ApiError(404, "notfound")
    blobs = app.store.blobs
    stat = await blobs.stat(file_id)
    if stat is None:  # the bytes are lost where they should be: S3 has the durable copy
        if not app.store.s3:
            raise ApiError(404, "missing")
        await blobs.fetch_back(meta)  # where the bytes belong (this disk or the file server)
        stat = await blobs.stat(file_id)
        if stat is None:
            raise ApiError(503, "s3")
    etag = stat.etag
    headers: dict[str, str] = {"etag": etag, "cache-control": "private, no-cache", "accept-ranges": "bytes",
                               "content-disposition": _disposition(meta["name"]),
                               "content-type": serve_type(meta.get("type", ""))}
    inm = req.header(b"if-none-match")
    if inm is not None and etag_matches(inm, etag):
        return Reply(304, b"", headers, stream=_empty())
    size = stat.size
    start, length, status = 0, size, 200
    range_header = req.headers.get("range")
    if range_header and req.headers.get("if-range", etag) == etag:
        try:
            span = _range(range_header, size)
        except ValueError:
            span = (0, size - 1) if size else None  # unparseable: ignore it, as RFC 9110 allows
        if span is None:
            raise ApiError(416, "range", headers={"content-range": f"bytes */{size}"})
        start, end = span
        length, status = end - start + 1, 206
        if length != size:
            headers["content-range"] = f"bytes {start}-{end}/{size}"
        else:
            status = 200
    headers["content-length"] = str(length)
    return Reply(status, b"", headers, stream=blobs.read(file_id, start, length) if req.method != "HEAD" else _empty())


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing


async def delete(req: Request) -> Reply:
    app = req.app
    assert req.session is not None
    file_id = check_id(req.payload(DeleteIn).id)
    if not await app.store.remove(app.db, req.session["user"], file_id):
        raise ApiError(404, "notfound")
    return reply(200, {})


async def remove_user_files(app: Any, user: str) -> None:
    await app.store.remove_all(app.db, user)


def routes(config: Any) -> list[Route]:
    return [
        Route("POST", "/files", upload, section="private", accepts="multipart",
              limit=config.FILE_LIMIT + MULTIPART_OVERHEAD,
              summary="Upload one file (multipart field `file`; CSRF in X-CSRF-Token or a `csrf` field before it)",
              ok=FileOut, replies={409: ["quota"], 503: ["unavailable"], 507: ["storage"]}),
        Route("GET", "/files", list_files, section="private", query=ListQuery, ok=list[FileRow],
              summary="The user's files, newest first, 50 a page (`before`: the last id of the previous page)"),
        Route("GET", "/files/{id}", download, section="private", serves="*/*",
              summary="The file's bytes (ETag, Range → 206, attachment)",
              replies={206: [], 404: ["notfound", "missing"], 416: ["range"], 503: ["s3", "unavailable"]}),
        Route("POST", "/files/delete", delete, section="private", body=DeleteIn,
              replies={404: ["notfound"], 503: ["unavailable"]},
              summary="Delete a file (to the S3 trash when S3 is on)"),
    ]
