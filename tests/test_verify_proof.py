"""A verification token proves the mailbox, not the account (the fakeboss attack).

POST /auth/verifyEmail verifies only with proof of the account too: a live session of
that account, or its `password`; POST /auth/releaseEmail lets the mailbox's owner take
the address away from an unverified account; an unverified account stops holding its
address VERIFY_TTL seconds after it was created. Tokens are read from the mails the SMTP
sink received; nothing reaches into lorebase.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import pytest

from .identity_support import PASSWORD, Api, User, Users, assert_error, dedicated, signup_body
from .lore import Lorebase, MailSink, wait_for

WRONG = "Wrong-Horse-9-Battery"
TOKEN = re.compile(r"token=([^\s&\"'<]+)")

pytestmark = pytest.mark.usefixtures("no_secret_logged")


@pytest.fixture(scope="module")
def boss_lore(tmp_path_factory, mail) -> Iterator[Lorebase]:
    with dedicated(tmp_path_factory, mail, "verify-boss", ADMINS="boss@example.com") as lore:
        yield lore


@pytest.fixture(scope="module")
def short_lore(tmp_path_factory, mail) -> Iterator[Lorebase]:
    with dedicated(tmp_path_factory, mail, "verify-ttl", VERIFY_TTL="3") as lore:
        yield lore


def verify_mail(mail: MailSink, address: str, count: int = 1) -> Any:
    """The `count`-th verification mail sent to exactly `address` (the sink's own lookup
    matches substrings: boss@example.com would also find fakeboss@example.com)."""
    def found() -> Any:
        mails = [m for m in mail.mails
                 if str(m["To"]).strip().lower() == address and "verify" in str(m["Subject"]).lower()]
        return mails[count - 1] if len(mails) >= count else None
    return wait_for(found, 10, 0.05, f"verification mail {count} to {address}")


def token_of(sent: Any) -> str:
    """The token of the mail's link: after `token=` up to whitespace, `&`, a quote or `<`."""
    match = TOKEN.search(MailSink.text(sent))
    assert match, f"no token link in mail: {MailSink.text(sent)!r}"
    return unquote(match.group(1))


def me(api: Api) -> dict[str, Any]:
    r = api.get("/auth/me")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def anonymous_verify(users: Users, token: str, password: str | None = None) -> Any:
    body = {"token": token} if password is None else {"token": token, "password": password}
    return users.api().post("/auth/verifyEmail", body)


def test_verify_mail_names_the_username_and_links_the_token(mail, users):
    user = users.new("v_mail_1")
    sent = verify_mail(mail, user.email)
    text = MailSink.text(sent)
    assert "v_mail_1" in text, text
    token = token_of(sent)
    assert f"token={token}" in unquote(text), text


def test_verify_with_the_accounts_own_session_needs_no_password(mail, users):
    user = users.new("v_own_1")
    api = users.session(user)
    assert me(api)["verified"] is False
    r = api.post("/auth/verifyEmail", {"token": token_of(verify_mail(mail, user.email))})
    assert r.status_code == 200, r.text
    assert r.json() == {}
    assert me(api)["verified"] is True


def test_verify_with_the_password_and_no_cookie_verifies(mail, users):
    user = users.new("v_pw_1")
    r = anonymous_verify(users, token_of(verify_mail(mail, user.email)), PASSWORD)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"csrf"}  # and logged in, as /auth/login answers
    assert me(users.session(user))["verified"] is True


def test_verify_without_proof_of_the_account_is_403_auth_and_leaves_the_token_usable(mail, users):
    user = users.new("v_proof_1")
    stranger = users.session(users.new("v_proof_2"))
    token = token_of(verify_mail(mail, user.email))
    assert_error(anonymous_verify(users, token), 403, "auth")  # the mailbox alone
    assert_error(stranger.post("/auth/verifyEmail", {"token": token}), 403, "auth")  # another account's session
    assert_error(anonymous_verify(users, token, WRONG), 403, "auth")
    api = users.session(user)
    assert me(api)["verified"] is False
    assert me(stranger)["verified"] is False
    assert_error(anonymous_verify(users, "A" * 43, PASSWORD), 403, "token")
    r = api.post("/auth/verifyEmail", {"token": token})  # the right proof, later: the token still works
    assert r.status_code == 200, r.text
    assert me(api)["verified"] is True
    assert_error(api.post("/auth/verifyEmail", {"token": token}), 403, "token")  # used up
    assert_error(anonymous_verify(users, token, PASSWORD), 403, "token")


def test_wrong_passwords_at_verify_count_against_the_accounts_login_limit(mail, users):
    """LOGIN_FAILS_PER_ACCOUNT is 10 on the session server; each guess from an IP of its own."""
    user = users.new("v_rate_1")
    session = users.session(user)  # kept for the clean-up, which a 429 login could not do
    token = token_of(verify_mail(mail, user.email))
    codes = []
    for _ in range(12):
        r = anonymous_verify(users, token, WRONG)
        codes.append((r.status_code, r.json().get("error")))
        if r.status_code == 429:
            break
    assert codes[-1] == (429, "rate"), codes
    assert set(codes[:-1]) == {(403, "auth")} and len(codes) >= 10, codes
    assert_error(users.api().login(user.name, PASSWORD), 429, "rate")  # the login limit itself
    assert me(session)["verified"] is False


