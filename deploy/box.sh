#!/usr/bin/env bash
# What runs on the box, as root. deploy/provision.sh and deploy/deploy.sh send it over ssh;
# nothing else needs to be on the box first. One command per call:
#
#   box.sh provision [--domain D] [--mail-url URL] [--no-upgrade]   set the box up (idempotent)
#   box.sh receive PACK RELEASE        unpack a release (a tar.gz from deploy.sh) into releases/
#   box.sh install RELEASE ENV         its venv, its settings checked, its nginx site rendered
#   box.sh activate RELEASE ENV        switch `current`, reload, check; on failure roll back
#   box.sh prune KEEP                  keep the newest KEEP releases (and current, previous)
#
# LOREBASE_BOX_ROOT (default empty: the box itself) puts every path this script writes under
# a directory: a box inside a box, for the tests and for containers. There the system's
# services are not ours: nothing is reloaded but lorebase itself, which runs without systemd
# (see `service_*` below; that is also how it runs on a box without systemd).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
umask 022

R="${LOREBASE_BOX_ROOT:-}"
R="${R%/}"
ETC="$R/etc/lorebase"        # secret.py (COOKIE_SECRET, REDIS_URL, MAIL_URL...), env, box, tls/
APP="$R/opt/lorebase"        # releases/<UTC time>-<commit>/, current -> one of them, previous
DATA="$R/var/lib/lorebase"   # DATA_DIR: the only place lorebase writes
LOGS="$R/var/log/lorebase"   # lorebase's output when it runs without systemd (else the journal)
PYTHON=/usr/bin/python3  # the distribution's (provision installs it), whatever else is on PATH
PACKAGES=(redis-server nginx certbot fail2ban python3-systemd python3 python3-venv curl openssl logrotate)

say() { printf '%s\n' "$*"; }
die() { printf 'box: %s\n' "$*" >&2; exit 1; }
with_systemd() { [ -z "$R" ] && [ -d /run/systemd/system ]; }

# ---- provision ---------------------------------------------------------------------------

changed=0
ok() { printf '  ok       %s\n' "$*"; }
did() { printf '  changed  %s\n' "$*"; changed=$((changed + 1)); }

# put_file PATH MODE OWNER:GROUP < content: write only if different (content, mode or owner)
put_file() {
  local path=$1 mode=$2 owner=$3 tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [ -f "$path" ] && cmp -s "$tmp" "$path" && [ "$(stat -c '%a %u:%g' "$path")" = "$mode $(ids "$owner")" ]; then
    rm -f "$tmp"
    ok "$path"
    return 1
  fi
  mkdir -p "$(dirname "$path")"
  chown "$(ids "$owner")" "$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$path"
  did "$path"
}

# ids USER:GROUP -> UID:GID, read from the box's own passwd and group files
ids() {
  local user=${1%%:*} group=${1#*:} uid gid
  uid=$(awk -F: -v n="$user" '$1 == n { print $3 }' "$R/etc/passwd")
  gid=$(awk -F: -v n="$group" '$1 == n { print $3 }' "$R/etc/group")
  if [ -z "$uid" ] || [ -z "$gid" ]; then die "no user $user or group $group in $R/etc/passwd"; fi
  printf '%s:%s' "$uid" "$gid"
}

# the supplementary groups of USER, as GIDs (for setpriv)
groups_of() {
  awk -F: -v n="$1" '{ split($4, m, ","); for (i in m) if (m[i] == n) { printf "%s%s", sep, $3; sep = "," } }' \
    "$R/etc/group"
}

ensure_dir() {  # PATH MODE OWNER:GROUP
  local path=$1 mode=$2 owner=$3
  if [ -d "$path" ] && [ "$(stat -c '%a %u:%g' "$path")" = "$mode $(ids "$owner")" ]; then
    ok "$path/"
    return
  fi
  mkdir -p "$path"
  chown "$(ids "$owner")" "$path"
  chmod "$mode" "$path"
  did "$path/"
}

provision_packages() {
  local missing=() pkg upgradable
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ] || [ "$upgrade" = 1 ]; then
    apt-get update -qq
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get install -y -qq -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null
    did "packages installed: ${missing[*]}"
  else
    ok "packages: ${PACKAGES[*]}"
  fi
  if [ "$upgrade" = 1 ]; then
    upgradable=$(apt-get -s -qq upgrade | grep -c '^Inst ' || true)
    if [ "$upgradable" -gt 0 ]; then
      apt-get -y -qq -o Dpkg::Options::=--force-confold upgrade >/dev/null
      did "upgraded $upgradable packages"
    else
      ok "up to date"
    fi
  fi
}

