#!/usr/bin/env bash
# At boot (cron @reboot, README): Redis first, then lorebase, then wait for /health. systemd's
# ordering does the same (the unit is After=redis-server); this says so in the log, and waits.
set -euo pipefail
stamp() { printf '%s start: %s\n' "$(date -u +%FT%TZ)" "$*"; }
port="${LOREBASE_PORT:-8000}"

if systemctl list-unit-files redis-server.service >/dev/null 2>&1; then
  systemctl start redis-server
  stamp "redis-server started"
fi
systemctl start lorebase
for _ in $(seq 60); do
  if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
    stamp "lorebase answers /health"
    exit 0
  fi
  sleep 1
done
stamp "lorebase did not answer /health within 60 s: journalctl -u lorebase"
exit 1
