#!/usr/bin/env bash
# Synthesis report of the RTL (rtl/README.md keeps its table): yosys for a generic target
# (full configuration), then yosys + nextpnr-ice40 for a reduced configuration on an
# iCE40 HX8K (the only Debian 12 place-and-route with timing). Installs yosys and
# nextpnr-ice40 when missing. Prints the table rows.
# Usage: rtl/synth.sh [module ...]   (default: nagare_pipeline enso_queue_engine enso_queue_regs)
set -euo pipefail
cd "$(dirname "$0")"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "error: need root to install: $*" >&2; exit 1; fi; }
for tool in yosys nextpnr-ice40; do
    command -v "$tool" >/dev/null || { as_root apt-get update -q; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$tool"; }
done
out=../target/rtl/synth
mkdir -p "$out"

# row MODULE SOURCE "GENERIC chparam" "ICE40 chparam" "configuration text" [PINS HARNESS]
# (ICE40 chparam "-": no iCE40 columns, the design has more ports than the part has pins.)
row() {
    local top=$1 src=$2 full=$3 small=$4 what=$5 dir="$out/$1" pins=${6:-} ptop=$1
    [ -z "$pins" ] || ptop=${top}_pins
    mkdir -p "$dir"
    # Generic: cells, flip-flops, memories, logic depth (longest path in gates).
    yosys -q -p "read_verilog -sv -Ienso $src; ${full:+chparam $full $top;} synth -top $top; tee -o $dir/generic.stat stat; tee -o $dir/generic.ltp ltp -noff" > /dev/null
    local cells ffs mems depth lcs rams fmax
    cells=$(awk '/Number of cells/ {n=$4} END {print n}' "$dir/generic.stat")
    ffs=$(awk '/\$_[A-Z]*DFF/ {n+=$2} END {print n}' "$dir/generic.stat")
    mems=$(awk '/Number of memories/ {n=$4} END {print n}' "$dir/generic.stat")
    depth=$(grep -o 'length=[0-9]*' "$dir/generic.ltp" | tail -1 | cut -d= -f2)
    if [ "$small" = "-" ]; then
        echo "| $top | $what | $cells | $ffs | $mems | $depth | - | - | - |"
        return 0
    fi
    yosys -q -p "read_verilog -sv -Ienso $src $pins; ${small:+chparam $small $ptop;} synth_ice40 -top $ptop -json $dir/ice40.json" > /dev/null
    nextpnr-ice40 --hx8k --package ct256 --json "$dir/ice40.json" --pcf-allow-unconstrained --freq 12 --seed 1 \
        > "$dir/ice40.log" 2>&1 || { tail -5 "$dir/ice40.log" >&2; return 1; }
    lcs=$(grep -o 'ICESTORM_LC: *[0-9]*' "$dir/ice40.log" | tail -1 | grep -o '[0-9]*$')
    rams=$(grep -o 'ICESTORM_RAM: *[0-9]*' "$dir/ice40.log" | tail -1 | grep -o '[0-9]*$')
    fmax=$(grep -o "Max frequency for clock '[^']*': [0-9.]* MHz" "$dir/ice40.log" | tail -1 | grep -o '[0-9.]* MHz')
    echo "| $top | $what | $cells | $ffs | $mems | $depth | $lcs | $rams | $fmax |"
}

modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=(nagare_pipeline enso_queue_engine enso_queue_regs)
echo "| module | configuration | cells (generic) | flip-flops | memories | logic depth | iCE40 HX8K LCs | iCE40 RAMs | iCE40 fmax |"
echo "|---|---|---|---|---|---|---|---|---|"
for m in "${modules[@]}"; do
    case $m in
    nagare_pipeline)
        row nagare_pipeline nagare/nagare_pipeline.sv "" "-set STREAMS 2 -set MAX_HOPS 4 -set PORTS 4" \
            "8 streams, 6 nodes, 8 ports, 10 stages (generic); 2 / 4 / 4 (iCE40)" ;;
    enso_queue_engine)
        row enso_queue_engine enso/enso_queue_engine.sv "" \
            "-set NPIPES 4 -set NNB 2 -set PIPE_LOG2 10 -set ENTRIES_LOG2 8" \
            "64 pipes of 32768 flits, 16 pairs of 16384-entry rings (generic); 4 pipes of 1024, 2 pairs of 256, ports behind shift registers (iCE40)" \
            enso/enso_queue_engine_pins.sv ;;
    enso_queue_regs)
        row enso_queue_regs "enso/enso_queue_regs.sv enso/enso_queue_engine.sv" "" "-" \
            "the register front end and the engine behind it: 64 pipe slots, 16 pair slots (generic only: its ports outnumber the iCE40's pins)" ;;
    *) echo "error: unknown module $m" >&2; exit 2 ;;
    esac
done
