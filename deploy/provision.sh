#!/usr/bin/env bash
# Provisions a box for the lorebase repository: lorebase/deploy/provision.sh, the one copy (what
# `lorebase provision` runs in any project). deploy/provision.sh [user@]HOST [--port N] ...
set -euo pipefail
exec bash "$(dirname "$0")/../lorebase/deploy/provision.sh" "$@"
