#!/usr/bin/env bash
# Reproduces the load-generator numbers in BENCHMARKS.md: release builds of `quarry serve` and
# `quarry loadgen`, on the regtest node pair, all on this machine.
#
#   scripts/loadgen-bench.sh idle   [MINERS]           connections held; pool RSS per idle connection
#   scripts/loadgen-bench.sh fanout [MINERS] [BLOCKS]  new block -> last miner notified (idle miners)
#   scripts/loadgen-bench.sh shares [MINERS] [RATE]    accepted shares/s end to end, Stratum V1
#   scripts/loadgen-bench.sh sv2    [MINERS] [RATE]    the same over Stratum V2 (Noise, standard channels)
#   scripts/loadgen-bench.sh sri    [MINERS] [RATE]    the same SV2 miners against SRI's pool_sv2 0.7.0,
#                                                      fed by `quarry tp` (HASHRATE: nominal H/s)
#   scripts/loadgen-bench.sh flood  [MINERS] [IN_FLIGHT]  V1 submits with random nonces, IN_FLIGHT
#                                                      outstanding per miner, share difficulty 1:
#                                                      every share fully validated and rejected
#                                                      (rejected answers/s, the ckpool comparison);
#                                                      SHARE_DIFFICULTY=1e-12: every share accepted
#                                                      and durable (STORE=postgres: PostgreSQL)
#   scripts/loadgen-bench.sh soak   [MINERS] [RATE]    pool mode (SQLite share log), a block every
#                                                      30 s; the pool's RSS and descriptors every
#                                                      minute into target/loadgen-bench/soak.csv
#                                                      (LOADGEN_SECONDS defaults to 3600 here)
#   scripts/loadgen-bench.sh coinbase [MINERS] [RATE]  pool mode paying in the coinbase (SCHEME,
#                                                      default coinbase-pplns; pplns to compare):
#                                                      each miner its own address, up to
#                                                      MAX_OUTPUTS (100) outputs, a block every 3 s
#
# STORE=postgres puts the share log in a throwaway PostgreSQL (scripts/postgres.sh) or PG_URL.
# POOL_CPUS and LOADGEN_CPUS (taskset lists, e.g. 0 and 1) pin each process to its own cores.
# LOADGEN_SECONDS (default 30) is the run's length; extra arguments after the scenario's go to
# `quarry loadgen`. Both processes need one descriptor per miner: MINERS is capped by
# `ulimit -n`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)
SCENARIO=${1:-}
case "$SCENARIO" in
    idle) MINERS=${2:-10000}; RATE=0; shift $(( $# < 2 ? $# : 2 )) ;;
    fanout) MINERS=${2:-10000}; BLOCKS=${3:-10}; RATE=0; shift $(( $# < 3 ? $# : 3 )) ;;
    shares | sv2 | sri) MINERS=${2:-1000}; RATE=${3:-5}; shift $(( $# < 3 ? $# : 3 )) ;;
    flood) MINERS=${2:-100}; IN_FLIGHT=${3:-8}; RATE=0; shift $(( $# < 3 ? $# : 3 )) ;;
    soak) MINERS=${2:-5000}; RATE=${3:-0.2}; shift $(( $# < 3 ? $# : 3 ))
        SECONDS_RUN=${LOADGEN_SECONDS:-3600}; BLOCKS=$((SECONDS_RUN / 30)) ;;
    coinbase) MINERS=${2:-500}; RATE=${3:-2}; shift $(( $# < 3 ? $# : 3 ))
        SECONDS_RUN=${LOADGEN_SECONDS:-30}; BLOCKS=$((SECONDS_RUN / 3)) ;;
    *) echo "usage: $0 idle|fanout|shares|sv2|sri|flood|soak|coinbase [MINERS] [BLOCKS|RATE] [loadgen args...]" >&2; exit 2 ;;
esac
SECONDS_RUN=${SECONDS_RUN:-${LOADGEN_SECONDS:-30}}
WORK=${LOADGEN_WORK:-$ROOT/target/loadgen-bench}
LIMIT=$(ulimit -n)
if [ "$LIMIT" != unlimited ] && [ "$MINERS" -gt $((LIMIT - 200)) ]; then
    echo "loadgen-bench: $MINERS miners need more than ulimit -n = $LIMIT descriptors" >&2
    exit 1
fi

cargo build --release --locked -p quarry >&2
QUARRY="$ROOT/target/release/quarry"
rm -rf "$WORK"
mkdir -p "$WORK"
POOL_PID=
SAMPLER_PID=
cleanup() {
    # Each line may fail (a process already gone, or one killed by its signal): cleanup goes on.
    [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null || true
    [ -n "$POOL_PID" ] && kill "$POOL_PID" 2>/dev/null && wait "$POOL_PID" 2>/dev/null || true
    [ -n "${TP_PID:-}" ] && kill "$TP_PID" 2>/dev/null && wait "$TP_PID" 2>/dev/null || true
    scripts/regtest-nodes.sh stop "$WORK/nodes" || true
    [ -n "${PG_URL:-}" ] && scripts/postgres.sh stop "$WORK/pg" >/dev/null 2>&1 || true
}
trap cleanup EXIT

scripts/regtest-nodes.sh start "$WORK/nodes" >&2
# STORE=postgres: the share log in a throwaway PostgreSQL (or PG_URL's) instead of SQLite.
if [ "${STORE:-sqlite}" = postgres ] && [ -z "${PG_URL:-}" ]; then
    PG_URL=$(scripts/postgres.sh start "$WORK/pg")
fi
# shellcheck disable=SC1091
source "$WORK/nodes/nodes.env"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# A fresh authority keypair into SECRET and PUBLIC.
keypair() {
    local keys
    keys=$("$QUARRY" keygen)
    SECRET=$(sed -n 's/^authority_secret_key = "\(.*\)"/\1/p' <<<"$keys")
    PUBLIC=$(sed -n 's/^authority_public_key = "\(.*\)"/\1/p' <<<"$keys")
}
# Waits up to 10 s for something to listen on 127.0.0.1:$1.
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
}
PORT=$(free_port)
keypair
cat >"$WORK/quarry.toml" <<TOML
network = "regtest"
data_dir = "$WORK/data"

[[node]]
url = "http://127.0.0.1:$NODE_A_RPC_PORT"
cookie_file = "$NODE_A_COOKIE"
zmq_hashblock = "$NODE_A_ZMQ"

[mining]
mode = "$(case "$SCENARIO" in soak | coinbase) echo pool ;; *) echo solo ;; esac)"
pool_address = "$MINING_ADDRESS"
poll_interval_secs = 1

$([ -n "${PG_URL:-}" ] && printf '[ledger]\nurl = "%s"\n' "$PG_URL")

[payout]
interval_secs = 0
$([ "$SCENARIO" = coinbase ] && printf 'scheme = "%s"\npplns_n = 1e13\nthreshold_btc = 0.00001\ncoinbase_max_outputs = %s\ncoinbase_reserved_weight = 40000\n' "${SCHEME:-coinbase-pplns}" "${MAX_OUTPUTS:-100}")

[stratum]
listen = "127.0.0.1:$PORT"
max_connections = 200000

$(case "$SCENARIO" in
flood) printf 'submits_per_sec = 10000000\nsubmits_burst = 10000000\n\n'
    echo "# Difficulty 1: a random nonce meets it once in 2^32, so every share is rejected."
    echo "# SHARE_DIFFICULTY=1e-12: every share is accepted, recorded durably, then answered."
    D=${SHARE_DIFFICULTY:-1}
    printf '[vardiff]\nstart = %s\nmin = %s\nmax = %s\n\n' "$D" "$D" "$D"
    echo "# Scored as usual, never banned: a flood of bad shares is the point here."
    printf '[bans]\nthreshold = 1e15\n' ;;
*) echo "# Shares far easier than regtest's network target, so they are shares and not blocks."
    printf '[vardiff]\nstart = 1e-12\nmin = 1e-12\nmax = 1e-12\n' ;;
esac)

[sv2]
enabled = true
authority_secret_key = "$SECRET"
TOML
pin() { if [ -n "$1" ]; then echo taskset -c "$1"; fi; }
TP_PID=
if [ "$SCENARIO" = sri ]; then
    # SRI's pool_sv2 0.7.0 (scripts/test.sh installs it), fed by `quarry tp` on the same node;
    # the loadgen's SV2 miners pin pool_sv2's own authority key.
    SRI_POOL=${SRI_POOL_SV2:-$HOME/.cache/quarry/sri/bin/pool_sv2}
    [ -x "$SRI_POOL" ] || { echo "loadgen-bench: $SRI_POOL missing (scripts/test.sh installs it)" >&2; exit 1; }
    TP_PORT=$(free_port)
    printf '\n[tp]\nlisten = "127.0.0.1:%s"\n' "$TP_PORT" >>"$WORK/quarry.toml"
    RUST_LOG=${RUST_LOG:-warn} "$QUARRY" tp --config "$WORK/quarry.toml" >"$WORK/tp.log" 2>&1 &
    TP_PID=$!
    wait_port "$TP_PORT"
    TP_PUBLIC=$PUBLIC
    keypair
    cat >"$WORK/pool_sv2.toml" <<TOML
authority_public_key = "$PUBLIC"
authority_secret_key = "$SECRET"
cert_validity_sec = 3600
listen_address = "127.0.0.1:$PORT"
coinbase_reward_script = "addr($MINING_ADDRESS)"
server_id = 1
pool_signature = "quarry-bench"
shares_per_minute = 60.0
share_batch_size = 1

[template_provider_type.Sv2Tp]
address = "127.0.0.1:$TP_PORT"
public_key = "$TP_PUBLIC"
TOML
    # shellcheck disable=SC2046
    RUST_LOG=${RUST_LOG:-warn} $(pin "${POOL_CPUS:-}") "$SRI_POOL" --config "$WORK/pool_sv2.toml" >"$WORK/pool_sv2.log" 2>&1 &
    POOL_PID=$!
else
    # shellcheck disable=SC2046
    RUST_LOG=${RUST_LOG:-warn} $(pin "${POOL_CPUS:-}") "$QUARRY" serve --config "$WORK/quarry.toml" >"$WORK/serve.log" 2>&1 &
    POOL_PID=$!
fi
wait_port "$PORT"

ARGS=(loadgen "127.0.0.1:$PORT" --miners "$MINERS" --user "$MINING_ADDRESS" --rate "$RATE"
    --duration "$SECONDS_RUN" --pool-pid "$POOL_PID" --connect-rate 4000 --node-zmq "$NODE_A_ZMQ")
case "$SCENARIO" in
    fanout) ARGS+=(--blocks "$BLOCKS" --node-rpc "http://127.0.0.1:$NODE_A_RPC_PORT"
        --node-cookie "$NODE_A_COOKIE" --block-address "$MINING_ADDRESS") ;;
    sv2 | sri) ARGS+=(--sv2 --authority-pubkey "$PUBLIC" --hashrate "${HASHRATE:-1000}") ;;
    flood) ARGS+=(--in-flight "$IN_FLIGHT") ;;
    coinbase)
        # One regtest address per miner (bech32 of a P2WPKH program from the index).
        python3 - "$MINERS" >"$WORK/users.txt" <<'PY'
