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
    """lorebase's wheel, then what the selected tests install from it, made at the lowest
    priority on a thread from the start of the session, while the modules before them run:
    test_scaffold's new project with its own scripts/install run (a venv, the wheel with
    `lorebase[testing]` and mypy: about a minute of CPU; the project's scripts/test then finds
    it installed, by the install's stamp), and test_wheel's fresh venv (the lock's pins, then
    the wheel with no dependency)."""

    def __init__(self, base: Path, project: bool, venv: bool):
        self.base = base
        self.log = base / "install.log"
        self._wanted = {"wheel": True, "project": project, "venv": venv}
        self._made: dict[str, Path] = {}
        self._ready = {name: threading.Event() for name in self._wanted}
        self._error: BaseException | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = threading.Event()
        threading.Thread(target=self._make, name="ahead", daemon=True).start()

    def _make(self) -> None:
        try:
            self._made["wheel"] = wheel = build_wheel(self.base / "wheel")
            self._ready["wheel"].set()
            if self._wanted["project"]:
                where = self.base / "elsewhere"
                where.mkdir()
                project = new_project(wheel, where)
                self._run(["nice", "-n", "19", str(project / "scripts" / "install")], cwd=project)
                self._made["project"] = project
                self._ready["project"].set()
            if self._wanted["venv"]:
                venv = self.base / "venv"
                self._run(["nice", "-n", "19", sys.executable, "-m", "venv", str(venv)])
                python = ["nice", "-n", "19", str(venv / "bin" / "python"), "-m", "pip", "-q",
                          "--disable-pip-version-check", "install"]
                self._run([*python, *pip_sources(), "--require-hashes", "-r", str(ROOT / "requirements.lock")])
                self._run([*python, "--no-deps", str(wheel)])
                self._made["venv"] = venv
                self._ready["venv"].set()
        except BaseException as error:  # handed to the fixtures that wait for it
            self._error = error
        finally:
            for ready in self._ready.values():
                ready.set()

    def _run(self, command: list[str], cwd: Path | None = None) -> None:
        """`command` (its own session: stop() ends it with its children), its output in the log."""
        with open(self.log, "ab") as log:
            if self._stopped.is_set():
                raise RuntimeError("the session ended")
            self._proc = subprocess.Popen(command, cwd=cwd, env=outside_env(), stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
            code = self._proc.wait(900)
        assert code == 0, f"{' '.join(command)} exited {code}: {self.log.read_text()[-3000:]}"

    def get(self, name: str) -> Path:
        """The wheel, the project (its scripts/install done) or the venv, once made."""
        assert self._wanted[name], name
        assert self._ready[name].wait(900), f"the {name} not made within 15 minutes"
        if name not in self._made:
            raise self._error or RuntimeError(f"the {name} was not made")
        return self._made[name]

    def stop(self) -> None:
        """At the end of the session: an install still running is ended, the files removed."""
        self._stopped.set()
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._ready["venv"].wait(30)
        shutil.rmtree(self.base, ignore_errors=True)


AHEAD = pytest.StashKey[Ahead]()  # the session's, when any test selected needs the wheel
