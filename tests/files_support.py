"""Helpers of the files, notes and S3 tests: a client that keeps its own session cookie and
CSRF token and never accepts a 500, users made and destroyed through the routes, multipart
bodies built by hand (so a test controls every byte: field order, hostile filenames), raw
HTTP for request targets a client library would normalise, a moto S3 server, and the
`lorebase` command run with a server's environment.

Nothing here reaches into lorebase: users come from POST /auth/signup and go with POST
/auth/destroy; storage is looked at as redis-cli, ls and an S3 client would."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

from lorebase.files import keys as fkeys
from lorebase.testing import S3_BUCKET as S3_BUCKET  # re-exported: the files tests' S3
from lorebase.testing import S3_TRASH as S3_TRASH
from lorebase.testing import Moto as Moto

from .lore import ROOT, Lorebase

COOKIE = "lorebase"
PASSWORD = "Files-Test-Horse-42-Saddle"  # fixed, long, not a common password
BOUNDARY = "lorebase-test-boundary-7f3a"

_ips = itertools.count(1)


def fresh_ip() -> str:
    """A client address of its own (TEST-NET-2), so per-IP limits never leak between tests.
    The test servers trust 127.0.0.1 as a proxy, so X-Real-IP speaks for the client."""
    n = next(_ips)
    return f"198.51.{100 + n // 250}.{n % 250 + 1}"


def blob(size: int, seed: str = "") -> bytes:
    """`size` deterministic bytes, different for each seed."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- multipart --------------------------------------------------------------------------


def part(name: str, data: bytes, filename: bytes | str | None = None, content_type: str | None = None) -> bytes:
    """One multipart part; `filename` goes into the header as given (bytes: byte for byte)."""
    disposition = f'form-data; name="{name}"'.encode()
    if filename is not None:
        raw = filename.encode("utf-8") if isinstance(filename, str) else filename
        disposition += b'; filename="' + raw + b'"'
    head = b"Content-Disposition: " + disposition + b"\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n".encode()
    return b"--" + BOUNDARY.encode() + b"\r\n" + head + b"\r\n" + data + b"\r\n"


