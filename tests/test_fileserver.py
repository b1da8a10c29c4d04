"""The file server (issue 11): `lorebase serve --role files` holding the bytes for API nodes
whose FILES_URL points at it. Its secret header on every verb, an API node that keeps no byte
of its own, the file server dying, stopping and coming back, its disk filling up, hostile ids,
its deadlines, connection cap and descriptors running out (issue 17), and the S3 mirror,
fetch-back and `files check` where the bytes are."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from lorebase.files import keys as fkeys

from .files_support import (
    COOKIE,
    MULTIPART_TYPE,
    S3_BUCKET,
    S3_TRASH,
    Api,
    Moto,
    blob,
    drip_until_closed,
    lorebase_cmd,
    multipart,
    part,
    read_reply,
    s3_bytes,
    s3_keys,
    setup_buckets,
    sha256,
    tree,
    usage,
    user,
)
from .identity_support import assert_error
from .lore import FILES_SECRET, FileServer, Lorebase, wait_for

QUOTA = 400_000
SOME_ID = "0123456789abcdef0123456"  # 23 hex: well formed, never stored
RIGHT = {"x-files-secret": FILES_SECRET}


def api_node(data_dir: Path, files: FileServer, **overrides: object) -> Lorebase:
    return Lorebase(data_dir, TRUSTED_PROXIES="127.0.0.1", MAIL_URL="console://", FILES_URL=files.url,
                    FILES_SECRET=FILES_SECRET, **overrides)


def unchecked(api: Api, method: str, path: str, body: bytes | None = None) -> httpx.Response:
    """A request of `api`'s session whose 5xx is the point (Api.request refuses any)."""
    headers = {"cookie": f"{COOKIE}={api.cookie}", "x-real-ip": api.ip, "x-csrf-token": api.csrf or ""}
    if body is not None:
        headers["content-type"] = MULTIPART_TYPE
    return httpx.request(method, api.lore.url + path, content=body, headers=headers, timeout=30)


def stored(files: FileServer) -> set[str]:
    """The blobs on the file server's disk (files/), by id."""
    return {Path(p).name for p in tree(files.data_dir / "files")}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lorebase, FileServer]]:
    base = tmp_path_factory.mktemp("fileserver")
    files = FileServer(base / "files")
    with files.running():
        lore = api_node(base / "api", files, QUOTA=QUOTA, FILES_TIMEOUT=2)
        with lore.running():
            yield lore, files


# -- the secret -------------------------------------------------------------------------------

VERBS = [("PUT", f"/blobs/{SOME_ID}"), ("GET", f"/blobs/{SOME_ID}"), ("HEAD", f"/blobs/{SOME_ID}"),
         ("DELETE", f"/blobs/{SOME_ID}"), ("POST", f"/blobs/{SOME_ID}/trash"), ("POST", f"/blobs/{SOME_ID}/untrash"),
         ("GET", f"/blobs/{SOME_ID}/sha256"), ("POST", f"/blobs/{SOME_ID}/fetch"), ("GET", "/blobs"),
         ("GET", "/blobs?in=trash"), ("GET", "/"), ("GET", "/nothing/here")]
WRONG = [{}, {"x-files-secret": ""}, {"x-files-secret": FILES_SECRET[:-1]}, {"x-files-secret": FILES_SECRET + "x"},
         {"x-files-secret": FILES_SECRET[:-1] + "X"}, {"X-Files-Secret": FILES_SECRET.upper()},
         {"authorization": f"Bearer {FILES_SECRET}"}]


def test_every_verb_without_or_with_a_wrong_secret_is_403_with_no_body(pair):
    _, files = pair
    with httpx.Client(base_url=files.url, timeout=10) as http:
        for method, path in VERBS:
            for headers in WRONG:
                body = b"x" * 10 if method in ("PUT", "POST") else None
                r = http.request(method, path, headers=headers, content=body)
                assert r.status_code == 403, (method, path, headers, r.status_code)
                assert r.content == b"" and "x-error" not in r.headers, (method, path, r.content)
        # the right secret gets past the gate: the 403s above were the secret's
        assert http.get("/blobs", headers=RIGHT).status_code == 200
        assert http.get(f"/blobs/{SOME_ID}", headers=RIGHT).status_code == 404
    assert SOME_ID not in stored(files)


