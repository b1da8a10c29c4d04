"""The auth routes end to end (issue 3): signup, verifyEmail, login, recover, reset,
changePassword, destroy, over HTTP with the mails read from the SMTP sink.

Security items: A1 (failures alike), A2 (timing), A3 (password forms), A4 (change needs
the current password), A5 (change/reset end other sessions), A6 (mail links from
BASE_URL), A7 (tampered, reused, expired, foreign tokens); D5 in test_access.py."""

from __future__ import annotations

import statistics
import time

import pytest

from lorebase.identity import keys as idkeys

from .identity_support import (
    PASSWORD,
    SECRETS,
    Api,
    Users,
    assert_error,
    dedicated,
    session_cookies,
    signup_body,
    token_digest,
    token_key,
    wait_gone,
)
from .lore import MailSink

NEW_PASSWORD = "Brand-New-Horse-8-Stable"


pytestmark = pytest.mark.usefixtures("no_secret_logged")


def redis_strings_containing(lore, needle: str) -> list[str]:
    """Keys whose name, or whose string value, contains `needle` (values read as bytes: some,
    the stats' HyperLogLogs, are not text)."""
    db = lore.redis()
    raw = lore.redis(decode=False)
    found = []
    for key in db.scan_iter(count=1000):
        if needle in key or (db.type(key) == "string" and needle.encode() in (raw.get(key) or b"")):
            found.append(key)
    raw.close()
    return found


# -- signup and verifyEmail ---------------------------------------------------------------


def test_signup_trims_and_lowercases_and_mails_a_hashed_one_time_token(server, mail, users):
    api = users.api()
    r = api.post("/auth/signup", signup_body(" R_Signup_1 ", " R_Signup_1@Example.COM "))
    assert r.status_code == 200, r.text
    assert r.json() == {}
    user = users.track("r_signup_1", "r_signup_1@example.com")
    stored = server.redis().hgetall(idkeys.user("r_signup_1"))
    assert stored["username"] == "r_signup_1"
    assert stored["email"] == "r_signup_1@example.com"
    assert stored["verified"] == "0" and stored["admin"] == "0" and stored["disabled"] == "0"
    assert stored["hash"].startswith("$argon2id$") and PASSWORD not in stored["hash"]
    assert server.redis().get(idkeys.email("r_signup_1@example.com")) == "r_signup_1"

    sent = mail.wait_for(user.email, "verify")
    assert str(sent["To"]) == "r_signup_1@example.com"
    text = MailSink.text(sent)
    token = MailSink.token(sent)
    assert f"{server.url}/verify?token={token}" in text
    # the token is kept as its SHA-256, with a TTL, and nowhere in clear
    key = token_key("verify", token)
    assert server.redis().get(key) == f"{token_digest(token)} - r_signup_1@example.com"
    assert 0 < server.redis().ttl(key) <= 86400
    assert redis_strings_containing(server, token) == []

    r = api.post("/auth/verifyEmail", {"token": token, "password": PASSWORD})
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"csrf"}  # and logged in, as /auth/login answers
    assert server.redis().hget(idkeys.user("r_signup_1"), "verified") == "1"
    assert not server.redis().exists(key)
    assert_error(api.post("/auth/verifyEmail", {"token": token, "password": PASSWORD}), 403, "token")  # once only

    # login takes the username or the email, trimmed and lower-cased
    for login in (" R_SIGNUP_1 ", "r_signup_1", " R_Signup_1@EXAMPLE.com "):
        with Api(server) as other:
            assert other.login(login, PASSWORD).status_code == 200, login


@pytest.mark.parametrize("name", ["r-3", "r_len_32_" + "x" * 23, "r.dots-and_under"])
def test_signup_accepts_usernames_of_3_to_32_allowed_characters(users, name):
    assert len(name) <= 32
    user = users.new(name)
    users.session(user)


