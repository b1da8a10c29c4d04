"""The web client, end to end, in headless Chromium driven by Playwright (sync API): a user
signs up, verifies their email from the mail's link, writes, edits and deletes notes, uploads,
attaches, downloads and deletes a file, changes and resets their password, and deletes their
account. The browser is Debian's chromium (Playwright never downloads one); the server is the
session's lorebase, whose mail goes to the SMTP sink. Each test has its own browser context
and its own client address (X-Real-IP, trusted from 127.0.0.1), so per-IP limits never leak.

Screenshots of the main screens are kept in test-artifacts/screens/ (gitignored)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from .identity_support import Users, dedicated
from .lore import Lorebase, MailSink, wait_for
from .support import assert_error, client_ip, post_json
from .web_support import Watched, chromium, shot

WRONG = "Wrong username or password."
WRONG_PASSWORD = "Wrong password."  # on the forms that ask for a password alone

USER = "webuser"
EMAIL = "webuser@example.com"
PASSWORD = "amber-lantern-42-river"
CHANGED = "copper-kettle-77-meadow"
RESET = "violet-harbor-19-summit"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture()
def watched(browser: Browser, server: Lorebase) -> Iterator[Watched]:
    """A fresh context (no cookies) on the session server, from a client address of its own."""
    ip = client_ip()
    context = browser.new_context(base_url=server.url, extra_http_headers={"X-Real-IP": ip},
                                  viewport={"width": 1024, "height": 720}, accept_downloads=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        yield Watched(page, ip)
    finally:
        context.close()


def link_in(mail: Any, server: Lorebase, path: str) -> str:
    """The link of the mail's plain text to `path`: built from BASE_URL, the server's own URL."""
    text = MailSink.text(mail)
    match = re.search(r"https?://\S+/" + path + r"\?token=[A-Za-z0-9_.\-]+", text)
    assert match, f"no {path} link in the mail: {text!r}"
    link = match.group(0)
    assert link.startswith(f"{server.url}/{path}?token="), link
    assert link.endswith(MailSink.token(mail))
    return link


def log_in(page: Page, username: str, password: str) -> None:
    login = page.locator("#login")
    login.locator("input[name=username]").fill(username)
    login.locator("input[name=password]").fill(password)
    login.locator("button[type=submit]").click()


def logged_in(page: Page, username: str) -> None:
    expect(page.locator("#nav")).to_be_visible()
    expect(page.locator("#who")).to_have_text(username)
    expect(page.locator("#new-note")).to_be_visible()


def submit(page: Page, form: str) -> None:
    page.locator(f"{form} button[type=submit]").click()


def flash(page: Page, text: str) -> None:
    expect(page.locator("#flash")).to_be_visible()
    expect(page.locator("#flash")).to_have_text(text)


def test_the_whole_journey(watched: Watched, server: Lorebase, mail: MailSink, tmp_path: Path) -> None:
    page = watched.page
    page.on("dialog", lambda dialog: dialog.accept())

    # -- welcome: log in and sign up side by side; no nav while logged out
    page.goto("/")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#signup")).to_be_visible()
    expect(page.locator("#nav")).to_be_hidden()
    expect(page.locator("#flash")).to_be_hidden()
    shot(page, "welcome")

    # -- sign up; the verification mail arrives; its link verifies the email
    signup = page.locator("#signup")
    signup.locator("input[name=username]").fill(USER)
    signup.locator("input[name=email]").fill(EMAIL)
    signup.locator("input[name=password]").fill(PASSWORD)
    submit(page, "#signup")
    flash(page, "Account created. We sent you an email: open its link to verify your address, then log in.")
    expect(signup.locator("input[name=username]")).to_have_value("")  # the form is cleared

    # the page names the account and waits for a click: opening the link verifies nothing
    page.goto(link_in(mail.wait_for(EMAIL, "Verify your email"), server, "verify"))
    expect(page.locator("#verify h2")).to_have_text(f'Verify the email of "{USER}"')
    expect(page.locator("#not-me")).to_be_visible()
    shot(page, "verify-form")
    page.locator("#verify input[name=password]").fill("not-the-password-1")
    submit(page, "#verify")
    expect(page.locator("#verify .error")).to_have_text(WRONG_PASSWORD)  # the form has no username
    page.locator("#verify input[name=password]").fill(PASSWORD)
    with page.expect_response(lambda r: r.url.endswith("/auth/verifyEmail")) as verified:
        submit(page, "#verify")
    if "csrf" in verified.value.json():
        # the server logs a verification with the password in: the page goes to the app
        flash(page, "Your email is verified.")
        expect(page).to_have_url(f"{server.url}/#notes")  # the token leaves the address bar
    else:
        flash(page, "Your email is verified. You can log in.")
        expect(page).to_have_url(f"{server.url}/")  # the token leaves the address bar
        expect(page.locator("#login")).to_be_visible()
        shot(page, "verify")
        # -- log in: the notes screen, empty
        log_in(page, USER, PASSWORD)
        expect(page.locator("#flash")).to_be_hidden()
    logged_in(page, USER)
    expect(page.locator("main")).to_contain_text("No notes yet.")

    # -- write a note, then edit it; markup in a note stays text
    notes = page.locator("#notes li.note")
    page.locator("#new-note textarea").fill("My first note")
    submit(page, "#new-note")
    expect(notes).to_have_count(1)
    expect(notes.first.locator(".text")).to_have_text("My first note")
    note_id = notes.first.get_attribute("data-id")
    assert note_id
    note = page.locator(f'#notes li.note[data-id="{note_id}"]')
    note.locator("button.edit").click()
    expect(note.locator("textarea")).to_have_value("My first note")
    edited = "Edited: <b>bold?</b> & <img src=x>"
    note.locator("textarea").fill(edited)
    note.locator("button.save").click()
    expect(note.locator(".text")).to_have_text(edited)
    expect(note.locator("b, img")).to_have_count(0)
    expect(notes).to_have_count(1)

    # -- upload a file on the Files screen
    content = b"lorebase web test\n" + bytes(range(256))
    upload = tmp_path / "hello notes.bin"
    upload.write_bytes(content)
    page.locator('[data-go="files"]').click()
    expect(page.locator("#upload")).to_be_visible()
    expect(page.locator('[data-go="files"]')).to_have_attribute("aria-current", "page")
    expect(page.locator('[data-go="notes"]')).not_to_have_attribute("aria-current", "page")
    expect(page.locator("main")).to_contain_text("No files yet.")
    page.locator("#upload input[type=file]").set_input_files(upload)
    submit(page, "#upload")
    flash(page, "Uploaded hello notes.bin.")
    rows = page.locator("#files tr[data-id]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("hello notes.bin")
    expect(rows.first).to_contain_text(f"{len(content)} bytes")
    file_id = rows.first.get_attribute("data-id")
    assert file_id
    shot(page, "files")

    # -- a note with the file attached; the newest note comes first
    page.locator('[data-go="notes"]').click()
    expect(page.locator("#flash")).to_be_hidden()
    page.locator("#new-note textarea").fill("A note with a file")
    page.locator(f"#new-note input[type=checkbox][value='{file_id}']").check()
    submit(page, "#new-note")
    expect(notes).to_have_count(2)
    with_file = notes.first
    expect(with_file.locator(".text")).to_have_text("A note with a file")
    expect(with_file.locator("a.file")).to_have_text("hello notes.bin")
    shot(page, "notes")

    # -- download it from the note: the same bytes, under its name
    with page.expect_download() as info:
        with_file.locator("a.file").click()
    download = info.value
    assert download.failure() is None
    assert download.suggested_filename == "hello notes.bin"
    assert Path(download.path()).read_bytes() == content

    # -- delete the file (confirmed): gone from the table and from the note
    page.locator('[data-go="files"]').click()
    expect(rows).to_have_count(1)
    page.locator(f'#files tr[data-id="{file_id}"] button.delete').click()
    expect(rows).to_have_count(0)
    expect(page.locator("main")).to_contain_text("No files yet.")
    page.locator('[data-go="notes"]').click()
    expect(notes).to_have_count(2)
    expect(page.locator("#notes a.file")).to_have_count(0)

    # -- delete a note (confirmed)
    notes.first.locator("button.delete").click()
    expect(notes).to_have_count(1)
    expect(notes.first).to_have_attribute("data-id", note_id)

    # -- change the password on the Account screen
    page.locator('[data-go="account"]').click()
    expect(page.locator("main")).to_contain_text(f"{USER} · {EMAIL} · email verified")
    expect(page.locator("#change-password")).to_be_visible()
    expect(page.locator("#destroy")).to_be_visible()
    shot(page, "account")
    change = page.locator("#change-password")
    change.locator("input[name=old]").fill(PASSWORD)
    change.locator("input[name=new]").fill(CHANGED)
    submit(page, "#change-password")
    flash(page, "Your password is changed. Your other sessions were logged out.")
    expect(change.locator("input[name=old]")).to_have_value("")
    changed = MailSink.text(mail.wait_for(EMAIL, "Your password was changed"))
    assert f"{server.url}/reset" in changed

    # -- log out: back to the welcome screen, no nav
    page.locator("#logout").click()
    flash(page, "You are logged out.")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#nav")).to_be_hidden()

    # -- the "if this was not you" link of the mail (/reset, no token) offers to send a reset link
    page.goto(f"{server.url}/reset")
    expect(page.locator("#recover")).to_be_visible()
    page.locator("#recover a[href='/']").click()
    expect(page.locator("#login")).to_be_visible()

    # -- forgot the password: ask for a reset link, open it, choose a new password
    page.locator("#forgot").click()
    recover = page.locator("#recover")
    expect(recover).to_be_visible()
    recover.locator("input[name=username]").fill(EMAIL)
    submit(page, "#recover")
    flash(page, "If that account exists, we sent it an email with a link to choose a new password.")
    expect(page.locator("#login")).to_be_visible()

    page.goto(link_in(mail.wait_for(EMAIL, "Reset your password"), server, "reset"))
    expect(page.locator("#reset")).to_be_visible()
    shot(page, "reset")
    page.locator("#reset input[name=password]").fill(RESET)
    submit(page, "#reset")
    flash(page, "Your password is changed. Log in with it.")
    expect(page).to_have_url(f"{server.url}/")

    # -- the old password no longer works; the new one does, and the note is still there
    log_in(page, USER, CHANGED)
    expect(page.locator("#login .error")).to_have_text(WRONG)
    log_in(page, USER, RESET)
    logged_in(page, USER)
    expect(notes).to_have_count(1)
    expect(notes.first.locator(".text")).to_have_text(edited)

    # -- delete the account (confirmed), after one wrong password
    page.locator('[data-go="account"]').click()
    destroy = page.locator("#destroy")
    destroy.locator("input[name=password]").fill(CHANGED)
    submit(page, "#destroy")
    expect(destroy.locator(".error")).to_have_text(WRONG_PASSWORD)
    destroy.locator("input[name=password]").fill(RESET)
    submit(page, "#destroy")
    flash(page, "Your account is deleted.")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#nav")).to_be_hidden()

    # -- the account is gone: logging in fails, in words
    log_in(page, USER, RESET)
    expect(page.locator("#login .error")).to_have_text(WRONG)
    expect(page.locator("#nav")).to_be_hidden()

    assert watched.errors == []
    assert watched.csp == []


def test_a_wrong_password_is_told_in_words(watched: Watched, client: httpx.Client) -> None:
    name = f"webwrong{uuid.uuid4().hex[:8]}"
    reply = post_json(client, "/auth/signup", {"username": name, "email": f"{name}@example.com",
                                               "password": PASSWORD})
    assert reply.status_code == 200, reply.text
    page = watched.page
    page.goto("/")
    with page.expect_response(lambda r: r.url.endswith("/auth/login")) as info:
        log_in(page, name, PASSWORD + "-not")
    response = info.value
    assert response.status == 403
    assert response.json() == {"error": "auth"}  # the code, which the page turns into words
    error = page.locator("#login .error")
    expect(error).to_be_visible()
    expect(error).to_have_text(WRONG)
    expect(page.locator("#login")).not_to_contain_text("auth")
    expect(page.locator("#nav")).to_be_hidden()
    shot(page, "login-error")
    # the right one still logs in, and the error is gone
    log_in(page, name, PASSWORD)
    logged_in(page, name)
    assert watched.errors == []
    # so is an unknown user: the same words
    assert_error(post_json(client, "/auth/login", {"username": f"{name}x", "password": PASSWORD}), 403, "auth")


def test_a_locked_login_says_how_long_to_wait_from_retry_after(watched: Watched, client: httpx.Client) -> None:
    """Ten wrong passwords from strangers lock the account (the shared server's limit): the
    page's login then says how long to wait, from the 429's Retry-After (900 s: 15 minutes)."""
    name = f"weblock{uuid.uuid4().hex[:8]}"
    reply = post_json(client, "/auth/signup", {"username": name, "email": f"{name}@example.com",
                                               "password": PASSWORD})
    assert reply.status_code == 200, reply.text
    for _ in range(10):
        wrong = post_json(client, "/auth/login", {"username": name, "password": PASSWORD + "-not"}, ip=client_ip())
        assert_error(wrong, 403, "auth")
    page = watched.page
    page.goto("/")
    with page.expect_response(lambda r: r.url.endswith("/auth/login")) as info:
        log_in(page, name, PASSWORD)
    response = info.value
    assert response.status == 429
    wait = int(response.headers["retry-after"])
    minutes = -(-wait // 60)
    assert 14 <= minutes <= 15, wait
    error = page.locator("#login .error")
    expect(error).to_have_text(f"Too many attempts. Please wait {minutes} minutes and try again.")
    expect(page.locator("#nav")).to_be_hidden()
    assert watched.errors == []


def test_a_script_error_is_reported_to_the_server(watched: Watched, server: Lorebase) -> None:
    page = watched.page
    page.goto("/")
    expect(page.locator("#login")).to_be_visible()  # app.js has run: its handlers are on
    marker = uuid.uuid4().hex
    page.evaluate("(m) => { setTimeout(() => { throw new Error('web test boom ' + m); }); }", marker)
    page.evaluate("(m) => { setTimeout(() => { Promise.reject(new Error('web test reject ' + m)); }); }", marker)

    def reported(what: str) -> dict[str, Any] | None:
        found = [e for e in server.events("client error") if f"web test {what} {marker}" in e.get("message", "")]
        return found[0] if found else None

    thrown = wait_for(lambda: reported("boom"), what="the thrown error's report")
    assert thrown["ip"] == watched.ip
    assert thrown["url"].startswith(server.url)
    assert "web test boom" in thrown["stack"]
    assert "Chrome" in thrown["agent"]
    rejected = wait_for(lambda: reported("reject"), what="the rejection's report")
    assert rejected["ip"] == watched.ip
    assert rejected["url"] == f"{server.url}/"
    assert any(marker in str(e) for e in watched.errors)  # the page saw them too: they were real


def test_a_user_ends_another_of_their_sessions_from_the_account_screen(watched: Watched, server: Lorebase) -> None:
    name = f"websess{uuid.uuid4().hex[:8]}"
    elsewhere_ip, phone_ip = client_ip(), client_ip()
    with httpx.Client(base_url=server.url, timeout=10) as elsewhere, \
            httpx.Client(base_url=server.url, timeout=10) as phone:
        reply = post_json(elsewhere, "/auth/signup", {"username": name, "email": f"{name}@example.com",
                                                      "password": PASSWORD}, ip=elsewhere_ip)
        assert reply.status_code == 200, reply.text
        for client, ip in ((elsewhere, elsewhere_ip), (phone, phone_ip)):
            login = post_json(client, "/auth/login", {"username": name, "password": PASSWORD}, ip=ip)
            assert login.status_code == 200, login.text
        page = watched.page
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto("/")
        log_in(page, name, PASSWORD)
        logged_in(page, name)
        page.locator('[data-go="account"]').click()
        rows = page.locator("#sessions tr[data-handle]")
        expect(rows).to_have_count(3)
        expect(page.locator("#sessions tr.current")).to_contain_text(watched.ip)
        expect(page.locator("#sessions tr.current")).to_contain_text("this one")
        shot(page, "account-sessions")
        # log out the one at elsewhere_ip: that client is out at once, the other stays
        page.locator("#sessions tr", has_text=elsewhere_ip).locator("button.end").click()
        flash(page, "Logged out that session.")
        expect(rows).to_have_count(2)
        assert_error(elsewhere.get("/auth/me", headers={"x-real-ip": elsewhere_ip}), 403, "session")
        assert phone.get("/auth/me", headers={"x-real-ip": phone_ip}).status_code == 200
        # and everywhere else: only this browser's session is left
        page.locator("#end-others").click()
        flash(page, "Logged out every other session.")
        expect(rows).to_have_count(1)
        expect(page.locator("#end-others")).to_have_count(0)
        assert_error(phone.get("/auth/me", headers={"x-real-ip": phone_ip}), 403, "session")
        expect(page.locator("#who")).to_have_text(name)
        assert watched.errors == [] and watched.csp == []


# -- addresses, the words of the forms, a new verification mail, tables on a phone ------------


def new_account(server: Lorebase, prefix: str, ip: str) -> str:
    """An account made over HTTP from `ip` (not verified: the shared server does not ask it)."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=server.url, timeout=10) as client:
        reply = post_json(client, "/auth/signup", {"username": name, "email": f"{name}@example.com",
                                                   "password": PASSWORD}, ip=ip)
    assert reply.status_code == 200, reply.text
    return name


def on_screen(page: Page, server: Lorebase, name: str, shown: str) -> None:
    """The screen `name` is drawn (`shown` is in it), at its own address, its tab marked."""
    expect(page.locator(shown)).to_be_visible()
    expect(page).to_have_url(f"{server.url}/#{name}")
    expect(page.locator(f'#nav [data-go="{name}"]')).to_have_attribute("aria-current", "page")


def test_each_screen_has_its_own_address_which_back_forward_and_reload_keep(watched: Watched, server: Lorebase) -> None:
    name = new_account(server, "webaddr", watched.ip)
    page = watched.page
    # a screen's address, logged out: the login first, then that screen
    page.goto("/#account")
    expect(page.locator("#login")).to_be_visible()
    log_in(page, name, PASSWORD)
    on_screen(page, server, "account", "#change-password")
    # the tabs are links to the addresses, the app's among them
    for tab in ("notes", "files", "account"):
        expect(page.locator(f'#nav a[data-go="{tab}"]')).to_have_attribute("href", f"/#{tab}")
    page.locator('[data-go="notes"]').click()
    on_screen(page, server, "notes", "#new-note")
    page.locator('[data-go="files"]').click()
    on_screen(page, server, "files", "#upload")
    page.go_back()
    on_screen(page, server, "notes", "#new-note")
    page.go_back()
    on_screen(page, server, "account", "#change-password")
    page.go_forward()
    on_screen(page, server, "notes", "#new-note")
    page.reload()
    on_screen(page, server, "notes", "#new-note")
    page.locator('[data-go="files"]').click()
    on_screen(page, server, "files", "#upload")
    page.reload()
    on_screen(page, server, "files", "#upload")
    shot(page, "files-address")
    # the current tab looks it: filled, the others outlined
    fill = "(e) => getComputedStyle(e).backgroundColor"
    assert page.locator('[data-go="files"]').evaluate(fill) != page.locator('[data-go="account"]').evaluate(fill)
    # an address that names no screen lands on the home screen, in place
    page.goto("/#nothing")
    on_screen(page, server, "notes", "#new-note")
    # the JSON routes keep their paths
    listed = page.request.get("/files")
    assert listed.ok and listed.headers["content-type"].startswith("application/json"), listed.headers
    assert watched.errors == [] and watched.csp == []


def asks_for_a_new_verification_mail(page: Page, username: str) -> None:
    """The #resend form posts {username} to POST /auth/verify/resend."""
    resend = page.locator("#resend")
    expect(resend).to_be_visible()
    resend.locator("input[name=username]").fill(username)
    with page.expect_response(lambda r: r.url.endswith("/auth/verify/resend")) as info:
        submit(page, "#resend")
    request = info.value.request
    assert request.method == "POST"
    assert request.post_data_json == {"username": username}
    assert info.value.status == 200
    flash(page, "If that account exists and its email is not verified yet, we sent it a new link.")  # any name
    expect(page.locator("#login")).to_be_visible()


def test_a_verify_link_with_a_bad_token_names_no_account_and_offers_a_new_link(watched: Watched) -> None:
    page = watched.page
    page.goto("/verify?token=garbage")
    expect(page.locator("#bad-link h2")).to_have_text("This link is not valid")
    expect(page.locator("#verify")).to_have_count(0)
    expect(page.locator("main")).not_to_contain_text("garbag")
    shot(page, "verify-bad-token")
    # a token of the right shape that is no longer live: the same, once the click finds out
    page.goto("/verify?token=webdead." + "A" * 43)
    expect(page.locator("#verify h2")).to_have_text('Verify the email of "webdead"')
    page.locator("#verify input[name=password]").fill(PASSWORD)
    submit(page, "#verify")
    expect(page.locator("#bad-link h2")).to_have_text("This link is not valid")
    expect(page.locator("main")).not_to_contain_text("webdead")
    asks_for_a_new_verification_mail(page, "webdead")
    assert watched.errors == [] and watched.csp == []


def test_the_login_screen_offers_a_new_verification_mail(watched: Watched) -> None:
    page = watched.page
    page.goto("/")
    page.locator("#no-mail").click()
    shot(page, "resend")
    asks_for_a_new_verification_mail(page, "webnomail@example.com")
    assert watched.errors == [] and watched.csp == []


def test_the_account_forms_say_wrong_password_and_the_list_drops_the_sessions_a_change_ended(
        watched: Watched, server: Lorebase, mail: MailSink) -> None:
    name = new_account(server, "webacct", watched.ip)
    page = watched.page
    page.on("dialog", lambda dialog: dialog.accept())
    with httpx.Client(base_url=server.url, timeout=10) as elsewhere:
        login = post_json(elsewhere, "/auth/login", {"username": name, "password": PASSWORD})
        assert login.status_code == 200, login.text
        page.goto("/")
        log_in(page, name, PASSWORD)
        page.locator('[data-go="account"]').click()
        rows = page.locator("#sessions tr[data-handle]")
        expect(rows).to_have_count(2)
        change = page.locator("#change-password")
        change.locator("input[name=old]").fill("not-the-password-1")
        change.locator("input[name=new]").fill(CHANGED)
        submit(page, "#change-password")
        expect(change.locator(".error")).to_have_text(WRONG_PASSWORD)
        change.locator("input[name=old]").fill(PASSWORD)
        submit(page, "#change-password")
        flash(page, "Your password is changed. Your other sessions were logged out.")
        expect(rows).to_have_count(1)  # the list was asked again: the other session is gone
        expect(page.locator("#sessions tr.current")).to_contain_text("this one")
    destroy = page.locator("#destroy")
    destroy.locator("input[name=password]").fill(PASSWORD)
    submit(page, "#destroy")
    expect(destroy.locator(".error")).to_have_text(WRONG_PASSWORD)
    # a new email: the form posts the address and the password, with the session's csrf
    email = page.locator("#change-email")
    email.locator("input[name=email]").fill(f"{name}-new@example.com")
    email.locator("input[name=password]").fill(CHANGED)
    with page.expect_response(lambda r: r.url.endswith("/auth/changeEmail")) as info:
        submit(page, "#change-email")
    sent = info.value.request.post_data_json
    assert sent["email"] == f"{name}-new@example.com" and sent["password"] == CHANGED and sent["csrf"], sent
    assert info.value.status == 200
    flash(page, f"We sent a link to {name}-new@example.com: open it to make it your email. "
                f"Until then it stays {name}@example.com.")
    shot(page, "account-forms")
    # the link, opened in this logged-in browser: the session is the proof, one click does it
    link = link_in(mail.wait_for(f"{name}-new@example.com", "verify"), server, "verify")
    page.goto(link)
    expect(page.locator("#verify input[name=password]")).to_have_count(0)
    with page.expect_response(lambda r: r.url.endswith("/auth/verifyEmail")) as verified:
        submit(page, "#verify")
    assert verified.value.request.post_data_json == {"token": link.rpartition("=")[2]}
    assert verified.value.status == 200, verified.value.text()
    flash(page, "Your email is verified.")
    logged_in(page, name)
    with httpx.Client(base_url=server.url, timeout=10) as fresh:
        assert post_json(fresh, "/auth/login", {"username": f"{name}-new@example.com",
                                                "password": CHANGED}).status_code == 200
    assert watched.errors == [] and watched.csp == []


# Each word of each cell's text whose box spans more than one line: a word broken inside.
BROKEN_WORDS = """(selector) => {
  const broken = [];
  for (const cell of document.querySelectorAll(selector)) {
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const word of node.textContent.matchAll(/\\S+/g)) {
        const range = document.createRange();
        range.setStart(node, word.index);
        range.setEnd(node, word.index + word[0].length);
        const lines = new Set([...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top)));
        if (lines.size > 1) broken.push(word[0]);
      }
    }
  }
  return broken;
}"""
PHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
         "Version/17.5 Mobile/15E148 Safari/604.1")


