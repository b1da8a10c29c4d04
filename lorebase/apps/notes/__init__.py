"""Notes: the example application, an Extension as yours would be (lorebase/extension.py):
the lorebase repository's config.py loads it (APPS). Its routes sit in the chain's private
section (so the gatekeeper and the CSRF check have run), it validates with its own schemas,
keeps its own Redis keys, cleans up when a user destroys their account, checks its keys for
`lorebase check`, adds its count to the admin's user detail, and brings its own screen to
the web client (web/notes.js and web/notes.css, served at /apps/notes/ and listed by GET /apps).

Redis: `notes:{<user>}` sorted set of the user's note ids (scores 0: ids sort by time), and
`notebook:{<user>}` hash, note id → the note as JSON {"id","text","ts","files"}: stored the
way GET /notes serves it, so a page is one script call and no decoding. Another user's
note id is simply not in your notebook. Both keys carry the user's hash tag (identity/keys.py),
so they share a slot with the user's session and its files: the MULTIs and scripts below,
and the session probe within them, stay in one slot on a Redis Cluster.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from ...chain import Route
from ...extension import CheckContext, Extension, user_tag
from ...files.keys import file as file_key
from ...files.store import ID, new_id
from ...http import ApiError, Reply, Request, reply
from ...identity.sessions import live_probe, was_live
from ...schema import Schema, Text

if TYPE_CHECKING:
    from ...app import App

PAGE = 20
# a note's text is up to 10,000 characters: 12 bytes each at worst as JSON escapes
LIMIT = 128 * 1024
FileId = Annotated[str, Text(23, 23, pattern=ID.pattern)]


def notes_key(user: str) -> str:
    """The user's note ids (the only place this app names a key, with notebook_key)."""
    return f"notes:{user_tag(user)}"


def notebook_key(user: str) -> str:
    return f"notebook:{user_tag(user)}"


class NoteIn(Schema):
    text: Annotated[str, Text(1, 10000, multiline=True)]
    files: list[FileId] = []


class NoteUpdate(Schema):
    id: FileId
    text: Annotated[str, Text(1, 10000, multiline=True)]
    files: list[FileId] | None = None


class NoteId(Schema):
    id: Annotated[str, Text(1, 64)]


class ListQuery(Schema):
    before: Annotated[str, Text(23, 23, pattern=ID.pattern)] = ""


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
        assert req.session is not None
        owned = await req.app.store.owned(req.app.db, req.session["user"], unique)
        for index, mine in enumerate(owned):
            if not mine:
                raise ApiError(400, "validation", f"files.{ids.index(unique[index])}")
    return unique


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Note).decode
NO_FILES = '"files":[]}'  # how a note without files ends: the fields keep their order

# one page: the ids newest first (older than ARGV[1] if given), then their notes
_PAGE = """
local top = '+'
if ARGV[1] ~= '' then top = '(' .. ARGV[1] end
local ids = redis.call('ZRANGE', KEYS[1], top, '-', 'BYLEX', 'REV', 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then return {} end
return redis.call('HMGET', KEYS[2], unpack(ids))
"""

# compare-and-set of one note: it is replaced only if nobody changed it since it was read
_SWAP = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


async def create(req: Request) -> Reply:
    data: NoteIn = req.data
    assert req.session is not None
    user = req.session["user"]
    files = await _own_files(req, data.files)
    note = Note(id=new_id(), text=data.text, ts=int(time.time() * 1000), files=files)
    db = req.app.db
    # the write and a probe of the session in one MULTI: a note written into an account whose
    # sessions ended after this request passed the gatekeeper is taken back (see sessions.was_live)
    *_, probe = await db.multi([
        ("HSET", notebook_key(user), note.id, _encode(note)), ("ZADD", notes_key(user), 0, note.id),
        live_probe(req.session)])
    if not was_live(probe):
        await db.multi([("HDEL", notebook_key(user), note.id), ("ZREM", notes_key(user), note.id)])
        raise ApiError(403, "session")
    return reply(200, {"id": note.id})


async def list_notes(req: Request) -> Reply:
    assert req.session is not None
    user = req.session["user"]
    db = req.app.db
    blobs = [blob for blob in await db.script(_PAGE, [notes_key(user), notebook_key(user)], [req.data.before, PAGE])
             if blob is not None]
    page: list[Any] = [msgspec.Raw(blob) for blob in blobs]
    # a file deleted since the note was written drops out of it here, at read time: one
    # ZMSCORE per page instead of an index from each file to the notes that name it
    with_files = {i: _decode(blob) for i, blob in enumerate(blobs) if not blob.endswith(NO_FILES)}
    if with_files:
        named = list(dict.fromkeys(f for note in with_files.values() for f in note.files))
        gone = await req.app.store.missing(db, user, named)
        for i, note in with_files.items():
            if gone.intersection(note.files):
                note.files = [f for f in note.files if f not in gone]
                page[i] = note
    return reply(200, page)


async def update(req: Request) -> Reply:
    data: NoteUpdate = req.data
    assert req.session is not None
    db, key = req.app.db, notebook_key(req.session['user'])
    files = await _own_files(req, data.files) if data.files is not None else None
    for _ in range(10):  # a concurrent update of the same note: read it again and retry
        old = await db.call("HGET", key, data.id)
        if old is None:
            raise ApiError(404, "notfound")  # another user's note is as absent as no note
        note = _decode(old)
        note.text = data.text
        if files is not None:
            note.files = files
        if await db.script(_SWAP, [key], [data.id, old, _encode(note)]):
            return reply(200, {})
    raise ApiError(409, "conflict")


