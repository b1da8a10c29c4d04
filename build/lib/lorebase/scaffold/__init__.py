"""`lorebase new DIR`: a project of one's own, outside the lorebase repository, written from
the templates in `project/` (shipped in the wheel): a pyproject.toml depending on lorebase,
a package with one route and its test, config.py, a .gitignore, scripts/dev, scripts/test
and a README.

A template is a file named `<what it becomes>.tmpl`; `package/` becomes the package's
directory, `gitignore` becomes `.gitignore`; `{{key}}` is replaced by the value of key
(name, package, lorebase, lorebase_testing, version)."""

from __future__ import annotations

import keyword
import re
import sys
from pathlib import Path

from .. import __version__

TEMPLATES = Path(__file__).resolve().parent / "project"
EXECUTABLE = ("scripts",)  # the directories whose files are commands


class ScaffoldError(Exception):
    """A project that cannot be written (said to the user as it is)."""


def package_name(directory: Path) -> str:
    """The package a directory's name gives: `My-Shop` → `my_shop`. Refused: a name that is
    no identifier even so, and one that would hide a module of Python's or lorebase itself."""
    name = re.sub(r"\W+", "_", directory.name.strip().lower()).strip("_")
    if name[:1].isdigit():
        name = f"app_{name}"
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ScaffoldError(f"{directory.name!r} gives no Python package name: name the directory like my_app")
    if name == "lorebase" or name in sys.stdlib_module_names:
        raise ScaffoldError(f"the package {name!r} would hide the module of that name: pick another directory name")
    return name


def requirement(given: str | None, extra: str = "") -> str:
    """The project's dependency on lorebase: `given` a path (a checkout or a wheel: a file
    URL), a requirement (`lorebase>=0.2`) or a version (`0.1.0`); None: the version of the
    lorebase running this command. `extra`: with that extra (`lorebase[testing]...`)."""
    named = f"lorebase[{extra}]" if extra else "lorebase"
    if not given:
        return f"{named}=={__version__}"
    path = Path(given).expanduser()
    if path.exists():
        return f"{named} @ {path.resolve().as_uri()}"
    if re.fullmatch(r"\d+(\.\d+)*([a-z0-9.+-]*)", given):
        return f"{named}=={given}"
    match = re.fullmatch(r"lorebase(\[[^\]]*\])?\s*((?:[<>=!~]=?|===)\s*\S.*)?", given.strip())
    if not match:
        raise ScaffoldError(f"--lorebase {given!r}: give a path (a lorebase checkout or wheel), a requirement "
                            "such as 'lorebase>=0.1' or a version")
    return f"{named}{match.group(2) or ''}"


def new(directory: Path, lorebase: str | None = None) -> list[Path]:
    """Writes the project into `directory` (made if missing; refused unless empty); the files
    written."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ScaffoldError(f"{directory} exists and is not an empty directory: nothing written")
    package = package_name(directory.resolve())
    values = {"name": directory.resolve().name, "package": package, "version": __version__,
              "lorebase": requirement(lorebase), "lorebase_testing": requirement(lorebase, "testing")}
    written = []
    for template in sorted(TEMPLATES.rglob("*.tmpl")):
        relative = template.relative_to(TEMPLATES).with_suffix("")
        parts = [package if p == "package" and i == 0 else p for i, p in enumerate(relative.parts)]
        if parts == ["gitignore"]:
            parts = [".gitignore"]
        target = directory.joinpath(*parts)
        text = template.read_text()
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        if parts[0] in EXECUTABLE:
            target.chmod(0o755)
        written.append(target)
    return written