@pytest.mark.parametrize(("field", "value"), [
    ("username", "ab"),
    ("username", " ab "),
    ("username", "r_len_33_" + "x" * 24),
    ("username", "r bad"),
    ("username", "r_bad!"),
    ("username", "r_bäd"),
    ("username", "r/bad"),
    ("username", "r@bad"),
    ("email", "no-at-sign"),
    ("email", "r_bad@localhost"),
    ("email", "r_bad@@example.com"),
    ("email", "r bad@example.com"),
    ("email", "@example.com"),
    ("email", "r_bad@example.c"),
    ("email", "r_bad@exa mple.com"),
    ("email", "x" * 65 + "@example.com"),
    ("email", "r_bad,victim@example.com"),  # a comma would make a To header of two addresses
    ("email", "r_bad<victim@example.com>@example.com"),
    ("email", '"r bad"@example.com'),
    ("email", "r_bad;x@example.com"),
    ("email", "r_bäd@example.com"),
    ("password", "Short-7"),
    ("password", "password1"),
    ("password", "iloveyou123"),
    ("password", "PassWord1"),
    ("password", "ILOVEYOU123"),
])
def test_signup_with_an_invalid_field_is_400_and_stores_nothing(server, field, value):
    body = signup_body("r_invalid_1", "r_invalid_1@example.com")
    body[field] = value
    with Api(server) as api:
        assert_error(api.post("/auth/signup", body), 400, "validation", field)
    db = server.redis()
    assert not db.exists(idkeys.user("r_invalid_1")) and not db.exists(idkeys.email("r_invalid_1@example.com"))
    assert not db.sismember(idkeys.USERS, "r_invalid_1")


def test_signup_of_a_taken_username_or_email_is_409_and_leaves_no_half_user(server, mail, users):
    user = users.new("r_taken_1")
    api = users.api()
    assert_error(api.post("/auth/signup", signup_body(" R_TAKEN_1 ", "r_taken_1b@example.com")), 409, "username")
    assert_error(api.post("/auth/signup", signup_body("r_taken_1b", " R_Taken_1@EXAMPLE.COM ")), 409, "email")
    db = server.redis()
    assert not db.exists(idkeys.email("r_taken_1b@example.com"))
    assert not db.exists(idkeys.user("r_taken_1b")) and not db.sismember(idkeys.USERS, "r_taken_1b")
    assert db.hget(idkeys.user("r_taken_1"), "email") == "r_taken_1@example.com"
    users.barrier(user)
    assert mail.to("r_taken_1b@example.com") == []
    assert len([m for m in mail.to(user.email) if "verify" in str(m["Subject"]).lower()]) == 1
    users.session(user)  # the first one's password is still its own


@pytest.fixture(scope="module")
def strict(tmp_path_factory, mail):
    """Signups only from the whitelist; login only with a verified email."""
    with dedicated(tmp_path_factory, mail, "strict", WHITELIST="r_wl_ok@example.com,r_wl_two@example.com",
                   REQUIRE_VERIFIED="1") as lore:
        yield lore


def test_whitelist_refuses_other_emails_with_403(strict, mail):
    with Users(strict, mail) as made:
        api = made.api()
        assert_error(api.post("/auth/signup", signup_body("r_wl_no", "r_wl_no@example.com")), 403, "whitelist")
        assert not strict.redis().exists(idkeys.user("r_wl_no"))
        r = api.post("/auth/signup", signup_body("r_wl_ok", " R_WL_OK@Example.com "))
        assert r.status_code == 200, r.text
        made.track("r_wl_ok", "r_wl_ok@example.com")
        made.verify(made.made[0])


def test_require_verified_refuses_login_until_the_email_is_verified(strict, mail):
    with Users(strict, mail) as made:
        user = made.new("r_wl_two")
        api = made.api()
        assert_error(api.login(user.name, PASSWORD), 403, "verify")
        assert_error(api.login(user.email, PASSWORD), 403, "verify")
        # a wrong password says auth, not verify: the account's state is not told to a guesser
        assert_error(api.login(user.name, "Wrong-Password-9"), 403, "auth")
        assert api.cookie is None
        made.verify(user)
        assert api.login(user.name, PASSWORD).status_code == 200


