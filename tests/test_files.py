"""Files end to end (issue 4): streamed multipart uploads, paging, downloads (ETag, Range,
attachment, never HTML), delete, hostile filenames, per-user usage kept atomically, limits
(413 size, 409 quota) on an instance of their own, and what /auth/destroy leaves behind."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import httpx
import pytest

from lorebase.apps.notes import notebook_key, notes_key
from lorebase.files import keys as fkeys
from lorebase.identity import keys as idkeys

from .files_support import (
    BOUNDARY,
    COOKIE,
    MULTIPART_TYPE,
    Api,
    blob,
    destroy,
    instance,
    local_path,
    multipart,
    part,
    raw_http,
    read_reply,
    sha256,
    tree,
    usage,
    user,
)
from .identity_support import assert_error
from .lore import Lorebase, wait_for


def assert_nothing_stored(lore: Lorebase, api: Api, name: str) -> None:
    """No file of the user's, no usage, and no upload left half-written in DATA_DIR/tmp."""
    assert api.files() == []
    assert usage(lore, name) == 0
    assert not lore.redis().exists(fkeys.files(name))
    assert list((lore.data_dir / "tmp").iterdir()) == []


def listed(api: Api, file_id: str) -> dict:
    rows = [row for row in api.all_files() if row["id"] == file_id]
    assert len(rows) == 1, rows
    return rows[0]


# -- upload and download ------------------------------------------------------------------


def test_upload_then_download_the_same_bytes(server):
    data = blob(70_000, "roundtrip")
    with user(server, "fl_roundtrip") as api:
        before = int(time.time())
        out = api.ok_upload(data, "report.pdf", "application/pdf")
        assert out["name"] == "report.pdf" and out["type"] == "application/pdf"
        assert len(out["id"]) == 23 and all(c in "0123456789abcdef" for c in out["id"])

        row = listed(api, out["id"])
        assert row == {**out, "created": row["created"]}
        assert before <= row["created"] <= int(time.time()) + 1

        # stored under the server's id, with the bytes sent; counted against the user
        assert local_path(server, out["id"]).read_bytes() == data
        meta = server.redis().hgetall(fkeys.file("fl_roundtrip", out["id"]))
        assert meta["user"] == "fl_roundtrip" and meta["size"] == str(len(data)) and meta["sha256"] == sha256(data)
        assert usage(server, "fl_roundtrip") == len(data)

        r = api.get(f"/files/{out['id']}")
        assert r.status_code == 200
        assert r.content == data
        assert r.headers["content-type"] == "application/pdf"
        assert r.headers["content-length"] == str(len(data))
        assert r.headers["content-disposition"] == "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
        assert r.headers["accept-ranges"] == "bytes"
        assert r.headers["cache-control"] == "private, no-cache"
        assert r.headers["etag"].startswith('"') and r.headers["etag"].endswith('"')

        head = api.request("HEAD", f"/files/{out['id']}")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(data))
        assert head.headers["etag"] == r.headers["etag"]


def test_upload_with_the_token_in_a_field_before_the_file(server):
    data = blob(1000, "field")
    with user(server, "fl_csrf_field") as api:
        r = api.upload(data, "notes.txt", "text/plain", csrf="field")
        assert r.status_code == 200, r.text
        assert r.json()["sha256"] == sha256(data)
        assert api.get(f"/files/{r.json()['id']}").content == data


def test_an_empty_file_is_a_file(server):
    with user(server, "fl_empty") as api:
        out = api.ok_upload(b"", "empty.txt", "text/plain")
        assert out["size"] == 0
        r = api.get(f"/files/{out['id']}")
        assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == "0"
        assert usage(server, "fl_empty") == 0
        assert api.post("/files/delete", {"id": out["id"]}).status_code == 200
        assert api.files() == []


