"""Notes: the example application. Its routes sit in the chain's private section (so the
gatekeeper and the CSRF check have run), it validates with its own schemas, keeps its
own Redis keys, and cleans up when a user destroys their account.

Redis: `note:<id>` hash {id, user, text, ts, files} (files: JSON list of file ids);
`notes:<user>` sorted set of the user's note ids (scores 0, ids sort by time).
"""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec

from ..chain import Route
from ..files.store import ID, new_id
from ..http import ApiError, Reply, Request, reply
from ..schema import Schema, Text

PAGE = 20
FileId = Text(23, 23, pattern=ID.pattern)


class NoteIn(Schema):
    text: Text(1, 10000, multiline=True)  # type: ignore[valid-type]
    files: list[FileId] = []  # type: ignore[valid-type]


class NoteUpdate(Schema):
    id: FileId  # type: ignore[valid-type]
    text: Text(1, 10000, multiline=True)  # type: ignore[valid-type]
    files: list[FileId] | None = None  # type: ignore[valid-type]


class NoteId(Schema):
    id: Text(1, 64)  # type: ignore[valid-type]


class ListQuery(Schema):
    before: Text(23, 23, pattern=ID.pattern) = ""  # type: ignore[valid-type]


class Created(msgspec.Struct):
    id: str


class Note(msgspec.Struct):
    id: str
    text: str
    ts: int
    files: list[str]


async def _own_files(req: Request, ids: list[str]) -> list[str]:
    """The ids, deduplicated, each checked to be one of the user's files (else 400)."""
    unique = list(dict.fromkeys(ids))
    if len(unique) > 20:
        raise ApiError(400, "validation", "files")
    if unique:
        owners = await req.app.db.pipeline([("HGET", f"file:{i}", "user") for i in unique])
        assert req.session is not None
        for index, owner in enumerate(owners):
            if owner != req.session["user"]:
                raise ApiError(400, "validation", f"files.{ids.index(unique[index])}")
    return unique


async def create(req: Request) -> Reply:
    data: NoteIn = req.data
    assert req.session is not None
    user = req.session["user"]
    files = await _own_files(req, data.files)
    note_id = new_id()
    await req.app.db.multi([
        ("HSET", f"note:{note_id}", "id", note_id, "user", user, "text", data.text,
         "ts", int(time.time() * 1000), "files", json.dumps(files)),
        ("ZADD", f"notes:{user}", 0, note_id),
    ])
    return reply(200, {"id": note_id})


_decode_ids = msgspec.json.Decoder(list[str]).decode


async def list_notes(req: Request) -> Reply:
    assert req.session is not None
    user = req.session["user"]
    db = req.app.db
    top = f"({req.data.before}" if req.data.before else "+"
    ids = await db.call("ZRANGE", f"notes:{user}", top, "-", "BYLEX", "REV", "LIMIT", 0, PAGE)
    if not ids:
        return reply(200, [])
    rows = await db.pipeline([("HMGET", f"note:{i}", "id", "text", "ts", "files") for i in ids])
    notes = [{"id": r[0], "text": r[1], "ts": int(r[2]), "files": _decode_ids(r[3]) if r[3] != "[]" else []}
             for r in rows if r[0] is not None]
    # a file deleted since the note was written drops out of it here, at read time: one
    # ZMSCORE per page instead of an index from each file to the notes that name it
    named = list(dict.fromkeys(f for note in notes for f in note["files"]))
    if named:
        scores = await db.call("ZMSCORE", f"files:{user}", *named)
        gone = {f for f, score in zip(named, scores, strict=True) if score is None}
        if gone:
            for note in notes:
                note["files"] = [f for f in note["files"] if f not in gone]
    return reply(200, notes)


async def _mine(req: Request, note_id: str) -> str:
    assert req.session is not None
    if not ID.match(note_id) or await req.app.db.call("HGET", f"note:{note_id}", "user") != req.session["user"]:
        raise ApiError(404, "notfound")  # another user's note is as absent as no note
    return note_id


async def update(req: Request) -> Reply:
    data: NoteUpdate = req.data
    note_id = await _mine(req, data.id)
    fields: list[Any] = ["text", data.text]
    if data.files is not None:
        fields += ["files", json.dumps(await _own_files(req, data.files))]
    await req.app.db.call("HSET", f"note:{note_id}", *fields)
    return reply(200, {})


async def delete(req: Request) -> Reply:
    note_id = await _mine(req, req.data.id)
    assert req.session is not None
    await req.app.db.multi([("DEL", f"note:{note_id}"), ("ZREM", f"notes:{req.session['user']}", note_id)])
    return reply(200, {})


async def remove_user_notes(app: Any, user: str) -> None:
    """Called by /auth/destroy before the user goes."""
    db = app.db
    while True:
        ids = await db.call("ZRANGE", f"notes:{user}", 0, 499)
        if not ids:
            break
        await db.multi([("DEL", *[f"note:{i}" for i in ids]), ("ZREM", f"notes:{user}", *ids)])
    await db.call("DEL", f"notes:{user}")


def routes() -> list[Route]:
    return [
        Route("POST", "/notes", create, section="private", body=NoteIn, ok=Created,
              summary="Write a note (text 1-10000 characters, optional ids of the user's files)"),
        Route("GET", "/notes", list_notes, section="private", query=ListQuery, ok=list[Note],
              summary="The 20 newest notes (`before`: the last id of the previous page)"),
        Route("POST", "/notes/update", update, section="private", body=NoteUpdate, replies={404: ["notfound"]},
              summary="Change a note's text (and its files, if given)"),
        Route("POST", "/notes/delete", delete, section="private", body=NoteId, replies={404: ["notfound"]},
              summary="Delete a note"),
    ]
