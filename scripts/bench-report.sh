#!/usr/bin/env bash
# The performance report of issue 18 on one screen: every loadgen run and criterion figure that
# BENCHMARKS.md quotes, measured again on this machine, so that a later run can be compared.
#
#   scripts/bench-report.sh            # about 9 minutes
#   REPORT_MANY=1 scripts/bench-report.sh   # + 100,000 miners across frontends (3 more minutes)
#
# Raw outputs stay in target/bench-report/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/bench-report
rm -rf "$OUT"
mkdir -p "$OUT"
SECS=${REPORT_SECONDS:-20}
run() { # name, env..., -- loadgen-bench args
    local name=$1
    shift
    env LOADGEN_SECONDS="$SECS" "$@" --json >"$OUT/$name.log" 2>&1 || true
    grep '^{' "$OUT/$name.log" | tail -1 >"$OUT/$name.json" || true
}
run flood_100x8 scripts/loadgen-bench.sh flood 100 8
run flood_1000x2 scripts/loadgen-bench.sh flood 1000 2
run durable_sqlite SHARE_DIFFICULTY=1e-12 scripts/loadgen-bench.sh flood 100 16
run durable_postgres STORE=postgres SHARE_DIFFICULTY=1e-12 scripts/loadgen-bench.sh flood 200 64
run sv2_quarry_20 HASHRATE=0.1 scripts/loadgen-bench.sh sv2 1000 20
run sv2_sri_20 HASHRATE=0.1 scripts/loadgen-bench.sh sri 1000 20
run sv2_quarry_60 HASHRATE=0.1 scripts/loadgen-bench.sh sv2 1000 60
run sv2_sri_60 HASHRATE=0.1 scripts/loadgen-bench.sh sri 1000 60
run fanout_10k scripts/loadgen-bench.sh fanout 10000 6
run idle_19500 scripts/loadgen-bench.sh idle 19500
cargo bench -p quarry-work --bench share_validation -- validate_lanes_3000 \
    --warm-up-time 1 --measurement-time 3 >"$OUT/lanes.log" 2>&1 || true
if [ -n "${REPORT_MANY:-}" ]; then
    LOADGEN_SECONDS=60 scripts/loadgen-many.sh 6 6 16700 0.2 >"$OUT/many.log" 2>&1 || true
fi
python3 - "$OUT" <<'PY'
import json, os, platform, re, sys
out = sys.argv[1]
def load(name):
    try:
        return json.load(open(f"{out}/{name}.json"))
    except Exception:
        return None
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"machine: {os.cpu_count()} cores, {cpu}, Linux {platform.release()}")
print(f"{'run':<34}{'answers/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'pool us/ans':>12}{'gen us/ans':>11}{'RSS B/conn':>11}")
def row(label, name):
    r = load(name)
    if not r:
        print(f"{label:<34}{'(failed: see ' + out + '/' + name + '.log)':>40}")
        return
    rate = r["accepted_per_sec"] + r["rejected_per_sec"]
    unanswered = f" ({r['unanswered']} unanswered)" if r.get("unanswered") else ""
    fmt = lambda v, f: (f % v) if isinstance(v, (int, float)) else "-"
    print(f"{label:<34}{rate:>11.0f}{r['latency_ms']['p50']:>9.2f}{r['latency_ms']['p99']:>9.2f}"
          f"{fmt(r.get('pool_cpu_us_per_answer'), '%.2f'):>12}{fmt(r.get('loadgen_cpu_us_per_answer'), '%.2f'):>11}"
          f"{fmt(r.get('pool_rss_bytes_per_connection'), '%.0f'):>11}{unanswered}")
row("V1 flood 100x8, rejected", "flood_100x8")
row("V1 flood 1000x2, rejected", "flood_1000x2")
row("V1 flood durable, SQLite 100x16", "durable_sqlite")
row("V1 flood durable, PostgreSQL 200x64", "durable_postgres")
row("SV2 Quarry 1000 x 20/s", "sv2_quarry_20")
row("SV2 SRI pool_sv2 0.7.0 1000 x 20/s", "sv2_sri_20")
row("SV2 Quarry 1000 x 60/s (saturating)", "sv2_quarry_60")
row("SV2 SRI pool_sv2 1000 x 60/s", "sv2_sri_60")
f = load("fanout_10k")
if f:
    print(f"notify fan-out, 10,000 miners: last miner {f['fanout']['last_ms_mean']:.1f} ms mean, "
          f"{f['fanout']['last_ms_max']:.1f} ms worst")
i = load("idle_19500")
if i:
    print(f"idle: {i['connections_held_at_ramp_end']} connections, "
          f"{i['pool_rss_bytes_per_connection']:.0f} B RSS each")
lanes = open(f"{out}/lanes.log").read() if os.path.exists(f"{out}/lanes.log") else ""
per = []
for name, lanes_n in (("1_lane", 1), ("2_lanes", 2), ("4_lanes", 4)):
    m = re.search(rf"{name}\s+time:\s+\[\S+ \S+ (\S+) (\S+)", lanes)
    if m:
        value = float(m.group(1)) * {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3}[m.group(2)]
        per.append(f"{lanes_n} lane{'s' if lanes_n > 1 else ''} {value / lanes_n:.2f} us")
print("3,000-tx share validation per share: " + (", ".join(per) if per else "(see lanes.log)"))
if os.path.exists(f"{out}/many.log"):
    print("100,000 miners: " + " | ".join(l.strip() for l in open(f"{out}/many.log") if l.startswith(("frontends", "share answers", "frontends' RSS"))))
PY
