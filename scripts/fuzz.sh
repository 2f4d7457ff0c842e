#!/usr/bin/env bash
# Builds the libFuzzer targets with clang-19 (in build/fuzz/) and runs each for SECONDS
# (default 60), from its seed corpus in tests/fuzz/corpus/NAME when there is one.
# Exit status 0 only when no target found a crash. Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ_DIR="${FUZZ_DIR:-$ROOT/build/fuzz}"
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(nvme_command_fuzz card_protocol_fuzz kernel_loader_fuzz volume_spec_fuzz xenstore_fuzz blkif_fuzz dom0_link_fuzz xen_hypercall_fuzz)
command -v clang++-19 >/dev/null || { echo "fuzz: clang++-19 is missing (scripts/setup.sh installs it)" >&2; exit 2; }
[ $# -gt 0 ] || targets+=(type_name_fuzz)  # hostd's fuzz target (tests/hostd) joins the default set
CC=clang-19 CXX=clang++-19 cmake -S "$ROOT" -B "$FUZZ_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C "$FUZZ_DIR" "${targets[@]}" >/dev/null
failed=0
for t in "${targets[@]}"; do
  work="$FUZZ_DIR/runs/$t"
  mkdir -p "$work/corpus"
  [ -d "$ROOT/tests/fuzz/corpus/$t" ] && cp -n "$ROOT/tests/fuzz/corpus/$t"/* "$work/corpus/" 2>/dev/null || true
  if (cd "$work" && "$FUZZ_DIR/bin/$t" corpus -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 \
        >"$work/log.txt" 2>&1); then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/log.txt" | grep -o '[0-9]*$' || echo "?")
    echo "fuzz: $t: $runs inputs in ${seconds}s, no crash"
  else
    echo "fuzz: $t: FAILED (see $work/log.txt)"
    tail -20 "$work/log.txt"
    failed=1
  fi
done
exit $failed
