#!/bin/sh
# The lorebase repository's own deploy: lorebase/deploy/deploy.sh (what `lorebase deploy` runs
# in any project) with this repository as the project. deploy/deploy.sh ENV [confirm]
# POSIX sh, as the script it runs (a Mac deploys too): `sh` is the one on the PATH.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
LOREBASE_PROJECT=$root exec sh "$root/lorebase/deploy/deploy.sh" "$@"
