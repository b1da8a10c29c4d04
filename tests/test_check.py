"""`lorebase check [--repair]` (master tasks: consistency checks), run as an operator would
beside a running server; the broken data is written with redis-py straight into the server's
Redis, as an operator's mistake or a crash would leave it. The scheduled check and the one at
start-up are watched through their notify events."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorebase import mail as outbox
from lorebase.apps.notes import notebook_key, notes_key
from lorebase.files import keys as fkeys
from lorebase.identity import keys as idkeys
from lorebase.tasks.queue import doing_lists, durable

from .files_support import Api, blob, instance, local_path, lorebase_cmd, signup, user
from .lore import Lorebase, RedisServer, free_port, wait_for
from .support import master, wait_event

MAIL = durable()["mail"]  # the outbox's keys


def check(lore: Lorebase, *flags: str) -> tuple[int, list[str]]:
    done = lorebase_cmd(lore, "check", *flags)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr == "", done.stderr  # no terminal: no progress bar
    return done.returncode, done.stdout.splitlines()


def problems(lines: list[str]) -> list[str]:
    """The finding lines (all but the summary)."""
    assert lines and lines[-1].startswith("checked "), lines
    return lines[:-1]


@pytest.fixture(scope="module")
def lore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lorebase]:
    with instance(Path(tmp_path_factory.mktemp("check")), CHECK_EVERY="0") as server:
        yield server


def note(api: Api, text: str, files: list[str]) -> str:
    r = api.post("/notes", {"text": text, "files": files})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def test_a_healthy_server_passes(lore):
    with user(lore, "ck_fine") as api, user(lore, "ck_fine2") as other:
        stored = api.ok_upload(blob(3000, "fine"), "fine.bin")
        note(api, "with a file", [stored["id"]])
        note(other, "plain", [])
        Api(lore).login("ck_fine").close()  # a second session
        code, lines = check(lore)
        assert code == 0, lines
        assert problems(lines) == []
        assert "0 problems" in lines[-1] and "2 users" in lines[-1], lines


def test_broken_data_is_named_repaired_and_the_users_keep_their_data(lore):
    redis = lore.redis()
    tasks = next(p for p in master(lore).children() if "lorebase: tasks" in " ".join(p.cmdline()))
    with user(lore, "ck_alice") as alice, user(lore, "ck_bob") as bob:
        alice_file = alice.ok_upload(blob(1000, "alice"), "a.bin")
        bob_file = bob.ok_upload(blob(2500, "bob"), "b.bin")
        kept = note(bob, "kept as it is", [bob_file["id"]])
        foreign = note(bob, "names alice's file", [bob_file["id"]])
        blob_of = json.loads(redis.hget(notebook_key("ck_bob"), foreign))
        blob_of["files"] = [bob_file["id"], alice_file["id"]]
        redis.hset(notebook_key("ck_bob"), foreign, json.dumps(blob_of, separators=(",", ":")))

        redis.delete(idkeys.email("ck_alice@example.com"))  # a missing email index entry
        redis.sadd(idkeys.USERS, "ck_ghost")  # a dangling member
        redis.set(idkeys.email("nobody@example.com"), "ck_nobody")  # an entry pointing at nobody
        redis.set(idkeys.session("ck_gone:" + "x" * 43), "csrf 1700000000000 0123456789abcdef")  # of a missing user
        redis.set(fkeys.usage("ck_bob"), 12345)  # wrong usage
        tasks.suspend()  # a stalled tasks process: the bad job stays in the queue
        try:
            redis.lpush(outbox.QUEUE, "not json {")
            # the stalled process's BLMOVE, already waiting in Redis, may still take it
            held = wait_for(lambda: next((k for k in (outbox.QUEUE, *doing_lists(redis, MAIL)) if redis.llen(k)), None),
                            5, 0.02, "the bad job queued or taken")
            code, lines = check(lore)
            assert code == 1, lines
            found = problems(lines)
            for expected in [
                f"{idkeys.USERS}: ck_ghost has no {idkeys.user('ck_ghost')}",
                "email:nobody@example.com: points at ck_nobody, who does not exist",
                f"{idkeys.user('ck_alice')}: its email ck_alice@example.com has no email:ck_alice@example.com",
                "session:{ck_gone}:xxxxxx…: a session of ck_gone, who does not exist",
                f"{notebook_key('ck_bob')}: note {foreign} names files of other users: {alice_file['id']}",
                f"{fkeys.usage('ck_bob')}: 12345 bytes, but the files of ck_bob hold 2500",
                f"{held}: a job that is not a JSON object (10 bytes)",
            ]:
                assert expected in found, (expected, lines)
            assert len(found) == 7, found
            assert "7 problems" in lines[-1], lines

            code, lines = check(lore, "--repair")
            assert code == 0, lines
            for expected in [
                f"{idkeys.USERS}: ck_ghost has no {idkeys.user('ck_ghost')} (removed from the set)",
                "email:nobody@example.com: points at ck_nobody, who does not exist (deleted)",
                f"{idkeys.user('ck_alice')}: its email ck_alice@example.com has no email:ck_alice@example.com "
                "(index added)",
                f"{notebook_key('ck_bob')}: note {foreign} names files of other users: {alice_file['id']} "
                "(rewritten without them)",
                f"{fkeys.usage('ck_bob')}: 12345 bytes, but the files of ck_bob hold 2500 (set to 2500)",
                f"{held}: a job that is not a JSON object (10 bytes) (moved to {outbox.DEAD})",
            ]:
                assert expected in lines, (expected, lines)
            assert "7 problems, 7 repaired" in lines[-1], lines
            assert redis.lrange(outbox.DEAD, 0, -1) == ["not json {"]
        finally:
            tasks.resume()
        code, lines = check(lore)
        assert (code, problems(lines)) == (0, []), lines
        assert f"(dead jobs: {outbox.DEAD} 1)" in lines[-1], lines
        redis.delete(outbox.DEAD)

        # the users still log in (by email: the index repaired); their notes and files are intact
        for name, stored in (("ck_alice", alice_file), ("ck_bob", bob_file)):
            again = Api(lore).login(f"{name}@example.com")
            assert again.get(f"/files/{stored['id']}").content == blob(stored["size"], name[3:])
            again.close()
        notes = {n["id"]: n for n in bob.notes()}
        assert notes[kept]["files"] == [bob_file["id"]]
        assert notes[foreign]["files"] == [bob_file["id"]] and notes[foreign]["text"] == "names alice's file"
        assert [f["id"] for f in alice.files()] == [alice_file["id"]]


def test_a_deleted_attachment_is_a_tidy_up_not_a_problem(lore):
    with user(lore, "ck_tidy") as api:
        gone = api.ok_upload(blob(100, "gone"), "gone.bin")
        kept = api.ok_upload(blob(200, "kept"), "kept.bin")
        written = note(api, "two files", [gone["id"], kept["id"]])
        assert api.post("/files/delete", {"id": gone["id"]}).status_code == 200
        code, lines = check(lore)
        assert code == 0, lines  # deleting a file is allowed: the note's read filters it out
        assert problems(lines) == [
            f"{notebook_key('ck_tidy')}: note {written} names files no longer stored: {gone['id']} (tidy-up)"], lines
        code, lines = check(lore, "--repair")
        assert code == 0 and "(rewritten without them)" in lines[0], lines
        assert json.loads(lore.redis().hget(notebook_key("ck_tidy"), written))["files"] == [kept["id"]]
        assert problems(check(lore)[1]) == []


def scans(redis) -> int:
    """SCAN calls Redis has answered since it started (INFO commandstats)."""
    return int(redis.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))


def test_notes_naming_deleted_files_cost_the_check_no_scan_each(lore):
    """Each note naming a deleted file used to cost a full-keyspace SCAN (hours, for one user's
    notes on a big database): with 300 such notes the check makes at most one more pass over
    the keyspace than with none, and still names every one of them."""
    redis = lore.redis()
    with user(lore, "ck_many") as api:
        before = scans(redis)
        list(redis.scan_iter(count=1000))
        one_pass = scans(redis) - before
        before = scans(redis)
        assert check(lore)[0] == 0
        baseline = scans(redis) - before

        uploaded = [api.ok_upload(blob(10 + i, f"many{i}"), f"m{i}.bin")["id"] for i in range(5)]
        written = {note(api, f"note {n}", [uploaded[n % 5]]): uploaded[n % 5] for n in range(300)}
        for file_id in uploaded:
            assert api.post("/files/delete", {"id": file_id}).status_code == 200
        before = scans(redis)
        code, lines = check(lore)
        used = scans(redis) - before
        assert code == 0, lines
        assert sorted(problems(lines)) == sorted(
            f"{notebook_key('ck_many')}: note {note_id} names files no longer stored: {file_id} (tidy-up)"
            for note_id, file_id in written.items())
        assert used <= baseline + one_pass, (used, baseline, one_pass)


def test_a_half_finished_destroy_is_finished_by_repair(lore):
    redis = lore.redis()
    signup(lore, "ck_half")
    api = Api(lore).login("ck_half")
    files = [api.ok_upload(blob(500 + i, f"half{i}"), f"h{i}.bin")["id"] for i in range(2)]
    note(api, "left behind", files)
    api.close()
    # destroy's first step, as the route does it, then a crash before the rest: every
    # session ended, disabled, marked
    for sid in redis.smembers(idkeys.sessions("ck_half")):
        redis.delete(idkeys.session(sid))
    redis.delete(idkeys.sessions("ck_half"))
    redis.hset(idkeys.user("ck_half"), mapping={"disabled": 1, "destroying": int(time.time() * 1000)})
    code, lines = check(lore)
    assert (code, problems(lines)) == (0, []), lines  # a fresh mark: the destroy may still be running

    redis.hset(idkeys.user("ck_half"), "destroying", int(time.time() * 1000) - 2 * 3600 * 1000)
    code, lines = check(lore)
    assert code == 1
    assert problems(lines) == ["user:{ck_half}: a destroy that stopped half-way 120 min ago"], lines
    code, lines = check(lore, "--repair")
    assert code == 0, lines
    assert lines[0] == ("user:{ck_half}: a destroy that stopped half-way 120 min ago (destroy finished: the apps' "
                        "data, files (to the S3 trash) and the user removed)"), lines
    assert not redis.exists(idkeys.user("ck_half"), notes_key("ck_half"), notebook_key("ck_half"),
                            fkeys.files("ck_half"), fkeys.usage("ck_half"), idkeys.email("ck_half@example.com"),
                            *(fkeys.file("ck_half", i) for i in files))
    assert not redis.sismember(idkeys.USERS, "ck_half")
    assert not any(local_path(lore, i).exists() for i in files)
    assert problems(check(lore)[1]) == []
    # the address is free for a new signup
    fresh = Api(lore)
    r = fresh.request("POST", "/auth/signup", json_body={"username": "ck_half_new", "email": "ck_half@example.com",
                                                        "password": "Files-Test-Horse-42-Saddle"})
    assert r.status_code == 200, r.text
    fresh.login("ck_half@example.com")
    assert fresh.post("/auth/destroy", {"password": "Files-Test-Horse-42-Saddle"}).status_code == 200
    fresh.close()


def test_an_enabled_account_is_not_destroyed_by_repair(lore):
    """An admin who enables a half-destroyed account takes it back: the mark goes with it."""
    redis = lore.redis()
    with user(lore, "ck_back") as api:
        redis.hset(idkeys.user("ck_back"), mapping={"disabled": 1, "destroying": int(time.time() * 1000) - 7200_000})
        admin = Api(lore)
        signup(lore, "ck_admin")
        redis.hset(idkeys.user("ck_admin"), "admin", 1)
        admin.login("ck_admin")
        assert admin.post("/admin/disable", {"username": "ck_back", "value": False}).status_code == 200
        assert redis.hget(idkeys.user("ck_back"), "destroying") is None
        code, lines = check(lore, "--repair")
        assert (code, problems(lines)) == (0, []), lines
        assert api.login("ck_back").get("/notes").status_code == 200
        assert admin.post("/auth/destroy", {"password": "Files-Test-Horse-42-Saddle"}).status_code == 200
        admin.close()


def test_redis_down_is_exit_2_with_a_clear_message(tmp_path):
    stopped = Lorebase(tmp_path / "data", MAIL_URL="console://")  # embedded Redis, nothing running
    done = lorebase_cmd(stopped, "check")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "embedded Redis" in done.stderr and "not running" in done.stderr, done.stderr
    external = Lorebase(tmp_path / "data2", MAIL_URL="console://", REDIS_URL=f"redis://127.0.0.1:{free_port()}")
    done = lorebase_cmd(external, "check")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "cannot reach Redis" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_the_check_at_start_up_notifies_its_problems(tmp_path):
    redis = RedisServer(tmp_path / "redis").start()
    try:
        redis.client().sadd(idkeys.USERS, "ck_early")  # broken before the server starts
        with instance(tmp_path, REDIS_URL=redis.url, CHECK_EVERY="86400") as server:
            event = wait_event(server, "check problem", 20, key=idkeys.USERS)
            assert event["problem"] == f"ck_early has no {idkeys.user('ck_early')}"
            summary = wait_event(server, "check", 20)
            assert summary["problems"] == 1 and summary["unnotified"] == 0
            assert redis.client().sismember(idkeys.USERS, "ck_early"), "the scheduled check never repairs"
    finally:
        redis.stop()


def test_the_scheduled_check_notifies_a_problem_that_appears_later(tmp_path):
    with instance(tmp_path, CHECK_EVERY="1") as server:
        assert wait_event(server, "check", 20)["problems"] == 0
        server.redis().set(idkeys.email("late@example.com"), "ck_late")
        event = wait_event(server, "check problem", 20, key=idkeys.email("late@example.com"))
        assert event["problem"] == "points at ck_late, who does not exist"
        wait_for(lambda: any(e["problems"] == 1 for e in server.events("check")), 20, 0.1, "a summary with it")
