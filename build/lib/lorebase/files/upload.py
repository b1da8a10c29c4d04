"""Streaming multipart/form-data uploads: the body is parsed as it arrives and the file part
written to a temp file, hashed, and held to the size limit and the user's quota while it
streams, so an upload is never held whole in memory and an oversized one stops early.

Fields: `csrf` (optional, must come before `file` when the token is not in the
X-CSRF-Token header) and `file` (exactly one). Anything else is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

from ..http import CLOSE, ApiError, Request
from ..notify import notify
from .store import clean_name

# type "/" subtype, RFC 6838's restricted names: no control character, space or parameter
MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}")


class _Abort(Exception):
    def __init__(self, error: ApiError):
        self.error = error


class Upload:
    """The parsed upload: tmp (Path), name, type, size, sha256."""

    def __init__(self, tmp: Path, limit: int, room: int, csrf: str | None):
        self.tmp = tmp
        self.limit = limit
        self.room = room  # bytes left in the user's quota
        self.csrf_expected = csrf  # None: the header already proved the token
        self.csrf_value = bytearray()
        self.name = ""
        self.type = "application/octet-stream"
        self.size = 0
        self.digest = hashlib.sha256()
        self.file: Any = None
        self.done_file = False
        self._field = ""
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, str] = {}

    # -- parser callbacks ---------------------------------------------------------------

    def on_part_begin(self) -> None:
        self._headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_name.decode("latin-1").lower()] = self._header_value.decode("latin-1")
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", ""))
        field = options.get(b"name", b"").decode("utf-8", "replace")
        if field == "csrf" and not self.done_file and self.file is None:
            self._field = "csrf"
        elif field == "file" and self.file is None and not self.done_file:
            if self.csrf_expected is not None and not hmac.compare_digest(bytes(self.csrf_value),
                                                                          self.csrf_expected.encode()):
                raise _Abort(ApiError(403, "csrf"))
            self._field = "file"
            self.name = clean_name(options.get(b"filename", b"").decode("utf-8", "replace"))
            declared = self._headers.get("content-type", "").split(";")[0].strip().lower()
            self.type = declared if MEDIA_TYPE.fullmatch(declared) else "application/octet-stream"
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self.file = os.fdopen(fd, "wb")
        else:
            raise _Abort(ApiError(400, "validation", field[:50] or "file"))

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._field == "csrf":
            self.csrf_value += chunk
            if len(self.csrf_value) > 200:
                raise _Abort(ApiError(403, "csrf"))
            return
        self.size += len(chunk)
        if self.size > self.limit:
            raise _Abort(ApiError(413, "size", headers=CLOSE))
        if self.size > self.room:
            raise _Abort(ApiError(409, "quota"))
        self.digest.update(chunk)
        self.file.write(chunk)

    def on_part_end(self) -> None:
        if self._field == "file":
            self.done_file = True  # flushed, synced and closed by finish(), off the event loop
        self._field = ""

    def finish(self, sync: bool = True) -> None:
        """The file's bytes on disk before anyone is told it is stored (sync=False: this copy
        is only a relay, the one stored is fsynced where it is kept)."""
        assert self.file is not None
        self.file.flush()
        if sync:
            os.fsync(self.file.fileno())
        self.file.close()

    def discard(self) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()
        self.tmp.unlink(missing_ok=True)


async def receive_upload(req: Request, tmp: Path, limit: int, room: int, csrf: str | None,
                         body_limit: int, sync: bool = True) -> Upload:
    """Reads the request body into `tmp`; raises ApiError (and leaves nothing) on failure.
    The whole body is held to `body_limit` (a preamble or epilogue around the file part
    counts too)."""
    content_type = req.headers.get("content-type", "")
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise ApiError(400, "validation", "file")
    upload = Upload(tmp, limit, room, csrf)
    callbacks = {name: getattr(upload, name) for name in (
        "on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
        "on_part_data", "on_part_end")}
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    received = 0
    try:
        while True:  # a body that stops arriving is cut by the protocol (protocol.py)
            message = await req.receive()
            if message["type"] == "http.disconnect":
                raise ApiError(400, "disconnect")
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > body_limit:
                raise ApiError(413, "size", headers=CLOSE)
            if chunk:
                parser.write(chunk)
            if not message.get("more_body"):
                break
        parser.finalize()
    except _Abort as abort:
        upload.discard()
        raise abort.error from None
    except ApiError:
        upload.discard()
        raise
    except OSError as error:  # the disk, not the client: full, read-only, gone
        raise _storage_error(req, upload, error) from None
    except Exception:  # noqa: BLE001 - a malformed body is the client's, not a 500
        upload.discard()
        raise ApiError(400, "validation", "file") from None
    except BaseException:  # cancelled (the worker stops): nothing left behind
        upload.discard()
        raise
    if not upload.done_file:
        upload.discard()
        raise ApiError(400, "validation", "file")
    try:
        await asyncio.to_thread(upload.finish, sync)  # an fsync of 100 MiB must not stall the worker
    except OSError as error:
        raise _storage_error(req, upload, error) from None
    return upload


def _storage_error(req: Request, upload: Upload, error: OSError) -> ApiError:
    """The disk refused the upload: nothing kept, the operator told, the client a 507."""
    upload.discard()
    notify.exception("storage", error, path=req.path, rid=req.log["id"])
    return ApiError(507, "storage")
