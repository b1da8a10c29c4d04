"""Invites: an admin invites an email, the mail (over SMTP) carries a single-use link; signing
up with its token works for that email even while WHITELIST excludes it, starts verified, and
is refused (403 invite) for another email, a second time, after a revoke and after expiry."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from lorebase.identity import keys as idkeys

from .identity_support import Api, Users, assert_error, dedicated, signup_body
from .lore import Lorebase, MailSink, wait_for

INVITE_TTL = 600


@pytest.fixture(scope="module")
def lore(tmp_path_factory: pytest.TempPathFactory, mail: MailSink) -> Iterator[Lorebase]:
    # WHITELIST holds only the admin's address: every other signup needs an invite
    with dedicated(tmp_path_factory, mail, "invites", ADMINS="inv_root@example.com",
                   WHITELIST="inv_root@example.com", INVITE_TTL=INVITE_TTL) as lore:
        yield lore


@pytest.fixture(scope="module")
def root(lore: Lorebase, mail: MailSink) -> Iterator[Api]:
    with Users(lore, mail) as made:
        yield made.session(made.new("inv_root", verified=True))


@pytest.fixture()
def users(lore: Lorebase, mail: MailSink) -> Iterator[Users]:
    with Users(lore, mail) as made:
        yield made


def invite(root: Api, mail: MailSink, email: str) -> str:
    """The token of the invite mail `email` gets (the newest, if several)."""
    before = len(mail.to(email))
    r = root.post("/admin/invites", {"email": email}, csrf=True)
    assert r.status_code == 200, r.text
    assert r.json() == {}
    message = mail.wait_for(email, "invited", count=before + 1)
    text = MailSink.text(message)
    match = re.search(r"/signup\?invite=([A-Za-z0-9_.\-]+)", text)
    assert match, text
    return match.group(1)


def test_an_invited_email_signs_up_past_the_whitelist_once(lore: Lorebase, root: Api, mail: MailSink,
                                                          users: Users) -> None:
    email = "inv_guest@example.com"
    api = users.api()
    assert_error(api.post("/auth/signup", signup_body("inv_guest", email)), 403, "whitelist")
    token = invite(root, mail, email)
    assert token not in str(lore.redis().get(idkeys.invite(email)))  # stored hashed
    listed = root.get("/admin/invites").json()
    assert [i["email"] for i in listed] == [email]
    assert listed[0]["by"] == "inv_root" and listed[0]["expires"] - listed[0]["created"] == INVITE_TTL * 1000

    signup = api.post("/auth/signup", signup_body("inv_guest", email, invite=token))
    assert signup.status_code == 200, signup.text
    user = users.track("inv_guest", email)
    assert root.get("/admin/invites").json() == []
    # the invite proved the mailbox: verified at once, no verification mail
    me = users.session(user).get("/auth/me").json()
    assert me["verified"] is True
    assert not [m for m in mail.to(email) if "verify" in str(m["Subject"]).lower()]
    # the token is redacted from the log, the fact of the invite is not
    assert [e["invited"] for e in lore.events("signup") if e["user"] == "inv_guest"] == [True]
    assert token not in lore.log_text()
    # single use: once the account is gone and the address free again, the token still fails
    assert lore.redis().exists(idkeys.invite(email)) == 0
    users.destroy(user)
    again = users.api().post("/auth/signup", signup_body("inv_guest2", email, invite=token))
    assert_error(again, 403, "invite")


def test_a_token_is_refused_for_another_email(root: Api, mail: MailSink, users: Users) -> None:
    token = invite(root, mail, "inv_owner@example.com")
    other = users.api().post("/auth/signup", signup_body("inv_thief", "inv_thief@example.com", invite=token))
    assert_error(other, 403, "invite")
    # and it still works for its own address
    mine = users.api().post("/auth/signup", signup_body("inv_owner", "inv_owner@example.com", invite=token))
    assert mine.status_code == 200, mine.text
    users.track("inv_owner", "inv_owner@example.com")


def test_a_revoked_invite_is_refused_and_revoking_twice_is_404(root: Api, mail: MailSink, users: Users) -> None:
    email = "inv_revoked@example.com"
    token = invite(root, mail, email)
    assert root.post("/admin/invites/revoke", {"email": email}, csrf=True).json() == {}
    assert_error(root.post("/admin/invites/revoke", {"email": email}, csrf=True), 404, "invite")
    assert email not in [i["email"] for i in root.get("/admin/invites").json()]
    refused = users.api().post("/auth/signup", signup_body("inv_revoked", email, invite=token))
    assert_error(refused, 403, "invite")


def test_an_expired_invite_is_refused(tmp_path_factory: pytest.TempPathFactory, mail: MailSink) -> None:
    with dedicated(tmp_path_factory, mail, "invites-ttl", ADMINS="inv_short@example.com",
                   WHITELIST="inv_short@example.com", INVITE_TTL=2) as short, Users(short, mail) as made:
        admin = made.session(made.new("inv_short", verified=True))
        email = "inv_late@example.com"
        token = invite(admin, mail, email)
        time.sleep(2.5)
        assert email not in [i["email"] for i in admin.get("/admin/invites").json()]
        assert_error(made.api().post("/auth/signup", signup_body("inv_late", email, invite=token)), 403, "invite")


def test_a_new_invite_replaces_the_last_and_a_taken_name_keeps_the_invite(root: Api, mail: MailSink,
                                                                          users: Users) -> None:
    email = "inv_twice@example.com"
    first = invite(root, mail, email)
    second = invite(root, mail, email)
    assert first != second
    assert_error(users.api().post("/auth/signup", signup_body("inv_twice", email, invite=first)), 403, "invite")
    # a username already taken: 409, and the invite is not spent
    taken = users.api().post("/auth/signup", signup_body("inv_root", email, invite=second))
    assert_error(taken, 409, "username")
    ok = users.api().post("/auth/signup", signup_body("inv_twice", email, invite=second))
    assert ok.status_code == 200, ok.text
    users.track("inv_twice", email)


def test_forged_and_garbage_tokens_are_403_invite(users: Users) -> None:
    import base64

    head = base64.urlsafe_b64encode(b"inv_forged@example.com").rstrip(b"=").decode()
    for token in (f"{head}.{'A' * 43}", "nodot", "!!!.xyz", "A" * 500, f"{head}."):
        r = users.api().post("/auth/signup", signup_body("inv_forged", "inv_forged@example.com", invite=token))
        assert_error(r, 403, "invite")
    assert_error(users.api().post("/auth/signup", signup_body("inv_forged", "inv_forged@example.com",
                                                              invite="A" * 501)), 400, "validation", "invite")


def test_an_account_email_cannot_be_invited_and_only_admins_invite(root: Api, mail: MailSink, users: Users) -> None:
    assert_error(root.post("/admin/invites", {"email": "inv_root@example.com"}, csrf=True), 409, "email")
    assert_error(root.post("/admin/invites", {"email": "not an email"}, csrf=True), 400, "validation", "email")
    anon = users.api()
    for method, path, body in (("POST", "/admin/invites", {"email": "x@example.com"}), ("GET", "/admin/invites", None),
                               ("POST", "/admin/invites/revoke", {"email": "x@example.com"})):
        reply = anon.request(method, path, body) if body is not None else anon.request(method, path)
        assert_error(reply, 403, "nocookie")
    token = invite(root, mail, "inv_member@example.com")
    joined = users.api().post("/auth/signup", signup_body("inv_member", "inv_member@example.com", invite=token))
    assert joined.status_code == 200, joined.text
    member = users.session(users.track("inv_member", "inv_member@example.com"))
    assert_error(member.post("/admin/invites", {"email": "x@example.com"}, csrf=True), 403, "admin")
    assert_error(member.get("/admin/invites"), 403, "admin")
    assert_error(member.post("/admin/invites/revoke", {"email": "x@example.com"}, csrf=True), 403, "admin")
    assert_error(root.post("/admin/invites", {"email": "inv_csrf@example.com"}), 403, "csrf")


def test_an_address_held_by_a_stale_unverified_account_can_be_invited(tmp_path_factory: pytest.TempPathFactory,
                                                                       mail: MailSink) -> None:
    """VERIFY_TTL=2: an account that never verified its address stops holding it from an
    invite once that long has passed, as it does from a signup; the invited signup takes it."""
    with dedicated(tmp_path_factory, mail, "invites-stale", ADMINS="inv_st_root@example.com",
                   VERIFY_TTL=2) as short, Users(short, mail) as made:
        admin = made.session(made.new("inv_st_root", verified=True))
        email = "inv_stale@example.com"
        squatter = made.new("inv_squat", email=email)
        # within VERIFY_TTL the unverified account keeps its address, as from a signup
        assert_error(admin.post("/admin/invites", {"email": email}, csrf=True), 409, "email")
        wait_for(lambda: admin.post("/admin/invites", {"email": email}, csrf=True).status_code == 200, 10, 0.2,
                 "the invite, once the squatter's VERIFY_TTL has passed")
        sent = mail.wait_for(email, "invited")
        token = re.search(r"/signup\?invite=([A-Za-z0-9_.\-]+)", MailSink.text(sent))
        assert token, MailSink.text(sent)
        joined = made.api().post("/auth/signup", signup_body("inv_owner2", email, invite=token.group(1)))
        assert joined.status_code == 200, joined.text
        owner = made.session(made.track("inv_owner2", email)).get("/auth/me").json()
        assert (owner["email"], owner["verified"]) == (email, True)
        held = made.session(squatter).get("/auth/me").json()
        assert (held["username"], held["email"]) == ("inv_squat", "")
        squatter.email = ""
        # a verified account's address is never invited
        assert_error(admin.post("/admin/invites", {"email": email}, csrf=True), 409, "email")


def test_the_invite_link_opens_a_signup_page_that_works_in_a_browser(lore: Lorebase, root: Api, mail: MailSink,
                                                                    users: Users) -> None:
    from playwright.sync_api import expect

    from .web_support import chromium, shot

    email = "inv_browser@example.com"
    token = invite(root, mail, email)
    link = re.search(r"https?://\S+/signup\?invite=\S+", MailSink.text(mail.to(email)[-1]))
    assert link and link.group(0).startswith(f"{lore.url}/signup?invite=")
    with chromium() as browser:
        context = browser.new_context(base_url=lore.url, extra_http_headers={"X-Real-IP": "10.9.3.1"})
        context.set_default_timeout(15_000)
        page = context.new_page()
        errors: list[Exception] = []
        page.on("pageerror", lambda error: errors.append(error))
        page.goto(link.group(0))
        form = page.locator("#invite-signup")
        expect(form).to_contain_text(f"Sign up as {email}")
        form.locator("input[name=username]").fill("inv_browser")
        form.locator("input[name=password]").fill("a long invited passphrase")
        shot(page, "invite-signup")
        with page.expect_response(lambda r: r.url.endswith("/auth/signup")) as signed:
            form.locator("button[type=submit]").click()
        assert signed.value.status == 200, signed.value.text()
        expect(page.locator("#flash")).to_have_text("Account created, with your email verified. Log in.")
        assert page.url == f"{lore.url}/"
        user = users.track("inv_browser", email, "a long invited passphrase")
        assert users.session(user).get("/auth/me").json()["verified"] is True
        # the same link again: refused, in words
        page.goto(link.group(0))
        form.locator("input[name=username]").fill("inv_browser2")
        form.locator("input[name=password]").fill("a long invited passphrase")
        form.locator("button[type=submit]").click()
        expect(form.locator(".error")).to_be_visible()
        assert errors == []
        context.close()
    assert token in link.group(0)