# -- an API node on a file server ---------------------------------------------------------------


def test_an_api_node_keeps_every_byte_on_the_file_server(pair):
    lore, files = pair
    data = blob(300_000, "remote")
    with user(lore, "fs_roundtrip") as api:
        out = api.ok_upload(data, "remote.bin")
        file_id = out["id"]
        assert [row["id"] for row in api.all_files()] == [file_id]
        # the bytes are on the file server, under its layout; the API node holds none
        assert (files.data_dir / "files" / file_id[-2:] / file_id).read_bytes() == data
        assert tree(lore.data_dir / "files") == set() and tree(lore.data_dir / "tmp") == set()
        assert tree(files.data_dir / "tmp") == set()

        r = api.get(f"/files/{file_id}")
        assert r.status_code == 200 and r.content == data
        stat = os.stat(files.data_dir / "files" / file_id[-2:] / file_id)
        etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'  # mtime and size where the bytes are
        assert r.headers["etag"] == etag
        assert api.get(f"/files/{file_id}", headers={"if-none-match": etag}).status_code == 304
        part_ = api.get(f"/files/{file_id}", headers={"range": "bytes=1000-1999"})
        assert part_.status_code == 206 and part_.content == data[1000:2000]
        assert part_.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
        tail = api.get(f"/files/{file_id}", headers={"range": "bytes=-10"})
        assert tail.status_code == 206 and tail.content == data[-10:]
        assert api.get(f"/files/{file_id}", headers={"range": f"bytes={len(data)}-"}).status_code == 416

        # the quota is the API's (Redis): over it, 409 and nothing left on either disk
        assert_error(api.upload(blob(QUOTA - len(data) + 1, "over"), "over.bin"), 409, "quota")
        assert stored(files) == {file_id} and tree(files.data_dir / "tmp") == set()
        assert tree(lore.data_dir / "tmp") == set()

        assert api.post("/files/delete", {"id": file_id}).status_code == 200
        assert_error(api.get(f"/files/{file_id}"), 404, "notfound")
        assert file_id not in stored(files) and api.files() == [] and usage(lore, "fs_roundtrip") == 0


def test_racing_uploads_over_the_quota_leave_no_blob_without_a_record(pair):
    """Each upload sees room when it starts; the record's script refuses those past the quota
    after their bytes reached the file server: those bytes are deleted there again."""
    lore, files = pair
    before = stored(files)
    with user(lore, "fs_race") as api, ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: api.upload(blob(150_000, f"race{i}"), f"race{i}.bin"), range(6)))
        codes = sorted(r.status_code for r in results)
        assert codes.count(200) == QUOTA // 150_000 and codes.count(409) == 6 - QUOTA // 150_000, codes
        kept = {row["id"] for row in api.all_files()}
        assert stored(files) - before == kept and usage(lore, "fs_race") == 150_000 * len(kept)
        assert tree(files.data_dir / "tmp") == set() and tree(lore.data_dir / "tmp") == set()
        for file_id in kept:
            assert api.post("/files/delete", {"id": file_id}).status_code == 200
    assert stored(files) == before


