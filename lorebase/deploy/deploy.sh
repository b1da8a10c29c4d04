#!/usr/bin/env bash
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
set -euo pipefail
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
if [ -n "${LOREBASE_PYTHON:-}" ]; then lorebase=("$LOREBASE_PYTHON" -m lorebase)
elif [ -x .venv/bin/lorebase ]; then lorebase=(.venv/bin/lorebase)
else lorebase=(python3 -m lorebase); fi
setting() { LOREBASE_PROJECT=$PWD "${lorebase[@]}" config "$env" --get "$1"; }
host=$(setting DEPLOY_HOST)
port=$(setting DEPLOY_SSH_PORT)
keep=$(setting DEPLOY_KEEP)
if [ -z "$host" ]; then
  echo "deploy.sh: DEPLOY_HOST is not set for $env (the project's config.py, PROD = {...}, or LOREBASE_DEPLOY_HOST)" >&2
  exit 2
fi
git rev-parse --git-dir >/dev/null 2>&1 ||
  { echo "deploy.sh: $PWD is not in a git repository: a deploy sends the last commit (git init, commit)" >&2; exit 2; }
read -r -a ssh <<<"${DEPLOY_SSH:-ssh}"
ssh+=(-p "$port" -o BatchMode=yes "$host")
releases=/opt/lorebase/releases

rev=$(git rev-parse --short=12 HEAD)
release="$(date -u +%Y%m%dT%H%M%SZ)-$rev"
[ -z "$(git status --porcelain --untracked-files=no .)" ] ||
  echo "deploy.sh: note: uncommitted changes are not deployed (the release is $rev)" >&2

elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
began=$EPOCHREALTIME
step() {  # NAME COMMAND...: run, print the time it took; stop the deploy if it fails
  local name=$1 t0=$EPOCHREALTIME
  shift
  echo "== $name"
  if ! "$@"; then
    echo "deploy.sh: $name failed after $(elapsed "$t0") s; $release is not serving" >&2
    exit 1
  fi
  echo "   $name: $(elapsed "$t0") s"
}
# on the box, as root (sudo -n when the login is another user)
box() {
  # shellcheck disable=SC2016 # expanded on the box
  "${ssh[@]}" 'S=; [ "$(id -u)" = 0 ] || S="sudo -n"; exec $S '"$*"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pack() {  # the project's directory in HEAD (the whole tree when it is the repository's root)
  local prefix
  prefix=$(git rev-parse --show-prefix)
  git archive --format=tar --prefix=./ "HEAD${prefix:+:$prefix}" | gzip -6 >"$work/release.tar.gz"
  cp "$here/box.sh" "$work/box.sh"
  echo "   $release: $(du -k "$work/release.tar.gz" | cut -f1) KiB"
}
copy() {  # the pack and box.sh to a temporary directory, then unpacked by that box.sh into releases/
  # shellcheck disable=SC2016
  tar -cf - -C "$work" release.tar.gz box.sh | "${ssh[@]}" 't=$(mktemp -d) && tar -xf - -C "$t" && S= &&
    { [ "$(id -u)" = 0 ] || S="sudo -n"; } &&
    $S bash "$t/box.sh" receive "$t/release.tar.gz" '"$release"'; rc=$?; rm -rf "$t"; exit $rc'
}

echo "deploy.sh: $release to $env ($host)"
step pack pack
step copy copy
step install box bash "$releases/$release/.box.sh" install "$release" "$env"
step activate box bash "$releases/$release/.box.sh" activate "$release" "$env"
step prune box bash "$releases/$release/.box.sh" prune "$keep"
echo "deploy.sh: $release serves $env, in $(elapsed "$began") s"