def test_upload_refused_without_the_right_csrf_token(server):
    data = blob(5000, "csrf")
    with user(server, "fl_csrf_bad") as api, user(server, "fl_csrf_other") as other:
        file_part = part("file", data, "a.bin")
        cases = {
            "no token": (multipart(file_part), {}),
            "wrong header": (multipart(file_part), {"x-csrf-token": "x" * 43}),
            "another session's header": (multipart(file_part), {"x-csrf-token": other.csrf}),
            "wrong field": (multipart(part("csrf", b"y" * 43), file_part), {}),
            "another session's field": (multipart(part("csrf", other.csrf.encode()), file_part), {}),
            "field after the file": (multipart(file_part, part("csrf", api.csrf.encode())), {}),
            "empty field": (multipart(part("csrf", b""), file_part), {}),
        }
        for what, (body, headers) in cases.items():
            r = api.upload_raw(body, csrf_header=False, headers=headers)
            assert r.status_code == 403, (what, r.status_code, r.text)
            assert_error(r, 403, "csrf")
        assert_nothing_stored(server, api, "fl_csrf_bad")
        assert other.files() == []


def test_upload_refuses_bodies_that_are_not_one_file(server):
    data = blob(3000, "shape")
    with user(server, "fl_shapes") as api:
        file_part = part("file", data, "a.bin")
        # not multipart at all: 415
        r = api.request("POST", "/files", content=b'{"file": "x"}',
                        headers={"content-type": "application/json", "x-csrf-token": api.csrf})
        assert_error(r, 415, "type")
        r = api.request("POST", "/files", content=data, headers={"content-type": "application/octet-stream",
                                                                 "x-csrf-token": api.csrf})
        assert_error(r, 415, "type")
        r = api.upload_raw(multipart(file_part), content_type="text/plain")
        assert_error(r, 415, "type")
        # multipart, but not one `file` part
        assert_error(api.upload_raw(multipart(file_part), content_type="multipart/form-data"),
                     400, "validation", "file")  # no boundary
        assert_error(api.upload_raw(multipart(file_part), content_type="multipart/form-data; boundary=" + "b" * 201),
                     400, "validation", "file")
        assert_error(api.upload_raw(multipart()), 400, "validation", "file")
        assert_error(api.upload_raw(b""), 400, "validation", "file")
        assert_error(api.upload_raw(multipart(file_part, part("file", data, "b.bin"))), 400, "validation", "file")
        assert_error(api.upload_raw(multipart(part("other", b"1"), file_part)), 400, "validation", "other")
        assert_error(api.upload_raw(multipart(file_part, part("title", b"1"))), 400, "validation", "title")
        truncated = multipart(file_part)[: -len(BOUNDARY) - 10]
        assert_error(api.upload_raw(truncated), 400, "validation", "file")
        garbage = b"this is not multipart at all\r\n" * 10
        assert_error(api.upload_raw(garbage), 400, "validation", "file")
        # no body and no type
        r = api.request("POST", "/files", headers={"x-csrf-token": api.csrf})
        assert_error(r, 400, "validation", "")
        assert_nothing_stored(server, api, "fl_shapes")
        # and the account still works
        api.ok_upload(data, "fine.bin")


def test_upload_needs_a_session(server):
    api = Api(server)
    try:
        r = api.upload_raw(multipart(part("file", b"abc", "a.txt")), csrf_header=False)
        assert_error(r, 403, "nocookie")
        assert_error(api.get("/files"), 403, "nocookie")
    finally:
        api.close()


# -- hostile filenames ----------------------------------------------------------------------