def test_no_word_breaks_inside_a_table_cell_on_a_phone(watched: Watched, server: Lorebase, tmp_path: Path) -> None:
    name = new_account(server, "webphone", watched.ip)
    page = watched.page
    page.set_viewport_size({"width": 375, "height": 740})
    with httpx.Client(base_url=server.url, timeout=10, headers={"user-agent": PHONE}) as phone:
        login = post_json(phone, "/auth/login", {"username": name, "password": PASSWORD})
        assert login.status_code == 200, login.text
        page.goto("/")
        log_in(page, name, PASSWORD)
        page.locator('[data-go="files"]').click()
        upload = tmp_path / "quarterly-report-2026-final-version-signed.pdf"
        upload.write_bytes(b"%PDF-1.4 not really\n")
        page.locator("#upload input[type=file]").set_input_files(upload)
        submit(page, "#upload")
        expect(page.locator("#files tr[data-id]")).to_have_count(1)
        page.screenshot(path="/tmp/webcore-files-375.png", full_page=True)
        shot(page, "files-375")
        assert page.evaluate(BROKEN_WORDS, "#files td, #files th") == []
        page.locator('[data-go="account"]').click()
        expect(page.locator("#sessions tr[data-handle]")).to_have_count(2)
        expect(page.locator("#sessions")).to_contain_text("Safari on iPhone")
        page.screenshot(path="/tmp/webcore-account-375.png", full_page=True)
        shot(page, "account-375")
        assert page.evaluate(BROKEN_WORDS, "#sessions td, #sessions th") == []
        # a table wider than the phone scrolls in its box; the page itself does not
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
    assert watched.errors == [] and watched.csp == []


