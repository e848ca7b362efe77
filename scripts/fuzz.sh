#!/usr/bin/env bash
# Fuzzing with cargo-fuzz (crates.io, pinned) on the nightly toolchain.
#
#   scripts/fuzz.sh install                   cargo-fuzz into ~/.cache/quarry/cargo-fuzz
#   scripts/fuzz.sh check [SECONDS]           every target SECONDS (default 20) from the
#                                             committed corpus, new inputs to a scratch dir (CI)
#   scripts/fuzz.sh campaign SECONDS [T...]   each target (or T...) for SECONDS of CPU time (in
#                                             runs of at most 10 min, until its process has used
#                                             that much: a shared machine does not shorten it)
#                                             into a kept corpus (target/fuzz-campaign); prints
#                                             executions, CPU seconds and coverage per target
#   scripts/fuzz.sh minimize [T...]           merges the campaign corpus into fuzz/corpus (a set
#                                             cover on edge coverage: small enough to commit)
#
# A crash stops the run and leaves its input under target/fuzz-artifacts/<target>/; keep it in
# fuzz/regressions/<target>/ once fixed: quarry-stratum/tests/fuzz_corpus.rs replays it.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
root=${QUARRY_CARGO_FUZZ_ROOT:-$HOME/.cache/quarry/cargo-fuzz}
export PATH="$root/bin:$PATH"
targets_all=$(ls fuzz/fuzz_targets | sed 's/\.rs$//')
built=fuzz/target/x86_64-unknown-linux-gnu/release

# Builds every target (ASan, coverage) and copies the binaries where this run alone uses them.
build() {
    cargo +nightly fuzz build >/dev/null
    bin=$(mktemp -d)
    trap 'rm -rf "$bin"' EXIT
    for target in $targets_all; do cp "$built/$target" "$bin/"; done
}

install() {
    if ! rustup toolchain list | grep -q '^nightly'; then
        rustup toolchain install nightly --profile minimal
    fi
    if ! cargo-fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
        cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION" --root "$root"
    fi
}

# run <target> <seconds> <corpus dir to write> [read-only corpus dirs...]: one libFuzzer run of
# <seconds> wall time. Sets EXECS, COV, FT and CPU (user + system seconds of the run).
run() {
    local target=$1 seconds=$2 out=$3 log times
    shift 3
    mkdir -p "$out" "target/fuzz-artifacts/$target"
    log=$(mktemp)
    times=$(mktemp)
    # The binary itself, not `cargo fuzz run`: a source edit while a campaign runs must not
    # rebuild it mid-way (or count the build as fuzzing).
    # ODR checks only where two definitions differ in size (level 1). The linker merges the
    # bundled sqlite3.c's two identical read-only `aiOff` tables into one address, and the
    # default level 2 reports the two globals registered there as a violation.
    if ! ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=1} \
        /usr/bin/time -f '%U %S' -o "$times" "$bin/$target" "$out" "$@" \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="target/fuzz-artifacts/$target/" >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz: $target FAILED; input under target/fuzz-artifacts/$target/" >&2
        rm -f "$log" "$times"
        return 1
    fi
    EXECS=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    COV=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | grep -o '[0-9]*' || echo 0)
    FT=$(grep -o 'ft: [0-9]*' "$log" | tail -n1 | grep -o '[0-9]*' || echo 0)
    CPU=$(awk '{ printf "%d", $1 + $2 }' "$times")
    rm -f "$log" "$times"
}

summary() { # summary <target> <wall s> <cpu s> <execs> <corpus dir>
    printf '%-14s %6ss wall %6ss cpu  %10s execs  cov %6s  ft %6s  corpus %5s\n' \
        "$1" "$2" "$3" "$4" "$COV" "$FT" "$(ls "$5" | wc -l)"
}

case ${1:-check} in
install)
    install
    ;;
check)
    install
    seconds=${2:-20}
    build
    scratch=$(mktemp -d)
    for target in $targets_all; do
        # New inputs go to the scratch dir: the committed corpus is only read.
        run "$target" "$seconds" "$scratch/$target" "fuzz/corpus/$target"
        summary "$target" "$seconds" "$CPU" "$EXECS" "$scratch/$target"
    done
    rm -rf "$scratch"
    ;;
campaign)
    install
    seconds=${2:?seconds per target}
    shift 2
    build
    for target in ${*:-$targets_all}; do
        out="target/fuzz-campaign/$target"
        cpu=0 wall=0 execs=0
        while [ "$cpu" -lt "$seconds" ]; do
            # A run's wall time is at least the CPU still owed (less on an idle core is not
            # possible), at most 10 min, so the totals are reported as they accrue.
            chunk=$((seconds - cpu))
            [ "$chunk" -gt 600 ] && chunk=600
            [ "$chunk" -lt 10 ] && chunk=10
            run "$target" "$chunk" "$out" "fuzz/corpus/$target"
            cpu=$((cpu + CPU)) wall=$((wall + chunk)) execs=$((execs + EXECS))
            echo "  $target: $cpu of $seconds CPU s" >&2
        done
        summary "$target" "$wall" "$cpu" "$execs" "$out"
    done
    ;;
minimize)
    install
    shift
    build
    for target in ${*:-$targets_all}; do
        pool=$(mktemp -d)
        merged=$(mktemp -d)
        cp fuzz/corpus/"$target"/* "$pool"/ 2>/dev/null || true
        cp target/fuzz-campaign/"$target"/* "$pool"/ 2>/dev/null || true
        # A set cover on edge coverage alone (no hit counters): the fewest inputs that reach
        # every edge the campaign reached, small enough to commit.
        "$bin/$target" -set_cover_merge=1 \
            -use_counters=0 "$merged" "$pool" >/dev/null 2>&1
        if [ -n "$(ls "$merged")" ]; then
            rm -rf "fuzz/corpus/$target"
            mkdir -p "fuzz/corpus/$target"
            cp "$merged"/* "fuzz/corpus/$target/"
        fi
        echo "$target: $(ls "fuzz/corpus/$target" | wc -l) inputs, $(du -sh --apparent-size "fuzz/corpus/$target" | cut -f1)"
        rm -rf "$pool" "$merged"
    done
    ;;
*)
    echo "usage: scripts/fuzz.sh install | check [SECONDS] | campaign SECONDS [TARGET...] | minimize [TARGET...]" >&2
    exit 2
    ;;
esac