async def delete(req: Request) -> Reply:
    assert req.session is not None
    user, note_id = req.session["user"], req.data.id
    removed, _ = await req.app.db.multi([("HDEL", notebook_key(user), note_id), ("ZREM", notes_key(user), note_id)])
    if not removed:
        raise ApiError(404, "notfound")
    return reply(200, {})


async def remove_user_notes(app: App, user: str) -> None:
    """Destroy's step 2, before the user goes (UNLINK: a big notebook is freed off Redis's
    main thread)."""
    await app.db.call("UNLINK", notes_key(user), notebook_key(user))


async def user_detail(app: App, user: str) -> dict[str, int | str]:
    """The admin's user detail: how many notes."""
    return {"notes": int(await app.db.call("ZCARD", notes_key(user)))}


# KEYS: notes, notebook. ARGV: a note id, '1' to repair.
_NOTE = """
local listed = redis.call('ZSCORE', KEYS[1], ARGV[1])
local stored = redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1
if listed and not stored then
  if ARGV[2] == '1' then redis.call('ZREM', KEYS[1], ARGV[1]) end
  return 'unstored'
end
if stored and not listed then
  if ARGV[2] == '1' then redis.call('ZADD', KEYS[1], 0, ARGV[1]) end
  return 'unlisted'
end
return 'ok'
"""


def check_notes(ctx: CheckContext) -> None:
    """`lorebase check`: every listed note is stored and every stored one listed; no notes of
    a user who does not exist; no note naming a file that is not its user's (another user's:
    a problem; one deleted since: a tidy-up, the read filters it out already)."""
    users = sorted(set(ctx.tails(notes_key)) | set(ctx.tails(notebook_key)))
    total = 0
    for name in ctx.each("notes", users):
        if not ctx.exists(name):
            if ctx.drop_orphans(name, [notes_key(name), notebook_key(name)]):
                ctx.found(notes_key(name), f"notes of {name}, who does not exist", "deleted")
            continue
        ids = set(ctx.db.zrange(notes_key(name), 0, -1))
        stored = set(ctx.db.hkeys(notebook_key(name)))
        total += len(stored)
        for note_id in sorted(ids ^ stored):
            code = ctx.run(_NOTE, [notes_key(name), notebook_key(name)], [note_id, ctx.flag])
            if code == "unstored":
                ctx.found(notes_key(name), f"note {note_id} is listed but not in {notebook_key(name)}",
                          "dropped from the list")
            elif code == "unlisted":
                ctx.found(notebook_key(name), f"note {note_id} is not in {notes_key(name)}", "listed again")
        for note_id, blob in ctx.db.hscan_iter(notebook_key(name), count=500):
            if blob.endswith(NO_FILES):
                continue
            try:
                note = _decode(blob)
            except msgspec.DecodeError:
                ctx.found(notebook_key(name), f"note {note_id} is not a note as JSON")
                continue
            owned = ctx.db.pipeline(transaction=False)
            for file_id in note.files:
                owned.exists(file_key(name, file_id))
            others = [f for f, mine in zip(note.files, owned.execute(), strict=True) if not mine]
            # a file id not among the user's: another user's, or gone (records are per user)
            foreign = [f for f in others if ctx.file_owner(f)]
            gone = [f for f in others if f not in foreign]
            if not gone and not foreign:
                continue
            done = ""
            if ctx.repair:
                note.files = [f for f in note.files if f not in gone and f not in foreign]
                # compare-and-set: a note edited since it was read is left for the next run
                swapped = ctx.run(_SWAP, [notebook_key(name)], [note_id, blob, _encode(note)])
                done = "rewritten without them" if swapped else "edited meanwhile: left for the next run"
            if foreign:
                ctx.found(notebook_key(name), f"note {note_id} names files of other users: {', '.join(foreign)}", done)
            if gone:
                ctx.found(notebook_key(name), f"note {note_id} names files no longer stored: {', '.join(gone)}",
                          done, tidy=True)
    ctx.count("notes", total)


def routes() -> list[Route]:
    return [
        Route("POST", "/notes", create, section="private", body=NoteIn, ok=Created, limit=LIMIT,
              summary="Write a note (text 1-10000 characters, optional ids of the user's files)"),
        Route("GET", "/notes", list_notes, section="private", query=ListQuery, ok=list[Note],
              summary="The 20 newest notes (`before`: the last id of the previous page)"),
        Route("POST", "/notes/update", update, section="private", body=NoteUpdate, limit=LIMIT,
              replies={404: ["notfound"], 409: ["conflict"]},
              summary="Change a note's text (and its files, if given)"),
        Route("POST", "/notes/delete", delete, section="private", body=NoteId, replies={404: ["notfound"]},
              summary="Delete a note"),
    ]


extension = Extension("notes", routes=routes(), on_destroy=[remove_user_notes], checks=[check_notes],
                      user_detail=user_detail, assets=Path(__file__).parent / "web", web=["notes.js", "notes.css"])
