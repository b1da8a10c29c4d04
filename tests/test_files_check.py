"""`lorebase files check [--repair]` (issue 4), run as the operator would, with the server's
environment beside a running server: a clean store passes; a local copy removed by hand,
a dangling id and an orphan file on disk are reported (exit 1); with S3, --repair fetches
the lost copy back and queues a missing S3 upload."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from lorebase.files import keys as fkeys
from lorebase.files.keys import S3_QUEUE
from lorebase.tasks.queue import doing_lists, names

from .files_support import (
    S3_BUCKET,
    Moto,
    blob,
    instance,
    local_path,
    lorebase_cmd,
    s3_keys,
    sha256,
    user,
)
from .lore import Lorebase, wait_for
from .support import master


def check(lore: Lorebase, *flags: str) -> tuple[int, list[str]]:
    done = lorebase_cmd(lore, "files", "check", *flags)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout.splitlines()


def assert_clean(lore: Lorebase, files: int) -> None:
    code, lines = check(lore)
    assert (code, lines) == (0, [f"{files} files checked, 0 problems"]), lines


@pytest.fixture()
def plain(tmp_path) -> Iterator[Lorebase]:
    with instance(tmp_path) as lore:
        yield lore


def test_a_clean_store_passes_and_a_lost_local_copy_fails(plain):
    with user(plain, "ck_lost") as api:
        kept = api.ok_upload(blob(1000, "kept"), "kept.bin")
        lost = api.ok_upload(blob(2000, "lost"), "lost.bin")
        assert_clean(plain, 2)
        assert check(plain, "--verify") == (0, ["2 files checked, 0 problems"])

        local_path(plain, lost["id"]).unlink()
        code, lines = check(plain)
        assert code == 1
        assert lines == [f"{lost['id']}: missing on disk", "2 files checked, 1 problem"], lines
        assert kept["id"] not in "\n".join(lines)

        # a local copy whose bytes changed: its size, or (with --verify) its hash
        path = local_path(plain, kept["id"])
        path.write_bytes(blob(999, "kept"))
        code, lines = check(plain)
        assert code == 1 and f"{kept['id']}: local size 999 != recorded 1000" in lines, lines
        path.write_bytes(blob(1000, "tampered"))
        assert check(plain)[0] == 1  # still the lost one
        code, lines = check(plain, "--verify")
        assert code == 1 and f"{kept['id']}: local SHA-256 differs from the recorded one" in lines, lines
        path.write_bytes(blob(1000, "kept"))

        # once the lost file's record is gone too, all is well again
        assert api.post("/files/delete", {"id": lost["id"]}).status_code == 200
        assert_clean(plain, 1)


def test_a_dangling_id_and_an_orphan_file_are_reported(plain):
    with user(plain, "ck_dangle") as api:
        real = api.ok_upload(blob(10, "real"), "real.bin")
        dangling = "1" * 21 + "ab"
        orphan = "2" * 21 + "cd"
        plain.redis().zadd(fkeys.files("ck_dangle"), {dangling: 0})
        orphan_path = local_path(plain, orphan)
        orphan_path.parent.mkdir(parents=True, exist_ok=True)
        orphan_path.write_bytes(b"nobody's")
        old = time.time() - 120  # a younger file may be an upload about to be recorded
        os.utime(orphan_path, (old, old))

        code, lines = check(plain)
        assert code == 1
        assert f"{dangling}: listed in {fkeys.files('ck_dangle')} but has no metadata" in lines, lines
        assert f"{orphan}: on disk but not in Redis (orphan)" in lines, lines
        assert lines[-1] == "1 files checked, 2 problems"
        assert real["id"] not in "\n".join(lines)
        # the list skips what has no metadata
        assert [row["id"] for row in api.files()] == [real["id"]]

        code, lines = check(plain, "--repair")
        assert code == 1  # the orphan is still there: not everything was repaired
        assert f"{dangling}: listed in {fkeys.files('ck_dangle')} but has no metadata (dropped)" in lines, lines
        assert lines[-1] == "1 files checked, 2 problems, 1 repaired"
        assert plain.redis().zscore(fkeys.files("ck_dangle"), dangling) is None
        assert orphan_path.exists()  # an orphan is only reported: it may be someone's
        orphan_path.unlink()
        assert_clean(plain, 1)


@pytest.fixture()
def with_s3(tmp_path) -> Iterator[tuple[Lorebase, Moto]]:
    moto = Moto(tmp_path).start()
    try:
        with instance(tmp_path, **moto.settings()) as lore:
            done = lorebase_cmd(lore, "s3", "setup")
            assert done.returncode == 0, done.stderr
            yield lore, moto
    finally:
        moto.stop()


def test_repair_fetches_a_lost_copy_back_from_s3(with_s3):
    lore, moto = with_s3
    data = blob(150_000, "repair")
    name = "ck_s3"
    with user(lore, name) as api:
        out = api.ok_upload(data, "r.bin")
        key = f"files/{name}/{out['id']}"
        s3 = moto.client()
        wait_for(lambda: lore.redis().hget(fkeys.file(name, out["id"]), "s3") == "1", 15, 0.05,
                 "the upload mirrored")
        assert_clean(lore, 1)

        path = local_path(lore, out["id"])
        path.unlink()
        code, lines = check(lore)
        assert code == 1
        assert lines == [f"{out['id']}: missing on disk", "1 files checked, 1 problem"], lines
        assert not path.exists()

        code, lines = check(lore, "--repair")
        assert code == 0
        assert f"{out['id']}: missing on disk (fetched back from S3)" in lines, lines
        assert path.read_bytes() == data
        assert sha256(path.read_bytes()) == out["sha256"]
        assert_clean(lore, 1)
        assert api.get(f"/files/{out['id']}").content == data

        # the other way round: the S3 copy lost; --repair queues the upload again
        s3.delete_object(Bucket=S3_BUCKET, Key=key)
        code, lines = check(lore)
        assert code == 1 and lines == [f"{out['id']}: not in S3", "1 files checked, 1 problem"], lines
        code, lines = check(lore, "--repair")
        assert code == 0 and f"{out['id']}: not in S3 (upload queued)" in lines, lines
        wait_for(lambda: key in s3_keys(s3, S3_BUCKET), 15, 0.1, f"{key} back in S3")
        assert s3.get_object(Bucket=S3_BUCKET, Key=key)["Body"].read() == data
        assert_clean(lore, 1)

        # lost in both places: reported as such
        path.unlink()
        s3.delete_object(Bucket=S3_BUCKET, Key=key)
        code, lines = check(lore)
        assert code == 1
        assert f"{out['id']}: missing on disk and in S3" in lines, lines



def test_an_upload_still_queued_is_pending_not_missing(with_s3):
    lore, _ = with_s3
    tasks = next(p for p in master(lore).children() if "lorebase: tasks" in " ".join(p.cmdline()))
    with user(lore, "ck_pending") as api:
        tasks.suspend()  # a stalled tasks process: the upload job stays in the queue
        try:
            out = api.ok_upload(blob(1000, "pending"), "p.bin")
            code, lines = check(lore)
            assert (code, lines) == (0, ["1 files checked, 0 problems (1 S3 upload pending)"]), lines
        finally:
            tasks.resume()
        wait_for(lambda: lore.redis().hget(fkeys.file("ck_pending", out["id"]), "s3") == "1", 15, 0.05,
                 "the upload mirrored")
        assert_clean(lore, 1)


def lranges(redis) -> int:
    """LRANGE calls Redis has answered since it started (INFO commandstats)."""
    return int(redis.info("commandstats").get("cmdstat_lrange", {}).get("calls", 0))


def test_objects_left_without_a_record_cost_the_check_no_queue_read_each(with_s3):
    """20 removals that stopped before queueing their trash job (the copy in trash/, the object
    in S3, no record): each is named, and the S3 queue is read a fixed number of times, not
    once more per object."""
    lore, _ = with_s3
    redis = lore.redis()
    with user(lore, "ck_left") as api:
        ids = [api.ok_upload(blob(100 + n, f"left{n}"), f"l{n}.bin")["id"] for n in range(20)]
        wait_for(lambda: all(redis.hget(fkeys.file("ck_left", i), "s3") == "1" for i in ids), 30, 0.05,
                 "the uploads mirrored")
        old = time.time() - 120  # a younger copy in trash/ may have its job on the way
        for file_id in ids:  # a removal's first steps, as store.py takes them, then a stop
            trashed = lore.data_dir / "trash" / file_id
            local_path(lore, file_id).rename(trashed)
            os.utime(trashed, (old, old))
            redis.delete(fkeys.file("ck_left", file_id))
            redis.zrem(fkeys.files("ck_left"), file_id)
        reads = 1 + len(doing_lists(redis, names(S3_QUEUE)))  # the lists one look at the queue reads
        before = lranges(redis)
        code, lines = check(lore)
        used = lranges(redis) - before
        assert code == 1, lines
        assert sorted(lines[:-1]) == sorted(f"{i}: in S3 but has no record" for i in ids), lines
        assert used <= 4 * reads, (used, reads)
        code, lines = check(lore, "--repair")
        assert f"{ids[0]}: in S3 but has no record (trash queued)" in lines, lines
        wait_for(lambda: not any((lore.data_dir / "trash" / i).exists() for i in ids), 30, 0.1,
                 "the trash jobs done")


def test_s3_down_is_a_clear_error_not_a_traceback(with_s3):
    lore, moto = with_s3
    with user(lore, "ck_s3down") as api:
        out = api.ok_upload(blob(1000, "down"), "d.bin")
        wait_for(lambda: lore.redis().hget(fkeys.file("ck_s3down", out["id"]), "s3") == "1", 15, 0.05,
                 "the upload mirrored")
        moto.stop()
        done = lorebase_cmd(lore, "files", "check")
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert "S3 unreachable" in done.stderr and "Traceback" not in done.stderr, done.stderr
