# shellcheck shell=bash
# Shared set-up for scripts/serve, scripts/test, scripts/bench, scripts/chaos.
#
# Sourced, never run. Every ensure_* function is idempotent: it looks first,
# installs or starts something only when it is missing, and prints one line
# of what it found or did. On a machine where everything already runs, the
# whole set-up takes well under a second and touches nothing.
#
# Installs use apt-get (Debian/Ubuntu). Runs as root, or as a user with sudo
# (sudo is used only to install packages and to start/configure databases).
#
# Environment knobs:
#   PYTHON=/path/to/python3.x    interpreter used to create .venv (>= 3.11)
#   SYNCD_NODE_PEERS=1           also install the npm peers of plugin tests (set by
#                                scripts/test and scripts/bench)
#   SYNCD_SKIP_SERVICES=1        do not look at Redis/PostgreSQL/MariaDB at all
#                                (you point syncd and the tests at your own servers)
#   SYNCD_REDIS_DIR=/path        where a Redis started for scripts/serve keeps its
#                                data (default ${XDG_STATE_HOME:-~/.local/state}/syncd/redis)

SYNCD_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)
VENV=$SYNCD_ROOT/.venv
VENV_STAMP=$VENV/.syncd-setup-stamp
export DEBIAN_FRONTEND=noninteractive

REDIS_PORT=6379
# 1 (scripts/serve): a Redis this script starts keeps its data (AOF, in
# REDIS_DIR); 0 (tests, benchmarks): nothing is written to disk.
REDIS_PERSIST=${REDIS_PERSIST:-0}
REDIS_DIR=${SYNCD_REDIS_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/syncd/redis}
PG_PORT=5432
MYSQL_PORT=3306

_APT_UPDATED=0
_SETUP_LOG=${TMPDIR:-/tmp}/syncd-setup.$$.log

say() { printf 'setup: %s\n' "$*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# Microseconds since the epoch (bash 5), or empty.
_now_us() {
    local t=${EPOCHREALTIME:-}
    printf '%s' "${t//[.,]/}"
}

# Run a command as root: directly when we are root, else through sudo
# (non-interactive sudo when there is no terminal to ask for a password).
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif have sudo; then
        if [[ -t 0 ]]; then sudo -- "$@"; else sudo -n -- "$@"; fi
    else
        die "need root for: $* (not root and no sudo)"
    fi
}

# quietly WHAT CMD...: run CMD with its output in a log; on failure show the
# tail of the log and die. Closes fd 8 (the set-up lock) for CMD, so that a
# daemon it starts does not hold the lock forever.
quietly() {
    local what=$1
    shift
    if ! "$@" >"$_SETUP_LOG" 2>&1 8>&-; then
        tail -n 60 "$_SETUP_LOG" >&2 || true
        rm -f "$_SETUP_LOG"
        die "$what failed: $*"
    fi
    rm -f "$_SETUP_LOG"
}

# wait_for SECONDS CMD...: retry CMD until it succeeds or time runs out.
wait_for() {
    local end=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < end)) || return 1
        sleep 0.3
    done
}

apt_update_once() {
    ((_APT_UPDATED)) && return 0
    have apt-get || die "apt-get not found: install the missing packages yourself"
    say "apt-get update"
    quietly "apt-get update" as_root apt-get -o DPkg::Lock::Timeout=120 update -q
    _APT_UPDATED=1
}

apt_install() {
    apt_update_once
    say "apt-get install $*"
    quietly "apt-get install" as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=120 install -y -q --no-install-recommends "$@"
}

# Python used for probes before (or without) the venv.
_probe_python() {
    if [[ -x $VENV/bin/python ]]; then printf '%s' "$VENV/bin/python"; else printf 'python3'; fi
}

# tcp_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
tcp_open() {
    "$(_probe_python)" - "$1" 2>/dev/null <<'PY'
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()
except OSError:
    sys.exit(1)
PY
}

