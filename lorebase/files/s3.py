"""The S3 mirror: the durable copy of every stored file, and the trash.

Workers never talk to S3 on an upload or a delete: they push a job onto `{s3}:queue`
(with the metadata change, atomically) and the tasks process carries it out, retrying
with backoff while S3 is down, so an S3 outage or a crash loses nothing:
  {"op": "put", "id", "user"}    upload DATA_DIR/files/.../<id> to files/<user>/<id>
  {"op": "trash", "id", "user"}  move files/<user>/<id> to the trash bucket (or upload the
                                 local copy kept in DATA_DIR/trash/<id> if it never got there)
Workers only call S3 to fetch back a file whose local copy is missing.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

from ..errors import S3Down
from .keys import s3_key

TRASH_DAYS = 30


def client(config: Any) -> Any:
    import boto3
    from botocore.config import Config as BotoConfig

    kwargs: dict[str, Any] = {"region_name": config.S3_REGION,
                              "config": BotoConfig(retries={"max_attempts": 2, "mode": "standard"},
                                                   connect_timeout=5, read_timeout=60,
                                                   s3={"addressing_style": "path"} if config.S3_ENDPOINT else {})}
    if config.S3_ENDPOINT:
        kwargs["endpoint_url"] = config.S3_ENDPOINT
    if config.S3_ACCESS_KEY:
        kwargs.update(aws_access_key_id=config.S3_ACCESS_KEY, aws_secret_access_key=config.S3_SECRET_KEY)
    return boto3.client("s3", **kwargs)


def _exists(s3: Any, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_job(config: Any, s3: Any, job: dict[str, Any], data_dir: Path) -> str:
    """Carries out one job (blocking). Returns what happened; raises to be retried."""
    key = s3_key(job["user"], job["id"])
    file_id = job["id"]
    local = data_dir / "files" / file_id[-2:] / file_id
    if job["op"] == "put":
        if not local.exists():
            return "gone"  # deleted before it was mirrored; its trash job sees to it
        if _exists(s3, config.S3_BUCKET, key):
            # an overwrite: the old object goes to the trash first (seed: File)
            s3.copy_object(Bucket=config.S3_TRASH_BUCKET, Key=key, CopySource={"Bucket": config.S3_BUCKET, "Key": key})
        s3.upload_file(str(local), config.S3_BUCKET, key, ExtraArgs={"Metadata": {"sha256": sha256_of(local)}})
        return "put"
    if job["op"] == "trash":
        kept = data_dir / "trash" / file_id
        if _exists(s3, config.S3_BUCKET, key):
            s3.copy_object(Bucket=config.S3_TRASH_BUCKET, Key=key, CopySource={"Bucket": config.S3_BUCKET, "Key": key})
            s3.delete_object(Bucket=config.S3_BUCKET, Key=key)
        elif kept.exists():
            s3.upload_file(str(kept), config.S3_TRASH_BUCKET, key)
        kept.unlink(missing_ok=True)
        return "trash"
    raise ValueError(f"unknown S3 job {job!r}")


async def fetch_back(config: Any, meta: dict[str, str], path: Path) -> None:
    """The local copy is missing: bring it back from S3 (503 s3 if S3 cannot)."""
    def fetch() -> None:
        # a name of its own per fetch: requests for the same lost file may run at once,
        # in one worker's threads as well as in several workers
        tmp = path.with_name(f".{path.name}.fetch{os.getpid()}-{secrets.token_hex(6)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            client(config).download_file(config.S3_BUCKET, s3_key(meta["user"], meta["id"]), str(tmp))
            if meta.get("sha256") and sha256_of(tmp) != meta["sha256"]:
                raise ValueError("the S3 copy does not match the recorded SHA-256")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    try:
        await asyncio.to_thread(fetch)
    except Exception as error:  # noqa: BLE001 - S3 down or object missing
        from ..notify import notify

        notify("s3 fetch failed", file=meta["id"], error=str(error)[:300])
        raise S3Down(str(error)[:300]) from None


def setup(config: Any) -> list[str]:
    """Creates the buckets if missing and puts the 30-day expiry rule on the trash."""
    from botocore.exceptions import ClientError

    s3 = client(config)
    done = []
    for bucket in (config.S3_BUCKET, config.S3_TRASH_BUCKET):
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError:
            args: dict[str, Any] = {"Bucket": bucket}
            if config.S3_REGION != "us-east-1":
                args["CreateBucketConfiguration"] = {"LocationConstraint": config.S3_REGION}
            s3.create_bucket(**args)
            done.append(f"created bucket {bucket}")
    s3.put_bucket_lifecycle_configuration(Bucket=config.S3_TRASH_BUCKET, LifecycleConfiguration={"Rules": [{
        "ID": "lorebase-trash-expiry", "Status": "Enabled", "Filter": {"Prefix": ""},
        "Expiration": {"Days": TRASH_DAYS}}]})
    done.append(f"trash bucket {config.S3_TRASH_BUCKET}: objects expire after {TRASH_DAYS} days")
    return done
