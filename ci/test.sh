#!/usr/bin/env bash
# The test command (README): provisions QEMU and the guest image (cached outside the clone,
# built on first use with visible progress), then runs every test, VM tests included.
# VM tests boot real guests: under KVM when it works here, otherwise under TCG.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

echo "== host tools"
# Debian packages the tests need, installed when missing: tshark parses the peer-capture
# scenario's pcap. Verilator (with g++ and make) is provisioned by `testbed rtl` below, as
# the demo provisions it, and by rtl/run-benches.sh.
need=()
command -v tshark >/dev/null || need+=(tshark)
# valgrind: `bench echo` counts instructions per packet under callgrind (tests/bench.rs).
command -v valgrind >/dev/null || need+=(valgrind)
# iproute2 (`ip`): the peer-echo VM test over UDP makes two network namespaces and a veth
# pair (tests/vm.rs), and runs the peer's QEMU in one of them.
command -v ip >/dev/null || need+=(iproute2)
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

target=${CARGO_TARGET_DIR:-target}
bin="$target/debug/testbed"
echo "== provisioning (QEMU, guest image, accelerator, RTL co-simulation)"
cargo build -q -p testbed
"$bin" qemu
"$bin" image
"$bin" accel
"$bin" rtl

echo "== tests"
cargo test --workspace 2>&1 | tee "$target/test.log"

echo "== fuzzing (cargo fuzz: every target for at most 30 s, at most 6 minutes in all)"
./ci/fuzz.sh

echo "== soak (hostile, killed and well-behaved clients against long-lived servers; < 3 minutes)"
"$bin" soak --minutes 2.5 --seed "${SOAK_SEED:-17}"

echo "== RTL benches (Verilator)"
./rtl/run-benches.sh
echo "== all tests passed in $(( $(date +%s) - start ))s"
