"""Races between a login and what ends a user's sessions: destroy, reset, changePassword and
an admin's disable. A login reads the user, spends ~45 ms in argon2, then opens a session:
once the act that ends the sessions has returned, no session any overlapping login was
given may answer, and a reset token mailed before the act is dead too.

Over HTTP only, on an instance of its own: argon2 at its default cost (its time is the race
window) and login, recover and session limits too high to get in the way. The logins run at
delays spread over the rounds; every round's findings are gathered, so a failure says how
many rounds left a session alive."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any
from urllib.parse import unquote

import pytest

from .identity_support import (
    Api,
    User,
    Users,
    assert_error,
    cookie_value,
    dedicated,
    remember,
    session_cookies,
)
from .lore import Lorebase, MailSink

ADMINS = "race_root@example.com, race_boss@example.com"
LOOP = 4  # clients logging in back to back beside the act
TOKEN = re.compile(r"token=([^\s&]+)")
Session = tuple[str, str]  # a session's cookie and its CSRF token


@pytest.fixture(scope="module")
def lore(tmp_path_factory, mail) -> Iterator[Lorebase]:
    unlimited = 1_000_000
    with dedicated(tmp_path_factory, mail, "races", ADMINS=ADMINS, LOGIN_FAILS_PER_ACCOUNT=unlimited,
                   LOGIN_FAILS_PER_IP=unlimited, RECOVER_PER_IP=unlimited, RECOVER_MAILS_PER_ACCOUNT=unlimited,
                   SESSIONS_PER_USER=unlimited) as lore:
        yield lore


@pytest.fixture()
def users(lore, mail) -> Iterator[Users]:
    with Users(lore, mail) as made:
        yield made


@pytest.fixture(scope="module")
def root(lore, mail) -> Iterator[Api]:
    """A logged-in admin: the verified owner of an email of ADMINS."""
    with Users(lore, mail) as made:
        yield made.session(made.new("race_root", verified=True))


# -- helpers ---------------------------------------------------------------------------


def spread(i: int, rounds: int, top_ms: float) -> float:
    """Round i's delay, in seconds: 0 to top_ms, evenly over the rounds."""
    return i * top_ms / max(rounds - 1, 1) / 1000


def login(api: Api, name: str, password: str) -> Session | None:
    """A login sent with no cookie (so it ends no session of ours): its session, or None if refused."""
    remember(password)
    r = api.post("/auth/login", {"username": name, "password": password}, cookie=None)
    if r.status_code != 200:
        assert_error(r, 403, "auth")
        return None
    return cookie_value(session_cookies(r)[-1]), r.json()["csrf"]


def alive(api: Api, session: Session) -> bool:
    """Whether the session still answers GET /auth/csrf (else it must be a 403)."""
    r = api.get("/auth/csrf", cookie=session[0])
    assert r.status_code in (200, 403), (r.status_code, r.text)
    return r.status_code == 200


def reset_token(api: Api, users: Users, user: User) -> str:
    """POST /auth/recover, then the token of the link in the mail it sent (any characters up to
    whitespace or `&`, so a token of another format is taken whole)."""
    count = len(users.reset_mails(user)) + 1
    assert api.post("/auth/recover", {"username": user.name}).status_code == 200
    text = MailSink.text(users.mail.wait_for(user.email, "reset your password", count=count))
    match = TOKEN.search(text)
    assert match, text
    return unquote(match.group(1))


def reset(api: Api, user: User, token: str, password: str) -> None:
    remember(password)
    r = api.post("/auth/reset", {"token": token, "password": password})
    assert r.status_code == 200, r.text
    user.password = password


def change_password(api: Api, user: User, password: str) -> None:
    remember(password)
    r = api.post("/auth/changePassword", {"old": user.password, "new": password}, csrf=True)
    assert r.status_code == 200, r.text
    user.password = password


def refused_reset(api: Api, user: User, token: str, password: str) -> None:
    """The token is refused (403 token). Were it taken, the user's password is now `password`
    (so the cleanup can still log in)."""
    remember(password)
    r = api.post("/auth/reset", {"token": token, "password": password})
    if r.status_code == 200:
        user.password = password
    assert_error(r, 403, "token")


def set_disabled(admin: Api, name: str, value: bool) -> None:
    r = admin.post("/admin/disable", {"username": name, "value": value}, csrf=True)
    assert r.status_code == 200 and r.json() == {}, r.text


