"""Backups and restores (master tasks issue): the box is lost, S3 holds what is left.

Real processes only: lorebase with its embedded Redis, moto's S3 server over HTTP, the
`lorebase backup` / `backup list` / `restore` commands as an operator types them."""

from __future__ import annotations

import gzip
import re
import signal
import socket
import subprocess
import sys
import zlib
from contextlib import closing
from pathlib import Path
from typing import Any

from lorebase import mail
from lorebase.identity import keys as idkeys
from lorebase.pause import MAINTENANCE

from .files_support import (
    PASSWORD,
    S3_BUCKET,
    Api,
    Moto,
    blob,
    lorebase_cmd,
    s3_bytes,
    s3_keys,
    setup_buckets,
    sha256,
    signup,
)
from .lore import ROOT, Lorebase, wait_for
from .test_beyond import raw_post

KEY = "backup-key-of-the-tests-" + "k" * 24  # what an operator keeps off the box
OTHER_KEY = "another-backup-key-entirely-" + "o" * 24  # an attacker's, or a wrong one


def box(base: Path, moto: Moto, **overrides: str) -> Lorebase:
    settings = {"TRUSTED_PROXIES": "127.0.0.1", "MAIL_URL": "console://", "BACKUP_KEY": KEY, **moto.settings(),
                **overrides}
    lore = Lorebase(base / "data", **settings)
    lore.data_dir.mkdir(parents=True, exist_ok=True)
    return lore


def backup_names(lore: Lorebase) -> list[str]:
    done = lorebase_cmd(lore, "backup", "list")
    assert done.returncode == 0, done.stderr
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def test_a_lost_box_comes_back_from_s3_with_its_users_notes_and_files(tmp_path, moto):
    """Backup, lose the data dir, restore latest on a new one with only the S3 settings,
    serve: the user logs in with its password, its notes are there, its file downloads
    (fetched back from S3) with the SHA-256 the manifest recorded."""
    first = box(tmp_path / "first", moto)
    setup_buckets(first)
    data = blob(70_000, "backup")
    with first.running():
        signup(first, "bk_owner")
        with closing(Api(first)) as api:
            api.login("bk_owner")
            stored = api.ok_upload(data, "kept.bin")
            note = api.post("/notes", {"text": "written before the box was lost", "files": [stored["id"]]})
            assert note.status_code == 200, note.text
        s3 = moto.client()
        wait_for(lambda: s3.list_objects_v2(Bucket=S3_BUCKET, Prefix=f"files/bk_owner/{stored['id']}").get(
            "KeyCount"), 15, what="the file mirrored to S3")
        done = lorebase_cmd(first, "backup")
        assert done.returncode == 0, done.stderr
    [name] = backup_names(first)
    listed = lorebase_cmd(first, "backup", "list").stdout
    assert listed.split()[8:10] == ["1", "files"], listed
    sealed = s3.get_object(Bucket=S3_BUCKET, Key=f"backups/dev/{name}.rdb.gz.sealed")["Body"].read()
    assert sealed.startswith(b"LORESEAL1") and b"REDIS" not in sealed, "a sealed snapshot"

    second = box(tmp_path / "second", moto)  # a new data dir: nothing of the first box, but BACKUP_KEY
    done = lorebase_cmd(second, "restore", "latest")
    assert done.returncode == 0, done.stderr
    assert f"restored {name}" in done.stdout and "1 users" in done.stdout, done.stdout
    # the consistency check runs on the restored database: the file's bytes are only in S3 yet
    assert "consistency check of the restored database:" in done.stdout, done.stdout
    assert f"{stored['id']}: missing on disk" in done.stdout.splitlines(), done.stdout
    with second.running(), closing(Api(second)) as api:
        api.login("bk_owner")
        notes = api.notes()
        assert [n["text"] for n in notes] == ["written before the box was lost"]
        assert notes[0]["files"] == [stored["id"]]
        got = api.get(f"/files/{stored['id']}")
        assert got.status_code == 200 and sha256(got.content) == sha256(data)
        wrong = api.request("POST", "/auth/login", json_body={"username": "bk_owner", "password": PASSWORD + "x"})
        assert wrong.status_code == 403