# -- login failures: A1, A2, A3 -----------------------------------------------------------


def failure_shape(r) -> tuple:
    headers = {k: v for k, v in r.headers.items() if k not in ("date",)}
    return r.status_code, r.content, sorted(headers.items())


def test_unknown_user_and_wrong_password_give_the_same_reply(server, users):
    user = users.new("r_alike_1")
    replies = []
    for login, password in [("r_alike_1", "Wrong-Password-9"), ("r_alike_nobody", "Wrong-Password-9"),
                            ("r_alike_1@example.com", "Wrong-Password-9"),
                            ("r_alike_nobody@example.com", "Wrong-Password-9"),
                            ("r_alike_1", PASSWORD + " "), ("not a username!", PASSWORD)]:
        with Api(server) as api:
            r = api.login(login, password)
            assert_error(r, 403, "auth")
            assert not session_cookies(r)
            replies.append(failure_shape(r))
    assert all(shape == replies[0] for shape in replies), replies
    users.session(user)


def test_timing_of_unknown_user_and_wrong_password_is_alike(server, users):
    """A2: both cases verify one argon2 hash. Medians of 10 each, with correct logins
    between so the account's failure count never reaches the limit."""
    users.new("r_timing_1")
    times: dict[str, list[float]] = {"unknown": [], "wrong": [], "right": []}
    attempts = {"unknown": ("r_timing_nobody", "Wrong-Password-9"), "wrong": ("r_timing_1", "Wrong-Password-9"),
                "right": ("r_timing_1", PASSWORD)}
    for _ in range(10):
        for kind, (login, password) in attempts.items():
            with Api(server) as api:
                start = time.perf_counter()
                r = api.login(login, password)
                times[kind].append(time.perf_counter() - start)
                assert r.status_code == (200 if kind == "right" else 403), r.text
    med = {kind: statistics.median(values) for kind, values in times.items()}
    assert 0.5 < med["unknown"] / med["wrong"] < 2.0, med
    assert med["unknown"] > 0.4 * med["right"], med  # the unknown user costs a hash too


@pytest.mark.parametrize(("name", "password"), [
    ("r_pw_long", "long-" + "".join(f"{i:03d}" for i in range(41))),
    ("r_pw_unicode", "pässwörd-ünïcødé-ßøå-日本語"),
    ("r_pw_emoji", "🐉🔥 dragon fire 🔥🐉"),
    ("r_pw_spaces", "  with  spaces  inside  "),
])
def test_long_unicode_emoji_and_spaced_passwords_work_exactly(server, users, name, password):
    """A3: the password is taken as typed (128 characters at most), no more, no less."""
    if name == "r_pw_long":
        assert len(password) == 128
    user = users.new(name, password=password)
    with Api(server) as api:
        assert api.login(name, password).status_code == 200
    wrongs = [password[:-1], password.upper(), password.strip() + ".", password[1:]]
    if password != password.strip():
        wrongs.append(password.strip())
    for wrong in [w for w in wrongs if len(w) <= 128]:
        with Api(server) as api:
            assert_error(api.login(name, wrong), 403, "auth")
    with Api(server) as api:  # one character more
        if len(password) == 128:
            assert_error(api.login(name, password + "x"), 400, "validation", "password")
        else:
            assert_error(api.login(name, password + "x"), 403, "auth")
    users.session(user)


def test_password_of_129_characters_is_400_and_5000_is_refused_before_any_hashing(server):
    db = server.redis()
    with Api(server) as api:
        assert_error(api.post("/auth/signup", signup_body("r_pw_129", password="p" * 129)), 400, "validation",
                     "password")
        assert_error(api.login("r_pw_129", "p" * 1000), 400, "validation", "password")
        # 5000 characters do not fit the auth routes' 4 KiB body: refused before it is read whole
        assert_error(api.login("r_pw_129", "p" * 5000), 413, "size")
        assert_error(api.post("/auth/signup", signup_body("r_pw_5000", password="p" * 5000)), 413, "size")
        # the schema or the body limit refused them: the login handler, which counts an attempt before it hashes,
        # never ran, nor did signup's (which counts valid signups per IP)
        assert db.get(f"rate:login-ip:{api.ip}") is None and db.get(f"rate:signup-ip:{api.ip}") is None
        assert not db.exists(idkeys.user("r_pw_129")) and not db.exists(idkeys.user("r_pw_5000"))
        api.login("r_pw_nobody", "p" * 128)  # a valid attempt does count, so the check above can fail
        assert db.get(f"rate:login-ip:{api.ip}") == "1"


