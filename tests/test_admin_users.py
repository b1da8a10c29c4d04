"""The admin's users: search by username or email prefix and paging over 2,000 users, one
user's detail (sessions, files, notes), disable and delete (the destroy cascade, files to the
S3 trash), an admin's own account protected (403 self); the search index built by its
migration on an older database, and `lorebase check` finding and mending a stale entry.

The 2,000 users are written with lorebase's own `users.create` (the signup route's Lua step,
indexes included) straight into the server's Redis: through the route each would cost an
argon2 hash. Everything else goes over HTTP."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from lorebase import db as lorebase_db
from lorebase.apps.notes import notebook_key, notes_key
from lorebase.files import keys as fkeys
from lorebase.identity import keys as idkeys
from lorebase.identity import users as lorebase_users

from .files_support import PASSWORD as FILES_PASSWORD
from .files_support import S3_BUCKET, S3_TRASH, blob, instance, lorebase_cmd, s3_keys, setup_buckets
from .files_support import Api as Browser
from .identity_support import Api, Users, assert_error, dedicated
from .lore import Lorebase, wait_for

PUBLIC_FIELDS = {"username", "email", "created", "verified", "admin", "disabled"}
PAGE = 50
CLUSTER_KEYS = Path(__file__).resolve().parent.parent / "migrations" / "0002_cluster_keys.py"


def bulk(lore: Lorebase, rows: list[tuple[str, str]]) -> None:
    """Users (username, email) written by `users.create`, 200 at a time, on the server's socket."""
    async def go() -> None:
        client = lorebase_db.open_client(lore.redis_url or f"unix://{lore.data_dir / 'redis' / 'redis.sock'}", 10)
        try:
            for at in range(0, len(rows), 200):
                await asyncio.gather(*(lorebase_users.create(client, name, email, "-", 86400)
                                       for name, email in rows[at:at + 200]))
        finally:
            await client.close()
    asyncio.run(go())


def generated() -> list[tuple[str, str]]:
    """au_0000..au_1999 (addresses m0000@example.com.., but au_0000..au_0009 have addresses that
    start like their names), and ov_00..ov_59, whose addresses start like au_00's names."""
    rows = [(f"au_{n:04d}", f"au_{n:04d}@self.test" if n < 10 else f"m{n:04d}@example.com") for n in range(2000)]
    return rows + [(f"ov_{i:02d}", f"au_00{i:02d}@ov.test") for i in range(60)]


@pytest.fixture(scope="module")
def lore(tmp_path_factory, mail, moto) -> Iterator[Lorebase]:
    with dedicated(tmp_path_factory, mail, "adminusers", ADMINS="b_root@example.com", **moto.settings()) as lore:
        setup_buckets(lore)
        bulk(lore, generated())
        yield lore


@pytest.fixture(scope="module")
def root(lore, mail) -> Iterator[Api]:
    with Users(lore, mail) as made:
        yield made.session(made.new("b_root", verified=True))


@pytest.fixture()
def users(lore, mail) -> Iterator[Users]:
    with Users(lore, mail) as made:
        yield made


def search(api: Api, q: str, after: str | None = None) -> tuple[list[dict], str | None]:
    r = api.get("/admin/users?" + urlencode({"q": q, **({"after": after} if after else {})}))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"users", "next"}, body
    assert all(set(u) == PUBLIC_FIELDS for u in body["users"]), body
    return body["users"], body["next"]


def pages(api: Api, q: str, between: dict[int, object] | None = None) -> list[list[str]]:
    """Every page of a search, as usernames; `between[n]()` runs after page n."""
    out: list[list[str]] = []
    after: str | None = None
    while True:
        found, after = search(api, q, after)
        out.append([u["username"] for u in found])
        if between and len(out) in between:
            between[len(out)]()  # type: ignore[operator]
        if after is None:
            return out
        assert len(found) == PAGE, (q, len(out), len(found))


def test_a_username_prefix_pages_through_every_match_once_in_order(root):
    got = pages(root, "AU_1")  # any case
    assert len(got) == 20 and all(len(page) == PAGE for page in got)
    assert [name for page in got for name in page] == [f"au_{n}" for n in range(1000, 2000)]


