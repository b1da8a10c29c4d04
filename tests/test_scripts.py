"""Every shell script of the repository passes shellcheck (warnings included), and the ones
that run on the deploying machine are POSIX sh: dash (Debian's /bin/sh) parses and runs them,
so a Mac's /bin/sh deploys as well as a Linux box's bash."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .lore import ROOT

# what runs on the machine that deploys (`lorebase provision`, `lorebase deploy`, this repo's
# deploy/ entry points), and the box's cron scripts, which are sh too (box.sh is bash: Debian's)
POSIX = ("lorebase/deploy/deploy.sh", "lorebase/deploy/provision.sh", "deploy/deploy.sh", "deploy/provision.sh",
         "lorebase/deploy/refresh.sh", "lorebase/deploy/start.sh")


def shell_scripts() -> list[str]:
    found: dict[str, str] = {}  # by the file it is (deploy/box.sh is a link to lorebase/deploy/box.sh)
    for path in sorted([*ROOT.glob("scripts/*"), *ROOT.glob("deploy/*.sh"), *ROOT.glob("lorebase/deploy/*.sh"),
                        ROOT / ".ci" / "run"]):
        if path.is_file() and path.read_bytes()[:2] == b"#!" and b"sh" in path.read_bytes().split(b"\n", 1)[0]:
            found.setdefault(str(path.resolve()), str(path.relative_to(ROOT)))
    return sorted(found.values())


def test_every_shell_script_passes_shellcheck():
    scripts = shell_scripts()
    assert "scripts/install" in scripts and ".ci/run" in scripts and "lorebase/deploy/deploy.sh" in scripts
    checker = shutil.which("shellcheck")
    assert checker, "shellcheck is not installed (scripts/install test installs it)"
    done = subprocess.run([checker, "--severity=style", *scripts], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("script", POSIX)
def test_a_deploying_machine_script_is_posix_sh_that_dash_parses(script: str):
    """`#!/bin/sh`, shellcheck as POSIX sh (it flags arrays, `[[`, `local`, pipefail, `<<<`,
    `${var//}`, `echo -e`, $RANDOM, $EPOCHREALTIME...), and dash reads it whole."""
    assert (ROOT / script).read_text().startswith("#!/bin/sh\n"), script
    checker, dash = shutil.which("shellcheck"), shutil.which("dash")
    assert checker and dash, "shellcheck and dash are not installed (scripts/install test installs them)"
    checked = subprocess.run([checker, "--shell=sh", "--severity=style", script], cwd=ROOT, capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    parsed = subprocess.run([dash, "-n", script], cwd=ROOT, capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr


def test_deploy_under_dash_refuses_prod_without_confirm_and_a_bad_env_with_its_usage():
    """dash runs deploy.sh (through this repo's entry point) up to its first refusal; the whole
    deploy runs under dash in test_deploy."""
    dash = shutil.which("dash")
    assert dash
    refused = subprocess.run([dash, "deploy/deploy.sh", "prod"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "needs confirm" in refused.stderr, refused.stderr
    usage = subprocess.run([dash, "deploy/deploy.sh", "staging"], cwd=ROOT, capture_output=True, text=True,
                           timeout=30)
    assert usage.returncode == 2 and "usage: lorebase deploy ENV" in usage.stderr, usage.stderr