HOSTILE = [
    # (name sent, exact cleaned name, or None for properties only)
    ("../x", "x"),
    ("../../../../etc/passwd", "passwd"),
    ("..%2fx", "%2fx"),  # no leading dots: never a hidden or relative name
    ("/absolute/path.txt", "path.txt"),
    ("..\\..\\x", "x"),
    ("C:\\Windows\\win.ini", "win.ini"),
    ("a\x00b.txt", "ab.txt"),
    ("evil\u202etxt.exe", "eviltxt.exe"),
    ("say \\\"hi\\\".txt", 'say "hi".txt'),
    ("it's; name=x.txt", "it's; name=x.txt"),
    ("..", "file"),
    ("", "file"),
    ("a" * 296 + ".txt", "a" * 196 + ".txt"),
    ("b" * 300, "b" * 200),
    ("d\u00e9j\u00e0 vu.txt", "d\u00e9j\u00e0 vu.txt"),
    ("tab\there\x7f\x1b[31m.txt", "tabhere[31m.txt"),
]


def test_hostile_filenames_are_cleaned_and_never_used_as_paths(server):
    outside = server.data_dir.parent
    outside_before = set(os.listdir(outside))
    tree_before = tree(server.data_dir)
    with user(server, "fl_hostile") as api:
        ids = []
        for n, (sent, cleaned) in enumerate(HOSTILE):
            data = blob(100 + n, f"hostile{n}")
            r = api.upload(data, sent.encode("utf-8"))
            assert r.status_code == 200, (sent, r.text)
            out = r.json()
            name = out["name"]
            assert name == cleaned, (sent, name)
            assert "/" not in name and "\\" not in name and "\x00" not in name and "\u202e" not in name
            assert 0 < len(name) <= 200 and name not in (".", "..")
            ids.append(out["id"])

            d = api.get(f"/files/{out['id']}")
            assert d.status_code == 200 and d.content == data
            disposition = d.headers["content-disposition"]
            assert disposition.startswith('attachment; filename="')
            fallback = disposition.split('filename="', 1)[1].split('"; filename*=', 1)[0]
            assert all(c.isascii() and c.isprintable() and c not in '"\\;' for c in fallback), disposition
            assert disposition.endswith("filename*=UTF-8''" + quote(name, safe=""))
            assert "\r" not in disposition and "\n" not in disposition

        # stored under the server's names only, inside DATA_DIR/files; nothing anywhere else
        added = tree(server.data_dir) - tree_before
        assert added == {f"files/{i[-2:]}/{i}" for i in ids}
        assert set(os.listdir(outside)) == outside_before
        assert not (server.data_dir / "x").exists() and not (outside / "x").exists()
        assert list((server.data_dir / "tmp").iterdir()) == []
        assert {row["name"] for row in api.all_files()} == {c for _, c in HOSTILE}


def test_uploaded_html_and_svg_are_never_served_as_such(server):
    page = b"<!doctype html><script>alert(document.cookie)</script>"
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    png = b"\x89PNG\r\n\x1a\n" + blob(200, "png")
    with user(server, "fl_html") as api:
        cases = [
            (page, "page.html", "text/html"),
            (page, "page.htm", "text/html; charset=utf-8"),
            (page, "page.xhtml", "application/xhtml+xml"),
            (svg, "image.svg", "image/svg+xml"),
            (page, "page.html", None),
            (page, "page.txt", "TEXT/HTML"),
            (svg, "x.js", "application/javascript"),
            (page, "page.html", "text/html\u00e9"),
        ]
        for data, name, declared in cases:
            out = api.ok_upload(data, name, declared)
            r = api.get(f"/files/{out['id']}")
            assert r.status_code == 200 and r.content == data
            served = r.headers["content-type"]
            assert served == "application/octet-stream", (name, declared, served)
            assert r.headers["content-disposition"].startswith("attachment;")
            assert r.headers["x-content-type-options"] == "nosniff"
        # a type that is safe to serve keeps its type (still as an attachment)
        out = api.ok_upload(png, "pic.png", "image/png")
        r = api.get(f"/files/{out['id']}")
        assert r.headers["content-type"] == "image/png"
        assert r.headers["content-disposition"].startswith("attachment;")


# -- ETag and Range -------------------------------------------------------------------------