# -- recover and reset: A1, A5, A6, A7 -----------------------------------------------------


def test_recover_answers_alike_and_mails_only_a_known_account(server, mail, users):
    user = users.new("r_rec_1")
    shapes = []
    for login in ("r_rec_ghost", "r_rec_ghost@example.com", " R_Rec_1 "):
        with Api(server) as api:
            r = api.post("/auth/recover", {"username": login})
            assert r.status_code == 200, r.text
            assert r.json() == {}
            shapes.append(failure_shape(r))
    assert shapes[0] == shapes[1] == shapes[2]
    sent = mail.wait_for(user.email, "reset your password")
    assert f"{server.url}/reset?token=" in MailSink.text(sent)
    token = MailSink.token(sent)
    key = token_key("reset", token)
    gen = server.redis().hget(idkeys.user("r_rec_1"), "gen")
    assert server.redis().get(key) == f"{token_digest(token)} {gen} r_rec_1@example.com"
    assert 0 < server.redis().ttl(key) <= 3600
    assert redis_strings_containing(server, token) == []
    users.barrier(user)  # everything queued before is sent
    assert mail.to("r_rec_ghost@example.com") == []
    assert len(users.reset_mails(user)) == 2
    # by email, trimmed and lower-cased, too
    with Api(server) as api:
        assert api.post("/auth/recover", {"username": " R_REC_1@Example.com "}).status_code == 200
    mail.wait_for(user.email, "reset your password", count=3)


def test_reset_sets_the_password_ends_every_session_and_does_not_log_in(server, mail, users):
    user = users.new("r_reset_1")
    first, second = users.session(user), users.session(user)
    api = users.api()
    assert api.post("/auth/recover", {"username": "r_reset_1"}).status_code == 200
    token = MailSink.token(mail.wait_for(user.email, "reset your password"))
    # a refused password leaves the token usable
    assert_error(api.post("/auth/reset", {"token": token, "password": "Short-7"}), 400, "validation", "password")
    assert_error(api.post("/auth/reset", {"token": token, "password": "iloveyou123"}), 400, "validation",
                 "password")
    r = api.post("/auth/reset", {"token": token, "password": NEW_PASSWORD})
    assert r.status_code == 200, r.text
    assert r.json() == {}
    assert not session_cookies(r) and api.cookie is None  # no automatic login
    SECRETS.add(NEW_PASSWORD)
    user.password = NEW_PASSWORD
    for old in (first, second):
        assert_error(old.get("/auth/csrf"), 403, "session")
    assert server.redis().scard(idkeys.sessions("r_reset_1")) == 0
    assert_error(api.login("r_reset_1", PASSWORD), 403, "auth")
    assert api.login("r_reset_1", NEW_PASSWORD).status_code == 200
    assert_error(api.post("/auth/reset", {"token": token, "password": "Third-Horse-9-Stable"}), 403, "token")
    assert_error(api.login("r_reset_1", "Third-Horse-9-Stable"), 403, "auth")


def test_mail_links_come_from_base_url_never_from_the_host_header(server, mail, users):
    """A6: a forged Host (and forwarded host/proto) changes no link."""
    forged = {"host": "evil.example", "x-forwarded-host": "evil.example", "x-forwarded-proto": "https",
              "forwarded": "host=evil.example;proto=https"}
    api = users.api()
    r = api.post("/auth/signup", signup_body("r_host_1"), headers=forged)
    assert r.status_code == 200, r.text
    user = users.track("r_host_1", "r_host_1@example.com")
    assert api.post("/auth/recover", {"username": "r_host_1"}, headers=forged).status_code == 200
    session = users.session(user)
    r = session.post("/auth/changePassword", {"old": PASSWORD, "new": NEW_PASSWORD}, csrf=True, headers=forged)
    assert r.status_code == 200, r.text
    user.password = NEW_PASSWORD
    for subject, link in [("verify", "/verify?token="), ("reset your password", "/reset?token="),
                          ("password was changed", "/reset")]:
        text = MailSink.text(mail.wait_for(user.email, subject))
        assert f"{server.url}{link}" in text, text
        assert "evil" not in text, text


