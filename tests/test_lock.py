"""The lock files pin what a box runs to what CI tested: every dependency of pyproject.toml,
at one version that fits its range, with the hash of each of its files, and the test venv
holds exactly those versions."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .lore import ROOT

PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==")


def pins(lock: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a lock file written by scripts/lock, for this
    Python and platform (a universal lock may pin a name twice, under exclusive markers)."""
    found: dict[str, tuple[str, int]] = {}
    current: str | None = None
    for line in (ROOT / lock).read_text().splitlines():
        if PIN.match(line):
            pinned = Requirement(line.rstrip(" \\"))
            current = None
            if pinned.marker is None or pinned.marker.evaluate():
                current = canonicalize_name(pinned.name)
                assert current not in found, f"{lock} pins {current} twice for this Python"
                found[current] = (next(iter(pinned.specifier)).version, 0)
        elif current is not None and line.strip().startswith("--hash=sha256:"):
            version, hashes = found[current]
            found[current] = (version, hashes + 1)
    return found


def wanted(extra: str | None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = list(project["dependencies"])
    if extra is not None:
        names += project["optional-dependencies"][extra]
    return [Requirement(name) for name in names]


def test_every_dependency_is_pinned_with_hashes_at_a_version_its_range_allows():
    for lock, extra in (("requirements.lock", None), ("requirements-test.lock", "test")):
        pinned = pins(lock)
        assert pinned, f"{lock} pins nothing"
        for requirement in wanted(extra):
            name = canonicalize_name(requirement.name)
            assert name in pinned, f"{lock} misses {name} (run scripts/lock)"
            assert requirement.specifier.contains(pinned[name][0], prereleases=True), (
                f"{lock} pins {name} {pinned[name][0]}, outside {requirement.specifier} (run scripts/lock)")
        unhashed = [name for name, (_, hashes) in pinned.items() if hashes == 0]
        assert not unhashed, f"{lock} pins without a hash: {unhashed}"


def test_the_runtime_lock_pins_the_same_versions_as_the_test_lock():
    runtime, test = pins("requirements.lock"), pins("requirements-test.lock")
    differ = {name: (version, test.get(name, ("missing",))[0])
              for name, (version, _) in runtime.items() if test.get(name, ("",))[0] != version}
    assert not differ, f"a box would run other versions than CI tests: {differ}"


def test_the_test_venv_runs_exactly_the_locked_versions():
    """scripts/install installs from the lock: what this suite runs on is what a box gets."""
    for name, (version, _) in pins("requirements-test.lock").items():
        installed = metadata.version(name)
        assert installed == version, f"{name} {installed} is installed, the lock says {version}"


def test_pip_refuses_a_lock_whose_hash_does_not_match(tmp_path):
    """--require-hashes is what makes the lock a lock: a file other than the one CI tested is
    refused. Offline: from the wheelhouse scripts/install made with the lock's own files."""
    wheelhouse = ROOT / ".venv" / "wheelhouse"
    assert any(wheelhouse.glob("msgspec-*.whl")), "no wheelhouse: run scripts/install test"
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("msgspec=="))
    end = next(i for i in range(first + 1, len(lines)) if not lines[i].startswith("    --hash"))
    locked = "\n".join(lines[first:end]) + "\n"
    version = pins("requirements.lock")["msgspec"][0]

    def dry_run(text: str) -> subprocess.CompletedProcess[str]:
        lock = tmp_path / "one.lock"
        lock.write_text(text)
        return subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps",
                               "--no-index", "--find-links", str(wheelhouse), "--only-binary=:all:",
                               "--python-version", "3.11", "--require-hashes", "--disable-pip-version-check",
                               "--no-cache-dir", "-r", str(lock)], capture_output=True, text=True, timeout=300)

    assert dry_run(locked).returncode == 0
    done = dry_run(f"msgspec=={version} --hash=sha256:{'0' * 64}\n")
    assert done.returncode != 0
    assert "do not match the hashes" in (done.stdout + done.stderr).lower()