@pytest.fixture()
def thousand(server) -> Iterator[tuple[Api, str, bytes]]:
    data = bytes(range(256)) * 3 + bytes(range(232))
    assert len(data) == 1000
    with user(server, "fl_ranges") as api:
        yield api, api.ok_upload(data, "thousand.bin")["id"], data


def test_etag_and_if_none_match(server, thousand):
    api, file_id, data = thousand
    r = api.get(f"/files/{file_id}")
    etag = r.headers["etag"]
    for inm in (etag, "W/" + etag, f'"nope", {etag}', "*"):
        again = api.get(f"/files/{file_id}", headers={"if-none-match": inm})
        assert again.status_code == 304, inm
        assert again.content == b""
        assert again.headers["etag"] == etag
    assert api.get(f"/files/{file_id}", headers={"if-none-match": '"nope"'}).status_code == 200

    # the ETag follows the file's mtime and size: touch it and the old one no longer matches
    path = local_path(server, file_id)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - 5_000_000_000))
    r2 = api.get(f"/files/{file_id}", headers={"if-none-match": etag})
    assert r2.status_code == 200 and r2.content == data
    assert r2.headers["etag"] != etag
    assert api.get(f"/files/{file_id}", headers={"if-none-match": r2.headers["etag"]}).status_code == 304


def test_range_requests(server, thousand):
    api, file_id, data = thousand
    url = f"/files/{file_id}"
    cases = [
        ("bytes=0-99", 0, 99),
        ("bytes=100-199", 100, 199),
        ("bytes=-10", 990, 999),
        ("bytes=5-", 5, 999),
        ("bytes=990-5000", 990, 999),
        ("bytes=999-999", 999, 999),
        ("bytes=-2000", 0, 999),
    ]
    for header, start, end in cases:
        r = api.get(url, headers={"range": header})
        if (start, end) == (0, 999):
            assert r.status_code == 200, header
            assert r.content == data
            continue
        assert r.status_code == 206, (header, r.status_code)
        assert r.headers["content-range"] == f"bytes {start}-{end}/1000", header
        assert r.headers["content-length"] == str(end - start + 1)
        assert r.content == data[start:end + 1], header
    for header in ("bytes=1000-", "bytes=5000-6000", "bytes=-0"):
        r = api.get(url, headers={"range": header})
        assert_error(r, 416, "range")
        assert r.headers["content-range"] == "bytes */1000"
    # If-Range: the range only while the file is the one the client has
    etag = api.get(url).headers["etag"]
    r = api.get(url, headers={"range": "bytes=0-9", "if-range": etag})
    assert r.status_code == 206 and r.content == data[:10]
    r = api.get(url, headers={"range": "bytes=0-9", "if-range": '"stale"'})
    assert r.status_code == 200 and r.content == data


# -- not found ------------------------------------------------------------------------------


def test_download_of_anything_not_ones_own_is_404(server):
    data = blob(500, "mine")
    with user(server, "fl_owner") as owner, user(server, "fl_snoop") as snoop:
        file_id = owner.ok_upload(data, "secret.txt", "text/plain")["id"]
        unknown = file_id[:-6] + ("000000" if not file_id.endswith("000000") else "111111")
        for target in (file_id, unknown, file_id.upper(), file_id + "0", file_id[:-1], "x" * 300, "%00", "%2e%2e"):
            r = snoop.get(f"/files/{target}")
            assert_error(r, 404, "notfound")
        assert_error(owner.get(f"/files/{unknown}"), 404, "notfound")
        assert_error(owner.get(f"/files/{'a' * 300}"), 404, "notfound")
        # request targets a client library would normalise, sent byte for byte
        for target in (b"/files/../x", b"/files/..%2fx", b"/files/..%2f..%2fetc%2fpasswd", b"/files/%2e%2e",
                       b"/files/" + file_id.encode() + b"%00", b"/files/" + b"f" * 300,
                       b"/files/%2e%2e%2f" + file_id.encode()):
            status, raw = raw_http(server, b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                   b"X-Real-IP: " + owner.ip.encode() + b"\r\nCookie: lorebase="
                                   + owner.cookie.encode() + b"\r\n")
            assert status == 404, (target, raw[:300])
            assert raw.endswith(b'{"error":"notfound"}'), (target, raw[-200:])
            assert data not in raw
        assert owner.get(f"/files/{file_id}").content == data