def multipart(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--" + BOUNDARY.encode() + b"--\r\n"


MULTIPART_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


# -- a client ---------------------------------------------------------------------------


class Api:
    """One browser: its own address, the session cookie it was given (sent explicitly) and
    its CSRF token. Every reply it gets is checked: never a 500, nosniff always."""

    def __init__(self, lore: Lorebase, ip: str | None = None):
        self.lore = lore
        self.http = httpx.Client(base_url=lore.url, timeout=30)
        self.ip = ip or fresh_ip()
        self.cookie: str | None = None
        self.csrf: str | None = None

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, *, content: bytes | None = None, json_body: Any = None,
                headers: dict[str, str] | None = None, params: dict[str, str] | None = None) -> httpx.Response:
        sent = {"x-real-ip": self.ip}
        if json_body is not None:
            content = json.dumps(json_body).encode()
            sent["content-type"] = "application/json"
        if self.cookie is not None:
            sent["cookie"] = f"{COOKIE}={self.cookie}"
        sent.update(headers or {})
        r = self.http.request(method, path, content=content, headers=sent, params=params)
        self.http.cookies.clear()  # the cookie is ours to send, not the jar's
        assert r.status_code < 500, (method, path, r.status_code, r.text[:300])
        assert r.headers.get("x-content-type-options") == "nosniff", (method, path, r.headers)
        return r

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any, csrf: bool = True, **kw: Any) -> httpx.Response:
        """POST JSON; with csrf=True (the default) a dict body gets the session's token."""
        if csrf and isinstance(body, dict):
            assert self.csrf is not None, "not logged in"
            body = {"csrf": self.csrf, **body}
        return self.request("POST", path, json_body=body, **kw)

    def upload_raw(self, body: bytes, csrf_header: bool = True, content_type: str = MULTIPART_TYPE,
                   headers: dict[str, str] | None = None) -> httpx.Response:
        sent = {"content-type": content_type}
        if csrf_header:
            assert self.csrf is not None
            sent["x-csrf-token"] = self.csrf
        sent.update(headers or {})
        return self.request("POST", "/files", content=body, headers=sent)

    def upload(self, data: bytes, name: bytes | str = "data.bin", content_type: str | None = None,
               csrf: str = "header") -> httpx.Response:
        """POST /files with one `file` part; the token in the header or a `csrf` field before it."""
        if csrf == "field":
            assert self.csrf is not None
            return self.upload_raw(multipart(part("csrf", self.csrf.encode()), part("file", data, name, content_type)),
                                   csrf_header=False)
        return self.upload_raw(multipart(part("file", data, name, content_type)))

    def ok_upload(self, data: bytes, name: bytes | str = "data.bin", content_type: str | None = None) -> dict[str, Any]:
        r = self.upload(data, name, content_type)
        assert r.status_code == 200, r.text
        out = r.json()
        assert set(out) == {"id", "name", "size", "type", "sha256"}, out
        assert out["size"] == len(data) and out["sha256"] == sha256(data), out
        return out

    def files(self, before: str | None = None) -> list[dict[str, Any]]:
        r = self.get("/files", params={"before": before} if before else None)
        assert r.status_code == 200, r.text
        return r.json()

    def all_files(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        page = self.files()
        while page:
            out += page
            page = self.files(page[-1]["id"])
        return out

    def notes(self, before: str | None = None) -> list[dict[str, Any]]:
        r = self.get("/notes", params={"before": before} if before else None)
        assert r.status_code == 200, r.text
        return r.json()

    def login(self, name: str, password: str = PASSWORD) -> Api:
        r = self.request("POST", "/auth/login", json_body={"username": name, "password": password})
        assert r.status_code == 200, r.text
        self.csrf = r.json()["csrf"]
        cookies = [h for h in r.headers.get_list("set-cookie") if h.split("=", 1)[0].strip() == COOKIE]
        assert cookies, "login set no cookie"
        self.cookie = cookies[-1].split(";", 1)[0].split("=", 1)[1].strip()
        return self


def signup(lore: Lorebase, name: str, password: str = PASSWORD) -> None:
    api = Api(lore)
    try:
        r = api.request("POST", "/auth/signup",
                        json_body={"username": name, "email": f"{name}@example.com", "password": password})
        assert r.status_code == 200, r.text
    finally:
        api.close()


def destroy(api: Api, password: str = PASSWORD) -> None:
    r = api.post("/auth/destroy", {"password": password})
    assert r.status_code == 200, r.text
    api.cookie = api.csrf = None


@contextmanager
def user(lore: Lorebase, name: str) -> Iterator[Api]:
    """A new user, logged in; destroyed at the end unless the test destroyed it."""
    signup(lore, name)
    api = Api(lore).login(name)
    try:
        yield api
    finally:
        try:
            if api.cookie is not None:
                destroy(api)
        finally:
            api.close()


# -- storage, as ls and redis-cli see it ---------------------------------------------------


def local_path(lore: Lorebase, file_id: str) -> Path:
    return lore.data_dir / "files" / file_id[-2:] / file_id


def tree(root: Path, skip: tuple[str, ...] = ("redis",)) -> set[str]:
    """Every file under `root` (relative paths), but those under the `skip` directories."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel == Path("."):
            dirnames[:] = [d for d in dirnames if d not in skip]
        out.update(str(rel / f) for f in filenames)
    return out


def usage(lore: Lorebase, name: str) -> int:
    return int(lore.redis().get(fkeys.usage(name)) or 0)


# -- raw HTTP -----------------------------------------------------------------------------


def raw_http(lore: Lorebase, head: bytes, body: bytes = b"", timeout: float = 10.0) -> tuple[int, bytes]:
    """Send `head` (request line and headers, CRLF-terminated, without the blank line) and
    `body` as they are; the status and raw reply (until the server closes or 2 s of quiet)."""
    with socket.create_connection(("127.0.0.1", lore.port), timeout=timeout) as s:
        s.sendall(head + b"Connection: close\r\n\r\n" + body)
        return read_reply(s)


def read_reply(s: socket.socket) -> tuple[int, bytes]:
    data = b""
    with suppress(TimeoutError, ConnectionResetError):
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, rest = data.partition(b"\r\n\r\n")
                length = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                if length and len(rest) >= length[0]:
                    break
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data[9:12]), data


def drip_until_closed(s: socket.socket, piece: bytes, every: float = 0.1, limit: float = 10.0) -> float:
    """Send `piece` every `every` seconds until the server closes the connection: the seconds
    that took (an AssertionError after `limit` seconds of dripping). Whatever the server
    sends meanwhile is read and dropped; waiting for it is what paces the dripping."""
    began = time.monotonic()
    s.settimeout(every)
    while (spent := time.monotonic() - began) < limit:
        try:
            s.sendall(piece)
            if s.recv(65536) == b"":
                return spent
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return spent
    raise AssertionError(f"the server kept the connection open through {limit:g} s of dripping")


# -- the lorebase command -------------------------------------------------------------------


def lorebase_cmd(lore: Lorebase, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`python -m lorebase ARGS` with the server's environment (its LOREBASE_* settings)."""
    return subprocess.run([sys.executable, "-m", "lorebase", *args], env=lore.environ(), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


# -- S3 -------------------------------------------------------------------------------------

# moto's S3 server and the bucket names: lorebase.testing's


def setup_buckets(lore: Lorebase) -> str:
    """`lorebase s3 setup` with the server's settings; its output."""
    done = lorebase_cmd(lore, "s3", "setup")
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done.stdout


def s3_keys(s3: Any, bucket: str) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


def s3_bytes(s3: Any, bucket: str, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


@contextmanager
def instance(base: Path, wrapper: list[str] | None = None, **overrides: Any) -> Iterator[Lorebase]:
    """A dedicated lorebase (127.0.0.1 trusted as a proxy, console mail); it must stop with 0."""
    settings: dict[str, Any] = {"TRUSTED_PROXIES": "127.0.0.1", "MAIL_URL": "console://"}
    settings.update(overrides)
    lore = Lorebase(base / "data", **settings)
    lore.wrapper = wrapper or []
    with lore.running():
        yield lore