def beside_logins(apis: list[Api], name: str, password: str, act: Callable[[], Any], delay: float) -> list[Session]:
    """Every api logs in as name/password, back to back; `delay` after the first reply, `act`
    runs. Once it has returned the logins stop, and every session they were given (those of
    the logins in flight included) is returned."""
    sessions: list[Session] = []
    answered, done = threading.Event(), threading.Event()

    def loop(api: Api) -> None:
        while not done.is_set():
            session = login(api, name, password)
            if session:
                sessions.append(session)
            answered.set()

    with ThreadPoolExecutor(len(apis)) as pool:
        running = [pool.submit(loop, api) for api in apis]
        try:
            assert answered.wait(30), "no login answered"
            time.sleep(delay)
            act()
        finally:
            done.set()
        for future in running:
            future.result()
    assert sessions, "the logins opened no session before the act"
    return sessions


def destroy_beside_a_login(users: Users, name: str, delay: float) -> list[Session]:
    """Signs up `name`, logs in, and sends POST /auth/destroy with that session and, `delay`
    later, a login of `name` with no cookie. Both sessions (or the one, if the login was
    refused), once the destroy returned 200."""
    user = users.new(name)
    owner = users.session(user)
    sessions = [(owner.cookie or "", owner.csrf or "")]
    with ThreadPoolExecutor(2) as pool:
        destroyed = pool.submit(owner.post, "/auth/destroy", {"password": user.password}, True)
        time.sleep(delay)
        opened = pool.submit(login, users.api(), name, user.password)
        r = destroyed.result()
        assert r.status_code == 200, r.text
        user.gone = True
        session = opened.result()
    return sessions + ([session] if session else [])


# -- destroy -----------------------------------------------------------------------------


def test_no_login_that_overlaps_destroy_keeps_a_session(users):
    """50 rounds, the login sent 0-20 ms after the destroy."""
    rounds, survived = 50, []
    checker = users.api()
    for i in range(rounds):
        sessions = destroy_beside_a_login(users, f"race_mal_{i:02d}", spread(i, rounds, 20))
        if any(alive(checker, s) for s in sessions):
            survived.append(i)
    assert not survived, f"{len(survived)} of {rounds} destroys left a session alive: rounds {survived}"


@pytest.mark.notes
def test_a_reregistered_username_never_sees_the_previous_owners_sessions(users):
    """After each destroy someone else signs up the same username and writes a note: none of
    the old cookies reads /auth/me or /notes."""
    rounds, leaks = 12, []
    checker = users.api()
    for i in range(rounds):
        name = f"race_heir_{i:02d}"
        old = destroy_beside_a_login(users, name, spread(i, rounds, 20))
        heir = users.session(users.new(name, email=f"race_heir_{i:02d}_new@example.com"))
        note = f"the new owner's note {i:02d}"
        assert heir.post("/notes", {"text": note}, csrf=True).status_code == 200
        for cookie, _ in old:
            for path in ("/auth/me", "/notes"):
                r = checker.get(path, cookie=cookie)
                if r.status_code != 403 or note in r.text or "_new@example.com" in r.text:
                    leaks.append((i, path, r.status_code))
    assert not leaks, f"old cookies read the new owner's account: {leaks[:8]}"


# -- reset and changePassword ----------------------------------------------------------------


def test_no_login_with_the_old_password_keeps_a_session_past_a_reset(users):
    """50 rounds: recover, then, beside logins with the old password, reset with the mail's token."""
    rounds, survived = 50, []
    user = users.new("race_reset")
    apis, checker = [users.api() for _ in range(LOOP)], users.api()
    for i in range(rounds):
        token = reset_token(checker, users, user)
        act = partial(reset, checker, user, token, f"Reset-Horse-{i:02d}-Stable")
        sessions = beside_logins(apis, user.name, user.password, act, spread(i, rounds, 40))
        live = sum(alive(checker, s) for s in sessions)
        if live:
            survived.append((i, f"{live}/{len(sessions)}"))
    assert not survived, f"{len(survived)} of {rounds} resets left sessions alive (round, live/opened): {survived[:8]}"


