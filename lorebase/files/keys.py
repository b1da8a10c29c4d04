"""Every Redis key of the file store, named in one place (identity/keys.py is the model).

`file:<id>` a file's metadata; `files:<user>` the user's file ids; `usage:<user>` the bytes
they store; `s3:queue` (with `s3:doing`, `s3:retry`, `s3:dead`: tasks/queue.py) the mirror's jobs.
"""

from __future__ import annotations

S3_QUEUE = "s3:queue"


def file(file_id: str) -> str:
    return f"file:{file_id}"


def files(user: str) -> str:
    return f"files:{user}"


def usage(user: str) -> str:
    return f"usage:{user}"
