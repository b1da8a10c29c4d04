#!/usr/bin/env bash
# The lorebase repository's own deploy: lorebase/deploy/deploy.sh (what `lorebase deploy` runs
# in any project) with this repository as the project. deploy/deploy.sh ENV [confirm]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
LOREBASE_PROJECT=$root exec bash "$root/lorebase/deploy/deploy.sh" "$@"
