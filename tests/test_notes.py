"""Notes, the example app, end to end (issue 4): create, list (20 a page, ETag), update,
delete; every route broken first (400 validation with the field's path, never a 500);
and another user's notes and files out of reach (AC2)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

from lorebase.apps.notes import notebook_key

from .files_support import Api, blob, user
from .identity_support import assert_error


def create(api: Api, text: str, files: list[str] | None = None) -> str:
    body: dict = {"text": text}
    if files is not None:
        body["files"] = files
    r = api.post("/notes", body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"id"} and len(out["id"]) == 23, out
    return out["id"]


def test_write_list_update_delete(server):
    with user(server, "nt_crud") as api:
        f1 = api.ok_upload(blob(10, "n1"), "one.txt", "text/plain")["id"]
        f2 = api.ok_upload(blob(20, "n2"), "two.txt", "text/plain")["id"]
        assert api.notes() == []
        start = int(time.time() * 1000)
        a = create(api, "first note")
        b = create(api, "second\nwith\ttabs and \u00e9 and \U0001f600", [f1, f2, f1])
        c = create(api, "x" * 10000, [])
        end = int(time.time() * 1000)

        notes = api.notes()
        assert [n["id"] for n in notes] == [c, b, a]
        by_id = {n["id"]: n for n in notes}
        assert by_id[a] == {"id": a, "text": "first note", "ts": by_id[a]["ts"], "files": []}
        assert by_id[b]["text"] == "second\nwith\ttabs and \u00e9 and \U0001f600"
        assert by_id[b]["files"] == [f1, f2]  # a repeated id once
        assert by_id[c]["text"] == "x" * 10000 and by_id[c]["files"] == []
        for n in notes:
            assert set(n) == {"id", "text", "ts", "files"}
            assert start - 1000 <= n["ts"] <= end + 1000

        r = api.post("/notes/update", {"id": a, "text": "first, edited", "files": [f2]})
        assert r.status_code == 200 and r.json() == {}
        r = api.post("/notes/update", {"id": b, "text": "second, edited"})  # files kept when not given
        assert r.status_code == 200
        notes = {n["id"]: n for n in api.notes()}
        assert notes[a]["text"] == "first, edited" and notes[a]["files"] == [f2]
        assert notes[b]["text"] == "second, edited" and notes[b]["files"] == [f1, f2]
        assert notes[a]["ts"] == by_id[a]["ts"]
        r = api.post("/notes/update", {"id": b, "text": "second, no files", "files": []})
        assert r.status_code == 200
        assert {n["id"]: n for n in api.notes()}[b]["files"] == []

        r = api.post("/notes/delete", {"id": b})
        assert r.status_code == 200 and r.json() == {}
        assert [n["id"] for n in api.notes()] == [c, a]
        assert not server.redis().hexists(notebook_key("nt_crud"), b)
        assert_error(api.post("/notes/delete", {"id": b}), 404, "notfound")
        assert_error(api.post("/notes/update", {"id": b, "text": "back?"}), 404, "notfound")
        assert [n["id"] for n in api.notes()] == [c, a]


def test_a_deleted_file_drops_out_of_the_notes_that_name_it(server):
    with user(server, "nt_gone") as api:
        kept = api.ok_upload(blob(10, "k"), "kept.txt", "text/plain")["id"]
        doomed = api.ok_upload(blob(10, "d"), "doomed.txt", "text/plain")["id"]
        note = create(api, "two files", [doomed, kept])
        before = api.get("/notes")
        assert before.json()[0]["files"] == [doomed, kept]
        r = api.post("/files/delete", {"id": doomed})
        assert r.status_code == 200, r.text
        after = api.get("/notes", headers={"if-none-match": before.headers["etag"]})
        assert after.status_code == 200  # the list changed, so the old ETag no longer matches
        assert after.json() == [{**before.json()[0], "files": [kept]}]
        assert api.notes()[0]["id"] == note


def test_twenty_a_page_and_etag(server):
    with user(server, "nt_pages") as api:
        ids = [create(api, f"note {i}") for i in range(25)]
        first = api.get("/notes")
        assert first.status_code == 200
        page = first.json()
        assert [n["id"] for n in page] == sorted(ids, reverse=True)[:20]
        assert [i[:11] for i in ids] == sorted(i[:11] for i in ids)  # later notes never sort first
        rest = api.notes(page[-1]["id"])
        assert [n["id"] for n in rest] == sorted(ids, reverse=True)[20:]
        assert api.notes(rest[-1]["id"]) == []
        assert {n["text"] for n in page + rest} == {f"note {i}" for i in range(25)}

        etag = first.headers["etag"]
        assert first.headers["cache-control"] == "private, no-cache"
        again = api.get("/notes", headers={"if-none-match": etag})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == etag
        assert api.get("/notes", headers={"if-none-match": '"other"'}).status_code == 200
        # a change makes a new ETag
        assert api.post("/notes/update", {"id": page[0]["id"], "text": "changed"}).status_code == 200
        changed = api.get("/notes", headers={"if-none-match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag
        assert changed.json()[0]["text"] == "changed"


def test_every_route_refuses_malformed_payloads(server):
    with user(server, "nt_broken") as api:
        mine = create(api, "keep me")
        f = api.ok_upload(b"abc", "a.txt", "text/plain")["id"]
        many = [api.ok_upload(bytes([i]), f"m{i}.bin")["id"] for i in range(21)]
        cases = [
            ("/notes", {}, "text"),
            ("/notes", {"text": None}, "text"),
            ("/notes", {"text": 5}, "text"),
            ("/notes", {"text": ["a"]}, "text"),
            ("/notes", {"text": {"a": 1}}, "text"),
            ("/notes", {"text": True}, "text"),
            ("/notes", {"text": ""}, "text"),
            ("/notes", {"text": "x" * 10001}, "text"),
            ("/notes", {"text": "a\x00b"}, "text"),
            ("/notes", {"text": "bell\x07"}, "text"),
            ("/notes", {"text": "ok", "extra": 1}, "extra"),
            ("/notes", {"text": "ok", "user": "nt_other"}, "user"),
            ("/notes", {"text": "ok", "id": mine}, "id"),
            ("/notes", {"text": "ok", "files": f}, "files"),
            ("/notes", {"text": "ok", "files": None}, "files"),
            ("/notes", {"text": "ok", "files": [5]}, "files.0"),
            ("/notes", {"text": "ok", "files": [f, "../x"]}, "files.1"),
            ("/notes", {"text": "ok", "files": [f, f.upper()]}, "files.1"),
            ("/notes", {"text": "ok", "files": [f + "\x00"]}, "files.0"),
            ("/notes", {"text": "ok", "files": [f[:-1] + "0" if f[-1] != "0" else f[:-1] + "1"]}, "files.0"),
            ("/notes", {"text": "ok", "files": many}, "files"),
            ("/notes/update", {}, "id"),
            ("/notes/update", {"id": mine}, "text"),
            ("/notes/update", {"id": 5, "text": "x"}, "id"),
            ("/notes/update", {"id": "../x", "text": "x"}, "id"),
            ("/notes/update", {"id": mine + "0", "text": "x"}, "id"),
            ("/notes/update", {"id": mine, "text": ""}, "text"),
            ("/notes/update", {"id": mine, "text": "x" * 10001}, "text"),
            ("/notes/update", {"id": mine, "text": "\x00"}, "text"),
            ("/notes/update", {"id": mine, "text": "x", "files": [1]}, "files.0"),
            ("/notes/update", {"id": mine, "text": "x", "files": "abc"}, "files"),
            ("/notes/update", {"id": mine, "text": "x", "ts": 0}, "ts"),
            ("/notes/delete", {}, "id"),
            ("/notes/delete", {"id": 5}, "id"),
            ("/notes/delete", {"id": None}, "id"),
            ("/notes/delete", {"id": ""}, "id"),
            ("/notes/delete", {"id": "x" * 65}, "id"),
            ("/notes/delete", {"id": "a\x00"}, "id"),
            ("/notes/delete", {"id": mine, "force": True}, "force"),
        ]
        for route, body, path in cases:
            r = api.post(route, body)
            assert r.status_code == 400, (route, body, r.status_code, r.text)
            assert r.json() == {"error": "validation", "path": path}, (route, body, r.json())
        # bodies that are not an object, with the token in the header
        for raw in (b"[]", b'"text"', b"null", b"5"):
            for route in ("/notes", "/notes/update", "/notes/delete"):
                r = api.request("POST", route, content=raw,
                                headers={"content-type": "application/json", "x-csrf-token": api.csrf})
                assert_error(r, 400, "validation", "")
        for raw in (b"{", b'{"text": "a",}', b"\xff\xfe", b'{"text": "\\ud800"}'):
            r = api.request("POST", "/notes", content=raw,
                            headers={"content-type": "application/json", "x-csrf-token": api.csrf})
            assert_error(r, 400, "json")
        dup = ('{"text": "a", "text": "b", "csrf": ' + json.dumps(api.csrf) + "}").encode()
        assert_error(api.request("POST", "/notes", content=dup, headers={"content-type": "application/json"}),
                     400, "validation", "text")
        # ids that are well-formed but not a note of the user's
        for bad in ("nope", f[:-1] + "z", "0" * 23, f):
            assert_error(api.post("/notes/delete", {"id": bad}), 404, "notfound")
        assert_error(api.post("/notes/update", {"id": f, "text": "x"}), 404, "notfound")
        # the query of the list
        for query in ({"before": "x"}, {"before": "../x"}, {"before": mine.upper()}, {"before": mine + "0"}):
            assert_error(api.get("/notes", params=query), 400, "validation", "before")
        assert_error(api.get("/notes", params={"limit": "100"}), 400, "validation", "limit")
        assert_error(api.get("/notes?before=1&before=2"), 400, "validation", "before")
        # the wrong body type, no body, no token
        form = {"content-type": "application/x-www-form-urlencoded", "x-csrf-token": api.csrf}
        r = api.request("POST", "/notes", content=b"text=x", headers=form)
        assert_error(r, 415, "type")
        assert_error(api.request("POST", "/notes", headers={"x-csrf-token": api.csrf}), 400, "validation", "")
        assert_error(api.post("/notes", {"text": "no token"}, csrf=False), 403, "csrf")
        assert_error(api.post("/notes", {"text": "bad token", "csrf": "x" * 43}, csrf=False), 403, "csrf")
        # nothing of the above changed anything
        notes = api.notes()
        assert [(n["id"], n["text"], n["files"]) for n in notes] == [(mine, "keep me", [])]
        # exactly the limits pass
        create(api, "y" * 10000, many[:20])
        assert api.notes()[0]["files"] == many[:20]


def test_notes_need_a_session(server):
    api = Api(server)
    try:
        assert_error(api.get("/notes"), 403, "nocookie")
        assert_error(api.post("/notes", {"text": "x"}, csrf=False), 403, "nocookie")
    finally:
        api.close()


def test_another_user_cannot_read_change_or_delete_my_notes(server):
    with user(server, "nt_idor_a") as a, user(server, "nt_idor_b") as b:
        fa = a.ok_upload(blob(64, "fa"), "a.bin")["id"]
        fb = b.ok_upload(blob(64, "fb"), "b.bin")["id"]
        note = create(a, "a's secret", [fa])
        before = a.notes()
        stored = server.redis().hget(notebook_key("nt_idor_a"), note)

        assert b.notes() == []
        assert b.notes(note) == []
        assert_error(b.post("/notes/update", {"id": note, "text": "pwned"}), 404, "notfound")
        assert_error(b.post("/notes/update", {"id": note, "text": "pwned", "files": [fb]}), 404, "notfound")
        assert_error(b.post("/notes/delete", {"id": note}), 404, "notfound")
        # b's own note cannot point at a's file, on create or on update
        assert_error(b.post("/notes", {"text": "x", "files": [fa]}), 400, "validation", "files.0")
        assert_error(b.post("/notes", {"text": "x", "files": [fb, fa]}), 400, "validation", "files.1")
        own = create(b, "b's note", [fb])
        assert_error(b.post("/notes/update", {"id": own, "text": "x", "files": [fb, fb, fa]}), 400,
                     "validation", "files.2")
        assert b.notes()[0]["files"] == [fb] and b.notes()[0]["text"] == "b's note"
        # nor use a's token
        assert_error(b.post("/notes/delete", {"id": own, "csrf": a.csrf}, csrf=False), 403, "csrf")
        # a's side, untouched
        assert a.notes() == before
        assert server.redis().hget(notebook_key("nt_idor_a"), note) == stored
        assert a.get(f"/files/{fa}").content == blob(64, "fa")
        # and a can still change it
        assert a.post("/notes/update", {"id": note, "text": "a's edit"}).status_code == 200
        assert a.notes()[0]["text"] == "a's edit"


def test_concurrent_updates_never_lose_a_change_of_files(server):
    """Text-only updates racing one that sets the files: whichever wins the text, the files
    update is not undone by an update that read the note before it (compare-and-set)."""
    with user(server, "nt_race") as api:
        attached = api.ok_upload(blob(10, "race"), "race.txt", "text/plain")["id"]
        won = 0
        for round_ in range(5):
            note = create(api, f"round {round_}")
            bodies = [{"id": note, "text": f"edit {i}"} for i in range(12)]
            bodies.insert(6, {"id": note, "text": "with the file", "files": [attached]})
            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(lambda body: api.post("/notes/update", body).status_code, bodies))
            assert set(codes) <= {200, 409}, codes
            mine = next(n for n in api.notes() if n["id"] == note)
            # a 200 is kept; a 409 (it lost its compare-and-set every try, on a busy box) changed nothing
            assert mine["files"] == ([attached] if codes[6] == 200 else []), (round_, codes, mine)
            won += codes[6] == 200
        assert won, "the files update lost every round: nothing was tested"
