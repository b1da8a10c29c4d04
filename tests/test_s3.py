"""The S3 mirror end to end (issue 4), against moto's S3 in server mode: `lorebase s3 setup`,
uploads mirrored to s3://lore-files/files/<user>/<id>, an S3 outage lived through, deletes
landing in the trash bucket, and a lost local copy served back from S3."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from botocore.exceptions import ClientError

from lorebase.files import keys as fkeys
from lorebase.files.keys import S3_QUEUE
from lorebase.tasks.queue import names

from .files_support import (
    S3_BUCKET,
    S3_TRASH,
    Moto,
    blob,
    destroy,
    local_path,
    s3_bytes,
    s3_keys,
    setup_buckets,
    sha256,
    user,
)
from .lore import Lorebase, wait_for
from .support import doing, stream_entries

S3 = names(S3_QUEUE)  # the mirror queue's keys


@pytest.fixture(scope="module")
def s3lore(tmp_path_factory, moto) -> Iterator[Lorebase]:
    lore = Lorebase(Path(tmp_path_factory.mktemp("s3lore")) / "data", TRUSTED_PROXIES="127.0.0.1",
                    MAIL_URL="console://", **moto.settings())
    lore.data_dir.mkdir(parents=True)
    out = setup_buckets(lore)
    assert f"created bucket {S3_BUCKET}" in out and f"created bucket {S3_TRASH}" in out, out
    with lore.running():
        yield lore


def mirrored(moto: Moto, lore: Lorebase, name: str, file_id: str, data: bytes, timeout: float = 15) -> None:
    """Wait until s3://lore-files/files/<name>/<id> holds `data` and the metadata says so."""
    key = f"files/{name}/{file_id}"
    s3 = moto.client()
    wait_for(lambda: key in s3_keys(s3, S3_BUCKET), timeout, 0.1, f"{key} in {S3_BUCKET}")
    assert sha256(s3_bytes(s3, S3_BUCKET, key)) == sha256(data)
    head = s3.head_object(Bucket=S3_BUCKET, Key=key)
    assert head["ContentLength"] == len(data)
    assert head["Metadata"].get("sha256") == sha256(data)
    wait_for(lambda: lore.redis().hget(fkeys.file(name, file_id), "s3") == "1", 5, 0.05, f"{file_id} s3=1")


def test_setup_makes_both_buckets_and_the_trash_expiry(moto, s3lore):
    s3 = moto.client()
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert {S3_BUCKET, S3_TRASH} <= names
    rules = s3.get_bucket_lifecycle_configuration(Bucket=S3_TRASH)["Rules"]
    assert len(rules) == 1, rules
    assert rules[0]["Status"] == "Enabled"
    assert rules[0]["Expiration"]["Days"] == 30
    assert rules[0].get("Filter", {}).get("Prefix", "") == ""
    # the files bucket keeps its objects
    with pytest.raises(ClientError):
        s3.get_bucket_lifecycle_configuration(Bucket=S3_BUCKET)
    # running it again is harmless
    again = setup_buckets(s3lore)
    assert "created bucket" not in again and "30 days" in again
    assert s3.get_bucket_lifecycle_configuration(Bucket=S3_TRASH)["Rules"] == rules


def test_an_upload_is_mirrored_with_the_same_sha256(moto, s3lore):
    data = blob(300_000, "mirror")
    with user(s3lore, "s3_mirror") as api:
        out = api.ok_upload(data, "big.bin")
        mirrored(moto, s3lore, "s3_mirror", out["id"], data)
        assert sha256(local_path(s3lore, out["id"]).read_bytes()) == out["sha256"]


def test_uploads_survive_an_s3_outage(moto, s3lore):
    data = [blob(5000 + i, f"outage{i}") for i in range(3)]
    name = "s3_outage"
    with user(s3lore, name) as api:
        moto.stop()
        try:
            outs = [api.ok_upload(d, f"o{i}.bin") for i, d in enumerate(data)]
            # served from the local copy meanwhile
            for out, d in zip(outs, data, strict=True):
                assert api.get(f"/files/{out['id']}").content == d
            # deleted while S3 is down: its trash job must still get there
            assert api.post("/files/delete", {"id": outs[2]["id"]}).status_code == 200
            # the jobs fail and wait for a retry; nothing is lost
            db = s3lore.redis()
            wait_for(lambda: len({e["job"]["id"] for e in stream_entries(s3lore) if e["ev"] == "s3 failed"}) == 3,
                     30, 0.05, "each of the three S3 jobs to fail")
            assert all(db.hget(fkeys.file(name, o["id"]), "s3") == "0" for o in outs[:2])
        finally:
            moto.start()  # the same port; a new moto server knows no bucket
        setup_buckets(s3lore)
        for out, d in zip(outs[:2], data[:2], strict=True):
            mirrored(moto, s3lore, name, out["id"], d, timeout=90)
        s3 = moto.client()
        trashed = f"files/{name}/{outs[2]['id']}"
        wait_for(lambda: trashed in s3_keys(s3, S3_TRASH), 90, 0.1, f"{trashed} in the trash")
        assert s3_bytes(s3, S3_TRASH, trashed) == data[2]
        # the trash job copies, then deletes: the object leaves the bucket a moment after
        wait_for(lambda: trashed not in s3_keys(s3, S3_BUCKET), 5, 0.1, f"{trashed} out of {S3_BUCKET}")
        wait_for(lambda: not (s3lore.data_dir / "trash" / outs[2]["id"]).exists(), 10, 0.05, "the kept copy to go")
        wait_for(lambda: s3lore.redis().zcard(S3["retry"]) == 0 and s3lore.redis().llen(S3["queue"]) == 0, 30, 0.1,
                 "the S3 queue to drain")
        # each job failed while S3 was down and was done once it was back: retried, not dropped
        entries = stream_entries(s3lore)
        for file_id, op in [(outs[0]["id"], "put"), (outs[1]["id"], "put"), (outs[2]["id"], "trash")]:
            failed = [n for n, e in enumerate(entries) if e["ev"] == "s3 failed" and e["job"]["id"] == file_id
                      and e["job"]["op"] == op]
            done = [n for n, e in enumerate(entries) if e["ev"] == "s3 done" and e["job"]["id"] == file_id
                    and e["job"]["op"] == op]
            assert failed and done and failed[0] < done[-1], (file_id, op)
        assert doing(s3lore.redis(), S3) == 0


