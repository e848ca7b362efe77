#!/usr/bin/env bash
# Build Bitcoin Core's bitcoind and bitcoin-cli from the source that the crates.io package
# libbitcoinkernel-sys 0.2.0 vendors (Bitcoin Core 30.99, with src/zmq, without src/wallet),
# and cache them. The source is fetched by cargo as an ordinary crates.io download and is never
# copied into this repository.
#
#   scripts/bitcoin-core.sh install   build once (about 10 min on 2 cores), print the bin directory
#   scripts/bitcoin-core.sh path      print the bin directory if the build is cached, else fail
#
# Environment:
#   QUARRY_CORE_ROOT   cache root (default $HOME/.cache/quarry/bitcoin-core-<package version>)
#   QUARRY_CORE_JOBS   parallel compile jobs (default: nproc)
set -euo pipefail

readonly PACKAGE=libbitcoinkernel-sys
readonly VERSION=0.2.0
ROOT=${QUARRY_CORE_ROOT:-${HOME:?HOME is not set}/.cache/quarry/bitcoin-core-$VERSION}
BIN="$ROOT/bin"

log() { echo "bitcoin-core: $*" >&2; }
die() { echo "bitcoin-core: error: $*" >&2; exit 1; }

cached() { [ -x "$BIN/bitcoind" ] && [ -x "$BIN/bitcoin-cli" ] && "$BIN/bitcoind" -version >/dev/null 2>&1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_build_deps() {
    local missing=()
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    command -v g++ >/dev/null 2>&1 || missing+=(g++)
    command -v make >/dev/null 2>&1 || missing+=(make)
    [ -e /usr/include/boost/version.hpp ] || missing+=(libboost-dev)
    [ -e /usr/include/event2/event.h ] || missing+=(libevent-dev)
    [ -e /usr/include/zmq.h ] || missing+=(libzmq3-dev)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing build dependencies from Debian: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# The package's directory under $CARGO_HOME/registry/src, fetched through a throw-away manifest.
fetch_source() {
    local manifest
    manifest=$(mktemp -d)
    mkdir -p "$manifest/src"
    : >"$manifest/src/lib.rs"
    cat >"$manifest/Cargo.toml" <<EOF
[package]
name = "quarry-core-source"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
$PACKAGE = "=$VERSION"
EOF
    (cd "$manifest" && cargo fetch --quiet) >&2
    local path
    path=$(cd "$manifest" && cargo metadata --format-version 1 --quiet |
        python3 -c "import json,sys; print(next(p['manifest_path'] for p in json.load(sys.stdin)['packages'] if p['name']=='$PACKAGE'))")
    rm -rf "$manifest"
    dirname "$path"
}

build() {
    install_build_deps
    local src build_dir jobs started
    src="$(fetch_source)/bitcoin"
    [ -f "$src/CMakeLists.txt" ] || die "no Bitcoin Core source in $src"
    [ -d "$src/src/zmq" ] || die "$PACKAGE $VERSION has no src/zmq: Quarry's tests need ZMQ"
    jobs=${QUARRY_CORE_JOBS:-$(nproc)}
    build_dir="$ROOT/build"
    mkdir -p "$ROOT"
    # The package trims src/ipc, yet init.cpp (built even with -DENABLE_IPC=OFF) still includes
    # <ipc/exception.h> for one catch clause. Supply that one declaration; nothing throws it
    # without IPC.
    local shim="$ROOT/shim"
    mkdir -p "$shim/ipc"
    cat >"$shim/ipc/exception.h" <<'EOF'
// Written by Quarry's scripts/bitcoin-core.sh: libbitcoinkernel-sys 0.2.0 ships without src/ipc.
#ifndef QUARRY_SHIM_IPC_EXCEPTION_H
#define QUARRY_SHIM_IPC_EXCEPTION_H
#include <stdexcept>
namespace ipc {
class Exception : public std::runtime_error
{
public:
    using std::runtime_error::runtime_error;
};
} // namespace ipc
#endif
EOF
    started=$(date +%s)
    log "building bitcoind and bitcoin-cli from $src with $jobs jobs (cold: about 10 min on 2 cores)"
    cmake -S "$src" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release \
        -DENABLE_WALLET=OFF -DWITH_ZMQ=ON -DENABLE_IPC=OFF -DBUILD_TESTS=OFF -DBUILD_BENCH=OFF \
        -DBUILD_GUI=OFF -DBUILD_FUZZ_BINARY=OFF -DBUILD_KERNEL_LIB=OFF -DBUILD_UTIL=OFF \
        -DBUILD_TX=OFF -DBUILD_WALLET_TOOL=OFF -DWITH_CCACHE=OFF -DCMAKE_CXX_FLAGS="-I$shim" >"$ROOT/cmake-configure.log" 2>&1 ||
        { tail -40 "$ROOT/cmake-configure.log" >&2; die "cmake configure failed (log: $ROOT/cmake-configure.log)"; }
    cmake --build "$build_dir" -j "$jobs" --target bitcoind bitcoin-cli >"$ROOT/cmake-build.log" 2>&1 ||
        { tail -40 "$ROOT/cmake-build.log" >&2; die "build failed (log: $ROOT/cmake-build.log)"; }
    mkdir -p "$BIN"
    install -m 755 "$build_dir/bin/bitcoind" "$build_dir/bin/bitcoin-cli" "$BIN/"
    strip "$BIN/bitcoind" "$BIN/bitcoin-cli" 2>/dev/null || true
    rm -rf "$build_dir"
    log "cold build took $(($(date +%s) - started)) s"
    "$BIN/bitcoind" -version | head -1 >&2
}

case "${1:-}" in
    install)
        if ! cached; then
            mkdir -p "$ROOT"
            # Serialise concurrent first-time builds (parallel test runs share the cache).
            exec 9>"$ROOT/.lock"
            if command -v flock >/dev/null 2>&1; then flock 9; fi
            cached || build
        fi
        echo "$BIN"
        ;;
    path)
        cached || exit 1
        echo "$BIN"
        ;;
    *)
        echo "usage: $0 install|path" >&2
        exit 2
        ;;
esac
