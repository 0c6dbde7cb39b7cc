#!/usr/bin/env bash
# The test command (README): provisions QEMU and the guest image (cached outside the clone,
# built on first use with visible progress), then runs every test, VM tests included.
# VM tests boot real guests: under KVM when it works here, otherwise under TCG.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

echo "== host tools"
# Debian packages the tests need, installed when missing: tshark parses the peer-capture
# scenario's pcap; verilator (with g++ and make) builds the RTL benches and the
# co-simulation (--model rtl).
need=()
command -v tshark >/dev/null || need+=(tshark)
command -v verilator >/dev/null || need+=(verilator)
command -v g++ >/dev/null || need+=(g++)     # verilated C++ (benches, co-simulation)
command -v make >/dev/null || need+=(make)
if [ ${#need[@]} -gt 0 ]; then
    as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "error: need root to install: $*" >&2; exit 1; fi; }
    echo "installing ${need[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings

echo "== provisioning (QEMU, guest image, accelerator)"
cargo build -q -p testbed
./target/debug/testbed qemu
./target/debug/testbed image
./target/debug/testbed accel

echo "== tests"
cargo test --workspace 2>&1 | tee target/test.log

echo "== RTL benches (Verilator)"
./rtl/run-benches.sh
echo "== all tests passed in $(( $(date +%s) - start ))s"