def test_release_email_frees_the_address_of_the_unverified_squatter(mail, users):
    squatter = users.new("v_squat_1", email="v_owner_1@example.com")
    token = token_of(verify_mail(mail, "v_owner_1@example.com"))
    owner = users.api()
    assert_error(owner.post("/auth/releaseEmail", {"token": "A" * 43}), 403, "token")
    r = owner.post("/auth/releaseEmail", {"token": token})
    assert r.status_code == 200, r.text
    assert r.json() == {}
    assert_error(owner.post("/auth/releaseEmail", {"token": token}), 403, "token")  # used up
    assert_error(anonymous_verify(users, token, PASSWORD), 403, "token")
    # the squatter keeps its account, without the address
    shown = me(users.session(squatter))
    assert (shown["username"], shown["email"], shown["verified"]) == ("v_squat_1", "", False)
    squatter.email = ""
    r = owner.post("/auth/signup", signup_body("v_owner_1", "v_owner_1@example.com"))
    assert r.status_code == 200, r.text
    real = users.track("v_owner_1", "v_owner_1@example.com")
    assert me(users.session(real))["email"] == "v_owner_1@example.com"


def signup_until_free(lore: Lorebase, name: str, email: str, timeout: float) -> None:
    """Retry the signup (each from an IP of its own) while it is 409 email."""
    def attempt() -> bool:
        with Api(lore) as api:
            r = api.post("/auth/signup", signup_body(name, email))
        assert r.status_code == 200 or (r.status_code, r.json()) == (409, {"error": "email"}), r.text
        return r.status_code == 200
    wait_for(attempt, timeout, 0.2, f"{email} to stop blocking signups")


def test_an_unverified_accounts_address_stops_blocking_signups_after_verify_ttl(short_lore, mail):
    """VERIFY_TTL=3. A verified account, made first, keeps its address."""
    with Users(short_lore, mail) as made:
        kept = made.new("v_ttl_kept")
        kept_api = made.session(kept)
        r = kept_api.post("/auth/verifyEmail", {"token": token_of(verify_mail(mail, kept.email))})
        assert r.status_code == 200, r.text
        old = made.new("v_ttl_old", email="v_ttl@example.com")
        with Api(short_lore) as api:
            assert_error(api.post("/auth/signup", signup_body("v_ttl_new", "v_ttl@example.com")), 409, "email")
        signup_until_free(short_lore, "v_ttl_new", "v_ttl@example.com", timeout=20)
        new = made.track("v_ttl_new", "v_ttl@example.com")
        assert me(made.session(new))["email"] == "v_ttl@example.com"
        shown = me(made.session(old))
        assert (shown["username"], shown["email"]) == ("v_ttl_old", "")
        old.email = ""
        # past the same TTL, the verified account's address still blocks
        with Api(short_lore) as api:
            assert_error(api.post("/auth/signup", signup_body("v_ttl_other", kept.email)), 409, "email")
        assert me(kept_api)["email"] == kept.email


def test_the_mailbox_owner_cannot_make_a_squatter_admin_and_takes_the_address_back(boss_lore, mail):
    """ADMINS=boss@example.com. The attacker signs up fakeboss with the boss's address; the
    boss opens the mail, whose page POSTs the token with no session and no password."""
    with Users(boss_lore, mail) as made:
        attacker = made.api()
        r = attacker.post("/auth/signup", signup_body("fakeboss", " BOSS@Example.COM "))
        assert r.status_code == 200, r.text
        fakeboss: User = made.track("fakeboss", "boss@example.com")
        attacker.ok_login(fakeboss)
        fakeboss.apis.append(attacker)
        first = verify_mail(mail, "boss@example.com")
        assert "fakeboss" in MailSink.text(first)
        token = token_of(first)

        owner = made.api()
        assert_error(owner.post("/auth/verifyEmail", {"token": token}), 403, "auth")
        assert_error(attacker.get("/admin/users"), 403, "admin")
        shown = me(attacker)
        assert (shown["verified"], shown["admin"]) == (False, False)

        r = owner.post("/auth/releaseEmail", {"token": token})
        assert r.status_code == 200, r.text
        r = owner.post("/auth/signup", signup_body("boss", "boss@example.com"))
        assert r.status_code == 200, r.text
        boss = made.track("boss", "boss@example.com")
        second = verify_mail(mail, "boss@example.com", count=2)
        assert "fakeboss" not in MailSink.text(second)  # this one names boss
        r = owner.post("/auth/verifyEmail", {"token": token_of(second), "password": PASSWORD})
        assert r.status_code == 200, r.text

        boss_api = made.session(boss)
        assert me(boss_api)["admin"] is True
        listed = boss_api.get("/admin/users")
        assert listed.status_code == 200, listed.text
        by_name = {u["username"]: u for u in listed.json()["users"]}
        assert by_name["boss"]["admin"] is True and by_name["boss"]["email"] == "boss@example.com"
        assert by_name["fakeboss"]["admin"] is False and by_name["fakeboss"]["email"] == ""
        assert_error(attacker.get("/admin/users"), 403, "admin")
        shown = me(attacker)
        assert (shown["email"], shown["verified"], shown["admin"]) == ("", False, False)
        fakeboss.email = ""
