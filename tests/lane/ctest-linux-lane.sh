#!/usr/bin/env bash
# CTest entry of the linux-lane label: one emulated-host boot runs the lane self-test and the
# Linux guest tests. On a machine with hardware KVM the same scripts run directly.
# Usage: ctest-linux-lane.sh BUILD_DIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build=$(cd "${1:?usage: $0 BUILD_DIR}" && pwd)
out=$build/lane
mkdir -p "$out/bin"
cp -f "$build/bin/nitrovm" "$out/bin/nitrovm"
cp -f "$build/bin/nitro-card" "$out/bin/nitro-card"
cp -f "$build/bin/xen-dom0" "$out/bin/xen-dom0"
mode=()
if [ -e /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then
    mode=(--direct)  # hardware KVM: no emulated host needed
fi
run() {
    "$here/run-lane.sh" --image-dir "$build/images" --bin-dir "$out/bin" --out "$out" --smp 2 \
        --file "$build/guest/probe.elf:/images/probe.elf" "${mode[@]}" \
        -- "$here/selftest.sh" "$here/linux-guest.sh" "$here/linux-nvme.sh" "$here/linux-xen.sh"
}
# Status 3 is the lane itself failing, with no verdict from a test: QEMU or the emulated host's
# kernel died, or the host stopped answering (its own per-test watchdog never fired). The
# software-emulated host does that rarely; that one case gets one more boot, and the first
# attempt's logs are kept. A test that fails (status 1) is never retried.
status=0
run || status=$?
# A test verdict of FAIL in the summary ("FAIL  name  12.3s  status=1") rules the retry out.
if [ "$status" = 3 ] && ! grep -qE '^ +FAIL +[^ ]+ +[0-9.]+s +status=' "$out/summary.txt" 2>/dev/null; then
    rm -rf "$out.attempt-1"
    mkdir -p "$out.attempt-1"
    cp -a "$out/lane.log" "$out/summary.txt" "$out/tests" "$out.attempt-1/" 2>/dev/null || true
    echo "linux-lane: the emulated host failed without a test verdict (logs kept in $out.attempt-1); booting it once more"
    status=0
    run || status=$?
fi
exit "$status"