# -- delete ---------------------------------------------------------------------------------


def test_delete(server):
    with user(server, "fl_delete") as api, user(server, "fl_delete_b") as other:
        keep = api.ok_upload(blob(300, "keep"), "keep.bin")
        gone = api.ok_upload(blob(700, "gone"), "gone.bin")
        theirs = other.ok_upload(blob(50, "theirs"), "theirs.bin")
        assert usage(server, "fl_delete") == 1000

        r = api.post("/files/delete", {"id": gone["id"]})
        assert r.status_code == 200 and r.json() == {}
        assert_error(api.get(f"/files/{gone['id']}"), 404, "notfound")
        assert [row["id"] for row in api.all_files()] == [keep["id"]]
        assert not local_path(server, gone["id"]).exists()
        assert not server.redis().exists(fkeys.file("fl_delete", gone["id"]))
        assert usage(server, "fl_delete") == 300

        assert_error(api.post("/files/delete", {"id": gone["id"]}), 404, "notfound")
        assert_error(api.post("/files/delete", {"id": theirs["id"]}), 404, "notfound")
        assert other.get(f"/files/{theirs['id']}").content == blob(50, "theirs")
        assert usage(server, "fl_delete_b") == 50

        assert_error(api.post("/files/delete", {"id": "../x"}), 400, "validation", "id")
        assert_error(api.post("/files/delete", {"id": "x" * 65}), 400, "validation", "id")
        assert_error(api.post("/files/delete", {"id": 5}), 400, "validation", "id")
        assert_error(api.post("/files/delete", {"id": [keep["id"]]}), 400, "validation", "id")
        assert_error(api.post("/files/delete", {}), 400, "validation", "id")
        assert_error(api.post("/files/delete", {"id": keep["id"], "all": True}), 400, "validation", "all")
        assert_error(api.post("/files/delete", {"id": keep["id"]}, csrf=False), 403, "csrf")
        assert_error(api.post("/files/delete", {"id": keep["id"], "csrf": "z" * 43}, csrf=False), 403, "csrf")
        assert api.get(f"/files/{keep['id']}").content == blob(300, "keep")
        assert usage(server, "fl_delete") == 300


# -- usage and paging ---------------------------------------------------------------------------


def test_usage_is_the_sum_of_sizes_even_under_concurrency(server):
    name = "fl_usage"
    with user(server, name) as api:
        sizes = [1, 10, 1000, 65_536, 3, 0, 4096, 77_777]
        uploaded = [api.ok_upload(blob(s, f"u{i}"), f"u{i}.bin") for i, s in enumerate(sizes)]
        assert usage(server, name) == sum(sizes)
        for out in uploaded[::2]:
            assert api.post("/files/delete", {"id": out["id"]}).status_code == 200
            assert usage(server, name) == sum(row["size"] for row in api.all_files())

        # many at once, over both workers: each arrival and removal is one atomic change
        def up(i: int) -> dict:
            return api.ok_upload(blob(1000 + i, f"c{i}"), f"c{i}.bin")

        with ThreadPoolExecutor(8) as pool:
            batch = list(pool.map(up, range(24)))
            assert usage(server, name) == sum(row["size"] for row in api.all_files())
            statuses = list(pool.map(lambda out: api.post("/files/delete", {"id": out["id"]}).status_code,
                                     batch[:12] + batch[:12]))
        assert sorted(statuses) == [200] * 12 + [404] * 12
        rows = api.all_files()
        assert len(rows) == len(sizes) - 4 + 12
        assert usage(server, name) == sum(row["size"] for row in rows)
        for row in rows:
            assert api.post("/files/delete", {"id": row["id"]}).status_code == 200
        assert not server.redis().exists(fkeys.usage(name))
        assert api.all_files() == []


