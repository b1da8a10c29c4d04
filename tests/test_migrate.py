"""`lorebase migrate`: a script rehearsed on a copy, applied, undone with the printed command;
a broken script caught by the checks with the live database left as it was; writes paused."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from lorebase.files import keys as fkeys
from lorebase.identity import keys as idkeys

from .files_support import PASSWORD, Api, blob, lorebase_cmd, signup
from .identity_support import fresh_ip
from .lore import ROOT, Lorebase, RedisServer, wait_for

RENAME = '''
def migrate(db):
    for key in db.scan_iter(match="user:*"):
        nick = db.hget(key, "nick")
        if nick is not None:
            db.hset(key, "nickname", nick)
            db.hdel(key, "nick")


def check(db):
    return [f"{key} still has nick" for key in db.scan_iter(match="user:*") if db.hexists(key, "nick")]
'''

BREAKS_THE_INDEX = '''
def migrate(db):
    for key in db.scan_iter(match="email:*"):
        db.delete(key)  # "the index is rebuilt elsewhere" (it is not)
'''

SLOW_AND_PAUSED = '''
import time

PAUSE = True


def migrate(db):
    time.sleep(3)
    db.set("mg_paused_ran", "1")
'''


def script(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def test_a_rename_is_rehearsed_applied_and_undone(tmp_path):
    lore = Lorebase(tmp_path / "data", TRUSTED_PROXIES="127.0.0.1", MAIL_URL="console://")
    with lore.running():
        for name in ("mg_ann", "mg_bob", "mg_cyd"):
            signup(lore, name)
            lore.redis().hset(idkeys.user(name), "nick", name.upper())
        rename = script(tmp_path, "0001_rename_nick.py", RENAME)

        rehearsal = lorebase_cmd(lore, "migrate", str(rename))
        assert rehearsal.returncode == 0, rehearsal.stdout + rehearsal.stderr
        assert re.search(r"changed\s+user:\*\s+3", rehearsal.stdout), rehearsal.stdout
        assert lore.redis().hget(idkeys.user("mg_ann"), "nick") == "MG_ANN"  # the live database untouched

        applied = lorebase_cmd(lore, "migrate", str(rename), "--apply")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        db = lore.redis()
        assert db.hget(idkeys.user("mg_ann"), "nickname") == "MG_ANN" and not db.hexists(idkeys.user("mg_ann"), "nick")
        assert db.hexists("migrations", "0001_rename_nick")
        again = lorebase_cmd(lore, "migrate", str(rename), "--apply")
        assert again.returncode == 1 and "applied already" in again.stdout

        undo = re.search(r"To undo it: lorebase (restore \S+ dev)", applied.stdout)
        assert undo, applied.stdout
        restored = lorebase_cmd(lore, *undo.group(1).split(), "--force")  # lorebase is serving
        assert restored.returncode == 0, restored.stderr
        db = lore.redis()
        assert db.hget(idkeys.user("mg_ann"), "nick") == "MG_ANN" and not db.hexists(idkeys.user("mg_ann"), "nickname")
        api = Api(lore)
        try:
            api.login("mg_bob", PASSWORD)  # the users still log in
        finally:
            api.close()


def test_a_broken_script_is_caught_and_the_live_database_is_left_as_it_was(tmp_path):
    lore = Lorebase(tmp_path / "data", TRUSTED_PROXIES="127.0.0.1", MAIL_URL="console://")
    with lore.running():
        signup(lore, "mg_dee")
        broken = script(tmp_path, "0002_drop_the_index.py", BREAKS_THE_INDEX)
        rehearsal = lorebase_cmd(lore, "migrate", str(broken))
        assert rehearsal.returncode == 1 and "not safe to apply" in rehearsal.stdout, rehearsal.stdout
        assert lore.redis().get(idkeys.email("mg_dee@example.com")) == "mg_dee"
        applied = lorebase_cmd(lore, "migrate", str(broken), "--apply")
        assert applied.returncode == 1, applied.stdout
        assert "restoring backup" in applied.stdout
        db = lore.redis()
        assert db.get(idkeys.email("mg_dee@example.com")) == "mg_dee"  # as it was
        assert not db.hexists("migrations", "0002_drop_the_index")


def test_a_script_that_pauses_writes_gets_them_503_while_it_runs(tmp_path):
    lore = Lorebase(tmp_path / "data", TRUSTED_PROXIES="127.0.0.1", MAIL_URL="console://")
    with lore.running():
        paused = script(tmp_path, "0003_slow.py", SLOW_AND_PAUSED)
        result: list[int] = []
        run = threading.Thread(target=lambda: result.append(
            lorebase_cmd(lore, "migrate", str(paused), "--apply").returncode))
        run.start()
        seen = set()
        with httpx.Client(base_url=lore.url, timeout=10) as client:
            while run.is_alive():
                r = client.post("/error", json={"message": "during the migration"}, headers={"x-real-ip": fresh_ip()})
                seen.add((r.status_code, r.json().get("error")))
                assert client.get("/health").status_code == 200  # reads go on
                time.sleep(0.2)
            run.join()
            assert result == [0]
            time.sleep(1.5)  # the workers see the pause lifted within a second
            after = client.post("/error", json={"message": "after"}, headers={"x-real-ip": fresh_ip()})
            assert after.status_code == 200
        assert (503, "maintenance") in seen, seen
        assert lore.redis().get("mg_paused_ran") == "1"


UNTIL_RELEASED = '''
import time

PAUSE = True


def migrate(db):
    deadline = time.monotonic() + 60
    while not db.exists("mg_release") and time.monotonic() < deadline:
        time.sleep(0.05)
    db.set("mg_long_ran", "1")
'''


def a_write(client: httpx.Client) -> tuple[int, str | None]:
    """One state-changing request (an error report): its status and error code."""
    r = client.post("/error", json={"message": "a write"}, headers={"x-real-ip": fresh_ip()})
    return r.status_code, r.json().get("error")


def test_a_migration_longer_than_the_pause_ttl_keeps_writes_paused_till_it_ends(tmp_path):
    """The pause key outlives a dead migrate by PAUSE_TTL only: a migration running
    three times as long keeps writes paused throughout, and they resume once it ends."""
    ttl = 2.0
    lore = Lorebase(tmp_path / "data", TRUSTED_PROXIES="127.0.0.1", MAIL_URL="console://", PAUSE_TTL=ttl)
    with lore.running():
        slow = script(tmp_path, "0004_until_released.py", UNTIL_RELEASED)
        result: list[int] = []
        run = threading.Thread(target=lambda: result.append(
            lorebase_cmd(lore, "migrate", str(slow), "--apply").returncode))
        run.start()
        with httpx.Client(base_url=lore.url, timeout=10) as client:
            try:
                wait_for(lambda: a_write(client) == (503, "maintenance"), 30, 0.1, "writes paused")
                paused = time.monotonic()
                seen = set()
                while time.monotonic() - paused < 3 * ttl:  # well past the TTL the key was set with
                    seen.add(a_write(client))
                    time.sleep(0.2)
                assert seen == {(503, "maintenance")}, seen
                assert run.is_alive()
            finally:
                lore.redis().set("mg_release", "1")
                run.join()
            assert result == [0]
            wait_for(lambda: a_write(client) == (200, None), 10, 0.1, "writes resumed")
        db = lore.redis()
        assert db.get("mg_long_ran") == "1" and not db.exists("maintenance")


def test_a_killed_migration_leaves_writes_paused_no_longer_than_the_pause_ttl(tmp_path):
    ttl = 2.0
    lore = Lorebase(tmp_path / "data", TRUSTED_PROXIES="127.0.0.1", MAIL_URL="console://", PAUSE_TTL=ttl)
    with lore.running():
        slow = script(tmp_path, "0005_until_released.py", UNTIL_RELEASED)
        migrate = subprocess.Popen([sys.executable, "-m", "lorebase", "migrate", str(slow), "--apply"],
                                   env=lore.environ(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with httpx.Client(base_url=lore.url, timeout=10) as client:
            try:
                wait_for(lambda: a_write(client) == (503, "maintenance"), 30, 0.1, "writes paused")
            finally:
                migrate.kill()
                migrate.wait()
            # the key expires within the TTL, and the workers look once a second
            wait_for(lambda: a_write(client) == (200, None), ttl + 2, 0.1, "writes resumed")
        assert not lore.redis().exists("maintenance", "mg_long_ran")


CLUSTER_KEYS = Path(__file__).resolve().parent.parent / "migrations" / "0002_cluster_keys.py"


def what_changed(output: str) -> list[str]:
    """The lines a migrate run prints under "what it changed"."""
    _, _, rest = output.partition("what it changed")
    lines = rest.splitlines()[1:]
    return [line.strip() for line in lines[:next((i for i, line in enumerate(lines) if not line.startswith("  ")),
                                                len(lines))]]


def test_the_cluster_layout_migration_changes_nothing_on_an_up_to_date_database(tmp_path):
    """On a database already in today's layout (users with sessions, files and notes), 0002's
    rehearsal and its application both report that no key changed, as the README says."""
    lore = Lorebase(tmp_path / "data", TRUSTED_PROXIES="127.0.0.1", MAIL_URL="console://")
    with lore.running():
        for name in ("mg_gil", "mg_hal"):
            signup(lore, name)
            api = Api(lore).login(name, PASSWORD)
            stored = api.ok_upload(blob(2000, name), f"{name}.bin")
            assert api.post("/notes", {"text": "up to date", "files": [stored["id"]]}).status_code == 200
            api.close()
        rehearsal = lorebase_cmd(lore, "migrate", str(CLUSTER_KEYS))
        assert rehearsal.returncode == 0, rehearsal.stdout + rehearsal.stderr
        assert what_changed(rehearsal.stdout) == ["no key changed"], rehearsal.stdout
        applied = lorebase_cmd(lore, "migrate", str(CLUSTER_KEYS), "--apply")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert what_changed(applied.stdout) == ["no key changed"], applied.stdout


def old_name(key: str) -> str:
    """A key of today's layout as the layout before 0002 named it (how an older database
    holds it): the tags dropped, a file record without its user."""
    if key.startswith("file:{"):
        return "file:" + key.rpartition(":")[2]
    if key.startswith("beat:{mail}:alerts"):
        return key.replace("beat:{mail}:alerts", "beat:alerts", 1)
    return key.replace("{", "").replace("}", "")


def test_the_cluster_layout_migration_moves_an_older_database_and_its_users_carry_on(tmp_path):
    """0002 on a database in the layout before it (made here from a live one by renaming its
    keys back): every key moves, sessions keep their TTL (a logged-in user stays logged
    in), users log in, read their files and notes; a second run changes nothing."""
    redis = RedisServer(tmp_path / "redis").start()  # outlives the server, which is stopped meanwhile
    lore = Lorebase(tmp_path / "data", TRUSTED_PROXIES="127.0.0.1", MAIL_URL="console://", REDIS_URL=redis.url)
    db = redis.client()
    try:
        with lore.running():
            for name in ("mg_eve", "mg_fay"):
                signup(lore, name)
            eve = Api(lore).login("mg_eve", PASSWORD)
            stored = eve.ok_upload(blob(3000, "mg"), "kept.bin")
            note = eve.post("/notes", {"text": "kept across the move", "files": [stored["id"]]}).json()["id"]
            cookie = eve.cookie
            eve.close()
        new_layout = sorted(k for k in db.scan_iter(count=1000) if "{" in k)
        assert idkeys.user("mg_eve") in new_layout and fkeys.file("mg_eve", stored["id"]) in new_layout
        ttls = {}
        for key in new_layout:  # the database as the code before 0002 left it
            ttls[old_name(key)] = db.ttl(key)
            db.rename(key, old_name(key))
        assert db.exists("user:mg_eve") and db.exists(f"file:{stored['id']}") and db.sismember("users", "mg_fay")

        rehearsal = lorebase_cmd(lore, "migrate", str(CLUSTER_KEYS))
        assert rehearsal.returncode == 0, rehearsal.stdout + rehearsal.stderr
        assert db.exists("user:mg_eve"), "the rehearsal touched the live database"
        applied = lorebase_cmd(lore, "migrate", str(CLUSTER_KEYS), "--apply")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        moved = {k for k in db.scan_iter(count=1000) if "{" in k}
        lasting = {k for k in new_layout if ttls[old_name(k)] == -1 or ttls[old_name(k)] > 120}
        assert lasting <= moved <= set(new_layout), (lasting - moved, moved - set(new_layout))
        assert not [k for k in db.scan_iter(count=1000) if k in ttls and k not in new_layout]
        for key in new_layout:
            if ttls[old_name(key)] > 0:
                assert 0 < db.ttl(key) <= ttls[old_name(key)], key
        before = {k: db.dump(k) for k in db.scan_iter(count=1000) if k not in ("migrations", "log")}
        again = lorebase_cmd(lore, "migrate", str(CLUSTER_KEYS), "--apply")
        assert again.returncode == 1 and "applied already" in again.stdout
        rehearsed = lorebase_cmd(lore, "migrate", str(CLUSTER_KEYS))  # a second run, on a copy
        assert rehearsed.returncode == 0, rehearsed.stdout + rehearsed.stderr
        assert what_changed(rehearsed.stdout) == ["no key changed"], rehearsed.stdout
        import importlib.util
        spec = importlib.util.spec_from_file_location("cluster_keys", CLUSTER_KEYS)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.migrate(db)  # run again by hand: nothing changes
        assert module.check(db) == []
        after = {k: db.dump(k) for k in db.scan_iter(count=1000) if k not in ("migrations", "log")}
        assert after.keys() == before.keys()

        with lore.running():
            eve = Api(lore)
            eve.cookie = cookie  # the session made before the move still works
            assert [n["id"] for n in eve.notes()] == [note]
            assert eve.get(f"/files/{stored['id']}").content == blob(3000, "mg")
            eve.close()
            fay = Api(lore).login("mg_fay", PASSWORD)
            assert fay.get("/files").status_code == 200
            fay.close()
            assert lorebase_cmd(lore, "check").returncode == 0
    finally:
        lore.stop()
        redis.stop()