def flip(token: str) -> str:
    """`token` with its last character changed (each token is flipped on its own: a shared
    replacement letter equals the other token's own last letter once in 64 runs)."""
    return token[:-1] + ("A" if token[-1] != "A" else "B")


def test_tampered_reused_and_wrong_kind_tokens_are_403_token(server, mail, users):
    """A7"""
    user = users.new("r_tok_1")
    verify = MailSink.token(mail.wait_for(user.email, "verify"))
    api = users.api()
    assert api.post("/auth/recover", {"username": "r_tok_1"}).status_code == 200
    reset = MailSink.token(mail.wait_for(user.email, "reset your password"))
    for bad in (flip(verify), verify + "A", verify[:-1], verify.upper(), "A" * 43, reset, " " + verify):
        assert_error(api.post("/auth/verifyEmail", {"token": bad, "password": PASSWORD}), 403, "token")
    for bad in (flip(reset), reset + "A", reset[:-1], verify, "A" * 43, reset + " "):
        assert_error(api.post("/auth/reset", {"token": bad, "password": NEW_PASSWORD}), 403, "token")
    assert server.redis().hget(idkeys.user("r_tok_1"), "verified") == "0"
    assert api.post("/auth/verifyEmail", {"token": verify, "password": PASSWORD}).status_code == 200
    assert_error(api.post("/auth/verifyEmail", {"token": verify, "password": PASSWORD}), 403, "token")
    assert api.post("/auth/reset", {"token": reset, "password": NEW_PASSWORD}).status_code == 200
    user.password = NEW_PASSWORD
    assert_error(api.post("/auth/reset", {"token": reset, "password": PASSWORD}), 403, "token")
    users.session(user)


def test_tokens_of_an_account_that_changed_its_email_are_403_token(server, mail, users):
    """A7: tokens issued for r_tok_chg_1 <old mail>; the account is destroyed and made
    again with another email; the old tokens find the user but not its email."""
    old = users.new("r_tok_chg_1", email="r_tok_chg_old@example.com")
    verify = MailSink.token(mail.wait_for(old.email, "verify"))
    assert users.api().post("/auth/recover", {"username": "r_tok_chg_1"}).status_code == 200
    reset = MailSink.token(mail.wait_for(old.email, "reset your password"))
    users.destroy(old)
    api = users.api()
    assert_error(api.post("/auth/verifyEmail", {"token": verify}), 403, "token")  # no such user now
    new = users.new("r_tok_chg_1", email="r_tok_chg_new@example.com")
    assert_error(api.post("/auth/verifyEmail", {"token": verify}), 403, "token")
    assert_error(api.post("/auth/reset", {"token": reset, "password": NEW_PASSWORD}), 403, "token")
    assert server.redis().hget(idkeys.user("r_tok_chg_1"), "verified") == "0"
    assert_error(api.login("r_tok_chg_1", NEW_PASSWORD), 403, "auth")
    users.session(new)


@pytest.fixture(scope="module")
def short_tokens(tmp_path_factory, mail):
    with dedicated(tmp_path_factory, mail, "short-tokens", VERIFY_TTL="1", RESET_TTL="1") as lore:
        yield lore


