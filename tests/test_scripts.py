"""Every shell script of the repository passes shellcheck (warnings included)."""

from __future__ import annotations

import shutil
import subprocess

from .lore import ROOT


def shell_scripts() -> list[str]:
    found = []
    for path in sorted([*ROOT.glob("scripts/*"), *ROOT.glob("deploy/*.sh"), ROOT / ".ci" / "run"]):
        if path.is_file() and path.read_bytes()[:2] == b"#!" and b"sh" in path.read_bytes().split(b"\n", 1)[0]:
            found.append(str(path.relative_to(ROOT)))
    return found


def test_every_shell_script_passes_shellcheck():
    scripts = shell_scripts()
    assert "scripts/install" in scripts and ".ci/run" in scripts
    checker = shutil.which("shellcheck")
    assert checker, "shellcheck is not installed (scripts/install test installs it)"
    done = subprocess.run([checker, "--severity=style", *scripts], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
