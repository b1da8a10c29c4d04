"""`lorebase new DIR`: a project of one's own, in a temp dir outside the repository, that
depends on lorebase's wheel built from this tree; its scripts/test (mypy strict, then its
tests over lorebase.testing) passes, scripts/dev serves its route to a logged-in browser,
and a route the test adds is served after a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import lorebase
from lorebase.testing import Client, MailSink, free_port, wait_for

from .package_support import AHEAD, outside_env

SEAM = pytest.mark.skipif(not hasattr(lorebase, "Extension"),
                          reason="the public API (from lorebase import Extension, Route...) is not on this branch yet")


def new(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lorebase", "new", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, check=False)


def test_new_refuses_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    done = new(str(taken), cwd=tmp_path)
    assert done.returncode == 2, done
    assert "not an empty directory" in done.stderr
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]


def test_new_refuses_a_name_that_would_hide_a_module(tmp_path: Path) -> None:
    done = new(str(tmp_path / "json"), cwd=tmp_path)
    assert done.returncode == 2 and "would hide" in done.stderr, done
    assert not (tmp_path / "json").exists()


def test_new_writes_a_project_named_after_its_directory(tmp_path: Path) -> None:
    done = new("My-Shop", "--lorebase", "lorebase>=0.1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    project = tmp_path / "My-Shop"
    files = {p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()}
    assert files == {"pyproject.toml", "README.md", "config.py", ".gitignore", "my_shop/__init__.py",
                     "tests/test_hello.py", "scripts/dev", "scripts/test", "scripts/install"}
    assert 'APPS = ["my_shop"]' in (project / "config.py").read_text()
    assert {"/secret.py", "/data/"} <= set((project / ".gitignore").read_text().split())
    pyproject = (project / "pyproject.toml").read_text()
    assert '"lorebase>=0.1"' in pyproject and '"lorebase[testing]>=0.1"' in pyproject
    for script in ("dev", "test", "install"):
        assert os.access(project / "scripts" / script, os.X_OK), script
    assert "{{" not in "".join((project / f).read_text() for f in files)


@pytest.fixture(scope="module")
def project(request: pytest.FixtureRequest, lorebase_wheel: Path) -> Path:
    """A new project depending on the wheel, installed by its own scripts/install: on a thread
    since the session began (package_support.Ahead)."""
    return request.config.stash[AHEAD].get("project")


def run_tests(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(project / "scripts" / "test"), "-q", "-p", "no:cacheprovider"], cwd=project,
                          env=outside_env(), capture_output=True, text=True, timeout=900, check=False)


@SEAM
def test_the_new_projects_scripts_test_passes_with_mypy_strict(project: Path) -> None:
    done = run_tests(project)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    assert "Success: no issues found" in done.stdout, done.stdout[-2000:]
    assert "2 passed" in done.stdout, done.stdout[-2000:]


class Dev:
    """The project's scripts/dev on a free port: the master whose pid it execs into."""

    def __init__(self, project: Path):
        self.project = project
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = project.parent / "dev.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, mail: MailSink) -> None:
        env = {**outside_env(), "LOREBASE_PORT": str(self.port), "LOREBASE_WORKERS": "1",
               "LOREBASE_MAIL_URL": mail.url, "LOREBASE_TRUSTED_PROXIES": "127.0.0.1",
               "LOREBASE_BASE_URL": self.url}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(self.project / "scripts" / "dev")], cwd=self.project, env=env,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            return httpx.get(self.url + "/health", timeout=2).status_code == 200
        wait_for(up, 120, 0.1, "scripts/dev serving /health")

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0, self.log.read_text()[-3000:]


@pytest.fixture()
def dev(project: Path) -> Iterator[Dev]:
    server = Dev(project)
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait(10)


BYE = '''async def bye(req: Request) -> Reply:
    assert req.session is not None
    return reply(200, {"bye": req.session["user"]})


extension = '''
HELLO_ROUTE = 'Route("GET", "/hello", hello, section="private")'


def add_a_route(package: Path) -> None:
    """GET /bye beside GET /hello, as a person would write it."""
    text = package.read_text()
    assert text.count("extension = ") == 1 and text.count(HELLO_ROUTE) == 1, text
    text = text.replace("extension = ", BYE).replace(
        HELLO_ROUTE, f'{HELLO_ROUTE}, Route("GET", "/bye", bye, section="private")')
    package.write_text(text)


@SEAM
def test_scripts_dev_serves_the_route_and_a_new_one_after_a_restart(project: Path, dev: Dev,
                                                                     mail: MailSink) -> None:
    dev.start(mail)
    with Client(dev.url, mail) as browser:
        browser.account("ada")
        assert browser.get("/hello").json() == {"hello": "ada"}
        assert browser.get("/bye").status_code == 404
        with Client(dev.url, mail) as stranger:
            assert stranger.get("/hello").status_code == 403
        dev.stop()
        add_a_route(project / "my_shop" / "__init__.py")
        dev.start(mail)
        r = browser.get("/bye")  # the same session, kept across the restart
        assert r.status_code == 200, r.text
        assert r.json() == {"bye": "ada"}