def test_a_dead_file_server_is_503_unavailable_and_its_return_serves_again(pair, tmp_path):
    lore, files = pair
    data = blob(50_000, "outage")
    with user(lore, "fs_outage") as api:
        kept = api.ok_upload(data, "kept.bin")
        port, data_dir = files.port, files.data_dir
        files.kill()  # kill -9: every kept-alive connection of the API node's pool dies too
        assert_error(unchecked(api, "POST", "/files", multipart(part("file", b"while down", "down.bin"))),
                     503, "unavailable")
        assert_error(unchecked(api, "GET", f"/files/{kept['id']}"), 503, "unavailable")
        assert [row["id"] for row in api.files()] == [kept["id"]]  # the records are Redis's
        assert usage(lore, "fs_outage") == len(data)  # the refused upload counted nothing
        assert tree(lore.data_dir / "tmp") == set()

        again = FileServer(data_dir, port=port)
        pair_files = again.start()
        try:
            assert api.get(f"/files/{kept['id']}").content == data  # the API node was not restarted
            more = api.ok_upload(b"after", "after.bin")
            assert api.get(f"/files/{more['id']}").content == b"after"

            # stopped (SIGSTOP): accepts, never answers; FILES_TIMEOUT (2 s) later, 503
            assert pair_files.proc is not None
            pair_files.proc.send_signal(signal.SIGSTOP)
            try:
                began = time.monotonic()
                assert_error(unchecked(api, "GET", f"/files/{kept['id']}"), 503, "unavailable")
                assert time.monotonic() - began < 10
            finally:
                pair_files.proc.send_signal(signal.SIGCONT)
            assert api.get(f"/files/{kept['id']}").content == data
        finally:
            files.proc = again.proc  # the module's fixture stops this one
            files.log_path = again.log_path


def test_a_file_server_killed_mid_download_cuts_the_stream(tmp_path):
    files = FileServer(tmp_path / "files")
    with files.running():
        lore = api_node(tmp_path / "api", files, FILES_TIMEOUT=2)
        with lore.running(), user(lore, "fs_cut") as api:
            data = blob(8 * 1024 * 1024, "cut")
            out = api.ok_upload(data, "big.bin")
            with socket.create_connection(("127.0.0.1", lore.port), timeout=10) as s:
                s.sendall(f"GET /files/{out['id']} HTTP/1.1\r\nHost: x\r\nCookie: {COOKIE}={api.cookie}\r\n"
                          f"X-Real-IP: {api.ip}\r\n\r\n".encode())
                got = s.recv(65536)
                assert got.startswith(b"HTTP/1.1 200"), got[:100]
                files.kill()
                received = len(got)
                began = time.monotonic()
                while chunk := s.recv(1024 * 1024):  # ends (the API node closes), never hangs
                    received += len(chunk)
                assert received < len(data) and time.monotonic() - began < 10
            files.start()
            assert api.get(f"/files/{out['id']}").content == data


def test_a_delete_during_a_download_lets_the_download_finish(tmp_path):
    """The file server holds the file open once it streams: a delete meanwhile (its record and
    bytes gone) does not cut a download already under way."""
    files = FileServer(tmp_path / "files")
    data = blob(24 * 1024 * 1024, "delete-while-streaming")  # more than every socket buffer between
    with files.running(), api_node(tmp_path / "api", files).running() as lore, \
            user(lore, "fs_delete_streaming") as api:
        out = api.ok_upload(data, "streaming.bin")
        with socket.create_connection(("127.0.0.1", lore.port), timeout=10) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # the reader sets the pace
            s.sendall(f"GET /files/{out['id']} HTTP/1.1\r\nHost: x\r\nCookie: {COOKIE}={api.cookie}\r\n"
                      f"X-Real-IP: {api.ip}\r\nConnection: close\r\n\r\n".encode())
            got = s.recv(65536)
            assert got.startswith(b"HTTP/1.1 200"), got[:100]
            assert api.post("/files/delete", {"id": out["id"]}).status_code == 200
            assert out["id"] not in stored(files)
            while chunk := s.recv(1024 * 1024):
                got += chunk
        assert got.partition(b"\r\n\r\n")[2] == data


def test_a_full_disk_on_the_file_server_is_507_storage_and_leaves_nothing(tmp_path):
    cap = 512 * 1024
    files = FileServer(tmp_path / "files")
    files.wrapper = ["prlimit", f"--fsize={cap}"]  # the file server may write 512 KiB a file
    with files.running():
        lore = api_node(tmp_path / "api", files)
        with lore.running(), user(lore, "fs_full") as api:
            body = multipart(part("file", blob(cap + 100_000, "too-big"), "big.bin"))
            assert_error(unchecked(api, "POST", "/files", body), 507, "storage")
            assert api.files() == [] and usage(lore, "fs_full") == 0
            assert stored(files) == set() and tree(files.data_dir / "tmp") == set()
            assert tree(lore.data_dir / "tmp") == set()
            assert any("File too large" in e.get("error", "") for e in files.events("storage")), files.events()
            small = api.ok_upload(blob(1000, "small"), "small.bin")
            assert api.get(f"/files/{small['id']}").content == blob(1000, "small")