# -- the page knows no app: each loaded one brings its screens (GET /apps) ---------------------


def test_the_notes_tab_comes_from_the_notes_apps_own_files(watched: Watched, server: Lorebase) -> None:
    """The core's page and scripts name no app; GET /apps lists the notes example's files, the
    page loads them from /apps/notes/, and the Notes tab and screen are theirs."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for core in ("/", "/static/app.js", "/static/common.js", "/static/style.css"):
            assert "notes" not in client.get(core).text.lower(), core
        listed = client.get("/apps")
        assert listed.status_code == 200 and listed.headers["content-type"].startswith("application/json")
        assert listed.json() == [{"name": "notes", "scripts": ["/apps/notes/notes.js"],
                                  "styles": ["/apps/notes/notes.css"]}]
        again = client.get("/apps", headers={"if-none-match": listed.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        name = f"webtab{uuid.uuid4().hex[:8]}"
        reply = post_json(client, "/auth/signup", {"username": name, "email": f"{name}@example.com",
                                                   "password": PASSWORD}, ip=watched.ip)
        assert reply.status_code == 200, reply.text
    page = watched.page
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url.removeprefix(server.url)))
    page.goto("/")
    log_in(page, name, PASSWORD)
    logged_in(page, name)  # the notes screen is the home screen: the first app's
    tabs = page.locator("#nav [data-go]")
    expect(tabs).to_have_count(3)
    expect(tabs.nth(0)).to_have_text("Notes")
    expect(tabs.nth(0)).to_have_attribute("aria-current", "page")
    assert [tabs.nth(i).get_attribute("data-go") for i in range(3)] == ["notes", "files", "account"]
    loaded = [url for url in asked if url.startswith("/apps")]
    assert loaded[:1] == ["/apps"] and set(loaded[1:]) == {"/apps/notes/notes.css", "/apps/notes/notes.js"}, asked
    assert asked.index("/apps/notes/notes.js") < asked.index("/notes")  # the screen came after its script
    expect(page.locator("#new-note textarea")).to_be_visible()
    note_style = page.evaluate("() => [...document.styleSheets].some((s) => (s.href || '').endsWith('/notes.css'))")
    assert note_style is True
    assert watched.errors == [] and watched.csp == []


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory, mail: MailSink) -> Iterator[Lorebase]:
    """A lorebase with no application at all (APPS empty), and an admin by ADMINS."""
    with dedicated(tmp_path_factory, mail, "bareweb", APPS="", ADMINS="w_bareadmin@example.com") as lore:
        yield lore


def test_with_no_app_the_page_shows_no_notes_tab_asks_no_notes_route_and_files_and_account_work(
        browser: Browser, bare: Lorebase, mail: MailSink, tmp_path: Path) -> None:
    with Users(bare, mail) as made:
        user = made.new("w_bare", verified=True)
        ip = client_ip()
        context = browser.new_context(base_url=bare.url, extra_http_headers={"X-Real-IP": ip},
                                      viewport={"width": 1024, "height": 720})
        context.set_default_timeout(15_000)
        try:
            page = context.new_page()
            watched = Watched(page, ip)
            page.on("dialog", lambda dialog: dialog.accept())
            asked: list[str] = []
            page.on("request", lambda request: asked.append(request.url.removeprefix(bare.url)))
            page.goto("/")
            log_in(page, user.name, user.password)
            # the home screen with no app is Files; the nav has the core's tabs alone
            expect(page.locator("#who")).to_have_text(user.name)
            expect(page.locator("#upload")).to_be_visible()
            tabs = page.locator("#nav [data-go]")
            expect(tabs).to_have_count(2)
            assert [tabs.nth(i).get_attribute("data-go") for i in range(2)] == ["files", "account"]
            expect(page.locator('[data-go="files"]')).to_have_attribute("aria-current", "page")
            expect(page.locator('[data-go="notes"]')).to_have_count(0)
            expect(page.locator("#admin-link")).to_be_hidden()  # not an admin
            upload = tmp_path / "bare.txt"
            upload.write_bytes(b"no app here\n")
            page.locator("#upload input[type=file]").set_input_files(upload)
            submit(page, "#upload")
            flash(page, "Uploaded bare.txt.")
            expect(page.locator("#files tr[data-id]")).to_have_count(1)
            page.locator('[data-go="account"]').click()
            expect(page.locator("#sessions tr.current")).to_contain_text("this one")
            expect(page.locator("#change-password")).to_be_visible()
            page.locator('[data-go="files"]').click()
            expect(page.locator("#files tr[data-id]")).to_have_count(1)
            assert "/apps" in asked and not any(url.startswith("/apps/") for url in asked), asked
            assert not any(url.startswith("/notes") for url in asked), asked
            assert watched.errors == [] and watched.csp == []
        finally:
            context.close()


def test_the_admin_link_is_in_the_nav_of_an_admin_only(browser: Browser, bare: Lorebase, mail: MailSink) -> None:
    """GET /auth/me's `admin` shows the link; the admin page and routes check on their own."""
    with Users(bare, mail) as made:
        admin = made.new("w_bareadmin", verified=True)
        context = browser.new_context(base_url=bare.url, extra_http_headers={"X-Real-IP": client_ip()},
                                      viewport={"width": 1024, "height": 720})
        context.set_default_timeout(15_000)
        try:
            page = context.new_page()
            page.goto("/")
            log_in(page, admin.name, admin.password)
            link = page.locator("#nav a#admin-link")
            expect(link).to_be_visible()
            expect(link).to_have_attribute("href", "/admin")
            shot(page, "nav-admin")
            link.click()
            expect(page).to_have_url(f"{bare.url}/admin")
            page.go_back()  # the admin page's Back: the screen the link was on
            expect(page).to_have_url(f"{bare.url}/#files")
            expect(page.locator("#upload")).to_be_visible()
        finally:
            context.close()