def test_list_pages_newest_first(server):
    with user(server, "fl_pages") as api, user(server, "fl_pages_b") as other:
        ids = [api.ok_upload(blob(i + 1, f"p{i}"), f"p{i}.txt", "text/plain")["id"] for i in range(56)]
        first = api.files()
        assert len(first) == 50
        second = api.files(first[-1]["id"])
        assert len(second) == 6
        assert api.files(second[-1]["id"]) == []
        rows = first + second
        got = [row["id"] for row in rows]
        assert sorted(got) == sorted(ids) and len(set(got)) == 56
        # newest first: ids begin with the millisecond of their upload, so a later upload
        # never sorts before an earlier one
        assert got == sorted(ids, reverse=True)
        assert [i[:11] for i in ids] == sorted(i[:11] for i in ids)
        assert got[0] == ids[-1] or got[0][:11] == ids[-1][:11]
        for row in rows:
            n = ids.index(row["id"])
            assert row["name"] == f"p{n}.txt" and row["size"] == n + 1 and row["type"] == "text/plain"
            assert row["sha256"] == sha256(blob(n + 1, f"p{n}"))
        # someone else's list is their own
        assert other.files() == []
        assert other.files(first[-1]["id"]) == []
        # a bad cursor is a validation error
        for bad in ("x", "../x", first[-1]["id"].upper(), first[-1]["id"] + "0", "\x00" * 23):
            assert_error(api.get("/files", params={"before": bad}), 400, "validation", "before")
        assert_error(api.get("/files", params={"page": "2"}), 400, "validation", "page")


# -- IDOR ---------------------------------------------------------------------------------------


@pytest.mark.notes
def test_another_user_cannot_read_change_or_delete_my_files(server):
    data = blob(4321, "idor")
    with user(server, "fl_idor_a") as a, user(server, "fl_idor_b") as b:
        mine = a.ok_upload(data, "mine.bin")
        meta_before = server.redis().hgetall(fkeys.file("fl_idor_a", mine["id"]))
        assert_error(b.get(f"/files/{mine['id']}"), 404, "notfound")
        assert_error(b.get(f"/files/{mine['id']}", headers={"range": "bytes=0-10"}), 404, "notfound")
        assert b.request("HEAD", f"/files/{mine['id']}").status_code == 404
        assert_error(b.post("/files/delete", {"id": mine["id"]}), 404, "notfound")
        assert b.files() == []
        assert_error(b.post("/notes", {"text": "steal", "files": [mine["id"]]}), 400, "validation", "files.0")
        # a's session token does not work in b's session, nor b's in a's
        r = b.upload_raw(multipart(part("file", b"x", "x")), csrf_header=False, headers={"x-csrf-token": a.csrf})
        assert_error(r, 403, "csrf")
        assert_error(a.post("/files/delete", {"id": mine["id"], "csrf": b.csrf}, csrf=False), 403, "csrf")

        assert server.redis().hgetall(fkeys.file("fl_idor_a", mine["id"])) == meta_before
        assert a.get(f"/files/{mine['id']}").content == data
        assert usage(server, "fl_idor_a") == len(data)
        assert not server.redis().exists(fkeys.usage("fl_idor_b"))


# -- destroy ----------------------------------------------------------------------------------