def test_no_login_with_the_old_password_keeps_a_session_past_a_password_change(users):
    """25 rounds: the owner changes the password beside logins with the old one; the owner's
    session, the one that changed it, keeps working."""
    rounds, survived = 25, []
    user = users.new("race_change")
    owner = users.session(user)
    apis, checker = [users.api() for _ in range(LOOP)], users.api()
    for i in range(rounds):
        act = partial(change_password, owner, user, f"Change-Horse-{i:02d}-Stable")
        sessions = beside_logins(apis, user.name, user.password, act, spread(i, rounds, 40))
        live = sum(alive(checker, s) for s in sessions)
        if live:
            survived.append((i, f"{live}/{len(sessions)}"))
        assert owner.get("/auth/csrf").json() == {"csrf": owner.csrf}
    assert not survived, f"{len(survived)} of {rounds} changes left sessions alive (round, live/opened): {survived[:8]}"


# -- admin disable -------------------------------------------------------------------------


@pytest.mark.notes
def test_no_login_that_overlaps_an_admin_disable_keeps_a_session(users, root):
    """25 rounds: an admin disables the user beside its logins; after it no session of the
    user answers or writes a note and its login fails; then it is enabled for the next round."""
    rounds, survived = 25, []
    user = users.new("race_victim")
    apis, checker = [users.api() for _ in range(LOOP)], users.api()
    for i in range(rounds):
        act = partial(set_disabled, root, user.name, True)
        sessions = beside_logins(apis, user.name, user.password, act, spread(i, rounds, 40))
        live = sum(alive(checker, s) for s in sessions)
        writes = sum(checker.post("/notes", {"text": "still here", "csrf": csrf}, cookie=cookie).status_code != 403
                     for cookie, csrf in sessions)
        if live or writes:
            survived.append((i, f"{live}/{len(sessions)} answered, {writes} wrote"))
        assert login(checker, user.name, user.password) is None, "a disabled user logged in"
        set_disabled(root, user.name, False)
    assert not survived, f"{len(survived)} of {rounds} disables left sessions alive: {survived[:8]}"


def test_a_disabled_user_whose_email_is_in_admins_keeps_no_session_and_is_no_admin(users, root):
    """10 rounds: race_boss (verified, its email in ADMINS) is disabled beside its logins: after
    it no session of it answers or lists the users, and its login fails."""
    rounds, survived = 10, []
    boss = users.new("race_boss", verified=True)
    assert users.session(boss).get("/admin/users").status_code == 200  # an admin by its email
    apis, checker = [users.api() for _ in range(LOOP)], users.api()
    for i in range(rounds):
        act = partial(set_disabled, root, boss.name, True)
        sessions = beside_logins(apis, boss.name, boss.password, act, spread(i, rounds, 40))
        live = sum(alive(checker, s) for s in sessions)
        admin = sum(checker.get("/admin/users", cookie=cookie).status_code != 403 for cookie, _ in sessions)
        if live or admin:
            survived.append((i, f"{live}/{len(sessions)} answered, {admin} listed the users"))
        assert login(checker, boss.name, boss.password) is None, "a disabled admin logged in"
        set_disabled(root, boss.name, False)
    assert not survived, f"{len(survived)} of {rounds} disables left the admin sessions: {survived[:8]}"


# -- reset tokens ----------------------------------------------------------------------------


def test_a_reset_token_is_refused_once_a_later_one_was_used(users):
    user = users.new("race_token_1")
    api = users.api()
    first, second = reset_token(api, users, user), reset_token(api, users, user)
    assert first != second
    reset(api, user, second, "Second-Horse-7-Stable")
    refused_reset(api, user, first, "First-Horse-7-Stable")
    users.session(user)  # the password is the one set with the second token


def test_a_reset_token_issued_before_a_password_change_is_refused_after_it(users):
    user = users.new("race_token_2")
    owner, api = users.session(user), users.api()
    token = reset_token(api, users, user)
    change_password(owner, user, "Changed-Horse-7-Stable")
    refused_reset(api, user, token, "Reset-Horse-7-Stable")
    users.session(user)  # the password is the changed one


def test_a_reset_token_issued_before_an_admin_disable_is_refused_after_it(users, root):
    """While the user is disabled, and still once it is enabled again."""
    user = users.new("race_token_3")
    api = users.api()
    token = reset_token(api, users, user)
    set_disabled(root, user.name, True)
    try:
        refused_reset(api, user, token, "Reset-Horse-8-Stable")
    finally:
        set_disabled(root, user.name, False)
    refused_reset(api, user, token, "Reset-Horse-8-Stable")
    users.session(user)  # the password is still the one it signed up with
