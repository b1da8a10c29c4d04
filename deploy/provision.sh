#!/bin/sh
# Provisions a box for the lorebase repository: lorebase/deploy/provision.sh, the one copy (what
# `lorebase provision` runs in any project). deploy/provision.sh [user@]HOST [--port N] ...
# POSIX sh, as the script it runs (a Mac provisions too): `sh` is the one on the PATH.
set -eu
exec sh "$(dirname "$0")/../lorebase/deploy/provision.sh" "$@"
