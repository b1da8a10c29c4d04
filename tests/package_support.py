"""Building lorebase's wheel from this tree and installing things with pip, for the wheel and
scaffold tests. The pins and the build backend come from the deploy tests' wheelhouse when
`scripts/install test` made it for the current lock (no network), else from the package
index (pip's cache keeps a second run short)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

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
