"""The suites' fixtures. lorebase.testing's come in as an application's tests get them (`-p
lorebase.testing` in pyproject's pytest options): `mail`, the SMTP sink the servers send to,
is used as it is; `server`, `client` and `moto` here are the suites' own (the Redis topology
and file-server matrix of LOREBASE_TEST_REDIS and LOREBASE_TEST_FILES)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .files_support import Moto
from .identity_support import Users, assert_no_secret_logged
from .lore import Lorebase, MailSink, topology_redis
from .package_support import AHEAD, Ahead, build_wheel


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, mail: MailSink) -> Iterator[Lorebase]:
    """One lorebase for the whole session: embedded Redis, two workers, a temp data dir, mail
    to the SMTP sink. TRUSTED_PROXIES lets tests speak for several client IPs through
    X-Real-IP, as nginx would. With LOREBASE_TEST_REDIS=slots, on a one-node Redis Cluster
    (REDIS_URL) instead of the embedded Redis."""
    base = tmp_path_factory.mktemp("lore")
    with topology_redis(base, {"TRUSTED_PROXIES": "127.0.0.1", "MAIL_URL": mail.url}) as settings:
        lore = Lorebase(base / "data", **settings)
        lore.start()
        yield lore
        code = lore.stop()
        assert code == 0, f"lorebase exited with {code}"


@pytest.fixture()
def client(server: Lorebase) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


@pytest.fixture()
def tmp(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture()
def users(server: Lorebase, mail: MailSink) -> Iterator[Users]:
    """Makes accounts over HTTP and destroys them after the test."""
    with Users(server, mail) as made:
        yield made


@pytest.fixture(scope="module")
def no_secret_logged(server: Lorebase) -> Iterator[None]:
    """After the module: no password, token or cookie appeared in the server's log."""
    yield
    assert_no_secret_logged(server)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    """moto's S3 server (real HTTP on loopback), one per test module that asks for it."""
    server = Moto(Path(tmp_path_factory.mktemp("moto"))).start()
    try:
        yield server
    finally:
        server.stop()


def pytest_collection_finish(session: pytest.Session) -> None:
    """The wheel, test_scaffold's installed project and test_wheel's venv start being made now
    when a test selected needs them: they are ready by the time those tests come
    (package_support.Ahead)."""
    wanted = [item for item in session.items if "lorebase_wheel" in getattr(item, "fixturenames", ())]
    if wanted:
        def needs(module: str, fixture: str) -> bool:
            return any(item.path.name == module and fixture in getattr(item, "fixturenames", ()) for item in wanted)
        session.config.stash[AHEAD] = Ahead(Path(tempfile.mkdtemp(prefix="lorebase-ahead-")),
                                            project=needs("test_scaffold.py", "project"),
                                            venv=needs("test_wheel.py", "venv"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    ahead = session.config.stash.get(AHEAD, None)
    if ahead is not None:
        ahead.stop()


@pytest.fixture(scope="session")
def lorebase_wheel(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lorebase's wheel, built once per session from this tree (test_wheel, test_scaffold,
    test_deploy), from the start of the session on."""
    ahead = request.config.stash.get(AHEAD, None)
    return ahead.get("wheel") if ahead is not None else build_wheel(tmp_path_factory.mktemp("wheel"))
