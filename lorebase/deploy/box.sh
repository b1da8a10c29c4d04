#!/usr/bin/env bash
# What runs on the box, as root. provision.sh and deploy.sh (`lorebase provision`, `lorebase
# deploy`) send it over ssh; nothing else needs to be on the box first. It is bash, which every
# Debian and Ubuntu box has; the scripts that run on the deploying machine are POSIX sh (a Mac's
# /bin/sh). One command per call:
#
#   box.sh provision [--domain D] [--mail-url URL] [--no-upgrade] [--refresh-weekly | --no-refresh-weekly]
#                                      set the box up (idempotent)
#   box.sh receive PACK RELEASE        unpack a release (a tar.gz from deploy.sh) into releases/,
#                                      this box.sh with it (.box.sh: the later steps run it)
#   box.sh install RELEASE ENV         its venv, its settings checked, its nginx site rendered
#   box.sh activate RELEASE ENV        switch `current`, reload, check; on failure roll back
#   box.sh prune KEEP                  keep the newest KEEP releases (and current, previous)
#   box.sh start ENV                   start lorebase if it is not running (start.sh, at boot, without systemd)
#
# With systemd (a VM or a server) the services are systemd's; without it (a container) they are
# the packages' init scripts (`service`), and lorebase runs from a pid file (service_* below).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
umask 022

ETC=/etc/lorebase          # secret.py (COOKIE_SECRET, BACKUP_KEY, REDIS_URL, MAIL_URL...), env, box, pip.conf, tls/
APP=/opt/lorebase          # releases/<UTC time>-<commit>/ (a project), current -> one of them, previous
DATA=/var/lib/lorebase     # DATA_DIR: the only place lorebase writes
LOGS=/var/log/lorebase     # lorebase's output when it runs without systemd (else the journal)
PYTHON=/usr/bin/python3  # the distribution's (provision installs it), whatever else is on PATH
PACKAGES=(redis-server nginx certbot fail2ban python3-systemd python3 python3-venv curl openssl logrotate cron)

say() { printf '%s\n' "$*"; }
die() { printf 'box: %s\n' "$*" >&2; exit 1; }
with_systemd() { [ -d /run/systemd/system ]; }
svc() {  # ACTION NAME: systemctl's, or the init script's (a box without systemd)
  # 9>&-: a daemon started here must not hold activate's lock (fd 9) for the rest of its life
  if with_systemd; then systemctl "$1" "$2"; else service "$2" "$1" >/dev/null 9>&-; fi
}
svc_running() {
  if with_systemd; then systemctl -q is-active "$1"; else service "$1" status >/dev/null 2>&1; fi
}

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