import hashlib, sys
CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
def polymod(values):
    gen = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3]
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1ffffff) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if ((top >> i) & 1) else 0
    return chk
def address(program):
    data, acc, bits = [0], 0, 0
    for b in program:
        acc = (acc << 8) | b
        bits += 8
        while bits >= 5:
            bits -= 5
            data.append((acc >> bits) & 31)
    if bits:
        data.append((acc << (5 - bits)) & 31)
    hrp = "bcrt"
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    pm = polymod(expanded + data + [0] * 6) ^ 1
    return hrp + "1" + "".join(CHARSET[d] for d in data + [(pm >> 5 * (5 - i)) & 31 for i in range(6)])
for i in range(int(sys.argv[1])):
    print(address(hashlib.sha256(b"quarry-bench-%d" % i).digest()[:20]) + ".rig")
PY
        ARGS+=(--users-file "$WORK/users.txt" --blocks "$BLOCKS" --node-rpc "http://127.0.0.1:$NODE_A_RPC_PORT"
        --node-cookie "$NODE_A_COOKIE" --block-address "$MINING_ADDRESS") ;;
    soak) ARGS+=(--blocks "$BLOCKS" --node-rpc "http://127.0.0.1:$NODE_A_RPC_PORT"
        --node-cookie "$NODE_A_COOKIE" --block-address "$MINING_ADDRESS")
        # minute, pool RSS (KiB), open descriptors, threads: sampled until the run ends.
        (
            echo "minute,rss_kib,fds,threads"
            minute=0
            while kill -0 "$POOL_PID" 2>/dev/null; do
                rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$POOL_PID/status")
                threads=$(awk '/^Threads:/ { print $2 }' "/proc/$POOL_PID/status")
                echo "$minute,$rss,$(ls "/proc/$POOL_PID/fd" | wc -l),$threads"
                minute=$((minute + 1))
                sleep 60
            done
        ) >"$WORK/soak.csv" &
        SAMPLER_PID=$! ;;
esac
echo "loadgen-bench: $SCENARIO, $MINERS miners, ${SECONDS_RUN}s, pool pid $POOL_PID" >&2
# shellcheck disable=SC2046
RUST_LOG=${LOADGEN_LOG:-warn} $(pin "${LOADGEN_CPUS:-}") "$QUARRY" "${ARGS[@]}" "$@" | tee "$WORK/loadgen.out"
if [ "$SCENARIO" = soak ]; then
    # One last sample after the load, then the table.
    echo "end,$(awk '/^VmRSS:/ { print $2 }' "/proc/$POOL_PID/status"),$(ls "/proc/$POOL_PID/fd" | wc -l),$(awk '/^Threads:/ { print $2 }' "/proc/$POOL_PID/status")" >>"$WORK/soak.csv"
    cat "$WORK/soak.csv"
fi
