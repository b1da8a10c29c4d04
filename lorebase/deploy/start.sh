#!/bin/sh
# At boot (the @reboot line of /etc/cron.d/lorebase, which provision writes; docs: Deploy): the
# seed's start.sh, that brings the app back after a reboot. With systemd and lorebase.service
# enabled (provision enables it), systemd has already started Redis, then lorebase (the unit is
# After=redis-server): this starts nothing a second time, it waits for /health and says in the
# log whether lorebase came back. Otherwise (the unit disabled by hand, or a box without
# systemd) it starts Redis, then lorebase, then waits the same way.
set -eu
stamp() { printf '%s start: %s\n' "$(date -u +%FT%TZ)" "$*"; }
# lorebase prod's address on the box, from its settings (as the operator's command reads them)
setting() { /usr/local/bin/lorebase config prod --get "$1" 2>/dev/null || true; }
host=$(setting HOST)
port=$(setting PORT)
case $host in ''|0.0.0.0) host=127.0.0.1 ;; ::) host='[::1]' ;; *:*) host="[$host]" ;; esac

if [ -d /run/systemd/system ]; then
  if systemctl -q is-enabled lorebase 2>/dev/null; then
    stamp "lorebase.service is enabled: systemd starts it at boot, after redis-server"
  else
    systemctl start redis-server 2>/dev/null || true
    systemctl start lorebase
    stamp "redis-server and lorebase started (lorebase.service is not enabled)"
  fi
else
  service redis-server status >/dev/null 2>&1 || service redis-server start >/dev/null
  bash /opt/lorebase/current/.box.sh start prod  # lorebase from its pid file, as a deploy starts it
  stamp "redis-server and lorebase started (no systemd)"
fi
for _ in $(seq 60); do
  if curl -fsS -m 5 -o /dev/null "http://$host:${port:-8000}/health"; then
    stamp "lorebase answers /health"
    exit 0
  fi
  sleep 1
done
stamp "lorebase did not answer /health within 60 s: journalctl -u lorebase"
exit 1
