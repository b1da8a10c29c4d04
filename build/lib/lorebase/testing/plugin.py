"""The pytest fixtures of `lorebase.testing` (a project's conftest.py says
`pytest_plugins = ["lorebase.testing"]`).

- `lore`: one lorebase for the session, serving the project under test (pytest's rootdir:
  its config.py, its APPS) on a free loopback port with its own embedded Redis, two workers,
  mail to `mail`; stopped at the end, which must exit 0.
- `mail`: the captured mail (a real SMTP server on loopback).
- `client`: a new browser of `lore` for each test (`client.account("ada")` signs up,
  verifies and logs in).
- `s3`: moto's S3 server over HTTP, for the session; `lore_s3`: a second lorebase that
  mirrors its files to it (its buckets made with `lorebase s3 setup`).
- `lorebase_settings`: the LOREBASE_* overrides both servers start with; override it in a
  conftest.py to change them (`return {"REQUIRE_VERIFIED": "1"}`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .client import Client
from .mail import MailSink
from .s3 import Moto
from .servers import Lorebase


@pytest.fixture(scope="session")
def lorebase_settings() -> dict[str, Any]:
    """LOREBASE_* overrides (without the prefix) of the servers the fixtures start."""
    return {}


@pytest.fixture(scope="session")
def mail() -> Iterator[MailSink]:
    """The SMTP server that receives every mail the fixtures' servers send."""
    sink = MailSink().start()
    yield sink
    sink.stop()


def _serving(project: Path, base: Path, mail: MailSink, settings: dict[str, Any]) -> Lorebase:
    # TRUSTED_PROXIES: a Client speaks from an address of its own through X-Real-IP, so the
    # per-IP limits of one test never reach the next
    return Lorebase(base / "data", project=project, **{"TRUSTED_PROXIES": "127.0.0.1", "MAIL_URL": mail.url,
                                                        **settings})


@pytest.fixture(scope="session")
def lore(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory, mail: MailSink,
         lorebase_settings: dict[str, Any]) -> Iterator[Lorebase]:
    """The project's lorebase, running for the whole session."""
    with _serving(pytestconfig.rootpath, tmp_path_factory.mktemp("lore"), mail, lorebase_settings).running() as on:
        yield on


@pytest.fixture()
def client(lore: Lorebase, mail: MailSink) -> Iterator[Client]:
    """A new browser of `lore`, closed after the test."""
    with Client(lore, mail) as browser:
        yield browser


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    """moto's S3 server on loopback (real HTTP), for the session."""
    server = Moto(tmp_path_factory.mktemp("moto")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def lore_s3(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory, mail: MailSink, s3: Moto,
            lorebase_settings: dict[str, Any]) -> Iterator[Lorebase]:
    """The project's lorebase with its files mirrored to `s3` (buckets set up)."""
    server = _serving(pytestconfig.rootpath, tmp_path_factory.mktemp("lore-s3"), mail,
                      {**s3.settings(), **lorebase_settings})
    made = server.command("s3", "setup")
    assert made.returncode == 0, f"lorebase s3 setup: {made.stdout}{made.stderr}"
    with server.running() as on:
        yield on