def test_a_cut_upload_to_the_file_server_leaves_nothing(pair):
    _, files = pair
    before = stored(files)
    with socket.create_connection(("127.0.0.1", files.port), timeout=10) as s:
        s.sendall(f"PUT /blobs/{SOME_ID} HTTP/1.1\r\nHost: x\r\nX-Files-Secret: {FILES_SECRET}\r\n"
                  f"Content-Length: 100000\r\n\r\n".encode() + b"y" * 50_000)
        # the half that arrived is being written: only then is the connection cut
        wait_for(lambda: tree(files.data_dir / "tmp") != set(), 10, 0.01, "the upload's temp file")
    wait_for(lambda: tree(files.data_dir / "tmp") == set(), 10, 0.05, "the cut upload's temp file removed")
    assert stored(files) == before


# -- deadlines, the connection cap, descriptors running out ---------------------------------------


@pytest.fixture(scope="module")
def deadlined(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    """A file server whose heads and bodies get 1 s to arrive."""
    files = FileServer(tmp_path_factory.mktemp("deadlined") / "files", HEADER_TIMEOUT=1, BODY_TIMEOUT=1)
    with files.running():
        yield files


def test_an_idle_connection_to_the_file_server_is_closed_after_the_head_deadline(deadlined):
    """No secret needed to open a connection: one that sends nothing gets 408 within
    HEADER_TIMEOUT (plus the 0.5 s sweep) and is closed."""
    with socket.create_connection(("127.0.0.1", deadlined.port), timeout=10) as s:
        began = time.monotonic()
        status, raw = read_reply(s)
        assert status == 408 and raw.endswith(b'{"error":"timeout"}'), raw[:300]
        assert s.recv(1) == b"" and time.monotonic() - began < 4
    # a head trickled in a byte at a time is cut the same way
    with socket.create_connection(("127.0.0.1", deadlined.port), timeout=10) as s:
        s.sendall(f"GET /blobs HTTP/1.1\r\nHost: x\r\nX-Files-Secret: {FILES_SECRET}\r\nX-Pad: ".encode())
        assert drip_until_closed(s, b"a", limit=10) < 4  # the head never ends
    assert httpx.get(deadlined.url + "/blobs", headers=RIGHT, timeout=10).status_code == 200


def test_a_body_dripped_to_the_file_server_is_cut_at_the_body_deadline(deadlined):
    """A PUT with the secret whose body comes a byte every 0.1 s: cut within BODY_TIMEOUT (an
    upload earns more time only with each 64 KiB), the temp file removed, nothing stored."""
    with socket.create_connection(("127.0.0.1", deadlined.port), timeout=10) as s:
        s.sendall(f"PUT /blobs/{SOME_ID} HTTP/1.1\r\nHost: x\r\nX-Files-Secret: {FILES_SECRET}\r\n"
                  f"Content-Length: 100000\r\n\r\n".encode() + b"y" * 1000)
        assert drip_until_closed(s, b"y", limit=10) < 4
    wait_for(lambda: tree(deadlined.data_dir / "tmp") == set(), 10, 0.05, "the cut upload's temp file removed")
    assert SOME_ID not in stored(deadlined)
    # and a body dripped after an early 403 (no secret) is cut the same way
    with socket.create_connection(("127.0.0.1", deadlined.port), timeout=10) as s:
        s.sendall(f"PUT /blobs/{SOME_ID} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".encode())
        status, _ = read_reply(s)
        assert status == 403
        assert drip_until_closed(s, b"y", limit=10) < 4


def test_past_the_connection_cap_new_connections_are_closed_and_the_held_ones_finish(tmp_path):
    """FILES_CONNECTIONS=8: eight uploads under way hold every place; a ninth connection is
    closed at once (nothing read, nothing answered), and the eight finish with 204. Once they
    are idle keep-alive connections, a new one gets room again."""
    files = FileServer(tmp_path / "files", FILES_CONNECTIONS=8)
    with files.running():
        ids = [f"{n:023x}" for n in range(1, 9)]
        held = [socket.create_connection(("127.0.0.1", files.port), timeout=10) for _ in ids]
        try:
            for s, file_id in zip(held, ids, strict=True):
                s.sendall(f"PUT /blobs/{file_id} HTTP/1.1\r\nHost: x\r\nX-Files-Secret: {FILES_SECRET}\r\n"
                          f"Content-Length: 2000\r\n\r\n".encode() + b"z" * 1000)
            wait_for(lambda: len(tree(files.data_dir / "tmp")) == 8, 10, 0.05, "eight uploads under way")
            with socket.create_connection(("127.0.0.1", files.port), timeout=10) as extra:
                began = time.monotonic()
                extra.sendall(f"GET /blobs HTTP/1.1\r\nHost: x\r\nX-Files-Secret: {FILES_SECRET}\r\n\r\n".encode())
                try:
                    assert extra.recv(65536) == b""
                except ConnectionResetError:
                    pass
                assert time.monotonic() - began < 2
            for s in held:
                s.sendall(b"z" * 1000)
                status, _ = read_reply(s)
                assert status == 204
            assert stored(files) == set(ids)
            r = httpx.get(files.url + "/blobs", headers=RIGHT, timeout=10)
            assert r.status_code == 200 and len(r.text.splitlines()) == 8
        finally:
            for s in held:
                s.close()
        assert any(e.get("ev") == "connection refused" for e in files.events()), files.events()


def test_out_of_descriptors_the_file_server_logs_a_line_per_interval_and_serves_again(tmp_path):
    """RLIMIT_NOFILE=64 and 150 connections that stay open: accepting fails for as long as
    they do (EMFILE). The log gets one `accept failed` line for the interval, with the count,
    not a traceback per attempt; once they are gone the server answers again."""
    files = FileServer(tmp_path / "files", HEADER_TIMEOUT=30)
    files.wrapper = ["prlimit", "--nofile=64"]
    with files.running():
        before = len(files.log_text().splitlines())
        flood = []
        try:
            for _ in range(150):  # the kernel completes them in the listen backlog, accepted or not
                flood.append(socket.create_connection(("127.0.0.1", files.port), timeout=10))
            wait_for(lambda: files.events("accept failed"), 10, 0.05, "accept failed logged")
            time.sleep(3)  # the point of the test: how much is logged while the failures go on
            lines = files.log_text().splitlines()[before:]
        finally:
            for s in flood:
                s.close()
        assert len(files.events("accept failed")) == 1, files.events("accept failed")
        assert len(lines) <= 5 and not any("Traceback" in line for line in lines), "\n".join(lines[:40])
        assert files.events("accept failed")[0]["error"].startswith("[Errno 24]")
        wait_for(lambda: httpx.get(files.url + "/blobs", headers=RIGHT, timeout=5).status_code == 200, 15, 0.2,
                 "the file server answering again")


# -- hostile ids and paths ----------------------------------------------------------------------

HOSTILE = ["/blobs/../../etc/passwd", "/blobs/..%2f..%2fetc%2fpasswd", "/blobs/%2e%2e/x", f"/blobs/{SOME_ID}0",
           f"/blobs/{SOME_ID[:-1]}", f"/blobs/{SOME_ID.upper()}", "/blobs/" + "a" * 300, "/blobs/" + "g" * 23,
           f"/blobs/{SOME_ID}/../{SOME_ID}", f"/blobs/{SOME_ID}%00", f"/blobs/{SOME_ID}/delete", "/blobs/",
           f"/blobs//{SOME_ID}", f"/blobs/{SOME_ID[:-2]}/x"]


def test_hostile_ids_and_paths_are_refused_and_write_nothing(pair, tmp_path):
    lore, files = pair
    before = tree(files.data_dir.parent)
    for path in HOSTILE:
        for method in ("GET", "PUT", "DELETE", "POST"):
            with socket.create_connection(("127.0.0.1", files.port), timeout=10) as s:
                s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nX-Files-Secret: {FILES_SECRET}\r\n"
                          f"Content-Length: 3\r\nConnection: close\r\n\r\nabc".encode())
                status, _ = read_reply(s)
            assert status in (400, 404, 405), (method, path, status)
    assert tree(files.data_dir.parent) == before  # nothing written anywhere
    with user(lore, "fs_hostile") as api:
        for path in ("/files/..%2f..%2fetc%2fpasswd", "/files/" + "a" * 300, "/files/" + "g" * 23):
            assert api.get(path).status_code == 404
    # a fetch-back naming a path as its user is refused before S3 is asked
    r = httpx.post(f"{files.url}/blobs/{SOME_ID}/fetch", headers=RIGHT, json={"user": "../x", "sha256": ""})
    assert r.status_code == 400