# ---------------------------------------------------------------- venv

_find_python() {
    local c
    for c in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
        if [[ -z $c ]] || ! have "$c"; then continue; fi
        if "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            printf '%s' "$c"
            return 0
        fi
    done
    return 1
}

# Plugin distributions, relative to the root: plugins/<dir> with a pyproject.toml.
_plugin_dirs() {
    local f
    for f in "$SYNCD_ROOT"/plugins/*/pyproject.toml; do
        [[ -f $f ]] && printf 'plugins/%s\n' "$(basename -- "$(dirname -- "$f")")"
    done
    return 0
}

# Hash of every pyproject.toml (paths included, so adding a plugin counts).
_venv_fingerprint() {
    local -a files=(pyproject.toml)
    local d
    while IFS= read -r d; do files+=("$d/pyproject.toml"); done < <(_plugin_dirs)
    (cd -- "$SYNCD_ROOT" && sha256sum -- "${files[@]}") | sha256sum | cut -c1-64
}

# Prints the venv's Python version. Exit 0: usable (`syncd` resolves to this
# checkout; the core and every plugin distribution are installed). 1: pip
# should run again. 2 (or 127): the venv itself is unusable (missing, older
# than 3.11, no pip, moved from another path). Imports nothing of ours; -I
# keeps the current directory off sys.path.
_venv_check() {
    "$VENV/bin/python" -I - "$SYNCD_ROOT" 2>/dev/null <<'PY'
import importlib.metadata as md
import importlib.util
import os.path
import pathlib
import platform
import sys

print(platform.python_version())
if sys.version_info < (3, 11) or importlib.util.find_spec("pip") is None:
    sys.exit(2)
import tomllib

root = pathlib.Path(sys.argv[1])
script = pathlib.Path(sys.prefix, "bin", "syncd")
if not script.exists():
    sys.exit(1)
with script.open("rb") as f:
    shebang = f.readline().strip().decode(errors="replace")
# A moved venv's scripts point to the old bin/ directory. (pip writes a
# /bin/sh trampoline instead when the path is long or has spaces: not judged.)
same = os.path.realpath(os.path.dirname(shebang[2:])) == os.path.realpath(os.path.dirname(sys.executable))
if not shebang.startswith("#!/bin/sh") and not same:
    sys.exit(2)
spec = importlib.util.find_spec("syncd")
if spec is None or not spec.origin or not spec.origin.startswith(str(root / "syncd")):
    sys.exit(1)
try:
    for p in [root / "pyproject.toml", *sorted(root.glob("plugins/*/pyproject.toml"))]:
        md.distribution(tomllib.loads(p.read_text())["project"]["name"])
except Exception:
    sys.exit(1)
PY
}

_create_venv() {
    local py ver
    py=$(_find_python) || die "no Python >= 3.11 found (set PYTHON=/path/to/python3.11 or newer)"
    if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
        ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        apt_update_once
        if apt-cache show "python$ver-venv" >/dev/null 2>&1; then
            apt_install "python$ver-venv"
        else
            apt_install python3-venv
        fi
    fi
    quietly "creating .venv" "$py" -m venv --clear "$VENV"
}

