"""Every Redis key of the file store, named in one place (identity/keys.py is the model).

`file:{<user>}:<id>` a file's metadata; `files:{<user>}` the user's file ids; `usage:{<user>}`
the bytes they store: all three carry the user's hash tag (identity/keys.py), so they share
a hash slot with the user and its sessions, and every lookup knows the user (from the
session) before it names a record. `{s3}:queue` (with `{s3}:doing`, `{s3}:retry`,
`{s3}:dead`: tasks/queue.py) the mirror's jobs, in a slot of their own.
"""

from __future__ import annotations

import re

from ..identity.keys import tag

S3_QUEUE = "{s3}:queue"
ID = re.compile(r"^[0-9a-f]{23}\Z")  # a file id: 23 hex digits (store.new_id)


def s3_key(user: str, file_id: str) -> str:
    """A file's object in S3_BUCKET (and in the trash bucket)."""
    return f"files/{user}/{file_id}"


def file(user: str, file_id: str) -> str:
    return f"file:{tag(user)}:{file_id}"


def file_id(key: str) -> tuple[str, str] | None:
    """(user, id) of a key `file` made; None for any other key."""
    rest = key.removeprefix("file:")
    if rest == key or not rest.startswith("{") or "}:" not in rest:
        return None
    user, _, fid = rest[1:].partition("}:")
    return user, fid


def files(user: str) -> str:
    return f"files:{tag(user)}"


def usage(user: str) -> str:
    return f"usage:{tag(user)}"
