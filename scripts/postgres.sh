#!/usr/bin/env bash
# A throwaway PostgreSQL for Quarry's tests, on a loopback port, in a directory of its own.
#
#   scripts/postgres.sh start <dir>   # prints the URL (postgres://quarry:quarry@127.0.0.1:<port>/quarry)
#   scripts/postgres.sh stop  <dir>
#   scripts/postgres.sh install       # apt-get install postgresql if no server binaries
#
# PostgreSQL refuses to run as root, so the cluster runs as the `postgres` user when we are root.
set -euo pipefail

die() { echo "postgres.sh: $*" >&2; exit 1; }

find_bin() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
    done
    return 1
}

install_server() {
    if find_bin >/dev/null; then return 0; fi
    echo "postgres.sh: installing Debian's postgresql" >&2
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
    find_bin >/dev/null || die "postgresql installed but initdb not found"
}

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        su postgres -s /bin/sh -c "$*"
    else
        sh -c "$*"
    fi
}

action=${1:-}
case "$action" in
    install) install_server; exit 0 ;;
    start | stop) [ $# -eq 2 ] || die "usage: $0 start|stop <dir>" ;;
    *) die "usage: $0 start|stop <dir> | install" ;;
esac
mkdir -p -- "$2"
dir=$(cd -- "$2" && pwd -P)
data="$dir/data"

if [ "$action" = stop ]; then
    bin=$(find_bin) || exit 0
    [ -f "$data/postmaster.pid" ] && as_owner "'$bin/pg_ctl' -D '$data' -m fast -w stop" >/dev/null 2>&1 || true
    exit 0
fi

install_server
bin=$(find_bin)
port=${PGPORT_OVERRIDE:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
[ "$(id -u)" = 0 ] && chown postgres "$dir"
if [ ! -f "$data/PG_VERSION" ]; then
    printf 'quarry\n' >"$dir/pwfile"
    [ "$(id -u)" = 0 ] && chown postgres "$dir/pwfile"
    as_owner "'$bin/initdb' -D '$data' -U quarry --pwfile='$dir/pwfile' -A scram-sha-256 --no-sync -E UTF8" >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
fi
as_owner "'$bin/pg_ctl' -D '$data' -l '$dir/postgres.log' -w -t 60 -o \"-c listen_addresses=127.0.0.1 -p $port -k '$dir' -c fsync=on\" start" >/dev/null \
    || { tail -20 "$dir/postgres.log" >&2; die "postgres did not start"; }
PGPASSWORD=quarry "$bin/psql" -h 127.0.0.1 -p "$port" -U quarry -d postgres -qtAc "CREATE DATABASE quarry" >/dev/null 2>&1 || true
echo "postgres://quarry:quarry@127.0.0.1:$port/quarry"
