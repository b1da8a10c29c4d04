#!/bin/sh
# Keeping the server fresh (the seed): the system's updates, and a reboot when they need one.
# lorebase stops before Redis, never the other way round: its workers finish their requests
# and the tasks process its jobs while Redis still answers. Run by cron as root, weekly, when
# provision was asked for it (--refresh-weekly: /etc/cron.d/lorebase; docs: Deploy). Not on a data
# server: a Redis that restarts on its own every week is an outage every week.
set -eu  # POSIX sh: nothing here needs bash
export DEBIAN_FRONTEND=noninteractive
stamp() { printf '%s refresh: %s\n' "$(date -u +%FT%TZ)" "$*"; }

apt-get update -qq
stopped=
if apt-get -s -qq upgrade | grep -q '^Inst redis-server '; then
  stamp "redis-server will be upgraded: lorebase stops first"
  systemctl stop lorebase
  stopped=1
fi
apt-get -y -qq -o Dpkg::Options::=--force-confold upgrade
apt-get -y -qq autoremove
if [ -f /var/run/reboot-required ]; then
  stamp "a reboot is required: lorebase, then Redis, then the reboot"
  systemctl stop lorebase
  systemctl stop redis-server 2>/dev/null || true
  systemctl reboot
  exit 0
fi
if [ -n "$stopped" ]; then
  systemctl start lorebase
  stamp "lorebase started again"
fi
stamp "done"
