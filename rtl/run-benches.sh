#!/usr/bin/env bash
# Builds and runs the self-checking RTL benches with Verilator (Debian's `verilator`, with
# g++ and make, installed here when missing). Each bench exits non-zero on its first mismatch.
# Usage: rtl/run-benches.sh [bench ...]   (default: all of rtl/tb/*_tb.sv)
set -euo pipefail
cd "$(dirname "$0")"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "error: need root to install verilator: $*" >&2; exit 1; fi; }
need=()
for tool in verilator g++ make; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi
out=../target/rtl
mkdir -p "$out"
benches=("$@")
if [ ${#benches[@]} -eq 0 ]; then
    for f in tb/*_tb.sv; do benches+=("$(basename "$f" .sv)"); done
fi
for tb in "${benches[@]}"; do
    dut=${tb%_tb}
    dut=${dut%_diff}
    args=()
    case $tb in
        nagare_pipeline_diff_tb)
            # Vectors from the Rust model: the RTL must give every header the same verdict.
            (cd .. && cargo run -q -p nagare --example vectors -- "target/rtl/nagare_vectors.txt" 100000)
            args=("+vectors=$(cd "$out" && pwd)/nagare_vectors.txt")
            ;;
        enso_queue_engine_diff_tb)
            # 100 000 random engine calls with what the Rust engine did for each: the RTL
            # must emit the same events, in the same order.
            (cd .. && cargo run -q -p enso-nic --example engine_vectors -- "target/rtl/enso_engine_vectors.txt" 100000)
            args=("+vectors=$(cd "$out" && pwd)/enso_engine_vectors.txt")
            ;;
    esac
    src=$(find . -name "$dut.sv" -not -path "./tb/*" | head -1)
    [ -n "$src" ] || { echo "error: no RTL for bench $tb" >&2; exit 1; }
    # The design's folder holds the modules it instantiates.
    srcs=("$(dirname "$src")"/*.sv)
    # `include files: the design's folder and the benches' (tb/*.svh).
    incs=("-I$(dirname "$src")" -Itb)
    echo "== $tb"
    rm -rf "$out/$tb"
    # Lint the design on its own first: warnings there are errors (index widths aside:
    # the tables are indexed by fields wider than their depth, bounded by construction).
    verilator --lint-only -Wall -Wno-WIDTH "${incs[@]}" "${srcs[@]}" --top-module "$dut"
    verilator --binary --timing -Wno-fatal -Wno-WIDTH -Wno-UNUSEDSIGNAL -Wno-TIMESCALEMOD \
        --top-module "$tb" -Mdir "$out/$tb" "${incs[@]}" "${srcs[@]}" "tb/$tb.sv" -o "$tb" > "$out/$tb.build.log" 2>&1 \
        || { tail -30 "$out/$tb.build.log"; exit 1; }
    "$out/$tb/$tb" "${args[@]}"
done
