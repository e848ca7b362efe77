#!/usr/bin/env bash
# 100,000 miners on one machine: FRONTENDS `quarry serve` processes share one Stratum port
# (stratum.reuse_port, SO_REUSEPORT) and one PostgreSQL, and LOADGENS `quarry loadgen`
# processes of MINERS each connect to it. One process holds at most `ulimit -n` descriptors
# (20,000 here), hence several of each.
#
#   scripts/loadgen-many.sh [FRONTENDS=6] [LOADGENS=5] [MINERS=20000 per loadgen] [RATE=0.2]
#
# Prints each loadgen's report, then the frontends' RSS per connection and the total answers/s.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)
ulimit -n "$(ulimit -Hn)"
FRONTENDS=${1:-6}
LOADGENS=${2:-5}
MINERS=${3:-20000}
RATE=${4:-0.2}
SECONDS_RUN=${LOADGEN_SECONDS:-60}
WORK=${LOADGEN_WORK:-$ROOT/target/loadgen-many}
cargo build --release --locked -p quarry >&2
QUARRY="$ROOT/target/release/quarry"
rm -rf "$WORK"
mkdir -p "$WORK"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    scripts/regtest-nodes.sh stop "$WORK/nodes" || true
    scripts/postgres.sh stop "$WORK/pg" >/dev/null 2>&1 || true
}
trap cleanup EXIT
QUARRY_REGTEST_NODES=1 scripts/regtest-nodes.sh start "$WORK/nodes" >&2
# shellcheck disable=SC1091
source "$WORK/nodes/nodes.env"
PG_URL=$(scripts/postgres.sh start "$WORK/pg")
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
FRONTEND_PIDS=()
for i in $(seq 1 "$FRONTENDS"); do
    cat >"$WORK/quarry-$i.toml" <<TOML
network = "regtest"
data_dir = "$WORK/data-$i"

[[node]]
url = "http://127.0.0.1:$NODE_A_RPC_PORT"
cookie_file = "$NODE_A_COOKIE"
zmq_hashblock = "$NODE_A_ZMQ"

[mining]
mode = "pool"
pool_address = "$MINING_ADDRESS"
poll_interval_secs = 1

[payout]
interval_secs = 0

[ledger]
url = "$PG_URL"
instance = "frontend-$i"

[stratum]
listen = "127.0.0.1:$PORT"
reuse_port = true
extranonce1_prefix = "$(printf '%02x' "$i")"
max_connections = 200000
max_connections_per_ip = 100000

[vardiff]
start = 1e-12
min = 1e-12
max = 1e-12
TOML
    RUST_LOG=${RUST_LOG:-warn} "$QUARRY" serve --config "$WORK/quarry-$i.toml" >"$WORK/serve-$i.log" 2>&1 &
    PIDS+=($!)
    FRONTEND_PIDS+=($!)
done
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.2
done
sleep 2
BEFORE=0
for pid in "${FRONTEND_PIDS[@]}"; do BEFORE=$((BEFORE + $(rss "$pid"))); done
echo "loadgen-many: $FRONTENDS frontends on port $PORT, $LOADGENS x $MINERS miners, ${SECONDS_RUN}s" >&2
LOADGEN_PIDS=()
for i in $(seq 1 "$LOADGENS"); do
    "$QUARRY" loadgen "127.0.0.1:$PORT" --miners "$MINERS" --user "$MINING_ADDRESS" --rate "$RATE" \
        --duration "$SECONDS_RUN" --connect-rate 2000 --json >"$WORK/loadgen-$i.json" 2>"$WORK/loadgen-$i.log" &
    LOADGEN_PIDS+=($!)
    PIDS+=($!)
done
# Memory and connections while every miner is connected and submitting.
sleep $((SECONDS_RUN / 2 + MINERS / 2000 + 5))
DURING=0
CONNECTIONS=0
for pid in "${FRONTEND_PIDS[@]}"; do
    DURING=$((DURING + $(rss "$pid")))
    CONNECTIONS=$((CONNECTIONS + $(ls "/proc/$pid/fd" | wc -l)))
done
for pid in "${LOADGEN_PIDS[@]}"; do wait "$pid" || true; done
python3 - "$WORK" "$LOADGENS" "$BEFORE" "$DURING" "$CONNECTIONS" "$FRONTENDS" <<'PY'
import json, sys
work, loadgens, before, during, fds, frontends = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:])
reports = [json.load(open(f"{work}/loadgen-{i}.json")) for i in range(1, loadgens + 1)]
held = sum(r["connections_held_at_ramp_end"] for r in reports)
answered = sum(r["accepted_per_sec"] + r["rejected_per_sec"] for r in reports)
print(f"frontends: {frontends}, miners held: {held}, failed: {sum(r['connect_failures'] for r in reports)}, "
      f"dropped: {sum(r['dropped'] for r in reports)}")
print(f"share answers/s: {answered:.0f} (accepted {sum(r['accepted'] for r in reports)}, "
      f"rejected {sum(r['rejected'] for r in reports)}, unanswered {sum(r['unanswered'] for r in reports)})")
print(f"latency ms p50/p99 (worst loadgen): {max(r['latency_ms']['p50'] for r in reports)} / "
      f"{max(r['latency_ms']['p99'] for r in reports)}")
print(f"frontends' descriptors during the run: {fds}")
print(f"frontends' RSS: {before} KiB before, {during} KiB during: "
      f"{(during - before) * 1024 / max(held, 1):.0f} bytes per connection")
PY
