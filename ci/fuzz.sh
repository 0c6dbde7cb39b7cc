#!/usr/bin/env bash
# Coverage-guided fuzzing of the device servers (cargo-fuzz, libFuzzer; README "Robustness").
#
#   ./ci/fuzz.sh                          every target for FUZZ_SECONDS (30) each, at most
#                                         FUZZ_TOTAL (360) seconds of fuzzing in all
#   ./ci/fuzz.sh model_enso 3600          one target for longer (any duration)
#
# cargo-fuzz needs unstable rustc flags (-Zsanitizer=address, sanitizer coverage): the
# machine's stable toolchain takes them with RUSTC_BOOTSTRAP=1 (no nightly is fetched).
# Seeds live in fuzz/seeds/TARGET (kept small, in the repo); the working corpus grows in
# target/fuzz-corpus/TARGET (outside the repo). A crash, hang (-timeout) or leak fails the
# run, and its input is left in fuzz/artifacts/TARGET/. Figures go to target/fuzz-report.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version 0.13.2
fi
per=${FUZZ_SECONDS:-30}
total=${FUZZ_TOTAL:-360}
if [ $# -ge 1 ]; then
    targets=("$1")
    per=${2:-600}
    total=$per
else
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
n=${#targets[@]}
if [ $((per * n)) -gt "$total" ]; then per=$((total / n)); fi
echo "fuzz: building ${n} target(s)"
cargo fuzz build --fuzz-dir fuzz
mkdir -p target
report=target/fuzz-report.txt
: > "$report"
passed=0
failed=0
for t in "${targets[@]}"; do
    corpus=target/fuzz-corpus/$t
    mkdir -p "$corpus" "fuzz/seeds/$t"
    log=target/fuzz-$t.log
    echo "fuzz: $t for ${per}s"
    if cargo fuzz run --fuzz-dir fuzz "$t" "$corpus" "fuzz/seeds/$t" -- \
        -max_total_time="$per" -timeout=10 -rss_limit_mb=4096 -max_len=8192 -print_final_stats=1 \
        >"$log" 2>&1; then
        passed=$((passed + 1))
        verdict=ok
    else
        failed=$((failed + 1))
        verdict=FAILED
        grep -E 'ERROR|panicked|SUMMARY|Test unit written' "$log" | head -20 || true
    fi
    execs=$(grep -oE 'stat::number_of_executed_units:[[:space:]]*[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1 || true)
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
    line="$t: ${verdict}, ${execs:-?} executions in ${per}s, ${cov:-cov: ?}, corpus $(ls "$corpus" | wc -l) inputs"
    echo "  $line"
    echo "$line" >> "$report"
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