def test_expired_verify_and_reset_tokens_are_403_token(short_tokens, mail):
    """A7: VERIFY_TTL=1 and RESET_TTL=1; the token's key is polled until Redis expired it."""
    with Users(short_tokens, mail) as made:
        user = made.new("r_tok_exp_1")
        verify_mail = mail.wait_for(user.email, "verify")
        verify = MailSink.token(verify_mail)
        api = made.api()
        assert api.post("/auth/recover", {"username": user.name}).status_code == 200
        reset_mail = mail.wait_for(user.email, "reset your password")
        reset = MailSink.token(reset_mail)
        for sent in (verify_mail, reset_mail):  # the mails say how long their links work: these servers' TTLs
            assert "The link works once, for one second" in " ".join(MailSink.text(sent).split())
        wait_gone(short_tokens, token_key("verify", verify))
        wait_gone(short_tokens, token_key("reset", reset))
        assert_error(api.post("/auth/verifyEmail", {"token": verify}), 403, "token")
        assert_error(api.post("/auth/reset", {"token": reset, "password": NEW_PASSWORD}), 403, "token")
        assert short_tokens.redis().hget(idkeys.user(user.name), "verified") == "0"
        made.session(user)


# -- changePassword and destroy: A4, A5 ------------------------------------------------------


def test_change_password_needs_the_current_one_and_ends_the_other_sessions(server, mail, users):
    user = users.new("r_chpw_1")
    mine, other, third = users.session(user), users.session(user), users.session(user)
    bad = [({"old": "Wrong-Password-9", "new": NEW_PASSWORD}, 403, "auth", None),
           ({"old": PASSWORD, "new": "iloveyou123"}, 400, "validation", "new"),
           ({"old": PASSWORD, "new": "Short-7"}, 400, "validation", "new"),
           ({"old": PASSWORD[:-1], "new": NEW_PASSWORD}, 403, "auth", None)]
    for body, status, code, path in bad:
        assert_error(mine.post("/auth/changePassword", body, csrf=True), status, code, path)
    assert other.get("/auth/csrf").status_code == 200  # nothing changed yet
    r = mine.post("/auth/changePassword", {"old": PASSWORD, "new": NEW_PASSWORD}, csrf=True)
    assert r.status_code == 200, r.text
    assert r.json() == {}
    assert r.headers["cache-control"] == "private, no-cache"
    SECRETS.add(NEW_PASSWORD)
    user.password = NEW_PASSWORD
    assert mine.get("/auth/csrf").json() == {"csrf": mine.csrf}  # this session goes on
    for api in (other, third):
        assert_error(api.get("/auth/csrf"), 403, "session")
    assert server.redis().smembers(idkeys.sessions("r_chpw_1")) == {mine.sid}
    notice = MailSink.text(mail.wait_for(user.email, "password was changed"))
    assert NEW_PASSWORD not in notice and PASSWORD not in notice
    with Api(server) as api:
        assert_error(api.login(user.name, PASSWORD), 403, "auth")
        assert api.login(user.name, NEW_PASSWORD).status_code == 200


def test_destroy_needs_the_password_and_removes_the_user_and_its_sessions(server, users):
    user = users.new("r_destroy_1", verified=True)
    mine, other = users.session(user), users.session(user)
    sids = [mine.sid, other.sid]
    assert_error(mine.post("/auth/destroy", {"password": "Wrong-Password-9"}, csrf=True), 403, "auth")
    assert mine.get("/auth/csrf").status_code == 200
    r = mine.post("/auth/destroy", {"password": PASSWORD}, csrf=True)
    assert r.status_code == 200, r.text
    assert r.json() == {}
    [cleared] = session_cookies(r)
    assert "max-age=0" in cleared.lower()
    user.gone = True
    db = server.redis()
    for key in (idkeys.user("r_destroy_1"), idkeys.email("r_destroy_1@example.com"), idkeys.sessions("r_destroy_1")):
        assert not db.exists(key), key
    assert not db.sismember(idkeys.USERS, "r_destroy_1")
    assert not any(db.exists(idkeys.session(sid)) for sid in sids)
    assert_error(other.get("/auth/csrf"), 403, "session")
    with Api(server) as api:
        assert_error(api.login("r_destroy_1", PASSWORD), 403, "auth")
    again = users.new("r_destroy_1")  # the name and the email are free again
    users.session(again)
