"""The notes screen of the web client (the notes example's notes.js), in headless Chromium on
the session server: the attachment picker is a list of the user's files with a checkbox each
(name and size), and editing a note changes its attachments as well as its text."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from .files_support import MULTIPART_TYPE, multipart, part
from .identity_support import Api, Users
from .lore import Lorebase
from .support import client_ip
from .web_support import Watched, chromium, shot


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture()
def watched(browser: Browser, server: Lorebase) -> Iterator[Watched]:
    ip = client_ip()
    context = browser.new_context(base_url=server.url, extra_http_headers={"X-Real-IP": ip},
                                  viewport={"width": 1024, "height": 800})
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        yield Watched(page, ip)
    finally:
        context.close()


def upload(api: Api, name: str, data: bytes) -> dict[str, Any]:
    assert api.csrf is not None
    r = api.request("POST", "/files", content=multipart(part("file", data, name)),
                    headers={"content-type": MULTIPART_TYPE, "x-csrf-token": api.csrf})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_the_edit_form_adds_and_removes_attachments_with_a_checkbox_list_of_the_users_files(
        watched: Watched, users: Users) -> None:
    page = watched.page
    user = users.new("np_alice", verified=True)
    api = users.session(user)
    plan = upload(api, "plan.txt", b"the plan\n")
    photo = upload(api, "photo of the sea.bin", bytes(3000))
    r = api.post("/notes", {"text": "Trip", "files": [plan["id"]]}, csrf=True)
    assert r.status_code == 200, r.text
    note_id = r.json()["id"]

    page.goto("/")
    login = page.locator("#login")
    login.locator("input[name=username]").fill(user.name)
    login.locator("input[name=password]").fill(user.password)
    login.locator("button[type=submit]").click()
    # the composer's picker: every file, with its name and size, none ticked
    composer = page.locator("#new-note .picker li")
    expect(composer).to_have_count(2)
    expect(composer.filter(has_text="photo of the sea.bin")).to_contain_text("2.9 KiB")
    expect(composer.filter(has_text="plan.txt")).to_contain_text("9 bytes")
    expect(page.locator("#new-note input[type=checkbox]:checked")).to_have_count(0)
    expect(page.locator("select[multiple]")).to_have_count(0)

    note = page.locator(f'#notes li.note[data-id="{note_id}"]')
    expect(note.locator("a.file")).to_have_text(["plan.txt"])
    note.locator("button.edit").click()
    boxes = note.locator(".picker input[type=checkbox]")
    expect(boxes).to_have_count(2)
    expect(note.locator(f".picker input[value='{plan['id']}']")).to_be_checked()
    expect(note.locator(f".picker input[value='{photo['id']}']")).not_to_be_checked()
    shot(page, "notes-edit")
    note.locator(f".picker input[value='{plan['id']}']").uncheck()
    note.locator(f".picker input[value='{photo['id']}']").check()
    note.locator("textarea").fill("Trip, with the photo")
    note.locator("button.save").click()
    expect(note.locator(".text")).to_have_text("Trip, with the photo")
    expect(note.locator("a.file")).to_have_text(["photo of the sea.bin"])
    stored = [n for n in api.get("/notes").json() if n["id"] == note_id]
    assert stored[0]["files"] == [photo["id"]], stored

    # and a new note with both ticked in the composer's picker
    page.locator("#new-note textarea").fill("Both")
    page.locator("#new-note .picker input[type=checkbox]").first.check()
    page.locator("#new-note .picker input[type=checkbox]").last.check()
    page.locator("#new-note button[type=submit]").click()
    expect(page.locator("#notes li.note").first.locator(".text")).to_have_text("Both")
    expect(page.locator("#notes li.note").first.locator("a.file")).to_have_count(2)
    newest = api.get("/notes").json()[0]
    assert newest["text"] == "Both" and sorted(newest["files"]) == sorted([plan["id"], photo["id"]]), newest
    shot(page, "notes-screen")
    assert watched.errors == [] and watched.csp == [], (watched.errors, watched.csp)