@pytest.mark.notes
def test_destroy_removes_the_users_files_and_notes(server):
    with user(server, "fl_destroy") as api, user(server, "fl_destroy_b") as other:
        files = [api.ok_upload(blob(100 * (i + 1), f"d{i}"), f"d{i}.bin") for i in range(3)]
        notes = [api.post("/notes", {"text": f"note {i}", "files": [files[i]["id"]]}).json()["id"] for i in range(2)]
        notes.append(api.post("/notes", {"text": "plain"}).json()["id"])
        kept_file = other.ok_upload(blob(10, "kept"), "kept.bin")
        kept_note = other.post("/notes", {"text": "kept"}).json()["id"]
        db = server.redis()
        assert all(db.exists(fkeys.file("fl_destroy", f["id"])) for f in files)
        assert all(db.hexists(notebook_key("fl_destroy"), n) for n in notes)

        destroy(api)
        for f in files:
            assert not db.exists(fkeys.file("fl_destroy", f["id"]))
            assert not local_path(server, f["id"]).exists()
        for key in (fkeys.files("fl_destroy"), fkeys.usage("fl_destroy"), notes_key("fl_destroy"),
                    notebook_key("fl_destroy"), idkeys.user("fl_destroy")):
            assert not db.exists(key), key

        assert other.get(f"/files/{kept_file['id']}").content == blob(10, "kept")
        assert [n["id"] for n in other.notes()] == [kept_note]
        assert usage(server, "fl_destroy_b") == 10


# -- limits, on an instance of their own ---------------------------------------------------------

LIMIT = 64 * 1024
QUOTA = 200_000


@pytest.fixture(scope="module")
def limited(tmp_path_factory) -> Iterator[Lorebase]:
    with instance(tmp_path_factory.mktemp("limited"), FILE_LIMIT=LIMIT, QUOTA=QUOTA) as lore:
        yield lore


def _stream_then_read(lore: Lorebase, head: bytes, chunks: Iterator[bytes]) -> tuple[int, bytes, int]:
    """Send `head` then chunks until the server answers (or closes); the status, the reply
    and how many body bytes were sent before the answer came."""
    sent = 0
    with socket.create_connection(("127.0.0.1", lore.port), timeout=10) as s:
        s.sendall(head + b"\r\n")
        s.settimeout(0.0)
        for chunk in chunks:
            try:
                if s.recv(1, socket.MSG_PEEK):
                    break
            except BlockingIOError:
                pass
            try:
                s.settimeout(5)
                s.sendall(chunk)
                s.settimeout(0.0)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        s.settimeout(10)
        status, raw = read_reply(s)
    return status, raw, sent


