"""Building lorebase's wheel from this tree and installing things with pip, for the wheel and
scaffold tests. The pins and the build backend come from the deploy tests' wheelhouse when
`scripts/install test` made it for the current lock (no network), else from the package
index (pip's cache keeps a second run short). `Ahead` does the slow part of that on a thread
from the start of the session."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from .lore import ROOT

WHEELHOUSE = ROOT / ".venv" / "wheelhouse"


def pip_sources() -> list[str]:
    """Where pip takes the pinned files and the build backend from: the wheelhouse when it is
    complete for the current lock (scripts/install's stamp), else the index."""
    stamp = hashlib.sha256((ROOT / "requirements.lock").read_bytes() + (ROOT / "pyproject.toml").read_bytes())
    try:
        complete = (WHEELHOUSE / ".complete").read_text().strip() == stamp.hexdigest()
    except FileNotFoundError:
        complete = False
    return ["--no-index", "--find-links", str(WHEELHOUSE)] if complete else []


def pip(*args: str, python: str = sys.executable) -> None:
    done = subprocess.run([python, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"pip {' '.join(args)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"


def package_files(tree: Path) -> set[str]:
    """Every file of the package in `tree`, as a path inside a wheel, bytecode left out."""
    return {p.relative_to(tree).as_posix() for p in (tree / "lorebase").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def build_wheel(base: Path) -> Path:
    """The wheel of this tree, built in `base` from a copy of it (a build writes into its source)."""
    source = base / "source"
    shutil.copytree(ROOT / "lorebase", source / "lorebase", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    pip("wheel", "--no-deps", *pip_sources(), "-w", str(base / "dist"), str(source))
    (built,) = (base / "dist").glob("lorebase-*.whl")
    return built


def outside_env() -> dict[str, str]:
    """The environment of a person's shell: no LOREBASE_* of the test run, the interpreter
    a new project's venv is made with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOREBASE_", "PYTEST_")) and k != "PYTHONPATH"}
    env["PYTHON"] = sys.executable
    return env


def new_project(wheel: Path, where: Path) -> Path:
    """`lorebase new my-shop` in `where`, depending on `wheel`; the project's directory."""
    done = subprocess.run([sys.executable, "-m", "lorebase", "new", "my-shop", "--lorebase", str(wheel)], cwd=where,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return where / "my-shop"


class Ahead:
    """lorebase's wheel, and (with `install`) a new project depending on it with the project's
    own scripts/install run, made on a thread from the start of the session. The install (a
    venv, then the wheel with `lorebase[testing]` and mypy: about a minute of CPU) runs at the
    lowest priority while the modules before test_scaffold run, instead of adding its minute
    to the run; the project's scripts/test then finds it installed (the install's stamp)."""

    def __init__(self, base: Path, install: bool):
        self.base = base
        self.install = install
        self.log = base / "install.log"
        self._wheel: Path | None = None
        self._project: Path | None = None
        self._error: BaseException | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = threading.Event()
        self._done = threading.Event()
        threading.Thread(target=self._make, name="ahead", daemon=True).start()

    def _make(self) -> None:
        try:
            self._wheel = build_wheel(self.base / "wheel")
            if self.install:
                where = self.base / "elsewhere"
                where.mkdir()
                project = new_project(self._wheel, where)
                with open(self.log, "wb") as log:
                    if self._stopped.is_set():
                        return
                    # its own session: stop() ends pip with the script
                    self._proc = subprocess.Popen(["nice", "-n", "19", str(project / "scripts" / "install")],
                                                  cwd=project, env=outside_env(), stdout=log,
                                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                  start_new_session=True)
                    code = self._proc.wait(900)
                assert code == 0, f"the project's scripts/install exited {code}: {self.log.read_text()[-3000:]}"
                self._project = project
        except BaseException as error:  # handed to the fixture that waits for it
            self._error = error
        finally:
            self._done.set()

    def _wait(self) -> None:
        assert self._done.wait(900), "the wheel and the project not made within 15 minutes"
        if self._error is not None:
            raise self._error

    def wheel(self) -> Path:
        self._wait()
        assert self._wheel is not None
        return self._wheel

    def project(self) -> Path:
        """The new project, its scripts/install done."""
        assert self.install
        self._wait()
        assert self._project is not None
        return self._project

    def stop(self) -> None:
        """At the end of the session: an install still running is ended, the files removed."""
        self._stopped.set()
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._done.wait(30)
        shutil.rmtree(self.base, ignore_errors=True)


AHEAD = pytest.StashKey[Ahead]()  # the session's, when any test selected needs the wheel
