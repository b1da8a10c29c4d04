"""`lorebase migrate`: a script rehearsed on a copy, applied, undone with the printed command;
a broken script caught by the checks with the live database left as it was; writes paused."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx

from .files_support import PASSWORD, Api, lorebase_cmd, signup
from .identity_support import fresh_ip
from .lore import Lorebase

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
            lore.redis().hset(f"user:{name}", "nick", name.upper())
        rename = script(tmp_path, "0001_rename_nick.py", RENAME)

        rehearsal = lorebase_cmd(lore, "migrate", str(rename))
        assert rehearsal.returncode == 0, rehearsal.stdout + rehearsal.stderr
        assert re.search(r"changed\s+user:\*\s+3", rehearsal.stdout), rehearsal.stdout
        assert lore.redis().hget("user:mg_ann", "nick") == "MG_ANN"  # the live database untouched

        applied = lorebase_cmd(lore, "migrate", str(rename), "--apply")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        db = lore.redis()
        assert db.hget("user:mg_ann", "nickname") == "MG_ANN" and not db.hexists("user:mg_ann", "nick")
        assert db.hexists("migrations", "0001_rename_nick")
        again = lorebase_cmd(lore, "migrate", str(rename), "--apply")
        assert again.returncode == 1 and "applied already" in again.stdout

        undo = re.search(r"To undo it: lorebase (restore \S+ dev)", applied.stdout)
        assert undo, applied.stdout
        restored = lorebase_cmd(lore, *undo.group(1).split())
        assert restored.returncode == 0, restored.stderr
        db = lore.redis()
        assert db.hget("user:mg_ann", "nick") == "MG_ANN" and not db.hexists("user:mg_ann", "nickname")
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
        assert lore.redis().get("email:mg_dee@example.com") == "mg_dee"
        applied = lorebase_cmd(lore, "migrate", str(broken), "--apply")
        assert applied.returncode == 1, applied.stdout
        assert "restoring backup" in applied.stdout
        db = lore.redis()
        assert db.get("email:mg_dee@example.com") == "mg_dee"  # as it was
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
