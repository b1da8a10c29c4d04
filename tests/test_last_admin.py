"""The last enabled admin (issue 17, item 7): two admins disabling, deleting or un-flagging
each other at the same moment never leave no enabled admin (409 lastadmin for one of them),
and un-flagging an admin whose rights come from ADMINS is refused (409 configadmin) instead
of a 200 that changes nothing.

On an instance of its own; each test has a config admin of its own (`lm_root_<act>`), which
steps aside in each round: it grants the flag to two new users, one of them disables it, the
two act on each other at once (threads meeting at a barrier), and the one left enables it
again."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from lorebase.identity import keys as idkeys

from .identity_support import Api, Users, assert_error, dedicated
from .lore import Lorebase

ROUNDS = 12  # the code before the fix left both disabled in about 3 rounds of 10
ROOTS = ["lm_root_dis", "lm_root_del", "lm_root_unf", "lm_root_cfg"]  # a config admin of each test
ACTS = {"disable": ("/admin/disable", {"value": True}), "delete": ("/admin/delete", {}),
        "unflag": ("/admin/admin", {"value": False})}


@pytest.fixture(scope="module")
def lore(tmp_path_factory, mail) -> Iterator[Lorebase]:
    unlimited = 1_000_000
    with dedicated(tmp_path_factory, mail, "lastadmin", ADMINS=", ".join(f"{name}@example.com" for name in ROOTS),
                   LOGIN_FAILS_PER_ACCOUNT=unlimited, LOGIN_FAILS_PER_IP=unlimited) as lore:
        yield lore


@pytest.fixture()
def users(lore, mail) -> Iterator[Users]:
    with Users(lore, mail) as made:
        yield made


def ok(r) -> None:
    assert r.status_code == 200 and r.json() == {}, (r.status_code, r.text)


def enabled_admins(lore: Lorebase, names: list[str]) -> list[str]:
    """Those of `names` whose record is an enabled admin (the flag, or lm_root's verified
    config address)."""
    found = []
    for name in names:
        record = lore.redis().hgetall(idkeys.user(name))
        config = record.get("email") == f"{name}@example.com" and name in ROOTS and record.get("verified") == "1"
        if record and record.get("disabled") == "0" and (record.get("admin") == "1" or config):
            found.append(name)
    return found


def at_once(first: Api, second: Api, path: str, body: dict, names: tuple[str, str]) -> list:
    """`first` acts on names[1] and `second` on names[0], released together by a barrier."""
    barrier = threading.Barrier(2)

    def act(api: Api, target: str):
        barrier.wait()
        return api.post(path, {"username": target, **body}, csrf=True)

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(act, first, names[1]), pool.submit(act, second, names[0])]
        return [f.result() for f in futures]


@pytest.mark.parametrize("act", list(ACTS))
def test_two_admins_acting_on_each_other_at_once_leave_one_enabled_admin(lore, users, act):
    root_user = users.new(f"lm_root_{act[:3]}", verified=True)
    root = users.session(root_user)
    path, body = ACTS[act]
    outcomes = []
    for i in range(ROUNDS):
        a, b = users.new(f"lm_{act[:3]}_{i}_a"), users.new(f"lm_{act[:3]}_{i}_b")
        for made in (a, b):
            ok(root.post("/admin/admin", {"username": made.name, "value": True}, csrf=True))
        first, second = users.session(a), users.session(b)
        ok(first.post("/admin/disable", {"username": root_user.name, "value": True}, csrf=True))
        replies = at_once(first, second, path, body, (a.name, b.name))
        statuses = sorted((r.status_code, r.json().get("error")) for r in replies)
        outcomes.append(statuses)
        left = enabled_admins(lore, [a.name, b.name])
        assert left, f"round {i}: no enabled admin left after {act} ({statuses}; rounds so far {outcomes})"
        # the one refused got 409 lastadmin (or, had the other's act landed first, its session ended)
        assert statuses[0] == (200, None) and statuses[1] in ((409, "lastadmin"), (403, "session"),
                                                              (403, "admin")), statuses
        survivor = first if left[0] == a.name else second
        ok(survivor.post("/admin/disable", {"username": root_user.name, "value": False}, csrf=True))
        root = users.session(root_user)
        for made in (a, b):
            if lore.redis().exists(idkeys.user(made.name)):
                ok(root.post("/admin/delete", {"username": made.name}, csrf=True))
            made.gone = True


def test_unflagging_an_admin_of_the_admins_config_is_409_configadmin(lore, users):
    root = users.session(users.new("lm_root_cfg", verified=True))
    helper = users.new("lm_cfg_helper")
    ok(root.post("/admin/admin", {"username": helper.name, "value": True}, csrf=True))
    other = users.session(helper)
    assert_error(other.post("/admin/admin", {"username": "lm_root_cfg", "value": False}, csrf=True), 409,
                 "configadmin")
    assert root.get("/admin/users/lm_root_cfg").json()["admin"] is True
    # the flag itself may still be taken from one who holds it by the flag only
    ok(root.post("/admin/admin", {"username": helper.name, "value": False}, csrf=True))
    assert root.get("/admin/users/lm_cfg_helper").json()["admin"] is False
