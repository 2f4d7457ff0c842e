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
exec "$here/run-lane.sh" --image-dir "$build/images" --bin-dir "$out/bin" --out "$out" --smp 2 \
    --file "$build/guest/probe.elf:/images/probe.elf" "${mode[@]}" \
    -- "$here/selftest.sh" "$here/linux-guest.sh" "$here/linux-nvme.sh" "$here/linux-xen.sh"
