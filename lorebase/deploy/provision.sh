#!/usr/bin/env bash
# Sets a fresh Ubuntu LTS or Debian stable box up for lorebase, over ssh (docs: Deploy):
#   lorebase provision [user@]HOST [--port N] [--domain D] [--mail-url URL] [--no-upgrade]
# (in the lorebase repository: deploy/provision.sh ...). The box is the same for every project:
# what differs between them comes with each deploy.
# Run it again whenever you like: it changes only what differs, and says "nothing changed".
# The login needs root, or sudo without a password. DEPLOY_SSH (default: ssh) is the ssh command.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)  # box.sh and the units, beside this script
usage() { echo "usage: lorebase provision [user@]HOST [--port N] [--domain D] [--mail-url URL] [--no-upgrade]" >&2; exit 2; }
[ $# -ge 1 ] || usage
host=$1
shift
port=22
args=()
while [ $# -gt 0 ]; do
  case $1 in
    --port) port=${2:?}; shift 2 ;;
    --domain|--mail-url) args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    --no-upgrade) args+=("$1"); shift ;;
    *) usage ;;
  esac
done
read -r -a ssh <<<"${DEPLOY_SSH:-ssh}"
ssh+=(-p "$port" -o BatchMode=yes "$host")

# box.sh, the units and the cron scripts go in one tar stream; the box unpacks them in a temporary directory
# shellcheck disable=SC2016 # expanded on the box
remote='t=$(mktemp -d) && tar -xzf - -C "$t" && S= && { [ "$(id -u)" = 0 ] || S="sudo -n"; } &&
  $S bash "$t/box.sh" provision'
for arg in "${args[@]}"; do remote+=" $(printf '%q' "$arg")"; done
# shellcheck disable=SC2016
remote+='; rc=$?; rm -rf "$t"; exit $rc'
start=$EPOCHREALTIME
tar -czf - -C "$here" box.sh lorebase.service lorebase-files.service refresh.sh start.sh | "${ssh[@]}" "$remote"
awk -v a="$start" -v b="$EPOCHREALTIME" -v h="$host" 'BEGIN { printf "provision.sh: %s done in %.1f s\n", h, b - a }'