def test_a_corrupted_backup_is_refused_and_nothing_is_touched(tmp_path, moto):
    lore = box(tmp_path / "corrupt", moto, S3_BUCKET="lore-corrupt")
    setup_buckets(lore)
    with lore.running():
        signup(lore, "bk_before")
        assert lorebase_cmd(lore, "backup").returncode == 0
        [name] = backup_names(lore)
        s3 = moto.client()
        key = f"backups/dev/{name}.rdb.gz.sealed"
        packed = s3.get_object(Bucket="lore-corrupt", Key=key)["Body"].read()
        s3.put_object(Bucket="lore-corrupt", Key=key, Body=packed[: len(packed) // 2])  # truncated
        signup(lore, "bk_after")  # made after the backup: a restore would remove it
        done = lorebase_cmd(lore, "restore", name, "--force")
        assert done.returncode == 1
        assert "corrupted" in done.stderr and "nothing was changed" in done.stderr, done.stderr
        assert lore.redis().sismember(idkeys.USERS, "bk_after"), "the refused restore touched the database"
        assert lorebase_cmd(lore, "restore", "20200101T000000Z", "--force").returncode == 1  # no such backup
        assert not lore.redis().exists(MAINTENANCE), "a refused restore left writes paused"


def test_retention_keeps_the_newest_backups(tmp_path, moto):
    lore = box(tmp_path / "keep", moto, S3_BUCKET="lore-keep", BACKUP_KEEP="2", BACKUP_DAILY="0")
    setup_buckets(lore)
    with lore.running():
        made = []
        def new_backup(before: set[str]) -> bool:
            return lorebase_cmd(lore, "backup").returncode == 0 and bool(set(backup_names(lore)) - before)

        for _ in range(3):
            before = set(backup_names(lore))
            # names are to the second: a second backup within one would take the same name
            wait_for(lambda b=before: new_backup(b), 10, 1.0, "a backup with a name of its own")
            made.append(max(backup_names(lore)))
        assert backup_names(lore) == sorted(made, reverse=True)[:2]


def test_an_external_redis_with_a_password_is_backed_up_and_restored(tmp_path):
    """REDIS_URL with a password (requirepass): the snapshot comes over the replication
    stream (redis-cli --rdb, authenticated), is kept under DATA_DIR/backups without S3, and
    restores into that Redis: a user made after the backup is gone, the one before is back."""
    from .lore import RedisServer

    external = RedisServer(tmp_path / "redis", password="s3cret-" + "p" * 20).start()
    try:
        lore = Lorebase(tmp_path / "data", REDIS_URL=external.url, TRUSTED_PROXIES="127.0.0.1",
                        MAIL_URL="console://")
        with lore.running():
            signup(lore, "bk_pw_before")
            done = lorebase_cmd(lore, "backup")
            assert done.returncode == 0, done.stderr
            assert "s3cret" not in done.stdout + done.stderr
            [name] = backup_names(lore)
            assert list((lore.data_dir / "backups" / "dev").glob(f"{name}.rdb.gz.sealed"))
            signup(lore, "bk_pw_after")
            done = lorebase_cmd(lore, "restore", name, "--force")
            assert done.returncode == 0, done.stderr
            db = external.client()
            assert db.sismember(idkeys.USERS, "bk_pw_before") and not db.sismember(idkeys.USERS, "bk_pw_after")
            with closing(Api(lore)) as api:
                api.login("bk_pw_before", PASSWORD)
    finally:
        external.stop()


def serving(lore: Lorebase) -> None:
    """Wait until the node's tasks process has announced itself (its mail sender's heartbeat)."""
    wait_for(lambda: lore.redis().hlen(mail.WORKERS) > 0, 15, what="the tasks process's first heartbeat")


def test_restore_while_a_node_serves_from_the_redis_is_refused_and_names_it(tmp_path, moto):
    lore = box(tmp_path / "live", moto, S3_BUCKET="lore-live")
    setup_buckets(lore)
    with lore.running():
        signup(lore, "bk_live_before")
        assert lorebase_cmd(lore, "backup").returncode == 0
        signup(lore, "bk_live_after")  # made after the backup: a restore would remove it
        serving(lore)
        done = lorebase_cmd(lore, "restore", "latest")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "refused" in done.stderr and "--force" in done.stderr, done.stderr
        assert f"{socket.gethostname()} (pid " in done.stderr, done.stderr  # the node, named
        assert "nothing was changed" in done.stderr
        db = lore.redis()
        assert db.sismember(idkeys.USERS, "bk_live_after"), "the refused restore touched the database"
        assert not db.exists(MAINTENANCE)
    # stopped cleanly, the node's entry is gone: the restore goes on without --force
    done = lorebase_cmd(lore, "restore", "latest")
    assert done.returncode == 0, done.stdout + done.stderr


def test_restore_with_force_pauses_writes_for_its_whole_run_and_says_what_it_replaces(tmp_path, moto):
    lore = box(tmp_path / "forced", moto, S3_BUCKET="lore-forced")
    setup_buckets(lore)
    with lore.running(), closing(Api(lore)) as api:
        signup(lore, "bk_forced")
        api.login("bk_forced")
        assert api.post("/notes", {"text": "in the backup"}).status_code == 200
        assert lorebase_cmd(lore, "backup").returncode == 0
        [name] = backup_names(lore)
        signup(lore, "bk_forced_later")
        assert api.post("/notes", {"text": "after the backup"}).status_code == 200
        serving(lore)
        restore = subprocess.Popen([sys.executable, "-m", "lorebase", "restore", "latest", "--force"],
                                   env=lore.environ(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        try:
            assert restore.stdout is not None
            said = []
            while not said or not said[-1].startswith("writes paused"):
                line = restore.stdout.readline()
                assert line, f"the restore ended without pausing writes: {said} {restore.stderr.read()}"
                said.append(line)
            restore.send_signal(signal.SIGSTOP)  # held in the middle of its run
            try:
                during = raw_post(api, "/notes", {"text": "during the restore"})
                assert during.status_code == 503 and during.json() == {"error": "maintenance"}, during.text
                assert api.get("/notes").status_code == 200  # reads go on
            finally:
                restore.send_signal(signal.SIGCONT)
            out, err = restore.communicate(timeout=60)
        finally:
            if restore.poll() is None:
                restore.kill()
                restore.wait()
        out = "".join(said) + out
        assert restore.returncode == 0, out + err
        assert "--force: replacing the database under" in err and socket.gethostname() in err, err
        summary = [line for line in out.splitlines() if line.startswith(f"backup {name}: taken ")]
        assert summary and summary[0].endswith(" ago"), out
        assert "  in the backup:      1 users, " in out, out
        # the key counts move with the stats every second: the users are the figure to check
        assert re.search(r"^  in the database now: 2 users, \d+ keys \(all replaced by the backup's\)$", out, re.M), out
        assert out.index("in the database now") < out.index(f"restored {name}"), "said after it was done"
        assert "come back from S3" in out  # S3 is configured here
        # the pause ends with the restore; the note written after the backup is gone
        wait_for(lambda: raw_post(api, "/notes", {"text": "after the restore"}).status_code == 200, 10,
                 what="writes again after the restore")
        assert [n["text"] for n in api.notes()] == ["after the restore", "in the backup"]
        assert not lore.redis().exists(MAINTENANCE)


def test_restore_without_s3_claims_nothing_of_s3(tmp_path):
    lore = Lorebase(tmp_path / "data", TRUSTED_PROXIES="127.0.0.1", MAIL_URL="console://")
    with lore.running():
        signup(lore, "bk_local")
        assert lorebase_cmd(lore, "backup").returncode == 0
    done = lorebase_cmd(lore, "restore", "latest")  # nothing serving: the embedded Redis started for it
    assert done.returncode == 0, done.stdout + done.stderr
    assert "S3 is not configured" in done.stdout, done.stdout
    assert "from S3" not in done.stdout, done.stdout
    assert "  in the backup:      1 users, " in done.stdout, done.stdout


# -- sealed backups (issue 17 item 3): only what BACKUP_KEY sealed under its name restores ----------


def backup_objects(s3: Any, bucket: str, name: str) -> list[str]:
    """The S3 keys of backup `name` (its snapshot and its manifest, whatever their suffixes)."""
    return sorted(k for k in s3_keys(s3, bucket) if k.startswith(f"backups/dev/{name}."))


def rename(s3: Any, bucket: str, name: str, new: str) -> None:
    """Backup `name`'s objects, byte for byte, under the name `new` (as anyone holding the S3
    keys can do); the originals gone."""
    for key in backup_objects(s3, bucket, name):
        s3.put_object(Bucket=bucket, Key=key.replace(name, new, 1), Body=s3_bytes(s3, bucket, key))
        s3.delete_object(Bucket=bucket, Key=key)


def refused(lore: Lorebase, name: str) -> str:
    """`restore NAME` refused for what the backup is (--force: whether a node serves is not the reason)."""
    done = lorebase_cmd(lore, "restore", name, "--force")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "nothing was changed" in done.stderr and "Traceback" not in done.stderr, done.stderr
    return done.stderr


def test_a_backup_sealed_with_another_backup_key_is_refused_and_nothing_is_changed(tmp_path, moto):
    lore = box(tmp_path / "keys", moto, S3_BUCKET="lore-keys")
    setup_buckets(lore)
    wrong = box(tmp_path / "keys", moto, S3_BUCKET="lore-keys", BACKUP_KEY=OTHER_KEY)  # the same box, another key
    with lore.running():
        signup(lore, "bk_keyed")
        assert lorebase_cmd(lore, "backup").returncode == 0
        [name] = backup_names(lore)
        signup(lore, "bk_keyed_after")
        assert "does not verify" in refused(wrong, name)
        assert "no backup" in refused(wrong, "latest")
        listed = lorebase_cmd(wrong, "backup", "list")
        assert listed.returncode == 0 and listed.stdout == "", listed.stdout
        assert f"ignored {name}.json.sealed: does not verify with this BACKUP_KEY" in listed.stderr, listed.stderr
        assert lore.redis().sismember(idkeys.USERS, "bk_keyed_after"), "a refused restore touched the database"
        done = lorebase_cmd(lore, "restore", name, "--force")  # the right key: the same backup restores
        assert done.returncode == 0, done.stderr
        assert not lore.redis().sismember(idkeys.USERS, "bk_keyed_after")


def test_a_backup_with_any_byte_changed_is_refused_and_nothing_is_changed(tmp_path, moto):
    lore = box(tmp_path / "tamper", moto, S3_BUCKET="lore-tamper")
    setup_buckets(lore)
    s3 = moto.client()
    with lore.running():
        signup(lore, "bk_tamper")
        assert lorebase_cmd(lore, "backup").returncode == 0
        [name] = backup_names(lore)
        signup(lore, "bk_tamper_after")
        for key in backup_objects(s3, "lore-tamper", name):
            original = s3_bytes(s3, "lore-tamper", key)
            for at in (0, 12, len(original) // 2, len(original) - 1):  # the header, its salt, a chunk, a tag
                changed = bytearray(original)
                changed[at] ^= 0x01
                s3.put_object(Bucket="lore-tamper", Key=key, Body=bytes(changed))
                refused(lore, name)
                assert lore.redis().sismember(idkeys.USERS, "bk_tamper_after"), (key, at)
            s3.put_object(Bucket="lore-tamper", Key=key, Body=original)
        assert lorebase_cmd(lore, "restore", name, "--force").returncode == 0  # as it was: it restores


def test_a_planted_or_renamed_backup_is_neither_listed_nor_latest_nor_restored(tmp_path, moto):
    """An attacker with the S3 keys runs a lorebase of its own (another BACKUP_KEY) with an
    admin `bk_intruder`, and plants its backup under 99991231T235959Z; it also copies the
    real backup under a newer name. `latest` is still the real backup."""
    lore = box(tmp_path / "victim", moto, S3_BUCKET="lore-plant")
    setup_buckets(lore)
    s3 = moto.client()
    with lore.running():
        signup(lore, "bk_real")
        assert lorebase_cmd(lore, "backup").returncode == 0
        [real] = backup_names(lore)
    attacker = box(tmp_path / "attacker", moto, S3_BUCKET="lore-plant", BACKUP_KEY=OTHER_KEY)
    with attacker.running():
        signup(attacker, "bk_intruder")
        # a second apart from the real one: the attacker's own backup gets a name of its own
        wait_for(lambda: lorebase_cmd(attacker, "backup").returncode == 0 and
                 len({k.split("/")[-1].split(".")[0] for k in s3_keys(s3, "lore-plant") if "backups/" in k}) == 2,
                 10, 1.0, "the attacker's backup")
    [planted] = {k.split("/")[-1].split(".")[0] for k in s3_keys(s3, "lore-plant") if "backups/" in k} - {real}
    rename(s3, "lore-plant", planted, "99991231T235959Z")
    for key in backup_objects(s3, "lore-plant", real):  # the real one, copied under a newer name
        s3.put_object(Bucket="lore-plant", Key=key.replace(real, planted, 1), Body=s3_bytes(s3, "lore-plant", key))

    assert backup_names(lore) == [real]
    assert "future" in refused(lore, "99991231T235959Z")
    assert "does not verify" in refused(lore, planted)
    done = lorebase_cmd(lore, "restore", "latest")
    assert done.returncode == 0 and f"restored {real}" in done.stdout, done.stdout + done.stderr
    with lore.running():
        assert lore.redis().sismember(idkeys.USERS, "bk_real")
        assert not lore.redis().sismember(idkeys.USERS, "bk_intruder")


def test_stray_objects_among_the_backups_break_neither_list_nor_backup_nor_retention_nor_latest(tmp_path, moto):
    """A README.json, a backup of an older format, a half-named object: left alone, never
    counted by the retention (which keeps 1), never latest."""
    lore = box(tmp_path / "stray", moto, S3_BUCKET="lore-stray", BACKUP_KEEP="1", BACKUP_DAILY="0")
    setup_buckets(lore)
    s3 = moto.client()
    strays = {"backups/dev/README.json": b'{"what": "backups of lorebase"}',
              "backups/dev/20200101T000000Z.json": b'{"name": "20200101T000000Z", "created": 0}',
              "backups/dev/20201301T000000Z.json.sealed": b"not a time",
              "backups/dev/20200102T000000Z.json.sealed": b"LORESEAL1\n" + blob(3 << 20, "forged"),  # big, forged
              "backups/dev/notes.txt": b"hello"}
    for key, body in strays.items():
        s3.put_object(Bucket="lore-stray", Key=key, Body=body)
    with lore.running():
        signup(lore, "bk_stray")
        made = []
        for _ in range(2):
            before = set(backup_names(lore))
            wait_for(lambda b=before: lorebase_cmd(lore, "backup").returncode == 0
                     and bool(set(backup_names(lore)) - b), 10, 1.0, "a backup with a name of its own")
            made.append(max(backup_names(lore)))
        assert backup_names(lore) == [made[-1]], "the retention kept the newest backup, and only it"
        assert strays.keys() <= s3_keys(s3, "lore-stray"), "the strays are left alone"
        listed = lorebase_cmd(lore, "backup", "list")
        assert "ignored backups/" not in listed.stderr and "ignored README.json: not a backup" in listed.stderr
        assert "ignored 20200102T000000Z.json.sealed: does not verify with this BACKUP_KEY" in listed.stderr
        done = lorebase_cmd(lore, "restore", "latest", "--force")
        assert done.returncode == 0 and f"restored {made[-1]}" in done.stdout, done.stdout + done.stderr


def test_a_backup_holds_no_session_id_or_password_hash_readable(tmp_path, moto):
    lore = box(tmp_path / "clear", moto, S3_BUCKET="lore-clear")
    setup_buckets(lore)
    s3 = moto.client()
    with lore.running():
        signup(lore, "bk_secret")
        with closing(Api(lore)) as api:
            api.login("bk_secret")
            db = lore.redis()
            [session] = [k for k in db.scan_iter(match=idkeys.session_prefix("bk_secret") + "*")]
            secrets = [session.rsplit(":", 1)[1], str(db.hget(idkeys.user("bk_secret"), "hash")).rsplit("$", 1)[1]]
            assert all(len(s) >= 20 for s in secrets), secrets
            assert lorebase_cmd(lore, "backup").returncode == 0
    stored = [s3_bytes(s3, "lore-clear", k) for k in s3_keys(s3, "lore-clear") if k.startswith("backups/")]
    assert len(stored) == 2
    readable = list(stored)
    for body in stored:
        try:
            readable.append(gzip.decompress(body))
        except (OSError, EOFError, zlib.error):
            pass
    for secret in secrets:
        assert not any(secret.encode() in body for body in readable), "a secret readable in the backup"