def test_an_email_prefix_finds_the_users_by_their_address(root):
    got = [name for page in pages(root, "m01") for name in page]
    assert got == [f"au_{n:04d}" for n in range(100, 200)]
    found, after = search(root, "  M0150@Example.COM ")
    assert [u["username"] for u in found] == ["au_0150"] and after is None
    assert found[0]["email"] == "m0150@example.com"
    assert search(root, "nobody-starts-so") == ([], None)


def test_name_matches_come_first_then_email_only_matches_without_duplicates(root):
    """au_0000..0009 match by name and by address: listed once, with the name matches; the
    ov_ users match by address only and follow, in address order, across a page boundary."""
    got = pages(root, "au_00")
    flat = [name for page in got for name in page]
    assert flat == [f"au_{n:04d}" for n in range(100)] + [f"ov_{i:02d}" for i in range(60)]
    assert [len(page) for page in got] == [50, 50, 50, 10]


def test_the_whole_list_pages_without_duplicates_or_gaps_while_users_come_and_go(lore, root):
    def meanwhile() -> None:
        bulk(lore, [("aa_early", "aa_early@example.com"), ("zz_late", "zz_late@example.com")])
        assert root.post("/admin/delete", {"username": "au_1500"}, csrf=True).json() == {}

    got = pages(root, "", between={1: meanwhile})
    flat = [name for page in got for name in page]
    assert len(flat) == len(set(flat)), "a user listed twice"
    assert flat == sorted(flat)
    expected = {name for name, _ in generated()} - {"au_1500"} | {"b_root", "zz_late"}
    assert expected <= set(flat) and "au_1500" not in flat
    assert "aa_early" not in flat  # added before the page the cursor had passed
    assert [u["username"] for u in search(root, "aa_early")[0]] == ["aa_early"]


def test_a_cursor_the_server_did_not_make_is_400(root):
    for bad in ("garbage!", "x" + "YWJj", "n", "n%%%", "e" + "_-_-"):
        assert_error(root.get("/admin/users?" + urlencode({"after": bad})), 400, "validation", "after")
    assert_error(root.get("/admin/users?q=" + "a" * 255), 400, "validation", "q")


def test_the_detail_of_a_user_shows_its_sessions_files_and_notes(lore, users, root):
    users.new("b_detail", password=FILES_PASSWORD, verified=True)
    before = int(time.time() * 1000)
    first = Browser(lore).login("b_detail", FILES_PASSWORD)
    second = Browser(lore).login("b_detail", FILES_PASSWORD)
    try:
        stored = first.ok_upload(blob(3000, "detail"), "d.bin")
        for text in ("one", "two"):
            assert first.post("/notes", {"text": text, "files": []}).status_code == 200
        r = root.get("/admin/users/B_Detail")
        assert r.status_code == 200, r.text
        detail = r.json()
        assert set(detail) == PUBLIC_FIELDS | {"last_login", "files", "bytes", "notes", "sessions", "extra"}
        assert detail["extra"] == ["notes"]  # the notes example's line (Extension.user_detail)
        assert detail["username"] == "b_detail" and detail["verified"] is True and detail["admin"] is False
        assert before <= detail["last_login"] <= int(time.time() * 1000)
        assert (detail["files"], detail["bytes"], detail["notes"]) == (1, stored["size"], 2)
        sessions = detail["sessions"]
        assert len(sessions) == 2 and all(set(s) == {"created", "last", "ip", "agent"} for s in sessions)
        assert all(s["agent"] == "httpx" and s["ip"] for s in sessions)  # the login's
        assert sessions[0]["created"] <= sessions[1]["created"]
        # the first was used after the second was made: its last use is later than that
        assert sessions[0]["last"] >= sessions[1]["created"] - 5 and sessions[1]["last"] >= sessions[1]["created"]
        assert first.cookie and second.cookie and first.csrf and second.csrf
        for secret in (first.cookie.rpartition(".")[0], second.cookie.rpartition(".")[0], first.csrf, second.csrf):
            assert secret not in r.text  # never a session id or its token
        assert second.post("/auth/logout", {}).status_code == 200
        assert len(root.get("/admin/users/b_detail").json()["sessions"]) == 1
    finally:
        first.close()
        second.close()
    assert_error(root.get("/admin/users/b_nobody"), 404, "user")


