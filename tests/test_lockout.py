"""Lockouts a stranger cannot use against the owner (issue 17, item 1), on an instance of its
own with small limits: 5 failed logins per account, 3 per device, 6 per address, 3 error
reports a minute per address.

- A browser that logged in to the account before carries a signed device cookie for it: its
  logins count against the device's own counter, not the account's, so strangers' failures
  do not lock it out; its own failures still do, past 3. A forged device cookie, or one of
  another account, gives nothing.
- A completed reset, or an admin's POST /admin/unlock, clears the account's counter.
- Per-address limits count an IPv6 /64 as one address, and an IPv4-mapped IPv6 address as
  its IPv4 address."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from .identity_support import (
    PASSWORD,
    Api,
    Users,
    assert_error,
    cookie_attributes,
    dedicated,
    device_cookies,
    fresh_ip,
    remember,
)
from .lore import Lorebase, MailSink, wait_for

WRONG = "Wrong-Password-9"
NEW_PASSWORD = "Fresh-Lantern-42-Gate"
ACCOUNT_LIMIT, DEVICE_LIMIT, IP_LIMIT, REPORTS = 5, 3, 6, 3


@pytest.fixture(scope="module")
def lore(tmp_path_factory, mail) -> Iterator[Lorebase]:
    with dedicated(tmp_path_factory, mail, "lockout", ADMINS="lk_root@example.com",
                   LOGIN_FAILS_PER_ACCOUNT=ACCOUNT_LIMIT, LOGIN_FAILS_PER_DEVICE=DEVICE_LIMIT,
                   LOGIN_FAILS_PER_IP=IP_LIMIT, ERROR_REPORTS_PER_MINUTE=REPORTS) as lore:
        yield lore


@pytest.fixture()
def users(lore, mail) -> Iterator[Users]:
    with Users(lore, mail) as made:
        yield made


@pytest.fixture(scope="module")
def root(lore, mail) -> Iterator[Api]:
    with Users(lore, mail) as made:
        yield made.session(made.new("lk_root", verified=True))


def stranger_login(lore: Lorebase, name: str, password: str, ip: str | None = None):
    """A login from a browser that never logged in (no device cookie), from an address of its own."""
    with Api(lore, ip) as api:
        return api.login(name, password)


def assert_rate(r) -> int:
    assert_error(r, 429, "rate")
    wait = int(r.headers["retry-after"])
    assert wait > 0, wait
    return wait


def lock(lore: Lorebase, name: str) -> None:
    """Strangers' wrong passwords until the account is locked: the owner's right one from a
    new browser then gets 429."""
    for _ in range(ACCOUNT_LIMIT):
        assert_error(stranger_login(lore, name, WRONG), 403, "auth")
    assert_rate(stranger_login(lore, name, PASSWORD))


# -- the device cookie -------------------------------------------------------------------


def test_strangers_lock_the_account_while_a_browser_that_logged_in_before_still_gets_in(lore, users):
    user = users.new("lk_device_1")
    browser = users.api()
    r = browser.login(user.name, PASSWORD)
    assert r.status_code == 200, r.text
    user.apis.append(browser)
    [header] = device_cookies(r)
    attrs = cookie_attributes(header)
    assert "httponly" in attrs and attrs.get("path") == "/" and attrs.get("samesite", "").lower() == "lax", header
    assert "secure" not in attrs and "domain" not in attrs, header  # http BASE_URL, host-only
    assert browser.device, "the login set no device cookie"
    lock(lore, user.name)
    for _ in range(3):  # again and again: the device's good logins are not the account's count
        assert browser.login(user.name, PASSWORD).status_code == 200
    assert browser.login(user.email, PASSWORD).status_code == 200  # by email too
    assert_rate(stranger_login(lore, user.name, PASSWORD))  # strangers stay locked out


def test_a_lockout_is_a_security_event_in_the_audit_stream(lore, users):
    """Kept apart from request errors (issue 17, item 2): an anonymous flood of those cannot
    evict it."""
    user = users.new("lk_audited")
    browser = users.api()  # the owner's, logged in before: the cleanup's way in
    assert browser.login(user.name, PASSWORD).status_code == 200
    user.apis.append(browser)
    lock(lore, user.name)

    def audited() -> dict | None:
        entries = [json.loads(fields["json"]) for _, fields in lore.redis().xrange("audit")]
        return next((e for e in entries if e.get("ev") == "lockout" and e.get("user") == user.name), None)

    event = wait_for(audited, 10, 0.05, "a lockout event in the audit stream")
    assert event["by"] == "account" and event["retry_s"] > 0, event


def test_a_trusted_browsers_own_wrong_passwords_are_still_limited(lore, users):
    user = users.new("lk_device_2")
    browser = users.session(user)
    lock(lore, user.name)
    for _ in range(DEVICE_LIMIT):
        assert_error(browser.login(user.name, WRONG), 403, "auth")
    assert_rate(browser.login(user.name, WRONG))
    assert_rate(browser.login(user.name, PASSWORD))  # the device is locked now, right password or not


def test_a_forged_or_other_accounts_device_cookie_gives_no_exemption(lore, users):
    user = users.new("lk_device_3")
    neighbour = users.new("lk_device_4")
    own = users.session(user)
    theirs = users.session(neighbour)
    lock(lore, user.name)
    genuine = own.device
    assert genuine
    body, _, signature = genuine.rpartition(".")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    with Api(lore) as forger:
        for value in (theirs.device, f"{body}.{flipped}", genuine.replace(user.name, neighbour.name, 1),
                      "lk_device_3", "lk_device_3:x.y", "garbage" * 40):
            forger.device = value
            assert_rate(forger.login(user.name, PASSWORD))
        forger.device = genuine  # the control: the genuine cookie, from anywhere, does get in
        assert forger.login(user.name, PASSWORD).status_code == 200


# -- clearing a lockout --------------------------------------------------------------------


def reset_token(users: Users, user) -> str:
    count = len(users.reset_mails(user)) + 1
    assert users.api().post("/auth/recover", {"username": user.name}).status_code == 200
    return MailSink.token(users.mail.wait_for(user.email, "reset your password", count=count))


def test_a_completed_reset_clears_the_account_lockout(lore, users):
    user = users.new("lk_reset_1")
    lock(lore, user.name)
    token = reset_token(users, user)
    remember(NEW_PASSWORD)
    r = users.api().post("/auth/reset", {"token": token, "password": NEW_PASSWORD})
    assert r.status_code == 200, r.text
    user.password = NEW_PASSWORD
    assert stranger_login(lore, user.name, NEW_PASSWORD).status_code == 200


def test_an_admin_unlock_clears_the_lockout_and_a_non_admin_is_refused(lore, users, root):
    user = users.new("lk_unlock_1")
    plain = users.session(users.new("lk_unlock_2"))
    lock(lore, user.name)
    assert_error(plain.post("/admin/unlock", {"username": user.name}, csrf=True), 403, "admin")
    assert_error(root.post("/admin/unlock", {"username": user.name}), 403, "csrf")
    assert_error(root.post("/admin/unlock", {"username": "lk_nobody"}, csrf=True), 404, "user")
    assert_error(root.post("/admin/unlock", {"username": 7}, csrf=True), 400, "validation", "username")
    assert_error(root.post("/admin/unlock", {}, csrf=True), 400, "validation", "username")
    assert_rate(stranger_login(lore, user.name, PASSWORD))  # none of those unlocked it
    r = root.post("/admin/unlock", {"username": " LK_UNLOCK_1 "}, csrf=True)
    assert r.status_code == 200 and r.json() == {}, r.text
    assert stranger_login(lore, user.name, PASSWORD).status_code == 200
    wait_for(lambda: any(e.get("user") == user.name and e.get("by") == "lk_root"
                         for e in lore.events("admin unlock")), what="the admin unlock event")


# -- per-address limits over IPv6 -------------------------------------------------------------


def test_two_ipv6_addresses_in_one_64_share_a_per_ip_login_counter(lore):
    block = "2001:db8:17:1"
    for i in range(IP_LIMIT):  # unknown names: each counts under its own name, but all under the /64
        assert_error(stranger_login(lore, f"lk_v6_nobody_{i}", WRONG, f"{block}::{i + 1:x}"), 403, "auth")
    assert_rate(stranger_login(lore, "lk_v6_nobody_x", WRONG, f"{block}:ffff:ffff:ffff:fffe"))
    # the next /64 is another address
    assert_error(stranger_login(lore, "lk_v6_nobody_y", WRONG, "2001:db8:17:2::1"), 403, "auth")


def report(lore: Lorebase, ip: str) -> int:
    with Api(lore, ip) as api:
        return api.post("/error", {"message": "lk probe", "url": "http://x/", "line": 1, "column": 1,
                                   "stack": ""}).status_code


def test_an_ipv6_64_and_an_ipv4_mapped_address_share_the_error_report_limit(lore):
    assert [report(lore, f"2001:db8:17:3::{i + 1}") for i in range(REPORTS)] == [200] * REPORTS
    assert report(lore, "2001:db8:17:3:abcd::9") == 429
    ip4 = fresh_ip()
    assert [report(lore, f"::ffff:{ip4}") for _ in range(REPORTS)] == [200] * REPORTS
    assert report(lore, ip4) == 429
