#!/bin/sh
# Deploys a project's committed code (git HEAD) to ENV's box (docs: Deploy):
#   lorebase deploy ENV [confirm]         prod needs `confirm`, checked before anything is contacted
# (in the lorebase repository: deploy/deploy.sh ENV [confirm]). The project is LOREBASE_PROJECT,
# else the current directory: the lorebase repository, or one made by `lorebase new`.
# pack → copy → install (a new release directory with its own venv, its settings and nginx site
# checked) → activate (`current` switched in one rename, SIGHUP: the master re-executes into the
# new code and no request is dropped; /health and DATA_DIR/master.json must show the new release
# serving, else `current` goes back and the previous release serves again) → prune (DEPLOY_KEEP).
# DEPLOY_HOST and DEPLOY_SSH_PORT come from the environment's settings (lorebase config ENV --get);
# DEPLOY_SSH (default: ssh) is the ssh command. The login needs root, or sudo without a password.
# box.sh, beside this script, goes with the release: the lorebase that deploys is the one whose
# box.sh installs and activates it.
#
# POSIX sh, as it runs on the deploying machine (a Mac's /bin/sh, Debian's dash): no arrays, no
# `local`, no pipefail (so no pipe whose first command may fail unnoticed), whole seconds from
# `date +%s` unless a Python is at hand. box.sh, which runs on the box (Debian), is bash.
set -eu
set -f  # DEPLOY_SSH is split into words below, never globbed
here=$(cd "$(dirname "$0")" && pwd)
cd "${LOREBASE_PROJECT:-.}"
env=${1:-}
case $env in
  dev|prod) ;;
  *) echo "usage: lorebase deploy ENV [confirm]   (ENV: dev or prod)" >&2; exit 2 ;;
esac
if [ "$env" = prod ] && [ "${2:-}" != confirm ]; then
  echo "deploy.sh: deploying to prod needs confirm: lorebase deploy prod confirm" >&2
  exit 2
fi

# the lorebase that runs this (`lorebase deploy` says which), else the project's, else python3's
lorebase() {
  if [ -n "${LOREBASE_PYTHON:-}" ]; then "$LOREBASE_PYTHON" -m lorebase "$@"
  elif [ -x .venv/bin/lorebase ]; then .venv/bin/lorebase "$@"
  else python3 -m lorebase "$@"; fi
}
setting() { LOREBASE_PROJECT=$PWD lorebase config "$env" --get "$1"; }
host=$(setting DEPLOY_HOST)
port=$(setting DEPLOY_SSH_PORT)
keep=$(setting DEPLOY_KEEP)
if [ -z "$host" ]; then
  echo "deploy.sh: DEPLOY_HOST is not set for $env (the project's config.py, PROD = {...}, or LOREBASE_DEPLOY_HOST)" >&2
  exit 2
fi
git rev-parse --git-dir >/dev/null 2>&1 ||
  { echo "deploy.sh: $PWD is not in a git repository: a deploy sends the last commit (git init, commit)" >&2; exit 2; }
# shellcheck disable=SC2086 # DEPLOY_SSH is a command with its arguments ("ssh -F FILE")
to_box() { ${DEPLOY_SSH:-ssh} -p "$port" -o BatchMode=yes "$host" "$@"; }
releases=/opt/lorebase/releases

rev=$(git rev-parse --short=12 HEAD)
release="$(date -u +%Y%m%dT%H%M%SZ)-$rev"
[ -z "$(git status --porcelain --untracked-files=no .)" ] ||
  echo "deploy.sh: note: uncommitted changes are not deployed (the release is $rev)" >&2

# now: seconds, with a tenth when the deploying lorebase's Python can say it (no EPOCHREALTIME in sh)
if [ -n "${LOREBASE_PYTHON:-}" ]; then
  now() { "$LOREBASE_PYTHON" -c 'import time; print(f"{time.time():.2f}")'; }
else
  now() { date +%s; }
fi
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
began=$(now)
step() {  # NAME COMMAND...: run, print the time it took; stop the deploy if it fails
  step_name=$1
  step_began=$(now)
  shift
  echo "== $step_name"
  if ! "$@"; then
    echo "deploy.sh: $step_name failed after $(elapsed "$step_began") s; $release is not serving" >&2
    exit 1
  fi
  echo "   $step_name: $(elapsed "$step_began") s"
}
# on the box, as root (sudo -n when the login is another user)
box() {
  # shellcheck disable=SC2016 # expanded on the box
  to_box 'S=; [ "$(id -u)" = 0 ] || S="sudo -n"; exec $S '"$*"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
trap 'exit 130' HUP INT TERM  # sh runs the EXIT trap on exit, not on a signal: make it an exit
pack() {  # the project's directory in HEAD (the whole tree when it is the repository's root)
  prefix=$(git rev-parse --show-prefix)
  git archive --format=tar.gz -o "$work/release.tar.gz" --prefix=./ "HEAD${prefix:+:$prefix}"
  cp "$here/box.sh" "$work/box.sh"
  echo "   $release: $(du -k "$work/release.tar.gz" | cut -f1) KiB"
}
copy() {  # the pack and box.sh to a temporary directory, then unpacked by that box.sh into releases/
  # a file, not a pipe: sh has no pipefail, and a tar that failed must fail the step
  tar -cf "$work/bundle.tar" -C "$work" release.tar.gz box.sh
  # shellcheck disable=SC2016
  to_box 't=$(mktemp -d) && tar -xf - -C "$t" && S= &&
    { [ "$(id -u)" = 0 ] || S="sudo -n"; } &&
    $S bash "$t/box.sh" receive "$t/release.tar.gz" '"$release"'; rc=$?; rm -rf "$t"; exit $rc' <"$work/bundle.tar"
}

echo "deploy.sh: $release to $env ($host)"
step pack pack
step copy copy
step install box bash "$releases/$release/.box.sh" install "$release" "$env"
step activate box bash "$releases/$release/.box.sh" activate "$release" "$env"
step prune box bash "$releases/$release/.box.sh" prune "$keep"
echo "deploy.sh: $release serves $env, in $(elapsed "$began") s"