STATIC = [("/static/common.js", "text/javascript"), ("/static/admin.js", "text/javascript"),
          ("/static/admin.css", "text/css"), ("/static/vendor/uplot/uPlot.iife.min.js", "text/javascript"),
          ("/static/vendor/uplot/uPlot.min.css", "text/css"), ("/static/vendor/uplot/LICENSE", "text/plain")]
NOT_SERVED = ["/static/vendor", "/static/vendor/uplot", "/static/vendor/uplot/", "/static/vendor/%2e%2e/app.js",
              "/static/vendor/uplot/..%2f..%2fapp.js", "/static/vendor/..%2f..%2fweb/app.js",
              "/static/%2e%2e%2f__init__.py", "/static/vendor/uplot/%2e%2e", "/static/vendor/.hidden/x.js",
              "/static/vendor/nothing/x.js", "/static/vendor/uplot/nothing.js",
              "/static/vendor/uplot/uPlot.iife.min.js/x", "/static/vendor/uplot/package.json"]


def test_the_admin_page_and_the_vendored_library_are_served_by_name_with_etags_and_nothing_else(
        server: Lorebase) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        page = client.get("/admin")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert b"/static/admin.js" in page.content and b"/static/vendor/uplot/uPlot.iife.min.js" in page.content
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe" not in csp, csp
        for path, kind in STATIC:
            r = client.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith(kind), (path, r.headers)
            assert r.headers["x-content-type-options"] == "nosniff" and r.headers["etag"], path
            again = client.get(path, headers={"if-none-match": r.headers["etag"]})
            assert again.status_code == 304 and again.content == b"", path
        for path in NOT_SERVED:
            r = client.get(path)
            assert r.status_code == 404 and r.json() == {"error": "notfound"}, (path, r.status_code, r.text[:200])
