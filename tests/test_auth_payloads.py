"""Every identity route, broken every way a payload can be: a missing key, an extra key,
every wrong type for every key, an over-long value, control characters (NUL among them),
a body that is not an object, a key given twice. All 400 validation with the path of the
field at fault, never a 500, never a change (the handler never runs)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from lorebase.identity import keys as idkeys

from .identity_support import PASSWORD, Api, Users, assert_error, dedicated

TEXT, BOOL = "text", "bool"
PUBLIC, USER, ADMIN = "public", "user", "admin"

# route → (who calls it, a valid body, the type of each key)
ROUTES: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = {
    "/auth/signup": (PUBLIC, {"username": "p_new_1", "email": "p_new_1@example.com", "password": PASSWORD},
                     {"username": TEXT, "email": TEXT, "password": TEXT}),
    "/auth/verifyEmail": (PUBLIC, {"token": "p-some-token"}, {"token": TEXT}),
    "/auth/login": (PUBLIC, {"username": "p_user", "password": PASSWORD}, {"username": TEXT, "password": TEXT}),
    "/auth/recover": (PUBLIC, {"username": "p_user"}, {"username": TEXT}),
    "/auth/verify/resend": (PUBLIC, {"username": "p_user"}, {"username": TEXT}),
    "/auth/changeEmail": (USER, {"password": PASSWORD, "email": "p_new_2@example.com"},
                          {"password": TEXT, "email": TEXT}),
    "/auth/reset": (PUBLIC, {"token": "p-some-token", "password": PASSWORD}, {"token": TEXT, "password": TEXT}),
    "/auth/logout": (USER, {}, {}),
    "/auth/changePassword": (USER, {"old": PASSWORD, "new": "Another-Horse-8-Stable"}, {"old": TEXT, "new": TEXT}),
    "/auth/destroy": (USER, {"password": PASSWORD}, {"password": TEXT}),
    "/admin/revoke": (ADMIN, {"username": "p_user"}, {"username": TEXT}),
    "/admin/unlock": (ADMIN, {"username": "p_user"}, {"username": TEXT}),
    "/admin/disable": (ADMIN, {"username": "p_user", "value": True}, {"username": TEXT, "value": BOOL}),
    "/admin/admin": (ADMIN, {"username": "p_user", "value": True}, {"username": TEXT, "value": BOOL}),
}
WRONG_TYPES = {
    TEXT: [None, 1, 0, 1.5, True, False, [], ["p_user"], {}, {"value": "p_user"}],
    BOOL: [None, 1, 0, "true", "false", "", [], [True], {}],
}
BAD_TEXT = {
    "over-long": "p" * 1000,  # over every field's maximum, under the auth routes' 4 KiB body limit
    "empty": "",
    "NUL": "p_user\x00" + "p" * 8,
    "NUL only": "\x00",
    "escape": "p_user\x1b[2J" + "p" * 8,
    "newline": "p_user\n" + "p" * 8,
    "DEL": "p_user\x7f" + "p" * 8,
}


def cases() -> Iterator[Any]:
    for path, (_, valid, keys) in ROUTES.items():
        route = path.rsplit("/", 1)[1]
        for key, kind in keys.items():
            body = {k: v for k, v in valid.items() if k != key}
            yield pytest.param(path, json.dumps(body).encode(), key, id=f"{route}-missing-{key}")
            for i, wrong in enumerate(WRONG_TYPES[kind]):
                yield pytest.param(path, json.dumps({**valid, key: wrong}).encode(), key,
                                   id=f"{route}-{key}-type{i}-{type(wrong).__name__}")
            if kind == TEXT:
                for name, bad in BAD_TEXT.items():
                    yield pytest.param(path, json.dumps({**valid, key: bad}).encode(), key,
                                       id=f"{route}-{key}-{name}")
            text = json.dumps(valid)  # the key twice: the second value must not silently win
            twice = text[:-1] + f', "{key}": {json.dumps(valid[key])}' + "}"
            yield pytest.param(path, twice.encode(), key, id=f"{route}-{key}-twice")
        for extra in ("extra", "admin", "verified", "user"):
            yield pytest.param(path, json.dumps({**valid, extra: True}).encode(), extra, id=f"{route}-extra-{extra}")
        for shape in ("[]", '"p_user"', "1", "null", "true", json.dumps([valid])):
            yield pytest.param(path, shape.encode(), "", id=f"{route}-body-{shape[:6]}")


@pytest.fixture(scope="module")
def lore(tmp_path_factory, mail):
    with dedicated(tmp_path_factory, mail, "payloads", ADMINS="p_root@example.com") as lore:
        yield lore


@pytest.fixture(scope="module")
def sessions(lore, mail) -> Iterator[dict[str, Api]]:
    with Users(lore, mail) as made:
        user = made.new("p_user", verified=True)
        admin = made.new("p_root", verified=True)
        yield {PUBLIC: made.api(), USER: made.session(user), ADMIN: made.session(admin)}


@pytest.mark.parametrize(("path", "body", "field"), list(cases()))
def test_a_broken_payload_is_400_validation_with_its_path(lore, sessions, path, body, field):
    who = ROUTES[path][0]
    api = sessions[who]
    headers = {"x-csrf-token": api.csrf} if api.csrf else None
    r = api.request("POST", path, content=body, headers=headers)
    assert_error(r, 400, "validation", field)


def test_nothing_changed_after_all_the_broken_payloads(lore, sessions):
    db = lore.redis()
    # no handler ran: a login attempt is counted before its password is hashed, and a valid
    # signup, recover or reset request is counted too; none of the broken ones was
    for who, api in sessions.items():
        for limit in ("login-ip", "signup-ip", "recover-ip"):
            assert int(db.get(f"rate:{limit}:{api.ip}") or 0) == 0, (who, limit)
    assert db.smembers(idkeys.USERS) == {"p_user", "p_root"}
    user = db.hgetall(idkeys.user("p_user"))
    assert user["admin"] == "0" and user["disabled"] == "0" and user["verified"] == "1"
    for who in (USER, ADMIN):
        assert sessions[who].get("/auth/csrf").status_code == 200
    with Api(lore) as api:
        assert api.login("p_user", PASSWORD).status_code == 200