# ids USER:GROUP -> UID:GID
ids() {
  local user=${1%%:*} group=${1#*:} uid gid
  uid=$(id -u "$user") || die "no user $user"
  gid=$(getent group "$group" | cut -d: -f3)
  [ -n "$gid" ] || die "no group $group"
  printf '%s:%s' "$uid" "$gid"
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
  if id lorebase >/dev/null 2>&1; then
    ok "user lorebase"
  else
    useradd --system --user-group --home-dir "$DATA" --no-create-home --shell /usr/sbin/nologin \
      --comment "lorebase server" lorebase
    did "user lorebase (system, no login)"
  fi
  if id -nG lorebase | tr ' ' '\n' | grep -qx redis; then  # the Redis socket is the redis group's
    ok "lorebase in group redis"
  else
    usermod -a -G redis lorebase
    did "lorebase in group redis"
  fi
}

secret_value() {  # KEY: its string value in secret.py, or nothing
  [ -f "$ETC/secret.py" ] || return 0
  sed -n "s/^$1 = \"\\(.*\\)\"\$/\\1/p" "$ETC/secret.py" | tail -n 1
}

random_token() { openssl rand -hex 32; }

provision_secrets() {
  local cookie backup_key redis_url mail_url password backup_password socket=/run/redis/redis-server.sock
  cookie=$(secret_value COOKIE_SECRET)
  [ -n "$cookie" ] || cookie=$(random_token)
  backup_key=$(secret_value BACKUP_KEY)
  if [ -z "$backup_key" ]; then
    backup_key=$(random_token)
    say "  note     BACKUP_KEY generated: keep a copy off this box (no backup restores without it), and give" \
      "every API node of this deployment the same one (sudo grep BACKUP_KEY $ETC/secret.py)"
  fi
  redis_url=$(secret_value REDIS_URL)
  [ -n "$redis_url" ] || redis_url="unix://lorebase:$(random_token)@$socket"
  backup_password=$(secret_value BACKUP_REDIS_PASSWORD)  # backups' and restores' own Redis user
  [ -n "$backup_password" ] || backup_password=$(random_token)
  mail_url=${opt_mail_url:-$(secret_value MAIL_URL)}
  {
    printf '# lorebase prod secrets (deploy/box.sh provision). Later runs keep the generated values\n'
    printf '# and everything below the "yours below" line; provision --mail-url replaces MAIL_URL.\n'
    printf 'COOKIE_SECRET = "%s"\n' "$cookie"
    printf 'BACKUP_KEY = "%s"\n' "$backup_key"
    printf 'REDIS_URL = "%s"\n' "$redis_url"
    printf 'BACKUP_REDIS_USER = "backup"\n'
    printf 'BACKUP_REDIS_PASSWORD = "%s"\n' "$backup_password"
    [ -z "$mail_url" ] || printf 'MAIL_URL = "%s"\n' "$mail_url"
    sed -n '/^# -- yours below --$/,$p' "$ETC/secret.py" 2>/dev/null | grep . ||
      printf '# -- yours below --\n'
  } | put_file "$ETC/secret.py" 640 root:lorebase || true
  [ -n "$mail_url" ] || say "  note     MAIL_URL is not set: lorebase prod will not start without it" \
    "(provision --mail-url smtp://user:pass@host:587)"
  password=${redis_url#unix://lorebase:}
  password=${password%%@*}
  REDIS_PASSWORD_SHA=$(printf '%s' "$password" | sha256sum | cut -d' ' -f1)
  BACKUP_PASSWORD_SHA=$(printf '%s' "$backup_password" | sha256sum | cut -d' ' -f1)
  if [ ! -f "$ETC/env" ]; then
    printf '# LOREBASE_<KEY>=value lines for lorebase prod (systemd EnvironmentFile); yours to edit\n' |
      put_file "$ETC/env" 640 root:lorebase || true
  else
    ok "$ETC/env (yours: not rewritten)"
  fi
}

provision_redis() {
  local conf=/etc/redis/redis.conf redis_changed=0
  [ -f "$conf" ] || die "$conf is missing: is redis-server installed?"
  {
    printf '# lorebase settings for Debian'"'"'s redis-server (deploy/box.sh provision; rewritten by it)\n'
    printf 'port 0\n'                                   # no TCP at all: the unix socket only
    printf 'unixsocket /run/redis/redis-server.sock\n'
    printf 'unixsocketperm 770\n'                       # the redis group, which lorebase is in
    printf 'protected-mode yes\n'
    printf 'appendonly yes\nappendfsync everysec\n'     # AOF (at most a second lost) and RDB
    printf 'save 3600 1 300 100 60 10000\n'
    printf 'maxmemory-policy noeviction\n'              # a full Redis refuses writes; it never drops keys
    printf 'aclfile /etc/redis/users.acl\n'
  } | put_file /etc/redis/lorebase.conf 640 redis:redis && redis_changed=1
  # lorebase's user (the API): every command but the dangerous ones (CONFIG, DEBUG, KEYS, SHUTDOWN,
  # MONITOR, REPLICAOF, MIGRATE, ACL, MODULE, SAVE, FLUSHALL, FLUSHDB, RESTORE, SYNC, PSYNC,
  # REPLCONF...), except INFO (beat) and ROLE. backup's (backups, restores, migrations): the same,
  # plus SYNC and REPLCONF (a backup is `redis-cli --rdb`), RESTORE and FLUSHALL (restore)
  {
    printf 'user default off\n'
    printf 'user lorebase on #%s ~* &* +@all -@dangerous +info +role\n' "$REDIS_PASSWORD_SHA"
    printf 'user backup on #%s ~* &* +@all -@dangerous +info +role +sync +replconf +restore +flushall\n' \
      "$BACKUP_PASSWORD_SHA"
  } | put_file /etc/redis/users.acl 640 redis:redis && redis_changed=1
  if grep -qx "include /etc/redis/lorebase.conf" "$conf"; then
    ok "$conf includes lorebase.conf"
  else
    printf '\n# lorebase (deploy/box.sh provision): its settings win over the ones above\ninclude %s\n' \
      /etc/redis/lorebase.conf >>"$conf"
    did "$conf includes lorebase.conf"; redis_changed=1
  fi
  if with_systemd; then systemctl enable -q redis-server; fi
  if [ "$redis_changed" = 1 ] || ! svc_running redis-server; then
    svc restart redis-server
    did "redis-server restarted"
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
  ensure_dir /var/www/letsencrypt 755 root:root
  local domain=${opt_domain:-$(box_value DOMAIN)}
  {
    printf '# the box (deploy/box.sh provision --domain, --refresh-weekly | --no-refresh-weekly)\n'
    printf 'DOMAIN=%s\nREFRESH_WEEKLY=%s\n' "${domain:-$name}" "$refresh"
  } | put_file "$ETC/box" 644 root:root || true
}

box_value() { [ -f "$ETC/box" ] && sed -n "s/^$1=//p" "$ETC/box" | tail -n 1; }

provision_services() {
  local sshd_jail='[sshd]\nenabled = true\nbackend = systemd\n'
  with_systemd || sshd_jail='[sshd]\n# no systemd journal here (and no auth.log): off\nenabled = false\n'
  put_file /etc/systemd/system/lorebase.service 644 root:root <"$here/lorebase.service" &&
    { ! with_systemd || { systemctl daemon-reload && systemctl enable -q lorebase; }; }
  # the file server's unit, there for the box that is to hold the files: enabled by hand
  # (README: The file server)
  if [ -f "$here/lorebase-files.service" ] &&
    put_file /etc/systemd/system/lorebase-files.service 644 root:root <"$here/lorebase-files.service" &&
    with_systemd; then
    systemctl daemon-reload
  fi
  # refresh.sh and start.sh, for the cron lines (docs: Deploy): the box's, whatever project it serves
  put_file /usr/local/lib/lorebase/refresh.sh 755 root:root <"$here/refresh.sh" || true
  put_file /usr/local/lib/lorebase/start.sh 755 root:root <"$here/start.sh" || true
  {
    printf '# lorebase'"'"'s output when it runs without systemd (deploy/box.sh provision)\n'
    printf '%s/*.log {\n  weekly\n  rotate 8\n  compress\n  delaycompress\n  missingok\n' "$LOGS"
    printf '  notifempty\n  copytruncate\n}\n'
  } | put_file /etc/logrotate.d/lorebase 644 root:root || true
  local jail_changed=0
  {
    printf '# deploy/box.sh provision: ssh logins (from the journal: Debian 12 has no auth.log), and\n'
    printf '# the addresses nginx keeps answering 429 on /auth/ (limit_req), banned for an hour\n'
    printf '%b\n' "$sshd_jail"
    printf '[nginx-limit-req]\nenabled = true\nport = http,https\nlogpath = /var/log/nginx/error.log\n'
    printf 'maxretry = 20\nfindtime = 600\nbantime = 3600\n'
  } | put_file /etc/fail2ban/jail.d/lorebase.conf 644 root:root && jail_changed=1
  if with_systemd; then systemctl enable -q fail2ban; fi
  if [ "$jail_changed" = 1 ] || ! svc_running fail2ban; then
    svc restart fail2ban
    did "fail2ban restarted"
  fi
}

# /etc/cron.d/lorebase: the seed's two cron lines. At boot, start.sh: with systemd it starts
# nothing (the enabled unit has started lorebase, after Redis) and logs whether /health answers;
# without systemd it starts them. Weekly, refresh.sh (updates, a reboot when they need one): only
# when asked (--refresh-weekly, remembered in /etc/lorebase/box), never by default, as the seed
# warns: a data server that restarts on its own each week is an outage each week
provision_cron() {
  local weekly='30 4 * * 1 root /usr/local/lib/lorebase/refresh.sh >>/var/log/lorebase/refresh.log 2>&1'
  {
    printf '# lorebase (deploy/box.sh provision; rewritten by it)\n'
    printf 'SHELL=/bin/sh\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n'
    printf '# at boot: start.sh checks that lorebase answers /health (systemd starts it: it starts nothing twice)\n'
    printf '@reboot root /usr/local/lib/lorebase/start.sh >>/var/log/lorebase/start.log 2>&1\n'
    printf '# weekly, Monday 04:30 (the box'"'"'s time): updates, and a reboot when they need one. Not on a data\n'
    printf '# server (its Redis restarting each week is an outage each week). lorebase provision HOST\n'
    if [ "$refresh" = yes ]; then
      printf '# --no-refresh-weekly turns it off\n%s\n' "$weekly"
    else
      printf '# --refresh-weekly turns it on\n# %s\n' "$weekly"
    fi
  } | put_file /etc/cron.d/lorebase 644 root:root || true
  if [ "$refresh" = yes ]; then
    say "  note     weekly refresh on: every Monday at 04:30 this box upgrades its packages and reboots when" \
      "they need it. Not on a data server (the box whose Redis other nodes use): a data server that" \
      "restarts on its own every week loses its availability every week; refresh it by hand," \
      "after checking the backups (provision --no-refresh-weekly turns it off)"
  fi
  if with_systemd; then
    systemctl enable -q cron
    svc_running cron || { svc start cron; did "cron started"; }
  fi
}

provision_command() {  # /usr/local/bin/lorebase: the command as lorebase prod runs it, for the operator
  cat <<EOF | put_file /usr/local/bin/lorebase 755 root:root || true
#!/bin/sh
# lorebase on this box (deploy/box.sh provision): as the lorebase user, with lorebase prod's
# settings, from the release that serves. With sudo: sudo lorebase backup prod, check prod...
set -e
[ "\$(id -u)" = 0 ] || { echo "lorebase: run it with sudo (it reads $ETC, then runs as lorebase)" >&2; exit 2; }
set -a
[ ! -f $ETC/env ] || . $ETC/env
set +a
export LOREBASE_SECRET_FILE=$ETC/secret.py LOREBASE_PROJECT=$APP/current HOME=$DATA
cd $DATA
exec setpriv --reuid=lorebase --regid=lorebase --init-groups $APP/current/.venv/bin/lorebase "\$@"
EOF
}

provision() {
  local opt_domain="" opt_mail_url="" opt_refresh="" refresh upgrade=1
  while [ $# -gt 0 ]; do
    case $1 in
      --domain) opt_domain=${2:?--domain needs a name}; shift 2 ;;
      --mail-url) opt_mail_url=${2:?--mail-url needs a URL}; shift 2 ;;
      --no-upgrade) upgrade=0; shift ;;
      --refresh-weekly) opt_refresh=yes; shift ;;
      --no-refresh-weekly) opt_refresh=no; shift ;;
      *) die "provision: unknown option $1" ;;
    esac
  done
  refresh=${opt_refresh:-$(box_value REFRESH_WEEKLY || true)}  # the weekly refresh: as asked, else as it was
  [ "$refresh" = yes ] || refresh=no
  say "provision $(hostname)"
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
  provision_cron
  provision_command
  if [ "$changed" = 0 ]; then
    say "provision: nothing changed"
  else
    say "provision: $changed changed"
  fi
}

