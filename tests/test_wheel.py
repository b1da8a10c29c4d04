"""lorebase as people install it: the wheel built from this tree, installed into a fresh
virtualenv with exactly the lock file's pins (`--require-hashes`) and then the wheel with no
dependency resolved afresh, run from a directory outside the repository
(tests/package_support.py says where pip takes the pins from)."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import httpx
import pytest

import lorebase
from lorebase.testing import Lorebase

from .lore import ROOT
from .package_support import AHEAD, package_files


@pytest.fixture(scope="module")
def venv(request: pytest.FixtureRequest, lorebase_wheel: Path) -> Path:
    """A fresh virtualenv with the lock's pins, then the wheel (--no-deps): made on a thread
    since the session began (package_support.Ahead)."""
    return request.config.stash[AHEAD].get("venv")


def test_the_wheel_carries_every_file_of_the_package(lorebase_wheel: Path) -> None:
    """The web client, the password list, the type marker, the migrations, the scaffold's
    templates: whatever lorebase/ holds, the wheel holds."""
    wheel = lorebase_wheel
    with zipfile.ZipFile(wheel) as archive:
        inside = {name for name in archive.namelist() if name.startswith("lorebase/")}
    assert package_files(ROOT) <= inside, sorted(package_files(ROOT) - inside)
    assert wheel.name.startswith(f"lorebase-{lorebase.__version__}-"), wheel.name


def test_the_installed_wheel_serves_outside_the_repository(venv: Path, tmp_path: Path) -> None:
    """`lorebase` of the fresh venv, in a directory of its own: its version, then a server on a
    free port with its own Redis that answers /health and serves the web client from the
    installed files, lorebase's own migration found by name, and a clean stop."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOREBASE_") and k != "PYTHONPATH"}
    version = subprocess.run([str(venv / "bin" / "lorebase"), "--version"], cwd=outside, env=env,
                             capture_output=True, text=True, timeout=60, check=True)
    assert version.stdout.strip() == f"lorebase {lorebase.__version__}"

    server = Lorebase(tmp_path / "data", project=outside, WORKERS=1)
    server.python = str(venv / "bin" / "python")
    with server.running():
        located = subprocess.run([server.python, "-c", "import lorebase; print(lorebase.__file__)"], cwd=outside,
                                 env=env, capture_output=True, text=True, timeout=60, check=True)
        assert Path(located.stdout.strip()).is_relative_to(venv), located.stdout
        page = httpx.get(server.url + "/", timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower(), page.status_code
        rehearsal = subprocess.run([str(venv / "bin" / "lorebase"), "migrate", "0002_cluster_keys.py"],
                                   cwd=outside, env=server.environ(), capture_output=True, text=True, timeout=120,
                                   check=False)
        assert rehearsal.returncode == 0, rehearsal.stdout[-2000:] + rehearsal.stderr[-2000:]
        assert "0002_cluster_keys.py passed on the copy" in rehearsal.stdout, rehearsal.stdout[-2000:]