def test_disabling_ends_the_users_sessions_on_their_next_request(lore, users, root):
    target = users.new("b_disabled")
    api = users.session(target)
    assert len(root.get("/admin/users/b_disabled").json()["sessions"]) == 1
    assert root.post("/admin/disable", {"username": "b_disabled", "value": True}, csrf=True).json() == {}
    assert_error(api.get("/auth/csrf"), 403, "session")
    detail = root.get("/admin/users/b_disabled").json()
    assert detail["disabled"] is True and detail["sessions"] == []
    assert root.post("/admin/disable", {"username": "b_disabled", "value": False}, csrf=True).status_code == 200


def test_delete_removes_the_user_its_sessions_notes_and_files_to_the_s3_trash(lore, moto, users, root):
    users.new("b_gone", password=FILES_PASSWORD)
    browser = Browser(lore).login("b_gone", FILES_PASSWORD)
    other = Browser(lore).login("b_gone", FILES_PASSWORD)
    redis = lore.redis()
    s3 = moto.client()
    try:
        stored = browser.ok_upload(blob(2000, "gone"), "g.bin")
        key = f"files/b_gone/{stored['id']}"
        wait_for(lambda: key in s3_keys(s3, S3_BUCKET), 15, 0.1, f"{key} mirrored")
        assert browser.post("/notes", {"text": "a note", "files": [stored["id"]]}).status_code == 200
        sids = redis.smembers(idkeys.sessions("b_gone"))
        assert len(sids) == 2
        r = root.post("/admin/delete", {"username": "b_gone"}, csrf=True)
        assert r.status_code == 200 and r.json() == {}
        for api in (browser, other):
            assert_error(api.get("/files"), 403, "session")
        for gone in (idkeys.user("b_gone"), idkeys.sessions("b_gone"), notes_key("b_gone"), notebook_key("b_gone"),
                     fkeys.files("b_gone"), fkeys.usage("b_gone"), fkeys.file("b_gone", stored["id"]),
                     idkeys.email("b_gone@example.com"),
                     *(idkeys.session(sid) for sid in sids)):
            assert not redis.exists(gone), gone
        assert not redis.sismember(idkeys.USERS, "b_gone")
        assert search(root, "b_gone") == ([], None)
        wait_for(lambda: key in s3_keys(s3, S3_TRASH), 15, 0.1, f"{key} in the trash")
        # the trash job copies, then deletes: the object leaves the bucket a moment after
        wait_for(lambda: key not in s3_keys(s3, S3_BUCKET), 5, 0.1, f"{key} out of {S3_BUCKET}")
        assert_error(root.post("/admin/delete", {"username": "b_gone"}, csrf=True), 404, "user")
        assert_error(root.get("/admin/users/b_gone"), 404, "user")
    finally:
        browser.close()
        other.close()
    users.made[-1].gone = True
    again = users.new("b_gone", email="b_gone@example.com")  # the name and the address are free again
    assert again.name == "b_gone"
    detail = root.get("/admin/users/b_gone").json()
    assert (detail["files"], detail["bytes"], detail["notes"], detail["sessions"]) == (0, 0, 0, [])


def test_an_admin_cannot_unmake_disable_or_delete_themselves(lore, root):
    for path, body in [("/admin/admin", {"value": False}), ("/admin/disable", {"value": True}),
                       ("/admin/delete", {})]:
        assert_error(root.post(path, {"username": " B_ROOT ", **body}, csrf=True), 403, "self")
    stored = lore.redis().hgetall(idkeys.user("b_root"))
    assert stored["disabled"] == "0" and "destroying" not in stored
    assert root.get("/admin/users/b_root").json()["admin"] is True  # still an admin, still logged in
    # what cannot lock anyone out is allowed
    assert root.post("/admin/admin", {"username": "b_root", "value": True}, csrf=True).status_code == 200
    assert root.post("/admin/disable", {"username": "b_root", "value": False}, csrf=True).status_code == 200


# -- the index on a database that has none, and the check -----------------------------------


@pytest.fixture(scope="module")
def older(tmp_path_factory) -> Iterator[Lorebase]:
    with instance(Path(tmp_path_factory.mktemp("older"))) as server:
        yield server