provision_user() {
  local prefix=()
  if [ -n "$R" ]; then
    prefix=(--prefix "$R")
    local f
    for f in passwd group shadow gshadow; do  # the box's base files, as a fresh system has them
      [ -f "$R/etc/$f" ] || { mkdir -p "$R/etc"; cp -p "/etc/$f" "$R/etc/$f"; }
    done
  fi
  if awk -F: '$1 == "lorebase" { found = 1 } END { exit !found }' "$R/etc/passwd"; then
    ok "user lorebase"
  else
    useradd "${prefix[@]}" --system --user-group --home-dir /var/lib/lorebase --no-create-home \
      --shell /usr/sbin/nologin --comment "lorebase server" lorebase
    did "user lorebase (system, no login)"
  fi
  # the Redis socket is the redis group's (unixsocketperm 770)
  if [[ ",$(awk -F: '$1 == "redis" { print $4 }' "$R/etc/group")," = *",lorebase,"* ]]; then
    ok "lorebase in group redis"
  else
    usermod "${prefix[@]}" -a -G redis lorebase
    did "lorebase in group redis"
  fi
}

secret_value() {  # KEY: its string value in secret.py, or nothing
  [ -f "$ETC/secret.py" ] || return 0
  sed -n "s/^$1 = \"\\(.*\\)\"\$/\\1/p" "$ETC/secret.py" | tail -n 1
}

random_token() { openssl rand -hex 32; }