def test_oversized_uploads_get_413_and_leave_nothing(limited):
    with user(limited, "fl_big") as api:
        # exactly the limit fits
        fits = api.ok_upload(blob(LIMIT, "fits"), "fits.bin")
        assert api.post("/files/delete", {"id": fits["id"]}).status_code == 200
        # one byte over: refused while streaming (the body is within the route's body limit)
        assert_error(api.upload(blob(LIMIT + 1, "over"), "over.bin"), 413, "size")
        assert_error(api.upload(blob(LIMIT + 1, "over"), "over.bin", csrf="field"), 413, "size")
        # far over, declared: refused before the body is read
        assert_error(api.upload(blob(LIMIT * 3, "far"), "far.bin"), 413, "size")
        assert_nothing_stored(limited, api, "fl_big")

        headers = (f"POST /files HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Real-IP: {api.ip}\r\n"
                   f"Cookie: lorebase={api.cookie}\r\nX-CSRF-Token: {api.csrf}\r\n"
                   f"Content-Type: {MULTIPART_TYPE}\r\n").encode()
        opening = part("file", b"", "huge.bin")[:-2]  # the part's headers, then its data follows

        def body(total: int) -> Iterator[bytes]:
            yield opening
            for i in range(total // 16384):
                yield blob(16384, f"huge{i % 4}")

        # a 50 MB body declared: the answer comes before the body is sent
        status, raw, sent = _stream_then_read(limited, headers + b"Content-Length: 52428800\r\n", body(52428800))
        assert status == 413 and raw.endswith(b'{"error":"size"}'), raw[-300:]
        assert sent < 8 * 1024 * 1024, sent
        # chunked, with no length declared: the stream is cut off once it passes the limit
        def chunked() -> Iterator[bytes]:
            for piece in body(52428800):
                yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        status, raw, sent = _stream_then_read(limited, headers + b"Transfer-Encoding: chunked\r\n", chunked())
        assert status == 413 and raw.endswith(b'{"error":"size"}'), raw[-300:]
        assert sent < 8 * 1024 * 1024, sent

        wait_for(lambda: list((limited.data_dir / "tmp").iterdir()) == [], 5, what="DATA_DIR/tmp to be empty")
        assert_nothing_stored(limited, api, "fl_big")
        assert not [p for p in (limited.data_dir / "files").rglob("*") if p.is_file()]


def test_quota_gives_409_and_counts_exactly(limited):
    name = "fl_quota"
    with user(limited, name) as api:
        full = [api.ok_upload(blob(LIMIT, f"q{i}"), f"q{i}.bin") for i in range(3)]
        room = QUOTA - 3 * LIMIT
        assert usage(limited, name) == 3 * LIMIT
        # more than the room left: refused while streaming
        assert_error(api.upload(blob(room + 1, "over"), "over.bin"), 409, "quota")
        assert usage(limited, name) == 3 * LIMIT
        # exactly the room left fits
        last = api.ok_upload(blob(room, "last"), "last.bin")
        assert usage(limited, name) == QUOTA
        # nothing left: refused at once, even one byte, even an empty file
        assert_error(api.upload(b"x", "one.bin"), 409, "quota")
        assert_error(api.upload(b"", "none.bin"), 409, "quota")
        assert usage(limited, name) == QUOTA
        assert len(api.all_files()) == 4
        assert list((limited.data_dir / "tmp").iterdir()) == []
        # deleting makes room again
        assert api.post("/files/delete", {"id": last["id"]}).status_code == 200
        assert usage(limited, name) == 3 * LIMIT
        api.ok_upload(b"x", "one.bin")
        for out in full:
            assert api.post("/files/delete", {"id": out["id"]}).status_code == 200
        # racing uploads cannot go over the quota together
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: api.upload(blob(60_000, f"race{i}"), f"race{i}.bin"), range(8)))
        codes = sorted(r.status_code for r in results)
        assert codes.count(200) == 3 and codes.count(409) == 5, codes
        for r in results:
            if r.status_code == 409:
                assert r.json() == {"error": "quota"}
        assert usage(limited, name) == 1 + 3 * 60_000 == sum(row["size"] for row in api.all_files())
        stored = [p for p in (limited.data_dir / "files").rglob("*") if p.is_file()]
        assert len(stored) == 4
        assert list((limited.data_dir / "tmp").iterdir()) == []
        # quota is per user: another user still has all of theirs
        with user(limited, "fl_quota_b") as other:
            other.ok_upload(blob(LIMIT, "other"), "other.bin")


def test_a_full_disk_is_507_storage_and_leaves_nothing(tmp_path):
    """The server may write files of at most 512 KiB (RLIMIT_FSIZE, as a full disk would stop
    it): a bigger upload is 507 `storage`, notified, with no temp file, metadata or quota
    left behind; a small one still works, and so does the worker."""
    cap = 512 * 1024
    with instance(tmp_path, wrapper=["prlimit", f"--fsize={cap}"]) as lore, user(lore, "fl_full") as api:
        body = multipart(part("file", blob(cap + 100_000, "too-big"), "big.bin"))
        r = httpx.post(lore.url + "/files", content=body, timeout=30, headers={
            "content-type": MULTIPART_TYPE, "x-csrf-token": api.csrf or "", "cookie": f"{COOKIE}={api.cookie}"})
        assert_error(r, 507, "storage")
        assert api.files() == [] and usage(lore, "fl_full") == 0
        assert tree(lore.data_dir / "tmp") == set()
        assert any("File too large" in e.get("error", "") for e in lore.events("storage")), lore.events("storage")
        small = api.ok_upload(blob(1000, "small"), "small.bin")
        assert api.get(f"/files/{small['id']}").content == blob(1000, "small")