def test_the_layout_migration_moves_an_older_database_and_builds_its_index(older):
    """A database of the layout before 0002 and before the search index (keys written here as
    that code wrote them): 0002 moves it to today's layout and builds the index 0001 built
    for its time (today's consistency check reads today's layout, so 0001 alone can no
    longer pass it)."""
    rows = [(f"mi_{n:02d}", f"mail{n:02d}@example.com") for n in range(30)]
    redis = older.redis()
    for name, email in rows:
        released = name == "mi_00"  # an account whose address was released, as release left it
        redis.hset(f"user:{name}", mapping={"username": name, "email": "" if released else email, "hash": "-",
                                            "created": int(time.time()), "verified": 0, "admin": 0,
                                            "disabled": 0, "gen": "0123456789abcdef"})
        if not released:
            redis.set(f"email:{email}", name)
        redis.sadd("users", name)
    done = lorebase_cmd(older, "migrate", str(CLUSTER_KEYS))
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert re.search(r"added\s+\{users\}:\*\s+2", done.stdout), done.stdout  # the two indexes
    assert redis.exists("users") and not redis.exists(idkeys.USERS_BY_NAME)  # rehearsed on a copy only
    done = lorebase_cmd(older, "migrate", str(CLUSTER_KEYS), "--apply")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert redis.zrange(idkeys.USERS_BY_NAME, 0, -1) == [name for name, _ in rows]
    assert redis.zrange(idkeys.USERS_BY_EMAIL, 0, -1) == [f"{email}\0{name}" for name, email in rows[1:]]
    assert not redis.exists("users") and not redis.exists(f"user:{rows[1][0]}")
    assert lorebase_cmd(older, "check").returncode == 0
    again = lorebase_cmd(older, "migrate", str(CLUSTER_KEYS), "--apply")
    assert again.returncode == 1 and "applied already" in again.stdout


def test_check_finds_missing_and_stale_index_entries_and_repair_mends_them(older):
    bulk(older, [("ix_a", "ix_a@example.com"), ("ix_b", "ix_b@example.com")])
    redis = older.redis()
    redis.zrem(idkeys.USERS_BY_NAME, "ix_a")
    redis.zrem(idkeys.USERS_BY_EMAIL, "ix_b@example.com\0ix_b")
    redis.zadd(idkeys.USERS_BY_NAME, {"ix_ghost": 0})
    redis.zadd(idkeys.USERS_BY_EMAIL, {"old@example.com\0ix_a": 0, "ghost@example.com\0ix_ghost": 0})
    done = lorebase_cmd(older, "check")
    assert done.returncode == 1, done.stdout
    lines = done.stdout.splitlines()
    by_name, by_email = idkeys.USERS_BY_NAME, idkeys.USERS_BY_EMAIL
    expected = [f"{idkeys.user('ix_a')}: its username is not in {by_name}",
                f"{idkeys.user('ix_b')}: its email is not in {by_email}",
                f"{by_name}: ix_ghost has no {idkeys.user('ix_ghost')}",
                f"{by_email}: old@example.com of ix_a, who does not exist or has another email",
                f"{by_email}: ghost@example.com of ix_ghost, who does not exist or has another email"]
    assert sorted(lines[:-1]) == sorted(expected), lines
    assert "5 problems" in lines[-1]
    done = lorebase_cmd(older, "check", "--repair")
    assert done.returncode == 0, done.stdout
    assert f"{idkeys.user('ix_a')}: its username is not in {by_name} (indexed)" in done.stdout
    assert f"{by_name}: ix_ghost has no {idkeys.user('ix_ghost')} (removed)" in done.stdout
    assert "5 problems, 5 repaired" in done.stdout
    assert redis.zscore(by_name, "ix_a") == 0 and redis.zscore(by_email, "ix_b@example.com\0ix_b") == 0
    assert not redis.zscore(idkeys.USERS_BY_NAME, "ix_ghost")
    assert redis.zrangebylex(idkeys.USERS_BY_EMAIL, "[ghost", "[ghost\xff") == []
    assert redis.zrangebylex(idkeys.USERS_BY_EMAIL, "[old", "[old\xff") == []
    done = lorebase_cmd(older, "check")
    assert done.returncode == 0, done.stdout