provision_secrets() {
  local cookie redis_url mail_url socket password
  socket=/run/redis/redis-server.sock
  [ -z "$R" ] || socket="$R/run/redis/redis-server.sock"
  cookie=$(secret_value COOKIE_SECRET)
  [ -n "$cookie" ] || cookie=$(random_token)
  redis_url=$(secret_value REDIS_URL)
  [ -n "$redis_url" ] || redis_url="unix://lorebase:$(random_token)@$socket"
  mail_url=${opt_mail_url:-$(secret_value MAIL_URL)}
  {
    printf '# lorebase prod secrets (deploy/box.sh provision). Later runs keep the generated values\n'
    printf '# and everything below the "yours below" line; provision --mail-url replaces MAIL_URL.\n'
    printf 'COOKIE_SECRET = "%s"\n' "$cookie"
    printf 'REDIS_URL = "%s"\n' "$redis_url"
    [ -z "$mail_url" ] || printf 'MAIL_URL = "%s"\n' "$mail_url"
    sed -n '/^# -- yours below --$/,$p' "$ETC/secret.py" 2>/dev/null | grep . ||
      printf '# -- yours below --\n'
  } | put_file "$ETC/secret.py" 640 root:lorebase || true
  [ -n "$mail_url" ] || say "  note     MAIL_URL is not set: lorebase prod will not start without it" \
    "(provision --mail-url smtp://user:pass@host:587)"
  password=${redis_url#unix://lorebase:}
  password=${password%%@*}
  REDIS_PASSWORD_SHA=$(printf '%s' "$password" | sha256sum | cut -d' ' -f1)
  if [ ! -f "$ETC/env" ]; then
    {
      printf '# LOREBASE_<KEY>=value lines for lorebase prod (systemd EnvironmentFile); yours to edit\n'
      [ -z "$R" ] || printf 'LOREBASE_DATA_DIR=%s\n' "$DATA"
    } | put_file "$ETC/env" 640 root:lorebase || true
  else
    ok "$ETC/env (yours: not rewritten)"
  fi
}

provision_redis() {
  local conf="$R/etc/redis/redis.conf" redis_changed=0 run="" lib=/var/lib/redis log=/var/log/redis
  [ -f "$conf" ] || { [ -n "$R" ] && mkdir -p "$R/etc/redis" && cp -p /etc/redis/redis.conf "$conf"; } ||
    die "$conf is missing: is redis-server installed?"
  if [ -n "$R" ]; then
    run="$R/run/redis" lib="$R/var/lib/redis" log="$R/var/log/redis"
    mkdir -p "$run" "$lib" "$log"
    chown redis:redis "$run" "$lib" "$log"
  fi
  {
    printf '# lorebase settings for Debian'"'"'s redis-server (deploy/box.sh provision; rewritten by it)\n'
    printf 'port 0\n'                                   # no TCP at all: the unix socket only
    printf 'unixsocket %s\n' "${run:-/run/redis}/redis-server.sock"
    printf 'unixsocketperm 770\n'                       # the redis group, which lorebase is in
    printf 'protected-mode yes\n'
    printf 'appendonly yes\nappendfsync everysec\n'     # AOF (at most a second lost) and RDB
    printf 'save 3600 1 300 100 60 10000\n'
    printf 'maxmemory-policy noeviction\n'              # a full Redis refuses writes; it never drops keys
    printf 'aclfile %s\n' "$R/etc/redis/users.acl"
    if [ -n "$R" ]; then  # a box inside a box: its own paths; run in the foreground by its supervisor
      printf 'dir %s\npidfile %s\nlogfile %s\ndaemonize no\n' "$lib" "$run/redis-server.pid" \
        "$log/redis-server.log"
    fi
  } | put_file "$R/etc/redis/lorebase.conf" 640 redis:redis && redis_changed=1
  # lorebase's user: every command but the dangerous ones (CONFIG, DEBUG, KEYS, SHUTDOWN, MONITOR,
  # REPLICAOF, MIGRATE, ACL, MODULE, SAVE...), except INFO (beat), RESTORE and FLUSHALL (restore)
  {
    printf 'user default off\n'
    printf 'user lorebase on #%s ~* &* +@all -@dangerous +info +restore +flushall\n' "$REDIS_PASSWORD_SHA"
  } | put_file "$R/etc/redis/users.acl" 640 redis:redis && redis_changed=1
  if grep -qx "include $R/etc/redis/lorebase.conf" "$conf"; then
    ok "$conf includes lorebase.conf"
  else
    printf '\n# lorebase (deploy/box.sh provision): its settings win over the ones above\ninclude %s\n' \
      "$R/etc/redis/lorebase.conf" >>"$conf"
    did "$conf includes lorebase.conf"; redis_changed=1
  fi
  if with_systemd; then
    systemctl enable -q redis-server
    if [ "$redis_changed" = 1 ] || ! systemctl -q is-active redis-server; then
      systemctl restart redis-server
      did "redis-server restarted"
    fi
  elif [ "$redis_changed" = 1 ]; then
    say "  note     no systemd here: start (or restart) redis-server $conf yourself"
  fi
}

provision_tls() {
  local name=${opt_domain:-$(hostname -f 2>/dev/null || hostname)}
  if [ -s "$ETC/tls/cert.pem" ] && [ -s "$ETC/tls/key.pem" ]; then
    ok "$ETC/tls/ (self-signed, until certbot's certificate is there)"
  else
    mkdir -p "$ETC/tls"
    chmod 755 "$ETC/tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$name" \
      -keyout "$ETC/tls/key.pem" -out "$ETC/tls/cert.pem" 2>/dev/null
    chmod 600 "$ETC/tls/key.pem"
    chmod 644 "$ETC/tls/cert.pem"
    did "$ETC/tls/ (a self-signed certificate for $name)"
  fi
  ensure_dir "$R/var/www/letsencrypt" 755 root:root
  local domain=${opt_domain:-$(box_value DOMAIN)}
  printf '# the box (deploy/box.sh provision --domain)\nDOMAIN=%s\n' "${domain:-$name}" |
    put_file "$ETC/box" 644 root:root || true
}

box_value() { [ -f "$ETC/box" ] && sed -n "s/^$1=//p" "$ETC/box" | tail -n 1; }

provision_services() {
  sed -e "s#/opt/lorebase#$APP#g" -e "s#/etc/lorebase#$ETC#g" -e "s#/var/lib/lorebase#$DATA#g" \
    "$here/lorebase.service" | put_file "$R/etc/systemd/system/lorebase.service" 644 root:root &&
    { ! with_systemd || { systemctl daemon-reload && systemctl enable -q lorebase; }; }
  {
    printf '# lorebase'"'"'s output when it runs without systemd (deploy/box.sh provision)\n'
    printf '%s/*.log {\n  weekly\n  rotate 8\n  compress\n  delaycompress\n  missingok\n' "$LOGS"
    printf '  notifempty\n  copytruncate\n}\n'
  } | put_file "$R/etc/logrotate.d/lorebase" 644 root:root || true
  {
    printf '# deploy/box.sh provision: ssh from the journal (Debian 12 has no auth.log), and the\n'
    printf '# addresses nginx keeps answering 429 on /auth/ (limit_req) banned for an hour\n'
    printf '[sshd]\nenabled = true\nbackend = systemd\n\n'
    printf '[nginx-limit-req]\nenabled = true\nport = http,https\nlogpath = /var/log/nginx/error.log\n'
    printf 'maxretry = 20\nfindtime = 600\nbantime = 3600\n'
  } | put_file "$R/etc/fail2ban/jail.d/lorebase.conf" 644 root:root &&
    { ! with_systemd || systemctl restart fail2ban; }
  if with_systemd; then systemctl enable -q --now fail2ban nginx; fi
}

provision() {
  local opt_domain="" opt_mail_url="" upgrade=1
  while [ $# -gt 0 ]; do
    case $1 in
      --domain) opt_domain=${2:?--domain needs a name}; shift 2 ;;
      --mail-url) opt_mail_url=${2:?--mail-url needs a URL}; shift 2 ;;
      --no-upgrade) upgrade=0; shift ;;
      *) die "provision: unknown option $1" ;;
    esac
  done
  say "provision ${R:-/}"
  provision_packages
  provision_user
  ensure_dir "$DATA" 750 lorebase:lorebase
  ensure_dir "$LOGS" 750 lorebase:lorebase
  ensure_dir "$APP" 755 root:root
  ensure_dir "$APP/releases" 755 root:root
  ensure_dir "$ETC" 750 root:lorebase
  provision_secrets
  provision_redis
  provision_tls
  provision_services
  if [ "$changed" = 0 ]; then
    say "provision: nothing changed"
  else
    say "provision: $changed changed"
  fi
}

