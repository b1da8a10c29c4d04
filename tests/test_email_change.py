"""A new verification mail, an email change, and what the auth replies say in words.

POST /auth/verify/resend mails a new link to an unverified account only (the reply is the
same for every name); POST /auth/changeEmail mails a link to the new address and a notice
to the old one, and the address changes only when the link is used through
/auth/verifyEmail; a verification proved with the password logs the browser in. Tokens
come from the mails the SMTP sink received; nothing reaches into lorebase.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from .identity_support import PASSWORD, Api, User, Users, assert_error, session_cookies
from .lore import Lorebase, MailSink, wait_for

WRONG = "Wrong-Horse-9-Battery"

pytestmark = pytest.mark.usefixtures("no_secret_logged")


def mails(mail: MailSink, address: str, subject: str) -> list[Any]:
    return [m for m in mail.to(address) if subject in str(m["Subject"]).lower()]


def me(api: Api) -> dict[str, Any]:
    r = api.get("/auth/me")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def verify(api: Api, token: str, password: str | None = None) -> httpx.Response:
    return api.post("/auth/verifyEmail", {"token": token} if password is None else
                    {"token": token, "password": password})


def change(api: Api, email: str, password: str = PASSWORD) -> httpx.Response:
    return api.post("/auth/changeEmail", {"password": password, "email": email}, csrf=True)


# -- resend -----------------------------------------------------------------------------


def test_resend_mails_a_new_link_to_an_unverified_account_and_the_old_one_dies(mail, users):
    user = users.new("ec_resend_1")
    old = MailSink.token(mail.wait_for(user.email, "verify"))
    anonymous = users.api()
    r = anonymous.post("/auth/verify/resend", {"username": user.name})
    assert (r.status_code, r.json()) == (200, {}), r.text
    new = MailSink.token(mail.wait_for(user.email, "verify", count=2))
    assert new != old
    assert_error(verify(anonymous, old, PASSWORD), 403, "token")  # replaced
    # by the email too: a third link, which replaces the second
    r = anonymous.post("/auth/verify/resend", {"username": f" {user.email.upper()} "})
    assert (r.status_code, r.json()) == (200, {}), r.text
    third = MailSink.token(mail.wait_for(user.email, "verify", count=3))
    assert_error(verify(anonymous, new, PASSWORD), 403, "token")
    r = verify(users.session(user), third)
    assert r.status_code == 200, r.text
    assert me(user.apis[0])["verified"] is True


def test_resend_to_an_unknown_or_verified_account_says_200_and_mails_nothing(mail, users):
    verified = users.new("ec_resend_2", verified=True)
    anonymous = users.api()
    for name in ("ec_nobody_2", "ec_nobody_2@example.com", verified.name, verified.email):
        r = anonymous.post("/auth/verify/resend", {"username": name})
        assert (r.status_code, r.json()) == (200, {}), (name, r.text)
    users.barrier(verified)  # every mail asked for before it is out
    assert mail.to("ec_nobody_2@example.com") == []
    assert len(mails(mail, verified.email, "verify")) == 1  # the signup's only
    assert_error(anonymous.post("/auth/verify/resend", {"username": ""}), 400, "validation", "username")


def test_resend_past_the_per_address_limit_is_429_rate_with_the_wait(server: Lorebase):
    """RECOVER_PER_IP is 20 an hour: the 21st resend from one address is refused."""
    with Api(server) as api:
        codes = [api.post("/auth/verify/resend", {"username": "ec_nobody_3"}).status_code for _ in range(20)]
        assert codes == [200] * 20, codes
        r = api.post("/auth/verify/resend", {"username": "ec_nobody_3"})
    wait = int(r.headers["retry-after"])  # the hour's window, a moment in
    said = "1 hour" if wait >= 3600 else f"{-(-wait // 60)} minutes"
    assert_error(r, 429, "rate", message=f"Too many attempts: try again in {said}.")


# -- change email -----------------------------------------------------------------------


def test_change_email_with_the_session_moves_the_address_when_the_link_is_used(mail, users):
    user = users.new("ec_move_1", verified=True)
    api = users.session(user)
    new = "ec_move_1_new@example.com"
    r = change(api, f" {new.upper()} ")
    assert (r.status_code, r.json()) == (200, {}), r.text
    sent = mail.wait_for(new, "verify")
    token = MailSink.token(sent)
    notice = mail.wait_for(user.email, "changed")
    assert new in MailSink.text(notice) and "token=" not in MailSink.text(notice), MailSink.text(notice)
    assert "http" not in MailSink.text(notice)  # no link that could act on the account
    # until the link is used, the old address is the account's
    assert me(api)["email"] == user.email
    assert users.api().login(user.email, PASSWORD).status_code == 200
    assert_error(users.api().login(new, PASSWORD), 403, "auth")
    users.barrier(user)  # a reset link goes to the old address
    r = verify(api, token)
    assert (r.status_code, r.json()) == (200, {}), r.text
    shown = me(api)
    assert (shown["email"], shown["verified"]) == (new, True)
    user.email = new
    assert users.api().login(new, PASSWORD).status_code == 200
    assert_error(users.api().login("ec_move_1@example.com", PASSWORD), 403, "auth")
    assert_error(verify(api, token), 403, "token")  # used up
    # the old address is free to sign up with
    r = users.api().post("/auth/signup", {"username": "ec_move_1b", "email": "ec_move_1@example.com",
                                          "password": PASSWORD})
    assert r.status_code == 200, r.text
    users.track("ec_move_1b", "ec_move_1@example.com")


def test_change_email_verified_with_the_password_logs_the_browser_in(mail, users, server):
    user = users.new("ec_move_2")
    api = users.session(user)
    new = "ec_move_2_new@example.com"
    assert change(api, new).status_code == 200
    token = MailSink.token(mail.wait_for(new, "verify"))
    browser = users.api()
    assert_error(verify(browser, token), 403, "auth")  # the mailbox alone
    r = verify(browser, token, PASSWORD)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"csrf"} and session_cookies(r), r.headers
    browser.csrf = r.json()["csrf"]
    user.apis.append(browser)
    shown = me(browser)
    assert (shown["username"], shown["email"], shown["verified"]) == (user.name, new, True)
    user.email = new
    wait_for(lambda: any(e["user"] == user.name for e in server.events("email changed")), 10, 0.05,
             "the email changed event")
    assert any(e["user"] == user.name for e in server.events("email change asked"))


def test_change_email_refuses_a_taken_or_bad_address_and_a_wrong_password(mail, users):
    holder = users.new("ec_taken_1", verified=True)
    user = users.new("ec_taken_2")
    api = users.session(user)
    assert_error(change(api, holder.email), 409, "email")
    assert_error(change(api, "not an address"), 400, "validation", "email")
    assert_error(change(api, user.email), 400, "validation", "email")
    assert_error(change(api, "ec_taken_2_new@example.com", WRONG), 403, "auth", message="Wrong password.")
    assert_error(api.post("/auth/changeEmail", {"password": PASSWORD, "email": "ec_x@example.com"}), 403, "csrf")
    assert_error(users.api().post("/auth/changeEmail", {"password": PASSWORD, "email": "ec_x@example.com",
                                                        "csrf": "x"}), 403, "nocookie")
    assert me(api)["email"] == user.email


def test_two_accounts_racing_for_one_address_one_gets_it_the_other_409(mail, users):
    first, second = users.new("ec_race_1"), users.new("ec_race_2")
    apis = [users.session(first), users.session(second)]
    target = "ec_race_target@example.com"
    for api in apis:
        assert change(api, target).status_code == 200
    wait_for(lambda: len(mails(mail, target, "verify")) == 2, 10, 0.05, "two links")
    tokens = [MailSink.token(m) for m in mails(mail, target, "verify")]
    by_user = {t.rpartition(".")[0]: t for t in tokens}
    results: dict[int, httpx.Response] = {}
    start = threading.Barrier(2)

    def use(i: int, api: Api, token: str) -> None:
        start.wait()
        results[i] = verify(api, token)

    threads = [threading.Thread(target=use, args=(i, api, by_user[u.name]))
               for i, (api, u) in enumerate(zip(apis, (first, second), strict=True))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = sorted((r.status_code, r.json().get("error")) for r in results.values())
    assert codes == [(200, None), (409, "email")], codes
    emails = [me(api)["email"] for api in apis]
    assert emails.count(target) == 1, emails
    pair = (first, second)
    winner = emails.index(target)
    loser = 1 - winner
    assert emails[loser] == pair[loser].email, emails  # the loser keeps its old address
    pair[winner].email = target
    assert_error(verify(apis[loser], by_user[pair[loser].name]), 409, "email")  # still taken
    r = users.api().login(target, PASSWORD)
    assert r.status_code == 200, r.text
    assert me(users.api().ok_login(pair[winner]))["username"] == pair[winner].name


# -- the replies' words and the login event ---------------------------------------------


def test_wrong_passwords_on_forms_without_a_username_say_wrong_password(mail, users):
    user = users.new("ec_words_1")
    api = users.session(user)
    token = MailSink.token(mail.wait_for(user.email, "verify"))
    for r in (verify(users.api(), token, WRONG),
              api.post("/auth/changePassword", {"old": WRONG, "new": PASSWORD + "-2"}, csrf=True),
              api.post("/auth/destroy", {"password": WRONG}, csrf=True)):
        assert_error(r, 403, "auth", message="Wrong password.")
        assert "username" not in r.text
    assert me(api)["verified"] is False


def test_a_lockout_says_how_long_to_wait(users):
    """LOGIN_FAILS_PER_ACCOUNT is 10: the 11th guess from strangers is refused with the wait."""
    user: User = users.new("ec_lock_1")
    users.session(user)  # kept for the clean-up, which a locked login could not do
    for _ in range(10):
        assert_error(users.api().login(user.name, WRONG), 403, "auth")
    r = users.api().login(user.name, WRONG)
    wait = int(r.headers["retry-after"])
    minutes = -(-wait // 60)
    assert 14 <= minutes <= 15, wait
    assert_error(r, 429, "rate", message=f"Too many attempts: try again in {minutes} minutes.")


def test_a_login_is_a_login_event(users: Users, server: Lorebase):
    user = users.new("ec_event_1")
    api = users.session(user)
    assert api.csrf
    found = wait_for(lambda: [e for e in server.events("login") if e.get("user") == user.name], 10, 0.05,
                     "the login event")
    assert found[0]["ip"] == api.ip, found