# ---- releases ----------------------------------------------------------------------------

# lorebase prod's environment, as its unit sets it, in this shell (call it in a subshell). The
# project is `current` as a path, resolved anew by each master: after a SIGHUP the re-executed
# master loads the new release's config.py and apps, not those of the directory it started in
lorebase_env() {
  set -a
  # shellcheck disable=SC1091
  [ ! -f "$ETC/env" ] || . "$ETC/env"
  set +a
  export LOREBASE_SECRET_FILE="$ETC/secret.py" LOREBASE_PROJECT="$APP/current" HOME="$DATA"
  cd "$APP/current" 2>/dev/null || cd /
}

exec_as_lorebase() { exec setpriv --reuid=lorebase --regid=lorebase --init-groups "$@"; }

as_lorebase() { (lorebase_env; exec_as_lorebase "$@"); }

# as_lorebase_in RELEASE-DIR COMMAND...: as_lorebase, on that release (not yet `current`) as the project
as_lorebase_in() { (lorebase_env; export LOREBASE_PROJECT=$1; shift; exec_as_lorebase "$@"); }

release_dir() {
  case $1 in ''|*/*|.*) die "bad release name $1" ;; esac
  printf '%s/releases/%s' "$APP" "$1"
}

receive() {  # PACK RELEASE
  local pack=$1 dir
  if ! id lorebase >/dev/null 2>&1 || [ ! -d "$APP/releases" ]; then
    die "this box is not provisioned: run lorebase provision HOST first (deploy/provision.sh in lorebase's repo)"
  fi
  dir=$(release_dir "$2")
  [ ! -e "$dir" ] || die "release $2 exists already"
  mkdir -p "$APP/releases/.incoming-$2"
  tar -xzf "$pack" --no-same-owner --no-same-permissions -C "$APP/releases/.incoming-$2"
  cp "$here/box.sh" "$APP/releases/.incoming-$2/.box.sh"  # (`install` is a command of this script)
  mv -T "$APP/releases/.incoming-$2" "$dir"  # a half-unpacked release never looks like one
  rm -f "$pack"
}

install() {  # RELEASE ENV
  local dir env=$2 domain cert key package
  dir=$(release_dir "$1")
  "$PYTHON" -m venv "$dir/.venv"
  # /etc/lorebase/pip.conf, when there: pip's settings for this box (a mirror, or a wheelhouse
  # for a box without PyPI: [global] no-index = true, find-links = /path)
  [ ! -f "$ETC/pip.conf" ] || export PIP_CONFIG_FILE="$ETC/pip.conf"
  # with a requirements.lock (lorebase's repository; a project that keeps one): exactly what CI
  # tested, each file's hash checked, then the project with nothing resolved afresh. Without
  # one: the project and what its pyproject.toml asks for (lorebase among it), resolved by pip
  if [ -f "$dir/requirements.lock" ]; then
    { "$dir/.venv/bin/pip" install -q --disable-pip-version-check --require-hashes -r "$dir/requirements.lock" &&
      "$dir/.venv/bin/pip" install -q --disable-pip-version-check --no-deps -e "$dir"; } >"$dir/.pip.log" 2>&1
  else
    "$dir/.venv/bin/pip" install -q --disable-pip-version-check -e "$dir" >"$dir/.pip.log" 2>&1
  fi || { cat "$dir/.pip.log" >&2; die "pip install failed"; }
  [ -x "$dir/.venv/bin/lorebase" ] || die "the release installs no lorebase: does its pyproject.toml depend on it?"
  # the settings of this release with the box's secrets, its apps imported: refused here, not
  # after the switch
  as_lorebase_in "$dir" "$dir/.venv/bin/lorebase" openapi "$env" >/dev/null
  # the web client's files, as nginx finds them through `current` (lorebase's package: in the
  # release for lorebase's repository, in its venv for a project)
  package=$("$dir/.venv/bin/python" -I -c 'import lorebase, os; print(os.path.dirname(os.path.abspath(lorebase.__file__)))')
  case $package in "$dir"/*) ;; *) die "lorebase is not installed inside the release ($package)" ;; esac
  domain=$(box_value DOMAIN)
  cert="$ETC/tls/cert.pem" key="$ETC/tls/key.pem"
  if [ -s "/etc/letsencrypt/live/$domain/fullchain.pem" ]; then
    cert="/etc/letsencrypt/live/$domain/fullchain.pem" key="/etc/letsencrypt/live/$domain/privkey.pem"
  fi
  as_lorebase_in "$dir" "$dir/.venv/bin/lorebase" nginx "$env" --domain "${domain:-localhost}" --cert "$cert" \
    --key "$key" --static "$APP/current${package#"$dir"}/web" >"$dir/nginx.conf"
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

nginx_site() {  # RELEASE: the box's nginx serves this release's site (started if it is not running)
  local dir
  dir=$(release_dir "$1")
  if ! cmp -s "$dir/nginx.conf" /etc/nginx/sites-available/lorebase; then
    cp "$dir/nginx.conf" /etc/nginx/sites-available/lorebase
  fi
  ln -sfn /etc/nginx/sites-available/lorebase /etc/nginx/sites-enabled/lorebase
  rm -f /etc/nginx/sites-enabled/default
  nginx -q -t
  if svc_running nginx; then svc reload nginx; else svc start nginx; fi
}

link() {  # NAME TARGET: NAME -> TARGET, switched in one rename
  ln -sfn "$2" "$APP/.$1.new"
  mv -T "$APP/.$1.new" "$APP/$1"
}

setting() {  # KEY ENV: the value lorebase ENV has on this box
  as_lorebase "$APP/current/.venv/bin/lorebase" config "$2" --get "$1"
}

# ---- lorebase the service: systemd's unit, or (no systemd) a pid file ---------------------------

PIDFILE=/run/lorebase.pid

service_running() {
  if with_systemd; then systemctl -q is-active lorebase; return; fi
  [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

service_start() {  # ENV
  if with_systemd; then systemctl start lorebase; return; fi
  (lorebase_env; exec_as_lorebase setsid "$APP/current/.venv/bin/lorebase" serve "$1") \
    >>"$LOGS/lorebase.log" 2>&1 </dev/null 9>&- &
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
  activate)
    exec 9>"$APP/.activate.lock"
    flock -n 9 || die "another deploy is activating a release on this box: try again when it is done"
    activate "$@" ;;
  prune) prune "$@" ;;
  start) service_running || service_start "${1:-prod}" ;;
  *) die "usage: box.sh provision|receive|install|activate|prune|start ..." ;;
esac