# ensure_venv [EXTRAS]: .venv holds `pip install -e .[EXTRAS]` plus
# `-e plugins/<each>`, in one pip run. pip runs only when a pyproject.toml
# changed, new extras are asked for, or the install looks broken.
ensure_venv() {
    local extras=${1:-test} want have_fp="" have_extras="" why="" all pyver rc=0 d
    local -a dirs=() editables=()

    pyver=$(_venv_check) || rc=$?
    if ((rc >= 2)); then
        _create_venv
        why="new venv"
    fi
    want=$(_venv_fingerprint)
    if [[ -f $VENV_STAMP ]]; then read -r have_fp have_extras <"$VENV_STAMP" || true; fi

    # Keep extras installed earlier (e.g. bench) so alternating scripts do not re-run pip.
    all=$(printf '%s,%s' "$extras" "$have_extras" | tr ',' '\n' | sed '/^$/d' | sort -u | paste -sd, -)
    if [[ -n $why ]]; then
        :
    elif [[ -z $have_fp ]]; then
        why="first install"
    elif [[ $want != "$have_fp" ]]; then
        why="a pyproject.toml changed"
    elif [[ $all != "$have_extras" ]]; then
        why="new extras [$extras]"
    elif ((rc != 0)); then
        why="install incomplete"
    else
        say "venv: up to date (.venv, python $pyver)"
        return 0
    fi

    mapfile -t dirs < <(_plugin_dirs)
    for d in "${dirs[@]}"; do editables+=(-e "$d"); done
    say "venv: pip install -e .[$all] + ${#dirs[@]} plugin(s) ($why)"
    rm -f "$VENV_STAMP"
    (cd -- "$SYNCD_ROOT" &&
        quietly "pip install" "$VENV/bin/python" -m pip install --disable-pip-version-check \
            -e ".[$all]" "${editables[@]}")
    printf '%s %s\n' "$want" "$all" >"$VENV_STAMP"
}

# ---------------------------------------------------------------- Redis