# ---- releases ----------------------------------------------------------------------------

# lorebase prod's environment, as its unit sets it, in this shell (call it in a subshell)
lorebase_env() {
  set -a
  # shellcheck disable=SC1091
  [ ! -f "$ETC/env" ] || . "$ETC/env"
  set +a
  export LOREBASE_SECRET_FILE="$ETC/secret.py" HOME="$DATA"
  cd "$APP/current" 2>/dev/null || cd /
}

# exec COMMAND... as the box's lorebase user and groups (ids from the box's own files)
exec_as_lorebase() {
  local uid_gid groups
  uid_gid=$(ids lorebase:lorebase)
  groups=$(groups_of lorebase)
  if [ -n "$groups" ]; then set -- --groups="$groups" "$@"; else set -- --clear-groups "$@"; fi
  exec setpriv --reuid="${uid_gid%:*}" --regid="${uid_gid#*:}" "$@"
}

as_lorebase() { (lorebase_env; exec_as_lorebase "$@"); }

release_dir() {
  case $1 in ''|*/*|.*) die "bad release name $1" ;; esac
  printf '%s/releases/%s' "$APP" "$1"
}

receive() {  # PACK RELEASE
  local pack=$1 dir
  dir=$(release_dir "$2")
  [ ! -e "$dir" ] || die "release $2 exists already"
  mkdir -p "$APP/releases/.incoming-$2"
  tar -xzf "$pack" --no-same-owner --no-same-permissions -C "$APP/releases/.incoming-$2"
  mv -T "$APP/releases/.incoming-$2" "$dir"  # a half-unpacked release never looks like one
  rm -f "$pack"
}

install() {  # RELEASE ENV
  local dir env=$2 domain cert key
  dir=$(release_dir "$1")
  "$PYTHON" -m venv "$dir/.venv"
  "$dir/.venv/bin/pip" install -q --disable-pip-version-check -e "$dir" >"$dir/.pip.log" 2>&1 ||
    { cat "$dir/.pip.log" >&2; die "pip install failed"; }
  # the settings of this release with the box's secrets: refused here, not after the switch
  as_lorebase "$dir/.venv/bin/lorebase" openapi "$env" >/dev/null
  domain=$(box_value DOMAIN)
  cert="$ETC/tls/cert.pem" key="$ETC/tls/key.pem"
  if [ -s "/etc/letsencrypt/live/$domain/fullchain.pem" ]; then
    cert="/etc/letsencrypt/live/$domain/fullchain.pem" key="/etc/letsencrypt/live/$domain/privkey.pem"
  fi
  as_lorebase "$dir/.venv/bin/lorebase" nginx "$env" --domain "${domain:-localhost}" --cert "$cert" \
    --key "$key" --static "$APP/current/lorebase/web" >"$dir/nginx.conf"
  nginx_test "$dir/nginx.conf"
}

nginx_test() {  # SITE: `nginx -t` on the site inside a minimal main config
  local tmp
  tmp=$(mktemp -d)
  printf 'pid %s/nginx.pid;\nerror_log stderr;\nevents {}\nhttp {\n  access_log off;\n  include %s;\n}\n' \
    "$tmp" "$1" >"$tmp/nginx.conf"
  if ! nginx -q -t -c "$tmp/nginx.conf" -p "$tmp" 2>"$tmp/err"; then
    cat "$tmp/err" >&2; rm -rf "$tmp"; die "the nginx site of this release does not pass nginx -t"
  fi
  rm -rf "$tmp"
}

nginx_site() {  # RELEASE: the box's nginx serves this release's site
  local dir
  dir=$(release_dir "$1")
  if [ -n "$R" ]; then
    mkdir -p "$R/etc/nginx/sites-available"
    cp "$dir/nginx.conf" "$R/etc/nginx/sites-available/lorebase"
    return
  fi
  if cmp -s "$dir/nginx.conf" /etc/nginx/sites-available/lorebase; then return; fi
  cp "$dir/nginx.conf" /etc/nginx/sites-available/lorebase
  ln -sfn /etc/nginx/sites-available/lorebase /etc/nginx/sites-enabled/lorebase
  rm -f /etc/nginx/sites-enabled/default
  nginx -q -t
  if with_systemd; then systemctl reload nginx; else nginx -s reload 2>/dev/null || nginx; fi
}

link() {  # NAME TARGET: NAME -> TARGET, switched in one rename
  ln -sfn "$2" "$APP/.$1.new"
  mv -T "$APP/.$1.new" "$APP/$1"
}

setting() {  # KEY ENV: the value lorebase ENV has on this box
  as_lorebase "$APP/current/.venv/bin/lorebase" config "$2" --get "$1"
}

# ---- lorebase the service: systemd's unit, or (no systemd, or a box root) a pid file ----------

PIDFILE="$R/run/lorebase.pid"

service_running() {
  if with_systemd; then systemctl -q is-active lorebase; return; fi
  [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

service_start() {  # ENV
  if with_systemd; then systemctl start lorebase; return; fi
  mkdir -p "$(dirname "$PIDFILE")"
  (lorebase_env; exec_as_lorebase setsid "$APP/current/.venv/bin/lorebase" serve "$1") \
    >>"$LOGS/lorebase.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"  # the subshell's pid, which exec makes the master's
}

service_reload() {  # ENV: SIGHUP (the master re-executes the code `current` points to), or start
  if ! service_running; then service_start "$1"; return; fi
  if with_systemd; then systemctl reload lorebase; else kill -HUP "$(cat "$PIDFILE")"; fi
}

# serving RELEASE ENV SINCE: lorebase answers /health with this release's code, all its workers
# started after SINCE (from DATA_DIR/master.json, written by the master once they serve)
serving() {
  local dir=$1 env=$2 since=$3 host port data state
  host=$(setting HOST "$env") port=$(setting PORT "$env") data=$(setting DATA_DIR "$env")
  case $host in ''|0.0.0.0) host=127.0.0.1 ;; ::) host=::1 ;; esac
  case $host in *:*) host="[$host]" ;; esac
  for _ in $(seq 120); do
    state=$(cat "$data/master.json" 2>/dev/null || true)
    if "$PYTHON" - "$state" "$dir" "$since" <<'EOF'
import json, sys
try:
    state = json.loads(sys.argv[1])
except ValueError:
    sys.exit(1)
code_ok = (state["code"] + "/").startswith(sys.argv[2] + "/")
sys.exit(0 if code_ok and state["serving_since"] >= float(sys.argv[3]) else 1)
EOF
    then
      if curl -fsS -m 5 -o /dev/null "http://$host:$port/health"; then return 0; fi
      say "  /health does not answer 200 with $(basename "$dir") serving" >&2
      return 1
    fi
    sleep 0.5
  done
  say "  $(basename "$dir") is not serving after 60 s (its master.json: ${state:-none})" >&2
  return 1
}

activate() {  # RELEASE ENV
  local rel=$1 env=$2 dir prev since
  dir=$(release_dir "$rel")
  [ -d "$dir/.venv" ] || die "release $rel is not installed"
  prev=$(readlink "$APP/current" 2>/dev/null || true)
  [ "$prev" != "$dir" ] || die "release $rel is the current one already"
  since=$(date +%s.%N)
  link current "$dir"
  nginx_site "$rel"
  service_reload "$env"
  if serving "$dir" "$env" "$since"; then
    [ -z "$prev" ] || link previous "$prev"
    say "  serving $rel"
    return 0
  fi
  if [ -z "$prev" ]; then
    say "  no release before $rel to go back to: lorebase is left as it is (see its log)" >&2
    return 1
  fi
  say "  rolling back to $(basename "$prev")" >&2
  since=$(date +%s.%N)
  link current "$prev"
  nginx_site "$(basename "$prev")"
  service_reload "$env"
  if serving "$prev" "$env" "$since"; then
    say "  rolled back: serving $(basename "$prev")" >&2
  else
    say "  the rollback to $(basename "$prev") does not serve either" >&2
  fi
  return 1
}

prune() {  # KEEP
  local keep=$1 current previous name count=0
  current=$(basename "$(readlink "$APP/current" 2>/dev/null || echo none)")
  previous=$(basename "$(readlink "$APP/previous" 2>/dev/null || echo none)")
  for name in $(find "$APP/releases" -mindepth 1 -maxdepth 1 -type d ! -name '.*' -printf '%f\n' | sort -r); do
    count=$((count + 1))
    if [ "$count" -le "$keep" ] || [ "$name" = "$current" ] || [ "$name" = "$previous" ]; then continue; fi
    rm -rf "${APP:?}/releases/$name"
    say "  removed $name"
  done
  find "$APP/releases" -mindepth 1 -maxdepth 1 -name '.incoming-*' -mmin +60 -exec rm -rf {} +
}

here=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" = 0 ] || die "run as root (deploy.sh and provision.sh use sudo -n when they log in as another user)"
command=${1:-}
shift || true
case $command in
  provision) provision "$@" ;;
  receive) receive "$@" ;;
  install) install "$@" ;;
  activate) activate "$@" ;;
  prune) prune "$@" ;;
  *) die "usage: box.sh provision|receive|install|activate|prune ..." ;;
esac