# -- S3, where the bytes are ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mirrored_pair(tmp_path_factory: pytest.TempPathFactory, moto: Moto) -> Iterator[tuple[Lorebase, FileServer]]:
    """An API node (its embedded Redis) and a file server sharing that Redis and S3 (moto)."""
    base = tmp_path_factory.mktemp("mirror")
    redis_url = f"unix://{base / 'api' / 'redis' / 'redis.sock'}"
    files = FileServer(base / "files", REDIS_URL=redis_url, **moto.settings())
    lore = Lorebase(base / "api", TRUSTED_PROXIES="127.0.0.1", MAIL_URL="console://", FILES_URL=files.url,
                    FILES_SECRET=FILES_SECRET, **moto.settings())
    lore.data_dir.mkdir(parents=True)
    setup_buckets(lore)
    with lore.running(), files.running():
        yield lore, files


def test_the_file_server_mirrors_to_s3_and_fetches_back_what_it_lost(mirrored_pair, moto):
    lore, files = mirrored_pair
    s3 = moto.client()
    with user(lore, "fs_mirror") as api:
        uploads = {api.ok_upload(blob(20_000 + i, f"m{i}"), f"m{i}.bin")["id"]: blob(20_000 + i, f"m{i}")
                   for i in range(3)}
        for file_id, data in uploads.items():  # every one: an API node that took a job would find no bytes
            key = f"files/fs_mirror/{file_id}"
            wait_for(lambda key=key: key in s3_keys(s3, S3_BUCKET), 15, 0.1, key)
            assert s3_bytes(s3, S3_BUCKET, key) == data
            wait_for(lambda file_id=file_id: lore.redis().hget(fkeys.file("fs_mirror", file_id), "s3") == "1", 5)
        assert tree(lore.data_dir / "files") == set()
        done = [e for e in files.events("s3 done") if e.get("outcome") == "put"]
        assert len(done) == 3, files.events()
        assert lore.events("s3 done") == []

        check = lorebase_cmd(lore, "files", "check")  # from the API node: the file server's disk
        assert check.returncode == 0, (check.stdout, check.stderr)

        # the file server lost one: the API node's download fetches it back there
        lost, data = next(iter(uploads.items()))
        (files.data_dir / "files" / lost[-2:] / lost).unlink()
        assert "missing on disk" in lorebase_cmd(lore, "files", "check").stdout
        r = api.get(f"/files/{lost}")
        assert r.status_code == 200 and r.content == data
        assert (files.data_dir / "files" / lost[-2:] / lost).read_bytes() == data
        assert tree(lore.data_dir / "files") == set()

        # lost again: `files check --repair` brings it back to the file server
        (files.data_dir / "files" / lost[-2:] / lost).unlink()
        repaired = lorebase_cmd(lore, "files", "check", "--repair")
        assert "fetched back from S3" in repaired.stdout, (repaired.stdout, repaired.stderr)
        assert sha256((files.data_dir / "files" / lost[-2:] / lost).read_bytes()) == sha256(data)

        # a delete sends the object to the trash bucket, from the file server's trash/
        assert api.post("/files/delete", {"id": lost}).status_code == 200
        key = f"files/fs_mirror/{lost}"
        wait_for(lambda: key in s3_keys(s3, S3_TRASH) and key not in s3_keys(s3, S3_BUCKET), 15, 0.1, "trashed")
        wait_for(lambda: tree(files.data_dir / "trash") == set(), 10, 0.05, "the trash/ copy removed")