redis_ok() {
    if have redis-cli; then
        [[ $(timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]
    else
        "$(_probe_python)" - "$REDIS_PORT" 2>/dev/null <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
s.settimeout(2)
s.sendall(b"PING\r\n")
sys.exit(0 if s.recv(64).startswith(b"+PONG") else 1)
PY
    fi
}

# Warn (serve only) when the Redis found running keeps nothing on disk: it
# was likely started for the tests. It is left alone either way.
_redis_persistence_check() {
    ((REDIS_PERSIST)) && have redis-cli || return 0
    local aof save
    aof=$(timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" config get appendonly 2>/dev/null | sed -n 2p)
    save=$(timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" config get save 2>/dev/null | sed -n 2p)
    if [[ $aof == no && -z $save ]]; then
        say "redis: WARNING: the Redis on 127.0.0.1:$REDIS_PORT keeps nothing on disk (appendonly no, no save points: started for tests?); data in it is lost when it stops"
    fi
}

# Start our own redis-server on REDIS_PORT: with persistence for the daemon
# (AOF, fsync every second, in REDIS_DIR), without for the tests.
_redis_start() {
    if ((REDIS_PERSIST)); then
        mkdir -p -- "$REDIS_DIR"
        quietly "starting redis" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
            --appendonly yes --appendfsync everysec --dir "$REDIS_DIR" \
            --logfile "$REDIS_DIR/redis.log" --daemonize yes
    else
        # As the calling user: needs no privileges; nothing is persisted.
        quietly "starting redis" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
            --save '' --appendonly no --daemonize yes --dir "${TMPDIR:-/tmp}"
    fi
}

ensure_redis() {
    local did=""
    # The cluster tests start their own redis-server processes (and
    # redis-cli --cluster create), even where Redis itself runs elsewhere.
    if ! have redis-server || ! have redis-cli; then
        apt_install redis-server redis-tools
        did="installed, "
    fi
    if redis_ok; then
        say "redis: running on 127.0.0.1:$REDIS_PORT"
        _redis_persistence_check
        return 0
    fi
    if tcp_open "$REDIS_PORT"; then
        say "redis: WARNING: something listens on 127.0.0.1:$REDIS_PORT but does not answer PING (password?); left alone"
        return 0
    fi
    if ! have redis-server; then
        apt_install redis-server
        did="installed, "
    fi
    if ! redis_ok; then # the package may have started it (systemd machines)
        _redis_start
        wait_for 20 redis_ok || die "redis did not answer on 127.0.0.1:$REDIS_PORT after starting"
        ((REDIS_PERSIST)) && did+="data in $REDIS_DIR, "
    fi
    say "redis: ${did}started on 127.0.0.1:$REDIS_PORT"
}

# ---------------------------------------------------------------- PostgreSQL

pg_ok() {
    if have pg_isready; then
        pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 3
    else
        tcp_open "$PG_PORT"
    fi
}

_pg_installed() {
    have pg_ctlcluster && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

# Sets PG_VER PG_NAME PG_STATUS to the Debian cluster on our port, if any.
_pg_find_cluster() {
    local line
    line=$(pg_lsclusters -h 2>/dev/null | awk -v p="$PG_PORT" '$3 == p {print $1, $2, $4; exit}')
    [[ -n $line ]] || return 1
    read -r PG_VER PG_NAME PG_STATUS <<<"$line"
}

# Like _pg_find_cluster, but when there is none, creates one on our port with
# the newest server version installed (named main, or syncd if main exists).
# Clusters on other ports are never touched.
_pg_pick_cluster() {
    _pg_find_cluster && return 0
    local ver name=main
    ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
    [[ -n $ver ]] || die "postgres: no server version under /usr/lib/postgresql"
    [[ ! -e /etc/postgresql/$ver/main ]] || name=syncd
    quietly "pg_createcluster" as_root pg_createcluster "$ver" "$name" --port "$PG_PORT"
    PG_VER=$ver PG_NAME=$name PG_STATUS=down
}

# Passwordless TCP logins from this machine, inserted at the top of
# pg_hba.conf (first match wins).
_pg_trust_local() {
    local hba=$1
    as_root grep -q 'syncd scripts/lib/setup.sh' "$hba" && return 0
    # shellcheck disable=SC2016 # expanded by the inner sh
    as_root sh -c 'tmp=$(mktemp) && { printf "%s\n" "$2" "$3" "$4"; cat "$1"; } >"$tmp" && cat "$tmp" >"$1" && rm -f "$tmp"' \
        sh "$hba" \
        "# added by syncd scripts/lib/setup.sh: passwordless TCP logins from this machine (dev/test only)" \
        "host    all    all    127.0.0.1/32    trust" \
        "host    all    all    ::1/128         trust"
}

# Listen on 127.0.0.1:PG_PORT. The value must stay quoted: unquoted, the
# server refuses to start.
_pg_listen_local() {
    local conf=$1 settings
    settings="listen_addresses = '127.0.0.1'
port = $PG_PORT"
    if as_root grep -Eq "^[[:space:]]*include_dir[[:space:]]*=[[:space:]]*'conf\.d'" "$conf/postgresql.conf"; then
        as_root mkdir -p "$conf/conf.d"
        printf '# written by syncd scripts/lib/setup.sh\n%s\n' "$settings" |
            as_root tee "$conf/conf.d/99-syncd.conf" >/dev/null
    elif ! as_root grep -q 'syncd scripts/lib/setup.sh' "$conf/postgresql.conf"; then
        printf '\n# added by syncd scripts/lib/setup.sh\n%s\n' "$settings" |
            as_root tee -a "$conf/postgresql.conf" >/dev/null
    fi
}

_pg_start() {
    local conf
    _pg_pick_cluster
    conf=/etc/postgresql/$PG_VER/$PG_NAME
    _pg_listen_local "$conf"
    _pg_trust_local "$conf/pg_hba.conf"
    if [[ $PG_STATUS == online* ]]; then # running, but not on 127.0.0.1:PG_PORT
        quietly "pg_ctlcluster restart" as_root pg_ctlcluster "$PG_VER" "$PG_NAME" restart
    else
        quietly "pg_ctlcluster start" as_root pg_ctlcluster "$PG_VER" "$PG_NAME" start
    fi
    wait_for 30 pg_ok || die "postgres $PG_VER/$PG_NAME did not accept connections on 127.0.0.1:$PG_PORT"
}

_psql() { psql -X -q -w -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }
_pg_login() { _psql -d "$1" -tAc 'select 1' >/dev/null 2>&1; }

ensure_postgres() {
    local did=""
    if ! pg_ok; then
        if ! _pg_installed; then
            apt_install postgresql postgresql-client
            did+="installed, "
        fi
        if ! pg_ok; then
            _pg_start
            did+="started, "
        fi
    fi
    if ! have psql; then
        apt_install postgresql-client
        did+="client installed, "
    fi
    if ! _pg_login test; then
        if ! _pg_login postgres; then
            # A password is required over TCP: trust local TCP, reload.
            { _pg_installed && _pg_find_cluster; } ||
                die "postgres on 127.0.0.1:$PG_PORT refuses user postgres without a password, and it is no local Debian cluster this script can fix"
            _pg_trust_local "/etc/postgresql/$PG_VER/$PG_NAME/pg_hba.conf"
            quietly "pg_ctlcluster reload" as_root pg_ctlcluster "$PG_VER" "$PG_NAME" reload
            wait_for 10 _pg_login postgres ||
                die "postgres: user postgres still cannot log in over TCP without a password"
            did+="trust for local TCP, "
        fi
        if ! _pg_login test; then
            quietly "CREATE DATABASE test" _psql -d postgres -c 'CREATE DATABASE test'
            did+="database test created, "
        fi
    fi
    say "postgres: ${did}ready (postgres@127.0.0.1:$PG_PORT/test)"
}

# ---------------------------------------------------------------- MariaDB

_my_client() { if have mariadb; then printf mariadb; else printf mysql; fi; }
_my_admin() { if have mariadb-admin; then printf mariadb-admin; else printf mysqladmin; fi; }

# `mysqladmin ping` exits 0 whenever the server runs, even on "access denied".
my_ok() {
    if have mariadb-admin || have mysqladmin; then
        "$(_my_admin)" --no-defaults --protocol=tcp -h 127.0.0.1 -P "$MYSQL_PORT" \
            --connect-timeout=3 ping >/dev/null 2>&1
    else
        tcp_open "$MYSQL_PORT"
    fi
}

_my_installed() { [[ -x /usr/sbin/mariadbd || -x /usr/sbin/mysqld ]]; }

_my_start() {
    local svc bin=/usr/sbin/mariadbd service=/usr/sbin/service
    # (/usr/sbin is often not on a normal user's PATH: use full paths.)
    [[ -x $service ]] || service=$(command -v service || true)
    for svc in mariadb mysql; do
        if [[ -x /etc/init.d/$svc && -n $service ]]; then
            as_root "$service" "$svc" start >/dev/null 2>&1 8>&- && return 0
            break
        fi
    done
    # No init script, or it failed: run the server directly, detached.
    [[ -x $bin ]] || bin=/usr/sbin/mysqld
    as_root install -d -o mysql -g mysql -m 0755 /run/mysqld
    quietly "start-stop-daemon $bin" as_root /sbin/start-stop-daemon --start --oknodo --background \
        --exec "$bin" -- --user=mysql
}

# TCP login as root with an empty password: exactly what the tests do.
_my_tcp() {
    "$(_my_client)" --no-defaults --protocol=tcp -h 127.0.0.1 -P "$MYSQL_PORT" -u root \
        --connect-timeout=5 "$@"
}

# Over the Unix socket as OS root (unix_socket auth), give root an empty
# password over TCP while keeping socket auth. MariaDB >= 10.4 syntax first,
# MySQL 8 as a fallback.
_my_allow_root_tcp() {
    local mariadb_sql mysql_sql
    mariadb_sql="ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket;
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';
ALTER USER 'root'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('');
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
FLUSH PRIVILEGES;"
    mysql_sql="ALTER USER 'root'@'localhost' IDENTIFIED WITH caching_sha2_password BY '';
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED WITH caching_sha2_password BY '';
ALTER USER 'root'@'127.0.0.1' IDENTIFIED WITH caching_sha2_password BY '';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
FLUSH PRIVILEGES;"
    as_root "$(_my_client)" -u root -e "$mariadb_sql" >/dev/null 2>&1 ||
        as_root "$(_my_client)" -u root -e "$mysql_sql" >/dev/null 2>&1
}

ensure_mariadb() {
    local did=""
    if ! my_ok; then
        if ! _my_installed; then
            apt_install mariadb-server mariadb-client
            did+="installed, "
        fi
        if ! my_ok; then
            _my_start
            did+="started, "
        fi
        wait_for 60 my_ok || die "mariadb did not answer on 127.0.0.1:$MYSQL_PORT"
    fi
    if ! have mariadb && ! have mysql; then
        apt_install mariadb-client
        did+="client installed, "
    fi
    if ! _my_tcp -e 'CREATE DATABASE IF NOT EXISTS test' >/dev/null 2>&1; then
        _my_allow_root_tcp ||
            die "mariadb: root cannot log in over TCP without a password, and fixing that over the socket as OS root failed"
        quietly "CREATE DATABASE test" _my_tcp -e 'CREATE DATABASE IF NOT EXISTS test'
        did+="root@127.0.0.1 allowed without password, "
    fi
    say "mariadb: ${did}ready (root@127.0.0.1:$MYSQL_PORT/test)"
}

# ---------------------------------------------------------------- Chromium

# Debian's Chromium drives the status page's browser tests (through the
# Playwright Python package). Playwright's own browser download is never
# used: it fails on machines without access to its CDN.
CHROMIUM=${SYNCD_TEST_CHROMIUM:-/usr/bin/chromium}

chromium_ok() { [[ -x $CHROMIUM ]]; }

ensure_chromium() {
    if chromium_ok; then
        say "chromium: $CHROMIUM"
        return 0
    fi
    apt_install chromium
    chromium_ok || die "chromium: installed, but $CHROMIUM is missing"
    say "chromium: installed ($CHROMIUM)"
}

# ---------------------------------------------------------------- Node peers

# Plugins whose tests talk to real Node peers (npm bullmq, ganache, solc)
# keep a package.json + package-lock.json under plugins/<p>/tests/node.
_node_dirs() {
    local f
    for f in "$SYNCD_ROOT"/plugins/*/tests/node/package-lock.json; do
        [[ -f $f ]] && dirname -- "$f"
    done
    return 0
}

# ensure_node_peers: node and npm (apt if missing), then `npm ci` in each
# such directory whose node_modules is missing or older than its lockfile
# (a stamp holds the lockfile's hash). node_modules is git-ignored.
ensure_node_peers() {
    local d want have
    local -a dirs=()
    mapfile -t dirs < <(_node_dirs)
    ((${#dirs[@]} > 0)) || return 0
    if ! have node || ! have npm; then
        apt_install nodejs npm
    fi
    for d in "${dirs[@]}"; do
        want=$(sha256sum -- "$d/package-lock.json" | cut -c1-64)
        have=""
        [[ -f $d/node_modules/.syncd-lock-sha256 ]] && have=$(<"$d/node_modules/.syncd-lock-sha256")
        if [[ $want == "$have" ]]; then
            say "node peers: up to date (${d#"$SYNCD_ROOT"/}, node $(node --version))"
            continue
        fi
        say "node peers: npm ci in ${d#"$SYNCD_ROOT"/}"
        (cd -- "$d" && quietly "npm ci" npm ci --no-audit --no-fund --loglevel=error)
        printf '%s\n' "$want" >"$d/node_modules/.syncd-lock-sha256"
    done
}

# ---------------------------------------------------------------- all of it

# One apt-get for every service that neither answers nor is installed.
_preinstall() {
    local -a pkgs=()
    local s
    for s in "$@"; do
        case $s in
        redis) redis_ok || have redis-server || pkgs+=(redis-server) ;;
        postgres) pg_ok || _pg_installed || pkgs+=(postgresql postgresql-client) ;;
        mariadb) my_ok || _my_installed || pkgs+=(mariadb-server mariadb-client) ;;
        chromium) chromium_ok || pkgs+=(chromium) ;;
        *) die "unknown service: $s" ;;
        esac
    done
    ((${#pkgs[@]} == 0)) || apt_install "${pkgs[@]}"
}

# syncd_setup EXTRAS [SERVICE...]: the venv with EXTRAS, then each SERVICE
# (redis, postgres, mariadb, chromium). Concurrent runs by one user take turns.
syncd_setup() {
    local extras=$1 t0 t1 s lock=""
    shift
    t0=$(_now_us)
    if have flock; then
        lock=${TMPDIR:-/tmp}/syncd-setup-$UID-$(printf '%s' "$SYNCD_ROOT" | sha256sum | cut -c1-12).lock
        if [[ ! -e $lock || -w $lock ]]; then
            exec 8>>"$lock"
            flock 8
        else
            lock=""
        fi
    fi
    ensure_venv "$extras"
    if [[ ${SYNCD_NODE_PEERS:-} == 1 ]]; then
        ensure_node_peers
    fi
    if [[ ${SYNCD_SKIP_SERVICES:-} == 1 ]]; then
        say "services: skipped (SYNCD_SKIP_SERVICES=1)"
    elif (($# > 0)); then
        _preinstall "$@"
        for s in "$@"; do "ensure_$s"; done
    fi
    if [[ -n $lock ]]; then exec 8>&-; fi # never hand the lock to the exec'd program
    t1=$(_now_us)
    if [[ -n $t0 && -n $t1 ]]; then
        say "done in $(((t1 - t0) / 1000)) ms"
    fi
}

# ---------------------------------------------------------------- stress

_CPU_HOGS=()

# start_cpu_hogs [N]: N (default: one per core) busy processes at normal
# priority, to run something as on a loaded CI machine. Each hog also exits
# by itself within a fraction of a second once this shell is gone, so not
# even a SIGKILL of the caller leaves one spinning; stop_cpu_hogs (set it as
# an EXIT trap) ends them at once.
start_cpu_hogs() {
    local n=${1:-$(nproc 2>/dev/null || echo 2)} parent=$$ i
    for ((i = 0; i < n; i++)); do
        (
            trap - EXIT INT TERM
            while kill -0 "$parent" 2>/dev/null; do
                for ((j = 0; j < 20000; j++)); do :; done
            done
        ) </dev/null >/dev/null 2>&1 8>&- &
        _CPU_HOGS+=("$!")
    done
    say "stress: $n CPU hog(s) at normal priority (pids ${_CPU_HOGS[*]})"
}

stop_cpu_hogs() {
    ((${#_CPU_HOGS[@]} == 0)) && return 0
    kill "${_CPU_HOGS[@]}" 2>/dev/null || true
    wait "${_CPU_HOGS[@]}" 2>/dev/null || true
    say "stress: CPU hogs stopped"
    _CPU_HOGS=()
}

# One line about lint. Never fails the caller.
ruff_summary() {
    [[ -x $VENV/bin/ruff ]] || return 0
    local out rc=0 n
    out=$(cd -- "$SYNCD_ROOT" && "$VENV/bin/ruff" check --quiet --exit-zero --output-format=concise . 2>/dev/null) || rc=$?
    if ((rc != 0)); then
        say "ruff: could not run (exit $rc; try .venv/bin/ruff check .)"
    elif [[ -z $out ]]; then
        say "ruff: clean"
    else
        n=$(grep -c . <<<"$out" || true)
        say "ruff: $n issue(s), not fatal (details: .venv/bin/ruff check .)"
    fi
    return 0
}
