#!/usr/bin/env bash
# Synthesis report of the RTL (rtl/README.md keeps its table): yosys for a generic target
# (full configuration), then yosys + nextpnr-ice40 for a reduced configuration on an
# iCE40 HX8K (the only Debian 12 place-and-route with timing). Installs yosys and
# nextpnr-ice40 when missing. Prints the table rows.
set -euo pipefail
cd "$(dirname "$0")"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "error: need root to install: $*" >&2; exit 1; fi; }
for tool in yosys nextpnr-ice40; do
    command -v "$tool" >/dev/null || { as_root apt-get update -q; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$tool"; }
done
out=../target/rtl/synth
mkdir -p "$out"
src=nagare/nagare_pipeline.sv
# Generic: cells, flip-flops, memories, logic depth (longest path in gates).
yosys -q -p "read_verilog -sv $src; synth -top nagare_pipeline; tee -o $out/generic.stat stat; tee -o $out/generic.ltp ltp -noff" > /dev/null
cells=$(awk '/Number of cells/ {n=$4} END {print n}' "$out/generic.stat")
ffs=$(awk '/\$_(S)?DFF/ {n+=$2} END {print n}' "$out/generic.stat")
mems=$(awk '/Number of memories/ {n=$4} END {print n}' "$out/generic.stat")
depth=$(grep -o 'length=[0-9]*' "$out/generic.ltp" | tail -1 | cut -d= -f2)
# iCE40, reduced: 2 streams, 4 nodes, 4 ports.
yosys -q -p "read_verilog -sv $src; chparam -set STREAMS 2 -set MAX_HOPS 4 -set PORTS 4 nagare_pipeline; synth_ice40 -top nagare_pipeline -json $out/ice40.json" > /dev/null
nextpnr-ice40 --hx8k --package ct256 --json "$out/ice40.json" --pcf-allow-unconstrained --freq 12 --seed 1 \
    > "$out/ice40.log" 2>&1
lcs=$(grep -o 'ICESTORM_LC: *[0-9]*' "$out/ice40.log" | tail -1 | grep -o '[0-9]*$')
rams=$(grep -o 'ICESTORM_RAM: *[0-9]*' "$out/ice40.log" | tail -1 | grep -o '[0-9]*$')
fmax=$(grep -o "Max frequency for clock '[^']*': [0-9.]* MHz" "$out/ice40.log" | tail -1 | grep -o '[0-9.]* MHz')
echo "| module | configuration | cells (generic) | flip-flops | memories | logic depth | iCE40 HX8K LCs | iCE40 RAMs | iCE40 fmax |"
echo "|---|---|---|---|---|---|---|---|---|"
echo "| nagare_pipeline | 8 streams, 6 nodes, 8 ports, 10 stages (generic); 2 / 4 / 4 (iCE40) | $cells | $ffs | $mems | $depth | $lcs | $rams | $fmax |"
