#!/usr/bin/env bash
# The TCP-vs-QUIC numbers in BENCHMARKS.md: share answer latency (p50/p99) for CHANNELS SV2
# miners multiplexed on ONE connection, over a lossy, slow link, release builds, on this machine.
#
#   scripts/netbench.sh [CHANNELS] [RATE]     (defaults 100 channels, 2 shares/s each)
#
# - TCP: `quarry loadgen --channels-per-connection CHANNELS`: one Noise session, one standard
#   channel per miner on it (as a proxy multiplexes its miners).
# - QUIC: `quarry loadgen --quic-streams CHANNELS`: one QUIC connection, one bidirectional stream
#   (SV2 connection and channel) per miner.
#
# The link: `tc netem` is not available on these machines, so quarry/examples/netem.rs puts two
# TUN devices between this namespace (the pool, 10.77.0.1) and a network namespace (the load
# generator, 10.77.0.2) and carries every IP packet itself: dropped with probability LOSS,
# otherwise delayed DELAY ms, each direction on its own. TCP segments and QUIC datagrams cross
# the same link. Scenarios (LOSS/DELAY ms): 0/0, 0/50, 0.01/50, 0.05/50.
#
# Needs root (network namespaces, TUN) and iproute2. LOADGEN_SECONDS (default 30) per run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)
CHANNELS=${1:-100}
RATE=${2:-2}
SECONDS_RUN=${LOADGEN_SECONDS:-30}
WORK=${NETBENCH_WORK:-$ROOT/target/netbench}
NETNS=quarry-bench

cargo build --release --locked -p quarry --example netem >&2
QUARRY="$ROOT/target/release/quarry"
NETEM="$ROOT/target/release/examples/netem"
rm -rf "$WORK"
mkdir -p "$WORK"
POOL_PID=
NETEM_PID=
cleanup() {
    [ -n "$NETEM_PID" ] && kill "$NETEM_PID" 2>/dev/null && wait "$NETEM_PID" 2>/dev/null || true
    [ -n "$POOL_PID" ] && kill "$POOL_PID" 2>/dev/null && wait "$POOL_PID" 2>/dev/null || true
    scripts/regtest-nodes.sh stop "$WORK/nodes" || true
    ip netns del "$NETNS" 2>/dev/null || true
}
trap cleanup EXIT

QUARRY_REGTEST_NODES=1 scripts/regtest-nodes.sh start "$WORK/nodes" >&2
# shellcheck disable=SC1091
source "$WORK/nodes/nodes.env"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
QUIC_PORT=$(free_port)
keys=$("$QUARRY" keygen)
SECRET=$(sed -n 's/^authority_secret_key = "\(.*\)"/\1/p' <<<"$keys")
PUBLIC=$(sed -n 's/^authority_public_key = "\(.*\)"/\1/p' <<<"$keys")
cat >"$WORK/quarry.toml" <<TOML
network = "regtest"
data_dir = "$WORK/data"

[[node]]
url = "http://127.0.0.1:$NODE_A_RPC_PORT"
cookie_file = "$NODE_A_COOKIE"
zmq_hashblock = "$NODE_A_ZMQ"

[mining]
mode = "solo"
poll_interval_secs = 1

[payout]
interval_secs = 0

[stratum]
listen = "0.0.0.0:$PORT"

# Shares far easier than regtest's network target, so they are shares and not blocks.
[vardiff]
start = 1e-12
min = 1e-12
max = 1e-12

[sv2]
enabled = true
authority_secret_key = "$SECRET"
quic_listen = "0.0.0.0:$QUIC_PORT"
TOML
"$QUARRY" serve --config "$WORK/quarry.toml" >"$WORK/serve.log" 2>&1 &
POOL_PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

ip netns del "$NETNS" 2>/dev/null || true
ip netns add "$NETNS"
printf '%-8s %-6s %-5s %10s %10s %10s %9s %8s\n' loss delay via p50_ms p99_ms max_ms answered stale
for scenario in 0/0 0/50 0.01/50 0.05/50; do
    LOSS=${scenario%/*}
    DELAY=${scenario#*/}
    "$NETEM" --netns "$NETNS" --loss "$LOSS" --delay-ms "$DELAY" >"$WORK/netem-$LOSS-$DELAY.log" 2>&1 &
    NETEM_PID=$!
    for _ in $(seq 100); do grep -q 'netem ready' "$WORK/netem-$LOSS-$DELAY.log" && break; sleep 0.1; done
    for via in tcp quic; do
        case $via in
            tcp) URL="10.77.0.1:$PORT"; MUX=(--channels-per-connection "$CHANNELS") ;;
            quic) URL="stratum2+quic://10.77.0.1:$QUIC_PORT"; MUX=(--quic-streams "$CHANNELS") ;;
        esac
        OUT="$WORK/$via-$LOSS-$DELAY.json"
        ip netns exec "$NETNS" "$QUARRY" loadgen "$URL" --sv2 --authority-pubkey "$PUBLIC" \
            "${MUX[@]}" --miners "$CHANNELS" --rate "$RATE" --duration "$SECONDS_RUN" \
            --user "$MINING_ADDRESS" --json >"$OUT" 2>"$WORK/$via-$LOSS-$DELAY.log"
        python3 - "$OUT" "$LOSS" "$DELAY" "$via" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_ms"]
print("%-8s %-6s %-5s %10.1f %10.1f %10.1f %9d %8d" % (sys.argv[2], sys.argv[3], sys.argv[4],
      l["p50"], l["p99"], l["max"], r["accepted"] + r["stale"], r["stale"]))
PY
    done
    kill "$NETEM_PID"
    wait "$NETEM_PID" 2>/dev/null || true
    NETEM_PID=
    tail -n1 "$WORK/netem-$LOSS-$DELAY.log" >&2
done