def test_delete_moves_the_object_to_the_trash(moto, s3lore):
    data = blob(12_345, "trash")
    name = "s3_trash"
    with user(s3lore, name) as api:
        out = api.ok_upload(data, "t.bin")
        keep = api.ok_upload(blob(10, "keep"), "keep.bin")
        mirrored(moto, s3lore, name, out["id"], data)
        mirrored(moto, s3lore, name, keep["id"], blob(10, "keep"))
        key = f"files/{name}/{out['id']}"
        assert api.post("/files/delete", {"id": out["id"]}).status_code == 200
        assert not local_path(s3lore, out["id"]).exists()
        s3 = moto.client()
        wait_for(lambda: key in s3_keys(s3, S3_TRASH), 15, 0.1, f"{key} in the trash")
        wait_for(lambda: key not in s3_keys(s3, S3_BUCKET), 5, 0.1, f"{key} out of {S3_BUCKET}")
        assert sha256(s3_bytes(s3, S3_TRASH, key)) == sha256(data)
        wait_for(lambda: not (s3lore.data_dir / "trash" / out["id"]).exists(), 5, 0.05, "the kept copy to go")
        assert f"files/{name}/{keep['id']}" in s3_keys(s3, S3_BUCKET)

        # destroying the account sends the rest to the trash as well
        destroy(api)
        kept = f"files/{name}/{keep['id']}"
        wait_for(lambda: kept in s3_keys(s3, S3_TRASH), 15, 0.1, f"{kept} in the trash")
        wait_for(lambda: not [k for k in s3_keys(s3, S3_BUCKET) if k.startswith(f"files/{name}/")], 5, 0.1,
                 "the user's objects out of the files bucket")


def test_a_lost_local_copy_is_served_back_from_s3(moto, s3lore):
    data = blob(200_000, "fetch")
    name = "s3_fetch"
    with user(s3lore, name) as api:
        out = api.ok_upload(data, "f.bin", "application/pdf")
        mirrored(moto, s3lore, name, out["id"], data)
        path = local_path(s3lore, out["id"])
        path.unlink()
        r = api.get(f"/files/{out['id']}")
        assert r.status_code == 200
        assert r.content == data
        assert r.headers["content-type"] == "application/pdf"
        assert path.read_bytes() == data  # restored
        assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]
        # a range works on a fetched-back file too
        path.unlink()
        r = api.get(f"/files/{out['id']}", headers={"range": "bytes=-100"})
        assert r.status_code == 206 and r.content == data[-100:]
        assert path.read_bytes() == data

        # many clients at once asking for a lost file all get it whole
        for _ in range(3):
            path.unlink()
            with ThreadPoolExecutor(8) as pool:
                replies = list(pool.map(lambda _: api.get(f"/files/{out['id']}"), range(8)))
            assert [(r.status_code, sha256(r.content)) for r in replies] == [(200, sha256(data))] * 8
            assert path.read_bytes() == data
            assert sorted(p.name for p in path.parent.iterdir()) == [out["id"]]

        # gone both here and in S3: 503 s3, and nothing half-written left behind
        path.unlink()
        moto.client().delete_object(Bucket=S3_BUCKET, Key=f"files/{name}/{out['id']}")
        raw = httpx.get(f"{s3lore.url}/files/{out['id']}", headers={"cookie": f"lorebase={api.cookie}",
                                                                    "x-real-ip": api.ip}, timeout=30)
        assert raw.status_code == 503 and raw.json() == {"error": "s3"}
        assert not path.exists()
        assert not list(path.parent.iterdir()) or all(not p.name.startswith(".") for p in path.parent.iterdir())
        # another user asking for it learns nothing, S3 or not
        with user(s3lore, "s3_fetch_b") as other:
            r = other.get(f"/files/{out['id']}")
            assert r.status_code == 404 and r.json() == {"error": "notfound"}


def test_s3_off_a_missing_local_copy_is_404(server):
    """Without S3 there is nowhere to fetch it from: 404 missing, never a 500."""
    with user(server, "s3_nos3") as api:
        out = api.ok_upload(b"lost", "lost.txt", "text/plain")
        local_path(server, out["id"]).unlink()
        r = api.get(f"/files/{out['id']}")
        assert r.status_code == 404 and r.json() == {"error": "missing"}
        # deleting it still works and frees the space
        assert api.post("/files/delete", {"id": out["id"]}).status_code == 200
        assert not server.redis().exists(fkeys.usage("s3_nos3"))

