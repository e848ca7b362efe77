#!/usr/bin/env bash
# Reproduces the Kaspa load-generator numbers in BENCHMARKS.md: release `quarry serve` (Kaspa
# alone, SQLite share log) on a private kaspad devnet, and `quarry loadgen --kaspa`.
#
#   scripts/kaspa-bench.sh [MINERS] [RATE] [AGENT]   MINERS (default 1000) at RATE shares/s each
#                                                    (default 2), user agent AGENT (default
#                                                    quarry-loadgen: array jobs)
#
# kaspad comes from scripts/kaspad.sh (QUARRY_KASPAD overrides). LOADGEN_SECONDS (default 30) is
# the run's length. Shares are at difficulty 1e-9 (about 4 hashes each), so the load generator's
# own kHeavyHash stays small next to the pool's.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)
MINERS=${1:-1000}
RATE=${2:-2}
AGENT=${3:-quarry-loadgen}
SECONDS_RUN=${LOADGEN_SECONDS:-30}
WORK=${LOADGEN_WORK:-$ROOT/target/kaspa-bench}
KASPAD=${QUARRY_KASPAD:-$(scripts/kaspad.sh install | tail -n1)/kaspad}
cargo build --release --locked -p quarry >&2
QUARRY="$ROOT/target/release/quarry"
rm -rf "$WORK"
mkdir -p "$WORK"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BORSH=$(port); GRPC=$(port); P2P=$(port); STRATUM=$(port)
KASPAD_PID=
POOL_PID=
cleanup() {
    [ -n "$POOL_PID" ] && kill "$POOL_PID" 2>/dev/null && wait "$POOL_PID" 2>/dev/null
    [ -n "$KASPAD_PID" ] && kill "$KASPAD_PID" 2>/dev/null && wait "$KASPAD_PID" 2>/dev/null
    true
}
trap cleanup EXIT
"$KASPAD" --devnet --enable-unsynced-mining --nodnsseed --disable-upnp --yes \
    --appdir="$WORK/kaspad" --rpclisten-borsh="127.0.0.1:$BORSH" --rpclisten="127.0.0.1:$GRPC" \
    --listen="127.0.0.1:$P2P" >"$WORK/kaspad.log" 2>&1 &
KASPAD_PID=$!
# The devnet address of the key [7; 32] (any kaspadev: address does).
POOL_ADDRESS=kaspadev:qqrswpc8qurswpc8qurswpc8qurswpc8qurswpc8qurswpc8qursw43pc2wwu
cat >"$WORK/quarry.toml" <<TOML
data_dir = "$WORK/data"
[stratum]
enabled = false
[kaspa]
enabled = true
listen = "127.0.0.1:$STRATUM"
network = "devnet"
nodes = ["ws://127.0.0.1:$BORSH"]
pool_address = "$POOL_ADDRESS"
start_difficulty = 0.000000001
min_difficulty = 0.000000001
max_difficulty = 0.000000001
max_connections_per_ip = 100000
TOML
RUST_LOG=warn "$QUARRY" serve --config "$WORK/quarry.toml" >"$WORK/serve.log" 2>&1 &
POOL_PID=$!
for _ in $(seq 200); do
    if (echo >"/dev/tcp/127.0.0.1/$STRATUM") 2>/dev/null; then break; fi
    sleep 0.1
done
"$QUARRY" loadgen "127.0.0.1:$STRATUM" --kaspa --agent "$AGENT" --miners "$MINERS" \
    --rate "$RATE" --duration "$SECONDS_RUN" --user "$POOL_ADDRESS" --pool-pid "$POOL_PID" --json \
    "${@:4}"
