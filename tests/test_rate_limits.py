"""Rate limits of the auth routes, at their default values on the shared server (each
test speaks from addresses of its own): failed logins per account (10) and per IP (50)
per 15 minutes, signups per IP (20 an hour, only valid ones count), recover per IP (20
an hour) and reset mails per account (5 an hour, past which none is sent, silently)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from lorebase.identity import keys as idkeys

from .identity_support import PASSWORD, Api, assert_error, fresh_ip, signup_body

WRONG = "Wrong-Password-9"


pytestmark = pytest.mark.usefixtures("no_secret_logged")


def assert_rate(r, window: int) -> int:
    assert_error(r, 429, "rate")
    wait = int(r.headers["retry-after"])
    assert 0 < wait <= window, wait
    return wait


def login(server, name: str, password: str, ip: str | None = None):
    with Api(server, ip) as api:
        return api.login(name, password)


def test_ten_failed_logins_lock_the_account_whichever_name_is_typed(server, users):
    user = users.new("l_account_1")
    kept = users.session(user)  # opened before: the lock is on logins, not on sessions
    bystander = users.new("l_account_2")
    for i in range(10):
        typed = user.name if i % 2 else f" {user.email.upper()} "
        assert_error(login(server, typed, WRONG), 403, "auth")
    # the 11th, from a new address, even with the right password and either name
    for typed in (user.name, user.email, " L_ACCOUNT_1 "):
        assert_rate(login(server, typed, PASSWORD), 900)
        assert_rate(login(server, typed, WRONG), 900)
    assert kept.get("/auth/csrf").status_code == 200
    assert login(server, bystander.name, PASSWORD).status_code == 200


def test_parallel_guesses_cannot_pass_the_account_limit(server, users):
    """30 wrong passwords at once, from 30 addresses: at most 10 are checked (403 auth),
    the others are refused (429) - the limit is not 'whoever gets in before the count'."""
    user = users.new("l_parallel_1")
    kept = users.session(user)
    ips = [fresh_ip() for _ in range(30)]
    with ThreadPoolExecutor(30) as pool:
        replies = list(pool.map(lambda ip: login(server, user.name, WRONG, ip), ips))
    statuses = sorted(r.status_code for r in replies)
    assert set(statuses) <= {403, 429}, statuses
    assert statuses.count(403) <= 10, statuses
    assert_rate(login(server, user.name, PASSWORD), 900)
    assert kept.get("/auth/csrf").status_code == 200


def test_fifty_failed_logins_from_one_address_lock_that_address(server, users):
    user = users.new("l_ip_1")
    ip = fresh_ip()
    for i in range(49):  # 50 different accounts, none of them locked by itself
        assert_error(login(server, f"l_ip_nobody_{i}", WRONG, ip), 403, "auth")
    for _ in range(3):  # successes are not failures: they do not count
        assert login(server, user.name, PASSWORD, ip).status_code == 200
    assert_error(login(server, "l_ip_nobody_49", WRONG, ip), 403, "auth")
    assert_rate(login(server, user.name, PASSWORD, ip), 900)
    assert_rate(login(server, "l_ip_nobody_51", WRONG, ip), 900)
    assert login(server, user.name, PASSWORD).status_code == 200  # from elsewhere: fine


def test_a_successful_login_does_not_count_as_a_failure(server, users):
    user = users.new("l_success_1")
    users.session(user)  # to destroy it at the end, when logins are refused
    ip = fresh_ip()
    for _ in range(12):  # more than the account limit, all good
        assert login(server, user.name, PASSWORD, ip).status_code == 200
    for _ in range(9):
        assert_error(login(server, user.name, WRONG, ip), 403, "auth")
    assert login(server, user.name, PASSWORD, ip).status_code == 200  # the 10th would be a failure
    for _ in range(10):  # a success starts the account's count again
        assert_error(login(server, user.name, WRONG, ip), 403, "auth")
    assert_rate(login(server, user.name, PASSWORD, ip), 900)


def test_twenty_valid_signups_an_hour_per_address_invalid_ones_do_not_count(server, users):
    ip = fresh_ip()
    with Api(server, ip) as api:
        for i in range(5):
            assert_error(api.post("/auth/signup", signup_body(f"l_signup_bad_{i}", password="Short-7")), 400,
                         "validation", "password")
        for i in range(20):
            r = api.post("/auth/signup", signup_body(f"l_signup_{i:02d}"))
            assert r.status_code == 200, (i, r.text)
            users.track(f"l_signup_{i:02d}", f"l_signup_{i:02d}@example.com")
        assert_rate(api.post("/auth/signup", signup_body("l_signup_20")), 3600)
        assert not server.redis().exists(idkeys.user("l_signup_20"))
    with Api(server) as api:  # another address may
        assert api.post("/auth/signup", signup_body("l_signup_20")).status_code == 200
        users.track("l_signup_20", "l_signup_20@example.com")


def test_twenty_recover_requests_an_hour_per_address(server, users):
    user = users.new("l_recover_1")
    ip = fresh_ip()
    with Api(server, ip) as api:
        for i in range(20):
            r = api.post("/auth/recover", {"username": f"l_recover_nobody_{i}"})
            assert r.status_code == 200 and r.json() == {}
        assert_rate(api.post("/auth/recover", {"username": user.name}), 3600)
    with Api(server) as api:
        assert api.post("/auth/recover", {"username": user.name}).status_code == 200


def test_past_five_reset_mails_an_hour_none_is_sent_and_the_reply_is_the_same(server, mail, users):
    user = users.new("l_mails_1")
    witness = users.new("l_mails_2")
    replies = []
    for _ in range(7):
        with Api(server) as api:
            r = api.post("/auth/recover", {"username": user.name})
            replies.append((r.status_code, r.content))
    assert replies == [(200, b"{}")] * 7
    mail.wait_for(user.email, "reset your password", count=5)
    users.barrier(witness)  # every mail queued before the witness's is out
    assert len(users.reset_mails(user)) == 5
