#!/usr/bin/env bash
# kaspad 2.1.0, rusty-kaspa's node, from crates.io, for the Kaspa devnet tests: built once into a
# cache, never vendored (about 15 min on 2 cores).
#
#   scripts/kaspad.sh install     builds it if missing; prints the directory holding kaspad
#
# It needs Debian's clang and libclang-dev (RocksDB's bindings) and protobuf-compiler (gRPC).
set -euo pipefail
KASPAD_VERSION=2.1.0
root=${QUARRY_KASPAD_ROOT:-$HOME/.cache/quarry/kaspad-$KASPAD_VERSION}

apt_install() {
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "$@"; else sudo apt-get update -qq && sudo apt-get install -y -qq "$@"; fi
}

case ${1:-install} in
install)
    # `kaspad --version` exits with 1 after printing: read what it says, not its status.
    installed=$("$root/bin/kaspad" --version 2>/dev/null || true)
    if ! grep -q "$KASPAD_VERSION" <<<"$installed"; then
        missing=()
        command -v clang >/dev/null 2>&1 || missing+=(clang)
        [ -e /usr/lib/llvm-14/lib/libclang.so ] || ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || missing+=(libclang-dev)
        command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
        if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}" >&2; fi
        # A test peer needs no debug info, LTO or full optimisation; its own target directory,
        # deleted once installed.
        CARGO_TARGET_DIR="$root/target" \
            CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=0 \
            CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
            CARGO_PROFILE_RELEASE_STRIP=true \
            cargo install --locked --quiet kaspad --version "$KASPAD_VERSION" --root "$root" -j "$(nproc)" >&2
        rm -rf "$root/target"
    fi
    echo "$root/bin"
    ;;
*)
    echo "usage: scripts/kaspad.sh install" >&2
    exit 2
    ;;
esac
