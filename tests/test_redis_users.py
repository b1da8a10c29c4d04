"""The Redis ACL users of deploy/redis/users.acl (issue 17, item 4), on a real redis-server
run from the deploy's files (tests/topology.py): the API's user `lorebase` can neither wipe,
copy nor reconfigure the database, and lorebase still serves as it; backups and restores
connect as `backup` (BACKUP_REDIS_USER, BACKUP_REDIS_PASSWORD)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import redis

from lorebase.identity import keys as idkeys

from .files_support import Api, lorebase_cmd, signup
from .lore import Lorebase
from .topology import BACKUP_USER, Single

# each command the API's user must be refused, with arguments that would run it
REFUSED = {
    "FLUSHALL": (), "FLUSHDB": (), "RESTORE": ("k", "0", "x"), "SYNC": (), "PSYNC": ("?", "-1"),
    "REPLCONF": ("listening-port", "1"), "CONFIG": ("GET", "*"), "DEBUG": ("SLEEP", "0"),
    "SHUTDOWN": ("NOSAVE",), "MIGRATE": ("127.0.0.1", "1", "k", "0", "100"), "MODULE": ("LIST",),
    "REPLICAOF": ("NO", "ONE"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Single]:
    made = Single(Path(tmp_path_factory.mktemp("acl"))).start()
    yield made
    made.stop()


@pytest.mark.parametrize("command", sorted(REFUSED))
def test_the_api_user_cannot_wipe_copy_or_reconfigure_the_database(server: Single, command: str) -> None:
    with closing(server.client("lorebase")) as api, closing(server.client("admin")) as admin:
        api.set("acl:probe", "kept")
        # DEBUG is refused before the ACL is looked at (enable-debug-command no): the ACL's own
        # answer, for every command, is ACL DRYRUN's
        verdict = admin.execute_command("ACL", "DRYRUN", "lorebase", command, *REFUSED[command]).decode()
        assert "has no permissions to run" in verdict, verdict
        with pytest.raises(redis.exceptions.NoPermissionError if command != "DEBUG" else redis.ResponseError):
            api.execute_command(command, *REFUSED[command])
        assert api.get("acl:probe") == b"kept" and api.ping()


def test_lorebase_serves_as_its_user_and_backs_up_and_restores_as_the_backup_user(server: Single,
                                                                                  tmp_path: Path) -> None:
    lore = Lorebase(tmp_path / "data", REDIS_URL=server.url("lorebase"), TRUSTED_PROXIES="127.0.0.1",
                    MAIL_URL="console://", **BACKUP_USER)
    as_api_user = Lorebase(tmp_path / "data", REDIS_URL=server.url("lorebase"), TRUSTED_PROXIES="127.0.0.1",
                           MAIL_URL="console://")
    with lore.running():
        signup(lore, "acl_before")  # sessions, Lua scripts, notes: as `lorebase`
        with closing(Api(lore)) as api:
            api.login("acl_before")
            assert api.post("/notes", {"text": "before the backup"}).status_code == 200
            refused = lorebase_cmd(as_api_user, "backup")  # the API's own credentials cannot copy it
            assert refused.returncode == 1 and "NOPERM" in refused.stderr, refused.stdout + refused.stderr
            taken = lorebase_cmd(lore, "backup")
            assert taken.returncode == 0, taken.stdout + taken.stderr
            signup(lore, "acl_after")
            assert api.post("/notes", {"text": "after the backup"}).status_code == 200
    refused = lorebase_cmd(as_api_user, "restore", "latest")
    assert refused.returncode == 1 and "BACKUP_REDIS_USER" in refused.stderr, refused.stdout + refused.stderr
    with closing(server.client("admin")) as admin:
        assert admin.sismember(idkeys.USERS, "acl_after"), "the refused restore touched the database"
    restored = lorebase_cmd(lore, "restore", "latest")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    with closing(server.client("admin")) as admin:
        assert not admin.sismember(idkeys.USERS, "acl_after") and admin.sismember(idkeys.USERS, "acl_before")
    with lore.running(), closing(Api(lore)) as api:
        api.login("acl_before")
        assert [n["text"] for n in api.notes()] == ["before the backup"]
