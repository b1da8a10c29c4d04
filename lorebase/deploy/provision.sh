#!/bin/sh
# Sets a fresh Ubuntu LTS or Debian stable box up for lorebase, over ssh (docs: Deploy):
#   lorebase provision [user@]HOST [--port N] [--domain D] [--mail-url URL] [--no-upgrade]
#                      [--refresh-weekly | --no-refresh-weekly]
# (in the lorebase repository: deploy/provision.sh ...). The box is the same for every project:
# what differs between them comes with each deploy.
# Run it again whenever you like: it changes only what differs, and says "nothing changed".
# The login needs root, or sudo without a password. DEPLOY_SSH (default: ssh) is the ssh command.
# POSIX sh, as it runs on the deploying machine (deploy.sh says why); box.sh, on the box, is bash.
set -eu
set -f  # DEPLOY_SSH is split into words below, never globbed
here=$(cd "$(dirname "$0")" && pwd)  # box.sh and the units, beside this script
usage() {
  echo "usage: lorebase provision [user@]HOST [--port N] [--domain D] [--mail-url URL] [--no-upgrade]" \
    "[--refresh-weekly | --no-refresh-weekly]" >&2
  exit 2
}
quote() {  # WORD: it, single-quoted for the box's shell
  printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}
[ $# -ge 1 ] || usage
host=$1
shift
port=22
options=
while [ $# -gt 0 ]; do
  case $1 in
    --port) port=${2:?}; shift 2 ;;
    --domain|--mail-url) options="$options $1 $(quote "${2:?$1 needs a value}")"; shift 2 ;;
    --no-upgrade|--refresh-weekly|--no-refresh-weekly) options="$options $1"; shift ;;
    *) usage ;;
  esac
done

# box.sh, the units and the cron scripts go in one tar file; the box unpacks them in a temporary
# directory (a file, not a pipe: sh has no pipefail, and a tar that failed must fail the run)
bundle=$(mktemp)
trap 'rm -f "$bundle"' EXIT
trap 'exit 130' HUP INT TERM
tar -czf "$bundle" -C "$here" box.sh lorebase.service lorebase-files.service refresh.sh start.sh
# shellcheck disable=SC2016 # expanded on the box
remote='t=$(mktemp -d) && tar -xzf - -C "$t" && S= && { [ "$(id -u)" = 0 ] || S="sudo -n"; } &&
  $S bash "$t/box.sh" provision'"$options"'; rc=$?; rm -rf "$t"; exit $rc'
if [ -n "${LOREBASE_PYTHON:-}" ]; then  # seconds, with a tenth when a Python can say it
  now() { "$LOREBASE_PYTHON" -c 'import time; print(f"{time.time():.2f}")'; }
else
  now() { date +%s; }
fi
start=$(now)
# shellcheck disable=SC2086 # DEPLOY_SSH is a command with its arguments ("ssh -F FILE")
${DEPLOY_SSH:-ssh} -p "$port" -o BatchMode=yes "$host" "$remote" <"$bundle"
awk -v a="$start" -v b="$(now)" -v h="$host" 'BEGIN { printf "provision.sh: %s done in %.1f s\n", h, b - a }'
