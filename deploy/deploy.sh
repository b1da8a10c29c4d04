#!/usr/bin/env bash
# Deploys the committed code (git HEAD) to ENV's box (README "Deploy"):
#   deploy/deploy.sh ENV [confirm]        prod needs `confirm`, checked before anything is contacted
# pack → copy → install (a new release directory with its own venv, its settings and nginx site
# checked) → activate (`current` switched in one rename, SIGHUP: the master re-executes into the
# new code and no request is dropped; /health and DATA_DIR/master.json must show the new release
# serving, else `current` goes back and the previous release serves again) → prune (DEPLOY_KEEP).
# DEPLOY_HOST and DEPLOY_SSH_PORT come from the environment's settings (lorebase config ENV --get);
# DEPLOY_SSH (default: ssh) is the ssh command. The login needs root, or sudo without a password.
set -euo pipefail
cd "$(dirname "$0")/.."
env=${1:-}
case $env in
  dev|prod) ;;
  *) echo "usage: deploy/deploy.sh ENV [confirm]   (ENV: dev or prod)" >&2; exit 2 ;;
esac
if [ "$env" = prod ] && [ "${2:-}" != confirm ]; then
  echo "deploy.sh: deploying to prod needs confirm: deploy/deploy.sh prod confirm" >&2
  exit 2
fi

if [ -x .venv/bin/lorebase ]; then lorebase=(.venv/bin/lorebase); else lorebase=(python3 -m lorebase); fi
setting() { "${lorebase[@]}" config "$env" --get "$1"; }
host=$(setting DEPLOY_HOST)
port=$(setting DEPLOY_SSH_PORT)
keep=$(setting DEPLOY_KEEP)
if [ -z "$host" ]; then
  echo "deploy.sh: DEPLOY_HOST is not set for $env (lorebase/config.py PER_ENV, or LOREBASE_DEPLOY_HOST)" >&2
  exit 2
fi
read -r -a ssh <<<"${DEPLOY_SSH:-ssh}"
ssh+=(-p "$port" -o BatchMode=yes "$host")
releases=/opt/lorebase/releases

rev=$(git rev-parse --short=12 HEAD)
release="$(date -u +%Y%m%dT%H%M%SZ)-$rev"
[ -z "$(git status --porcelain --untracked-files=no)" ] ||
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

pack=$(mktemp)
trap 'rm -f "$pack"' EXIT
pack() {
  git archive --format=tar --prefix=./ HEAD | gzip -6 >"$pack"
  echo "   $release: $(du -k "$pack" | cut -f1) KiB"
}
copy() {  # the pack to a temporary file, then unpacked by its own box.sh into releases/
  # shellcheck disable=SC2016
  "${ssh[@]}" 'f=$(mktemp) && cat >"$f" && tar -xzOf "$f" ./deploy/box.sh >"$f.sh" && S= &&
    { [ "$(id -u)" = 0 ] || S="sudo -n"; } &&
    $S bash "$f.sh" receive "$f" '"$release"'; rc=$?; rm -f "$f" "$f.sh"; exit $rc' \
    <"$pack"
}

echo "deploy.sh: $release to $env ($host)"
step pack pack
step copy copy
step install box bash "$releases/$release/deploy/box.sh" install "$release" "$env"
step activate box bash "$releases/$release/deploy/box.sh" activate "$release" "$env"
step prune box bash "$releases/$release/deploy/box.sh" prune "$keep"
echo "deploy.sh: $release serves $env, in $(elapsed "$began") s"
